"""How much INT8 cost: FP32 reference against the quantized model on the same held-out inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.progress import progress


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


def onnx_layer_sqnr(float_model: str | Path, qdq_model: str | Path, inputs: np.ndarray) -> dict[str, float]:
    """SQNR in dB of every activation of a QDQ model against the float model, worst first.

    Uses onnxruntime.quantization.qdq_loss_debug: both models are augmented to output their
    intermediate tensors, run on `inputs` and matched by tensor name.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    name = onnx.load(str(float_model)).graph.input[0].name
    collected = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, model in enumerate((float_model, qdq_model)):
            augmented = Path(tmp) / f"augmented_{index}.onnx"
            debug.modify_model_output_intermediate_tensors(str(model), str(augmented))
            reader = ArrayReader(name, inputs)
            collected.append(debug.collect_activations(str(augmented), reader))
    matching = debug.create_activation_matching(collected[1], collected[0])
    errors = debug.compute_activation_error(matching)
    sqnr = {tensor: float(err["xmodel_err"]) for tensor, err in errors.items() if "xmodel_err" in err}
    return dict(sorted(sqnr.items(), key=lambda item: item[1]))


class ArrayReader:
    """onnxruntime CalibrationDataReader over an array, one sample per batch, optionally with progress."""

    def __init__(self, name: str, data: np.ndarray, progress_label: str | None = None) -> None:
        feeds = ({name: x[None]} for x in data)
        self.samples = progress(feeds, progress_label, len(data)) if progress_label else feeds

    def get_next(self) -> dict | None:
        return next(self.samples, None)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.get_next, None)
