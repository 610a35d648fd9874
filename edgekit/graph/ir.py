"""The one graph representation every importer produces and every planner reads.

Shapes are always N,C,H,W for 4-D tensors, whatever the source layout (TFLite is NHWC; the
graph's `layout` records what the source used). Layers are in execution order; DAG edges are
the tensor names in `Layer.inputs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

DTYPE_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "fp16": 2, "fp32": 4, "int32": 4, "int64": 8, "bool": 1}


def numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


@dataclass(frozen=True)
class TensorSpec:
    """A named graph input: its N,C,H,W shape and element type."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Layer:
    """One operator with everything the planners need: shapes, cost and receptive field.

    `op` is a row of `edgekit.graph.ops.OPS` ("unknown" for an op the table does not know); `source_op` is
    the operator as the source model names it (TFLite builtin, ONNX op type, aten target).
    """

    name: str
    op: str
    inputs: tuple[str, ...]  # activation tensor names (weights are not tensors here)
    output: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    dtype: str  # element type of the output activation
    macs: int = 0
    params: int = 0
    param_bytes: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    explicit_pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # the part of `padding` folded in from a PAD op
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    activation: str | None = None  # fused relu / relu6
    rf: tuple[int, int] = (1, 1)  # receptive field (h, w) of one output pixel on the model input
    jump: tuple[int, int] = (1, 1)  # distance on the model input between adjacent output pixels
    source_op: str = ""
    macs_known: bool = True  # False for an unknown op: its `macs` (0) are not counted work

    @property
    def output_elements(self) -> int:
        return numel(self.output_shape)

    def output_bytes(self, dtype: str | None = None) -> int:
        """Bytes of the output activation, in its own dtype or the one given ('int8', 'fp32')."""
        return self.output_elements * DTYPE_BYTES[dtype or self.dtype]


@dataclass(frozen=True)
class Graph:
    """A model as a list of layers in execution order, with DAG edges by tensor name."""

    name: str
    source: str  # "torch" | "onnx" | "tflite"
    layout: str  # layout of the source model's activations: "NCHW" or "NHWC"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    layers: tuple[Layer, ...]

    @cached_property
    def _producer_index(self) -> dict[str, int]:
        return {layer.output: index for index, layer in enumerate(self.layers)}

    def producer_index(self, tensor: str) -> int | None:
        """Index of the layer that writes `tensor`, or None for a graph input."""
        return self._producer_index.get(tensor)

    def tensor_shape(self, tensor: str) -> tuple[int, ...]:
        """Shape of a layer output or a graph input."""
        index = self.producer_index(tensor)
        if index is not None:
            return self.layers[index].output_shape
        return next(spec.shape for spec in self.inputs if spec.name == tensor)

    @property
    def total_macs(self) -> int:
        """MACs of the layers whose MACs are known (see `unknown_ops` for the rest)."""
        return sum(layer.macs for layer in self.layers)

    @property
    def unknown_ops(self) -> dict[str, int]:
        """Source ops edgekit does not know -> how many layers use them (their MACs are not in the totals)."""
        return unknown_ops(self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_param_bytes(self) -> int:
        return sum(layer.param_bytes for layer in self.layers)


def unknown_ops(layers: Iterable[Layer]) -> dict[str, int]:
    """Source ops edgekit does not know -> how many of `layers` use them, in order of first use."""
    counts: dict[str, int] = {}
    for layer in layers:
        if not layer.macs_known:
            counts[layer.source_op] = counts.get(layer.source_op, 0) + 1
    return counts


def unknown_ops_text(layers: Iterable[Layer]) -> str:
    """'FOO (2 layers), BAR (1 layer)' for the unknown ops among `layers`; '' when there are none."""
    return ", ".join(f"{op} ({n} layer{'s' if n > 1 else ''})" for op, n in unknown_ops(layers).items())
