"""Layer-by-layer activation memory: which tensors are alive while each layer runs, and the peak.

Accounting (the MCUNetV2 / TinyEngine convention, stated so numbers can be compared):
- every activation is a separate buffer of `elements x bytes-per-element` (1 for int8, 4 for fp32);
- a tensor is alive from the layer that writes it until the last layer that reads it (graph
  inputs from the start, graph outputs to the end); so a residual input stays alive until its
  add has run, then is freed;
- reshape/flatten/squeeze outputs alias their input (no copy; the ops of kind "alias" in `graph.ops`);
- an op edgekit does not know (op "unknown") is a buffer of its own, like any op, sized by its shape;
- with `inplace_depthwise`, a depthwise conv whose input dies with it writes over its input:
  it costs max(input, output) instead of input + output;
- with `inplace_residual`, a conv whose only reader is a residual add accumulates straight into
  the add's other input when that input dies at the add and nothing else reads it after the conv
  (TinyEngine-style fused add): neither the conv output nor the add output takes a buffer of its own;
  `MemoryPolicy.generated_c()` is what edgekit's generated C holds (depthwise in place, with a copy of one
  input channel as its scratch, and residual adds fused);
- with `materialize_pads`, a zero pad that the graph folded into a conv/pool from an explicit PAD op
  (litert-torch emits PAD + VALID for PyTorch's stride-2 padding) is a buffer of its own, as TFLite and
  TF Lite Micro run it: the PAD holds its input and the padded copy, the conv the padded copy and its
  output. `MemoryPolicy.tflm()` (out-of-place depthwise, materialised pads) is what TF Lite Micro must
  hold: its measured arena head on the INT8 reference models (tested; where TFLM's greedy planner leaves
  gaps, an offline plan from `edgekit.convert.arena_plan` closes them, see BENCHMARKS.md).
Weights are not counted: they live in flash (MCU) or are loaded once (others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from edgekit.graph.ir import DTYPE_BYTES, Graph, Layer, numel
from edgekit.graph.ops import ALIAS_OPS


@dataclass(frozen=True)
class MemoryPolicy:
    """Which accounting variant to use; the defaults match the MCUNetV2 paper's layer-by-layer figure."""

    dtype: str = "int8"
    inplace_depthwise: bool = True
    inplace_residual: bool = False
    materialize_pads: bool = False
    depthwise_scratch: bool = False  # an in-place depthwise also holds a copy of one input channel (the C's scratch)

    @classmethod
    def generated_c(cls) -> MemoryPolicy:
        """The accounting of edgekit's generated C (`edgekit.mcu`): int8, depthwise in place with its one-channel
        scratch plane, residual adds fused."""
        return cls("int8", inplace_depthwise=True, inplace_residual=True, materialize_pads=False,
                   depthwise_scratch=True)

    @classmethod
    def tflm(cls, dtype: str = "int8") -> MemoryPolicy:
        """The accounting of TF Lite Micro's arena head: every op out of place, explicit pads materialised."""
        return cls(dtype, inplace_depthwise=False, inplace_residual=False, materialize_pads=True)


@dataclass(frozen=True)
class LayerMemory:
    """Activation bytes alive while one layer runs."""

    layer: str
    live_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class MemoryProfile:
    """Per-layer live activation bytes and the peak, under one policy."""

    policy: MemoryPolicy
    layers: tuple[LayerMemory, ...]

    @property
    def peak_bytes(self) -> int:
        return max((m.live_bytes for m in self.layers), default=0)

    @property
    def peak_layer(self) -> str:
        return max(self.layers, key=lambda m: m.live_bytes).layer if self.layers else ""


