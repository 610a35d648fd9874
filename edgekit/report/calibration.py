"""A calibration's fit and its predictors' errors as text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.cost.calibrate import Calibration
    from edgekit.cost.fit import PredictionError


def render_errors(calibration: Calibration, rows: Sequence[PredictionError]) -> str:
    """A warning when this machine is not the device's architecture, the fit, then one line per model and
    predictor: per-layer median |% error| and end-to-end % error."""
    cal = calibration.device.calibration
    assert cal is not None
    lines = [f"warning: {calibration.warning}"] if calibration.warning else []
    lines += [f"calibrated {calibration.base.name} on {calibration.model}: {cal.backend}, {cal.threads} thread(s), "
              f"{cal.dtype}, median of {cal.repeats} runs",
              f"  measured on {cal.machine}",
              f"  measured end to end {calibration.timings.total * 1e3:.3f} ms = layers "
              f"{sum(calibration.timings.layers.values()) * 1e3:.3f} ms + overhead "
              f"{calibration.timings.overhead * 1e3:.3f} ms",
              f"  layers: {calibration.timings.layers_method}",
              f"  fitted: {cal.throughput.text}, bandwidth {cal.bandwidth.text if cal.bandwidth else 'no weight'}, "
              f"{cal.layer_overhead.text if cal.layer_overhead else '0 us'} per executed layer "
              f"(profile estimate: {calibration.base.throughput[cal.dtype].text})",
              "", f"{'model':<24} {'predictor':<15} {'layers':>6} {'median |err| %':>14} {'predicted ms':>12} "
                  f"{'measured ms':>11} {'total err %':>11}"]
    for r in rows:
        lines.append(f"{r.model:<24} {r.predictor:<15} {r.layers:>6} {r.median_abs_pct:>14.1f} "
                     f"{r.predicted_total * 1e3:>12.3f} {r.measured_total * 1e3:>11.3f} {r.total_pct:>+11.1f}")
    if calibration.profile_path:
        lines += ["", f"calibrated profile {calibration.device.name} written to {calibration.profile_path}"]
    return "\n".join(lines)
