"""The model graph: one representation for torch, ONNX and TFLite models (see `ir`)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from edgekit.errors import ModelLoadError
from edgekit.graph.ir import Graph, Layer, TensorSpec

__all__ = ["Graph", "Layer", "TensorSpec", "load_graph", "resolve_input_shape", "resolve_module"]


def resolve_module(spec: str, **overrides: Any) -> Any:
    """'package.module:factory' or a registered reference-model name (with factory overrides) -> an nn.Module."""
    if ":" not in spec:
        from edgekit.models import create_model

        return create_model(spec, **overrides)
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: a module in the current folder is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import module '{module_name}' (from '{spec}'): {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelLoadError(f"module '{module_name}' has no attribute '{attr}' (from '{spec}')")
    if isinstance(factory, type) or (callable(factory) and not hasattr(factory, "forward")):
        return factory(**overrides)  # a class or a factory function; an instance is taken as it is
    return factory


def load_graph(model: Any, input_shape: tuple[int, ...] | None = None, name: str | None = None) -> Graph:
    """Build the Graph of a torch module, a module spec/registry name, or an .onnx/.tflite file."""
    if isinstance(model, (str, Path)) and str(model).endswith((".onnx", ".tflite")):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        if path.suffix == ".onnx":
            from edgekit.graph.from_onnx import from_onnx

            return from_onnx(path, input_shape)
        if input_shape is not None:
            raise ModelLoadError(f"{path}: a .tflite model has a fixed input shape; do not pass one")
        from edgekit.graph.from_tflite import from_tflite

        return from_tflite(path)
    if isinstance(model, str):
        name = name or model.rpartition(":")[2]
        model = resolve_module(model)
    from edgekit.graph.from_torch import from_torch

    return from_torch(model, resolve_input_shape(model, input_shape, name=name), name)


def resolve_input_shape(model: Any, given: tuple[int, ...] | None = None, data_shape: tuple[int, ...] | None = None,
                        name: str | None = None) -> tuple[int, ...]:
    """The input shape to trace a torch model with: `given` (--input-shape), else the model's `input_shape`
    attribute, else one sample of calibration data shaped `data_shape` (batch 1); a ModelLoadError otherwise."""
    if given is not None:
        return tuple(given)
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        return tuple(int(d) for d in declared)
    if data_shape is not None and len(data_shape) >= 2:
        return (1, *data_shape[1:])
    raise ModelLoadError(f"{name or type(model).__name__}: no input shape: pass --input-shape N,C,H,W or give the "
                         "model an 'input_shape' attribute (compile also takes it from a .npy/.npz calibration array)")