def _buffers(layers: Sequence[Layer], inputs: Iterable[str], policy: MemoryPolicy) -> dict[str, str]:
    """Which buffer each tensor lives in: its own, or the one it aliases / accumulates into."""
    buffer_of = {name: name for name in inputs}
    readers: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        for tensor in layer.inputs:
            readers.setdefault(tensor, []).append(index)
    producer = {layer.output: i for i, layer in enumerate(layers)}
    for index, layer in enumerate(layers):
        buffer_of.setdefault(layer.output, layer.output)
        if layer.op in ALIAS_OPS and len(layer.inputs) == 1:
            buffer_of[layer.output] = buffer_of[layer.inputs[0]]
        elif policy.inplace_residual and layer.op == "add" and len(layer.inputs) == 2:
            for kept, fused in (layer.inputs, layer.inputs[::-1]):
                conv = producer.get(fused)
                if conv is not None and layers[conv].op == "conv2d" and readers.get(fused) == [index] \
                        and kept != fused and all(r < conv for r in readers[kept] if r != index) \
                        and max(readers[kept]) == index:
                    buffer_of[fused] = buffer_of[layer.output] = buffer_of[kept]
                    break
    return buffer_of


def live_bytes(layers: Sequence[Layer], inputs: Iterable[str], outputs: Iterable[str], size_of: Callable[[str], int],
               policy: MemoryPolicy, padded_of: Callable[[Layer], int] | None = None) -> list[int]:
    """Live bytes at each of `layers`, run in order, with tensor sizes from `size_of` (0 = not in this memory).

    `padded_of(layer)`: bytes of a layer's explicitly padded input, counted under `materialize_pads`."""
    inputs = list(inputs)
    buffer_of = _buffers(layers, inputs, policy)
    last_use = {buffer_of[name]: -1 for name in inputs}
    for index, layer in enumerate(layers):
        last_use.setdefault(buffer_of[layer.output], index)
        for tensor in layer.inputs:
            last_use[buffer_of[tensor]] = max(last_use.get(buffer_of[tensor], -1), index)
    for tensor in outputs:
        last_use[buffer_of[tensor]] = len(layers)
    size = {buffer: size_of(buffer) for buffer in last_use}
    alive = {buffer_of[name] for name in inputs}
    rows = []
    for index, layer in enumerate(layers):
        output = buffer_of[layer.output]
        live = sum(size[b] for b in alive | {output})
        source = buffer_of[layer.inputs[0]] if layer.inputs else None
        if policy.inplace_depthwise and layer.op == "depthwise_conv2d" and source is not None \
                and last_use.get(source) == index:
            live -= min(size[source], size[output])
            if policy.depthwise_scratch:  # one input channel copied out
                live += size[source] // layer.input_shapes[0][1]
        if policy.materialize_pads and padded_of is not None and any(layer.explicit_pad):
            padded = padded_of(layer)
            at_pad = sum(size[b] for b in alive) + padded  # the PAD op: its input and the padded copy
            dies = source is not None and source != output and last_use.get(source) == index  # at the PAD
            freed = size[source] if source is not None and dies else 0
            live = max(at_pad, live - freed + padded)
        rows.append(live)
        alive.add(output)
        alive = {b for b in alive if last_use[b] > index}
    return rows


def activation_memory(graph: Graph, policy: MemoryPolicy = MemoryPolicy()) -> MemoryProfile:
    """Live activation bytes at every layer of `graph` executed layer by layer in its order."""
    per_element = DTYPE_BYTES[policy.dtype]
    buffer_of = _buffers(graph.layers, [s.name for s in graph.inputs], policy)

    def size_of(tensor: str) -> int:
        return numel(graph.tensor_shape(tensor)) * per_element

    def padded_of(layer: Layer) -> int:
        channels, height, width = layer.input_shapes[0][1:]
        top, left, bottom, right = layer.explicit_pad
        return channels * (height + top + bottom) * (width + left + right) * per_element

    rows = live_bytes(graph.layers, [s.name for s in graph.inputs], graph.outputs, size_of, policy, padded_of)
    return MemoryProfile(policy, tuple(LayerMemory(layer.name, live, size_of(buffer_of[layer.output]))
                                       for layer, live in zip(graph.layers, rows)))
