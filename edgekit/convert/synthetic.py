"""Data-free calibration in the ZeroQ manner: inputs optimised until batch-norm statistics match.

Used when a user has no calibration data. Each BatchNorm2d remembers the mean and variance of its
input over the training set; we optimise a batch of random inputs so the per-channel mean and
standard deviation they produce at every batch norm match those running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import CalibrationError
from edgekit.progress import progress


@dataclass(frozen=True)
class SyntheticData:
    """Synthetic calibration inputs and how far their BN statistics were from the model's, before and after."""

    inputs: np.ndarray
    initial_gap: float
    final_gap: float


def statistics_gap(model: Any, x: Any) -> Any:
    """Sum over batch norms of |batch mean - running mean| + |batch std - running std| (a torch scalar)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats]
    if not norms:
        raise CalibrationError(f"{type(model).__name__}: data-free calibration needs batch-norm layers "
                               "(their statistics are the target); pass calibration data instead")
    gaps: list[torch.Tensor] = []

    def measure(module: torch.nn.BatchNorm2d, args: tuple, _output: Any) -> None:
        batch, running_mean, running_var = args[0], module.running_mean, module.running_var
        assert running_mean is not None and running_var is not None  # track_running_stats, filtered above
        std = (batch.var(dim=(0, 2, 3), unbiased=False) + module.eps).sqrt()
        gaps.append((batch.mean(dim=(0, 2, 3)) - running_mean).norm()
                    + (std - (running_var + module.eps).sqrt()).norm())

    hooks = [m.register_forward_hook(measure) for m in norms]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(gaps).sum()


def synthesize_calibration(model: Any, input_shape: tuple[int, ...], samples: int = 32, steps: int = 200,
                           seed: int = 0) -> SyntheticData:
    """`samples` synthetic float32 inputs (N,C,H,W) optimised with Adam to close the statistics gap."""
    import torch

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *input_shape[1:]), generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.1)
    with torch.no_grad():
        initial = float(statistics_gap(model, x))
    for _ in progress(range(steps), "synthesising calibration data", steps):
        optimizer.zero_grad()
        statistics_gap(model, x).backward()
        optimizer.step()
    with torch.no_grad():
        final = float(statistics_gap(model, x))
    return SyntheticData(x.detach().numpy().astype(np.float32), initial, final)
