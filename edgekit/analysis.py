"""Analysis of a graph for a target: totals, layer-by-layer activation memory, and whether it fits.

For an MCU target the SRAM verdict uses TF Lite Micro's accounting (`MemoryPolicy.tflm()`), because compile
deploys there under TFLM; on a torch model that accounting needs the explicit pads the TFLite conversion will add
(`tflite_pads`), which the torch graph does not hold."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekit.graph.ir import Graph, Layer
from edgekit.graph.ops import SPATIAL_OPS
from edgekit.memory import MemoryPolicy, MemoryProfile, activation_memory
from edgekit.targets import Device
from edgekit.units import format_bytes


@dataclass(frozen=True)
class Fit:
    """One resource check: bytes needed against bytes the target has."""

    resource: str
    what: str
    needed_bytes: int
    available_bytes: int
    accounting: str | None = None  # activation fits: "tflm" (MemoryPolicy.tflm()) or "default" (the policy asked for)

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes

    def describe(self) -> str:
        if self.fits:
            return (f"fits: {self.what} {format_bytes(self.needed_bytes)} of "
                    f"{format_bytes(self.available_bytes)} {self.resource}")
        return (f"does not fit: {self.what} is short by {self.needed_bytes - self.available_bytes:,} bytes of "
                f"{self.resource} (needs {format_bytes(self.needed_bytes)}, has {format_bytes(self.available_bytes)})")


@dataclass(frozen=True)
class Analysis:
    """What `edgekit analyze` reports: the graph, memory under int8 and fp32, and fit verdicts; for an MCU target
    also the int8 memory under TF Lite Micro's accounting, on the graph with the pads TFLite makes explicit."""

    graph: Graph
    memory: dict[str, MemoryProfile]  # "int8" / "fp32", under the policy asked for
    target: Device | None
    fits: tuple[Fit, ...]
    tflm: MemoryProfile | None = None  # MCU target only
    explicit_pads: tuple[str, ...] = ()  # layers whose padding TFLM runs as a PAD op (with `tflm`)

    def to_dict(self) -> dict:
        """JSON-ready form: layers, totals, peaks, accounting and verdicts."""
        int8, fp32 = self.memory["int8"], self.memory["fp32"]
        layers = []
        for layer, m8, m32 in zip(self.graph.layers, int8.layers, fp32.layers):
            layers.append({
                "name": layer.name, "op": layer.op, "inputs": list(layer.inputs), "output": layer.output,
                "input_shapes": [list(s) for s in layer.input_shapes], "output_shape": list(layer.output_shape),
                "dtype": layer.dtype, "kernel": list(layer.kernel), "stride": list(layer.stride),
                "padding": list(layer.padding), "dilation": list(layer.dilation), "groups": layer.groups,
                "activation": layer.activation, "macs": layer.macs, "params": layer.params,
                "param_bytes": layer.param_bytes, "output_bytes_int8": m8.output_bytes,
                "output_bytes_fp32": m32.output_bytes, "live_bytes_int8": m8.live_bytes,
                "live_bytes_fp32": m32.live_bytes, "receptive_field": list(layer.rf), "jump": list(layer.jump),
                "source_op": layer.source_op, "macs_known": layer.macs_known,
            })
        return {
            "model": self.graph.name, "source": self.graph.source, "source_layout": self.graph.layout,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.graph.inputs],
            "outputs": list(self.graph.outputs),
            "totals": {"layers": len(self.graph.layers), "macs": self.graph.total_macs,
                       "params": self.graph.total_params, "param_bytes": self.graph.total_param_bytes},
            "unknown_ops": self.graph.unknown_ops,  # source op -> layers; their MACs are not in totals.macs
            "peak_activation_bytes": {dtype: {"bytes": p.peak_bytes, "layer": p.peak_layer}
                                      for dtype, p in self.memory.items()},
            "accounting": {"inplace_depthwise": int8.policy.inplace_depthwise,
                           "inplace_residual": int8.policy.inplace_residual,
                           "residual_inputs_freed": "after their last consumer runs",
                           "params": "after batch-norm folding; weights only, not activations"},
            "tflm_peak_activation_bytes": None if self.tflm is None else {
                "bytes": self.tflm.peak_bytes, "layer": self.tflm.peak_layer, "explicit_pads": list(self.explicit_pads),
                "accounting": "TF Lite Micro's arena head: every op out of place, explicit pads materialised"},
            "target": self.target.name if self.target else None,
            "fits": [{"resource": f.resource, "what": f.what, "needed_bytes": f.needed_bytes,
                      "available_bytes": f.available_bytes, "fits": f.fits, "accounting": f.accounting}
                     for f in self.fits],
            "layers": layers,
        }


