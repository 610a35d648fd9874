"""A user's torch module as every convert step takes it: a known input shape and plain tensor outputs.

`as_torch_model` wraps the module once at the compile entry. The adapter adopts the module's children,
parameters and buffers (the same objects, so torch.export names every layer and weight exactly as in the
user's module) and calls the module itself; it never sets anything on it. Outputs that are a dict, a
dataclass (transformers' `ModelOutput`) or a tuple are flattened to a tuple of tensors with stable names
(`logits`, `pred_boxes`, `output_1`, `hidden.0`); None entries (an unused `loss`) are dropped. A model with
one output tensor returns that tensor, so litert-torch, torch.onnx export, torch.export and the fidelity
check all see what they would from a plain classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.convert.calibration import array_shape
from edgekit.errors import ConversionError
from edgekit.graph import resolve_input_shape


class TorchModel(torch.nn.Module):
    """The user's module with its `input_shape` and `output_names`, returning a tensor or a tuple of tensors."""

    module: torch.nn.Module

    def __init__(self, module: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self._modules, self._parameters, self._buffers = module._modules, module._parameters, module._buffers
        object.__setattr__(self, "module", module)  # called, not registered: its children are ours already
        self.label = type(module).__name__
        self.input_shape = tuple(input_shape)
        self.pretrained_cfg = getattr(module, "pretrained_cfg", None)  # the registry's metadata, when it has any
        module.eval()
        with torch.no_grad():
            self.output_names = tuple(name for name, _ in named_outputs(module(torch.zeros(self.input_shape)),
                                                                        self.label))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tensors = tuple(t for _, t in named_outputs(self.module(x), self.label))
        return tensors[0] if len(tensors) == 1 else tensors

    def train(self, mode: bool = True) -> TorchModel:
        """Train/eval mode for the adapter, the shared children and the user's module itself."""
        super().train(mode)
        self.module.train(mode)
        return self


def as_torch_model(model: torch.nn.Module, input_shape: tuple[int, ...] | None = None,
                   calibration: str | Path | None = None) -> TorchModel:
    """`model` wrapped for conversion; its input shape from `input_shape` (--input-shape), else its own
    `input_shape` attribute, else the calibration array's sample shape (see `graph.resolve_input_shape`)."""
    if isinstance(model, TorchModel) and input_shape in (None, model.input_shape):
        return model
    module = model.module if isinstance(model, TorchModel) else model
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"{type(module).__name__}: expected a torch nn.Module to compile")
    data_shape = array_shape(calibration) if calibration is not None else None
    return TorchModel(module, resolve_input_shape(module, input_shape, data_shape))


def named_outputs(output: Any, where: str, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's output, in order, with a name from its key, field or position."""
    if isinstance(output, torch.Tensor):
        return [(prefix or "output", output)]
    if isinstance(output, Mapping):  # dicts; transformers' ModelOutput is an ordered dict of its set fields
        items = list(output.items())
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    elif isinstance(output, (tuple, list)):
        items = [(str(i), value) for i, value in enumerate(output)]
        if not prefix:
            items = [(f"output_{key}", value) for key, value in items]
    else:
        raise ConversionError(f"{where}: the model returns {type(output).__name__}{' at ' + prefix if prefix else ''}"
                              "; expected tensors (alone, or in a dict, dataclass, tuple or list)")
    found = [named for key, value in items if value is not None
             for named in named_outputs(value, where, f"{prefix}.{key}" if prefix else str(key))]
    if not found and not prefix:
        raise ConversionError(f"{where}: the model's output holds no tensor")
    return found


def numpy_runner(model: TorchModel) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """`model` called on a numpy batch without gradients: its outputs by name, in order."""
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return dict(zip(model.output_names, (t.numpy() for t in (out if isinstance(out, tuple) else (out,)))))

    return run


def model_label(model: Any) -> str:
    """The name errors use for a model: the user's class, also behind the adapter."""
    return model.label if isinstance(model, TorchModel) else type(model).__name__
