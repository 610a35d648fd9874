"""A float model file (.tflite or .onnx) packaged as it is into an FP32 bundle: the reference a quantized bundle
is compared with, and a detector that runs on a device with floating point to spare (a Pi, a Jetson)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgekit.convert.compile import tensor_infos
from edgekit.errors import ModelLoadError
from edgekit.formats.bundle import InputPreprocessing, Manifest, Stage, write_bundle
from edgekit.formats.detection import DetectionSpec

FILE_BACKENDS = {".tflite": "litert", ".onnx": "onnxruntime"}


def bundle_float_file(path: str | Path, out: str | Path, target: str, preprocessing: InputPreprocessing | None,
                      labels: tuple[str, ...] | None = None, detection: DetectionSpec | None = None) -> Path:
    """Bundle the float model `path` unchanged as one stage for `target`, with the image `preprocessing`,
    class `labels` and detection decoder the device needs; the manifest is validated against the file."""
    path = Path(path)
    if path.suffix not in FILE_BACKENDS or not path.is_file():
        raise ModelLoadError(f"{path}: expected a .tflite or .onnx model file")
    channels_last = preprocessing is not None and preprocessing.layout == "NHWC"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        if path.suffix == ".onnx":  # weights inline: bundles refuse ONNX external data
            import onnx

            onnx.save(onnx.load(str(path)), str(copy))
        else:
            shutil.copyfile(path, copy)
        inputs, outputs = tensor_infos(copy, channels_last)
        stage = Stage("main", FILE_BACKENDS[path.suffix], path.name, inputs, outputs)
        manifest = Manifest(path.stem, target, (stage,), preprocessing=preprocessing, labels=labels,
                            detection=detection)
        return write_bundle(tmp, manifest, out)
