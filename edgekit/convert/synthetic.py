"""Data-free calibration in the ZeroQ manner: inputs optimised until batch-norm statistics match.

Used when a user has no calibration data. Each BatchNorm2d remembers the mean and variance of its
input over the training set; we optimise a batch of random inputs so the per-channel mean and
standard deviation they produce at every batch norm match those running statistics.

The optimisation stops when the gap stops improving (its best value falls by less than PLATEAU_GAIN over the
last PLATEAU_WINDOW steps), at the step cap, or at the time limit, whichever comes first. It has converged when
the final gap is at most CONVERGED_FRACTION of the initial one: a trained network's gap closes by far more
(digits_cnn: 39.3 -> 0.2), while a gap left near where it started (519 -> 511) means the inputs do not look
like data to the network, and INT8 ranges calibrated on them are guesses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.convert.config import DATA_FREE_SAMPLES
from edgekit.convert.threads import bounded_threads
from edgekit.errors import CalibrationError
from edgekit.progress import progress

MAX_STEPS = 500  # the step cap (the plateau rule and the time limit usually stop it first)
TIME_LIMIT_S = 120.0  # the time limit of one synthesis
PLATEAU_WINDOW = 20  # steps over which the gap must improve ...
PLATEAU_GAIN = 0.01  # ... by this fraction of its best value, or the optimisation stops
CONVERGED_FRACTION = 0.25  # converged: the final gap is at most this fraction of the initial one
LEARNING_RATE = 0.1
STOPS = {"plateau": "the gap stopped improving", "step cap": "the step cap", "time limit": "the time limit"}


@dataclass(frozen=True)
class Synthesis:
    """How one synthesis went, as the report records it: the statistics gap before and after, the steps run of
    the cap, why it stopped (a STOPS key), how long it took, and whether the gap closed (see CONVERGED_FRACTION)."""

    samples: int
    seed: int
    initial_gap: float
    final_gap: float
    steps: int
    max_steps: int
    stopped: str
    seconds: float
    converged: bool

    def describe(self) -> str:
        """'batch-norm statistics gap 39.34 -> 0.22 (0.6% of the start) in 57 of 500 steps, 3.1 s; stopped: ...'."""
        return (f"batch-norm statistics gap {self.initial_gap:.2f} -> {self.final_gap:.2f} "
                f"({100 * self.remaining():.1f}% of the start) in {self.steps} of {self.max_steps} steps, "
                f"{self.seconds:.1f} s; stopped: {STOPS[self.stopped]}")

    def warning(self) -> str | None:
        """The report's 'did not converge' warning; None when the gap closed."""
        if self.converged:
            return None
        return (f"data-free calibration did not converge: the batch-norm statistics gap went "
                f"{self.initial_gap:.2f} -> {self.final_gap:.2f}, {100 * self.remaining():.0f}% of the start "
                f"(converged means at most {100 * CONVERGED_FRACTION:.0f}%); the synthetic inputs do not look like "
                "data to this model, so its INT8 ranges are guesses: calibrate with real samples (--calib)")

    def remaining(self) -> float:
        """The final gap as a fraction of the initial one."""
        return self.final_gap / self.initial_gap if self.initial_gap else 0.0


@dataclass(frozen=True)
class SyntheticData:
    """Synthetic calibration inputs (N,C,H,W float32) and how their synthesis went."""

    inputs: np.ndarray
    synthesis: Synthesis


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


def plateaued(gaps: Sequence[float], window: int = PLATEAU_WINDOW, gain: float = PLATEAU_GAIN) -> bool:
    """Whether the best gap of the last `window` steps is less than `gain` (a fraction) below the best before."""
    if len(gaps) <= window:
        return False
    before = min(gaps[:-window])
    return min(gaps[-window:]) > before * (1.0 - gain)


def synthesize_calibration(model: Any, input_shape: tuple[int, ...], samples: int = DATA_FREE_SAMPLES,
                           max_steps: int = MAX_STEPS, seed: int = 0, time_limit_s: float | None = TIME_LIMIT_S,
                           label: str = "synthesising calibration data") -> SyntheticData:
    """`samples` synthetic float32 inputs (N,C,H,W) optimised with Adam to close the statistics gap, until it
    plateaus, `max_steps` or `time_limit_s` (None: no limit), on bounded torch threads, showing progress."""
    import torch

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *input_shape[1:]), generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=LEARNING_RATE)
    gaps: list[float] = []  # the gap before each step
    start = time.monotonic()
    deadline = math.inf if time_limit_s is None else start + time_limit_s
    with bounded_threads():
        with torch.no_grad():
            initial = float(statistics_gap(model, x))
        for _ in progress(_steps(gaps, max_steps, deadline), label, max_steps):
            optimizer.zero_grad()
            gap = statistics_gap(model, x)
            gap.backward()
            optimizer.step()
            gaps.append(float(gap.detach()))
        with torch.no_grad():
            final = float(statistics_gap(model, x))
    stopped = "plateau" if plateaued(gaps) else "step cap" if len(gaps) >= max_steps else "time limit"
    synthesis = Synthesis(samples, seed, initial, final, len(gaps), max_steps, stopped, time.monotonic() - start,
                          final <= CONVERGED_FRACTION * initial)
    return SyntheticData(x.detach().numpy().astype(np.float32), synthesis)


def _steps(gaps: list[float], max_steps: int, deadline: float) -> Iterator[int]:
    """Step numbers while the optimisation should go on: under the cap, not plateaued, before the deadline."""
    while len(gaps) < max_steps and not plateaued(gaps) and time.monotonic() < deadline:
        yield len(gaps)
