"""`edgekit compile`: quantize a model for a target, check what it cost, write artifacts atomically."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.calibration import load_calibration, load_labelled
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity, measure_fidelity
from edgekit.convert.quantize import quantize
from edgekit.errors import ConversionError
from edgekit.graph import load_graph
from edgekit.targets import Device


@dataclass(frozen=True)
class CompileReport:
    """What compile did and what it cost: artifact, calibration, float islands, fidelity."""

    model: str
    target: str
    config: Int8Config
    artifact: str
    artifact_bytes: int
    calibration: str
    calibration_samples: int
    float_layers: tuple[str, ...]  # TFLite layers left in float (none for a full-integer model)
    fidelity: Fidelity | None
    max_drop_points: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fidelity_drop_points"] = self.fidelity.accuracy_drop_points if self.fidelity else None
        return data

    def render(self) -> str:
        lines = [f"{self.model} -> {self.artifact} ({self.config.format}, {self.artifact_bytes:,} bytes) "
                 f"for {self.target}",
                 f"calibration: {self.calibration_samples} samples from {self.calibration} "
                 f"({self.config.calibration if self.config.format == 'onnx' else 'PT2E observers'})"]
        if self.config.format == "tflite":
            lines.append("float layers: " + (", ".join(self.float_layers) or "none (full integer)"))
        f = self.fidelity
        if f is None:
            lines.append("fidelity: not measured (pass --eval with held-out data)")
        else:
            accuracy = "" if f.fp32_accuracy is None else \
                f"; top-1 accuracy fp32 {100 * f.fp32_accuracy:.2f}% int8 {100 * f.int8_accuracy:.2f}%"  # type: ignore[operator]
            lines.append(f"fidelity on {f.samples} held-out samples: top-1 agreement {100 * f.top1_agreement:.2f}%"
                         f"{accuracy}; output error max {f.max_abs_error:.4f} mean {f.mean_abs_error:.4f}")
        return "\n".join(lines)


def _drop_points(fidelity: Fidelity) -> float:
    """Accuracy drop when labels exist; otherwise top-1 disagreement, a bound on it."""
    drop = fidelity.accuracy_drop_points
    return drop if drop is not None else 100.0 * (1.0 - fidelity.top1_agreement)


def compile_int8(model: Any, name: str, target: Device, out_dir: str | Path, calibration: str | Path,
                 evaluation: str | Path | None = None, config: Int8Config | None = None,
                 max_drop_points: float = 1.0) -> CompileReport:
    """Quantize `model` for `target` into `out_dir` (model file + report.json + report.txt).

    Fails with a specific error, leaving `out_dir` untouched, on bad data, a float island in an MCU
    model, or an accuracy drop above `max_drop_points`.
    """
    import torch

    config = config or Int8Config.for_target(target)
    shape = tuple(model.input_shape)
    samples = load_calibration(calibration, shape, config.max_samples)
    held_out = load_labelled(evaluation, shape) if evaluation else None
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "report.json").is_file():
        raise ConversionError(f"{out_dir} exists and is not an earlier compile output; choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        artifact = quantize(model, samples, tmp / f"{name}_int8.{config.format}", config)
        float_layers: tuple[str, ...] = ()
        if config.format == "tflite":
            float_layers = tuple(l.name for l in load_graph(artifact).layers if l.dtype not in ("int8", "int32"))
            if float_layers and target.device_class == "mcu":
                raise ConversionError(f"{name}: {len(float_layers)} layers stayed float ({', '.join(float_layers[:5])})"
                                      f"; an MCU bundle must be full integer")
        fidelity = None
        if held_out is not None:
            from edgekit.backends import load_backend

            with torch.no_grad():
                fidelity = measure_fidelity(lambda x: model(torch.from_numpy(x)).numpy(), load_backend(artifact),
                                            *held_out)
            if _drop_points(fidelity) > max_drop_points:
                raise ConversionError(f"{name}: INT8 loses {_drop_points(fidelity):.2f} top-1 points on "
                                      f"{evaluation} (limit {max_drop_points}); nothing written to {out_dir}")
        report = CompileReport(name, target.name, config, artifact.name, artifact.stat().st_size, str(calibration),
                               len(samples), float_layers, fidelity, max_drop_points)
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=_json_default))
        (tmp / "report.txt").write_text(report.render() + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return report


def _json_default(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)
