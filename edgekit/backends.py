"""Run a converted model on numpy float input with the device's own interpreter (no torch).

LiteRT (`ai-edge-litert`, or `tflite-runtime` on numpy<2 systems) for .tflite, ONNX Runtime for .onnx.
Integer I/O is quantized/dequantized here with the tensor's own scale and zero point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ModelLoadError
from edgekit.runtime.backends import litert_interpreter_class


def _litert_interpreter(path: Path):  # type: ignore[no-untyped-def]
    return litert_interpreter_class()(model_path=str(path), num_threads=1)


class LiteRTModel:
    """A .tflite model called like a function: float32 array in, float32 array out."""

    def __init__(self, path: str | Path) -> None:
        self.interpreter = _litert_interpreter(Path(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        value = x
        if self.input["dtype"] != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            value = np.clip(np.round(x / scale) + zero, info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], value.astype(self.input["dtype"]))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] != np.float32:
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out


class OrtModel:
    """An .onnx model on ONNX Runtime's CPU provider, called like a function."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(np.float32)})[0]


def load_backend(path: str | Path) -> LiteRTModel | OrtModel:
    """The right runner for a model file, by its suffix."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return LiteRTModel(path)
    if suffix == ".onnx":
        return OrtModel(path)
    raise ModelLoadError(f"{path}: no backend runs '{suffix}' files (expected .tflite or .onnx)")