def check_fit(graph: Graph, memory: dict[str, MemoryProfile], target: Device,
              tflm: MemoryProfile | None = None) -> tuple[Fit, ...]:
    """MCU: int8 activations under TFLM's accounting (`tflm`) vs SRAM and int8 weights vs flash; others: fp32
    weights + activations vs RAM."""
    if target.device_class == "mcu":
        assert target.sram is not None and target.flash is not None  # loader guarantees it for MCUs
        assert tflm is not None, "an MCU fit needs the TF Lite Micro memory profile"
        if _weights_are_int8(graph):
            weights = Fit("flash", "int8 weights as stored", graph.total_param_bytes, int(target.flash.value))
        else:
            weights = Fit("flash", "int8 weights (estimate: 1 byte per parameter)", graph.total_params,
                          int(target.flash.value))
        sram = Fit("SRAM", "int8 peak activations under TF Lite Micro's accounting (compile deploys under TFLM)",
                   tflm.peak_bytes, int(target.sram.value), accounting="tflm")
        return (sram, weights)
    return (Fit("RAM", "fp32 weights + peak activations", graph.total_params * 4 + memory["fp32"].peak_bytes,
                target.activation_budget_bytes, accounting="default"),)


def _weights_are_int8(graph: Graph) -> bool:
    return graph.source == "tflite" and any(layer.dtype == "int8" for layer in graph.layers)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding (before, after) of one spatial axis: the output is ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _converter_pads(layer: Layer) -> bool:
    """Whether litert-torch runs this layer's padding as a PAD op + VALID: an average pool with any padding
    (PyTorch counts the pad in the mean, SAME would not), any other window whose padding is not TFLite's SAME."""
    if layer.op not in SPATIAL_OPS or not any(layer.padding):
        return False
    if layer.op == "avgpool2d":
        return True
    height, width = layer.input_shapes[0][2:]
    (top, bottom), (left, right) = (_same_padding(height, layer.kernel[0], layer.stride[0], layer.dilation[0]),
                                    _same_padding(width, layer.kernel[1], layer.stride[1], layer.dilation[1]))
    return layer.padding != (top, left, bottom, right)


def tflite_pads(graph: Graph) -> Graph:
    """The graph as TFLite runs it: a torch model's padding that litert-torch emits as an explicit PAD op is
    marked `explicit_pad` (a .tflite or .onnx graph already records its own PAD ops and is returned as is)."""
    if graph.source != "torch":
        return graph
    layers = tuple(dataclasses.replace(layer, explicit_pad=layer.padding)
                   if not any(layer.explicit_pad) and _converter_pads(layer) else layer for layer in graph.layers)
    return dataclasses.replace(graph, layers=layers)


def analyze(graph: Graph, target: Device | None = None, inplace_depthwise: bool = True,
            inplace_residual: bool = False, materialize_pads: bool = False) -> Analysis:
    """Per-layer memory under int8 and fp32 accounting and, with a target, fit verdicts; for an MCU target
    also the TF Lite Micro accounting, which the SRAM verdict uses."""
    memory = {dtype: activation_memory(graph, MemoryPolicy(dtype, inplace_depthwise, inplace_residual,
                                                           materialize_pads))
              for dtype in ("int8", "fp32")}
    if target is None or target.device_class != "mcu":
        return Analysis(graph, memory, target, check_fit(graph, memory, target) if target else ())
    as_run = tflite_pads(graph)
    tflm = activation_memory(as_run, MemoryPolicy.tflm())
    pads = tuple(layer.name for layer in as_run.layers if any(layer.explicit_pad))
    return Analysis(graph, memory, target, check_fit(graph, memory, target, tflm), tflm, pads)
