"""How much INT8 cost: FP32 reference against the quantized model on the same held-out inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    """Top-1 agreement, accuracies when labels exist, and output error of INT8 against FP32."""

    samples: int
    top1_agreement: float
    fp32_accuracy: float | None
    int8_accuracy: float | None
    max_abs_error: float
    mean_abs_error: float

    @property
    def accuracy_drop_points(self) -> float | None:
        """FP32 minus INT8 top-1 accuracy in percentage points."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.fp32_accuracy - self.int8_accuracy)


def measure_fidelity(reference: Callable[[np.ndarray], np.ndarray], quantized: Callable[[np.ndarray], np.ndarray],
                     inputs: np.ndarray, labels: np.ndarray | None = None) -> Fidelity:
    """Run both models one sample at a time (batch 1, as deployed) and compare their outputs."""
    ref = np.concatenate([reference(x[None]) for x in inputs])
    q8 = np.concatenate([quantized(x[None]) for x in inputs])
    ref_top, q8_top = ref.argmax(axis=1), q8.argmax(axis=1)
    error = np.abs(ref - q8)
    return Fidelity(
        samples=len(inputs), top1_agreement=float(np.mean(ref_top == q8_top)),
        fp32_accuracy=None if labels is None else float(np.mean(ref_top == labels)),
        int8_accuracy=None if labels is None else float(np.mean(q8_top == labels)),
        max_abs_error=float(error.max()), mean_abs_error=float(error.mean()),
    )
