"""Fit the roofline's free numbers to measured layer times, and score any predictor against a measurement.

The fitted model is the one `edgekit.cost.fitted_seconds` evaluates: seconds = MACs / MAC/s +
bytes moved / B/s + a fixed cost per executed layer, found by non-negative least squares over the
measured layers (a term the data cannot support gets zero weight instead of a negative rate).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.cost.model import is_executed, moved_bytes
from edgekit.errors import CalibrationError
from edgekit.graph.ir import Layer


@dataclass(frozen=True)
class RooflineFit:
    """Fitted effective rates; a rate of None means the fit gave that term no weight."""

    mac_rate: float | None  # MAC/s
    byte_rate: float | None  # B/s
    layer_overhead: float  # seconds per executed layer
    layers: int  # how many measured layers the fit used


@dataclass(frozen=True)
class PredictionError:
    """How far one predictor is from a measurement: per layer and end to end."""

    predictor: str
    model: str
    median_abs_pct: float  # median over layers with a measured time > 0 of |predicted - measured| / measured
    total_pct: float  # signed: (predicted total - measured total) / measured total
    predicted_total: float
    measured_total: float
    layers: int  # layers in the per-layer median


def nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin |a x - b| subject to x >= 0, by trying every subset of columns (a has only a few)."""
    best, best_residual = np.zeros(a.shape[1]), float(np.sum(b**2))
    for size in range(1, a.shape[1] + 1):
        for columns in itertools.combinations(range(a.shape[1]), size):
            x, *_ = np.linalg.lstsq(a[:, columns], b, rcond=None)
            if np.any(x < 0):
                continue
            residual = float(np.sum((a[:, columns] @ x - b) ** 2))
            if residual < best_residual:
                best_residual, best = residual, np.zeros(a.shape[1])
                best[list(columns)] = x
    return best


def fit_roofline(layers: Sequence[Layer], seconds: Mapping[str, float], dtype: str) -> RooflineFit:
    """Least-squares rates for MACs, bytes moved and executed-layer count from measured per-layer seconds."""
    measured = [layer for layer in layers if layer.name in seconds]
    if not measured:
        raise CalibrationError("no measured layer to fit: expected per-layer seconds keyed by the graph's layer names")
    features = np.array([[layer.macs, moved_bytes(layer, dtype), float(is_executed(layer))] for layer in measured],
                        dtype=np.float64)
    target = np.array([seconds[layer.name] for layer in measured])
    # Noisy timings (a throttled or busy CPU) can give all the weight to the byte or per-layer terms; then drop
    # them in turn, keeping the compute term, rather than fail: MACs, bytes and layer count; MACs and layer
    # count; MACs alone.
    for columns in ((0, 1, 2), (0, 2), (0,)):
        scale = np.maximum(features[:, columns].max(axis=0), 1.0)  # similar column sizes: a well-conditioned solve
        x = np.zeros(3)
        x[list(columns)] = nonnegative_lstsq(features[:, columns] / scale, target) / scale
        if x[0] > 0:
            return RooflineFit(1.0 / x[0], 1.0 / x[1] if x[1] > 0 else None, float(x[2]), len(measured))
    raise CalibrationError(f"fit over {len(measured)} layers gave compute no weight: MAC/s cannot be derived "
                           "(does the model have any MACs?)")


def prediction_error(predictor: str, model: str, predicted: Mapping[str, float], measured: Mapping[str, float],
                     predicted_total: float, measured_total: float) -> PredictionError:
    """Per-layer median |% error| (layers measured at 0 s have no relative error and are left out) and total % error."""
    errors = [abs(predicted[name] - seconds) / seconds * 100 for name, seconds in measured.items() if seconds > 0]
    if not errors:
        raise CalibrationError(f"{model}: no layer has a measured time above zero; nothing to compare against")
    if measured_total <= 0:
        raise CalibrationError(f"{model}: measured total must be positive, found {measured_total!r}")
    return PredictionError(predictor, model, statistics.median(errors),
                           (predicted_total - measured_total) / measured_total * 100, predicted_total,
                           measured_total, len(errors))
