"""Layer-by-layer activation memory: which tensors are alive while each layer runs, and the peak.

Accounting (the MCUNetV2 / TinyEngine convention, stated so numbers can be compared):
- every activation is a separate buffer of `elements x bytes-per-element` (1 for int8, 4 for fp32);
- a tensor is alive from the layer that writes it until the last layer that reads it (graph
  inputs from the start, graph outputs to the end); so a residual input stays alive until its
  add has run, then is freed;
- reshape/flatten outputs alias their input (no copy);
- with `inplace_depthwise`, a depthwise conv whose input dies with it writes over its input:
  it costs max(input, output) instead of input + output.
Weights are not counted: they live in flash (MCU) or are loaded once (others).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.graph.ir import ALIAS_OPS, DTYPE_BYTES, Graph, numel


@dataclass(frozen=True)
class MemoryPolicy:
    """Which accounting variant to use; the defaults match the MCUNetV2 paper's figures."""

    dtype: str = "int8"
    inplace_depthwise: bool = True


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


def activation_memory(graph: Graph, policy: MemoryPolicy = MemoryPolicy()) -> MemoryProfile:
    """Live activation bytes at every layer of `graph` executed layer by layer in its order."""
    per_element = DTYPE_BYTES[policy.dtype]
    buffer_of = {spec.name: spec.name for spec in graph.inputs}
    size = {spec.name: numel(spec.shape) * per_element for spec in graph.inputs}
    end = len(graph.layers)
    last_use = {name: -1 for name in size}
    for index, layer in enumerate(graph.layers):
        if layer.op in ALIAS_OPS and len(layer.inputs) == 1:
            buffer_of[layer.output] = buffer_of[layer.inputs[0]]
        else:
            buffer_of[layer.output] = layer.output
            size[layer.output] = layer.output_elements * per_element
            last_use[layer.output] = index
        for tensor in layer.inputs:
            last_use[buffer_of[tensor]] = max(last_use[buffer_of[tensor]], index)
    for tensor in graph.outputs:
        last_use[buffer_of[tensor]] = end

    alive: set[str] = {spec.name for spec in graph.inputs}
    rows = []
    for index, layer in enumerate(graph.layers):
        output = buffer_of[layer.output]
        live = sum(size[b] for b in alive | {output})
        source = buffer_of[layer.inputs[0]] if layer.inputs else None
        if policy.inplace_depthwise and layer.op == "depthwise_conv2d" and last_use[source] == index:
            live -= min(size[source], size[output])
        rows.append(LayerMemory(layer.name, live, size[output]))
        alive.add(output)
        alive = {b for b in alive if last_use[b] > index}
    return MemoryProfile(policy, tuple(rows))
