"""Analysis of a graph for a target: totals, layer-by-layer activation memory, and whether it fits."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.graph.ir import Graph
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
    """What `edgekit analyze` reports: the graph, memory under int8 and fp32, and fit verdicts."""

    graph: Graph
    memory: dict[str, MemoryProfile]  # "int8" / "fp32"
    target: Device | None
    fits: tuple[Fit, ...]

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
            "target": self.target.name if self.target else None,
            "fits": [{"resource": f.resource, "what": f.what, "needed_bytes": f.needed_bytes,
                      "available_bytes": f.available_bytes, "fits": f.fits} for f in self.fits],
            "layers": layers,
        }


def check_fit(graph: Graph, memory: dict[str, MemoryProfile], target: Device) -> tuple[Fit, ...]:
    """MCU: int8 activations vs SRAM and int8 weights vs flash; others: fp32 weights + activations vs RAM."""
    if target.device_class == "mcu":
        assert target.sram is not None and target.flash is not None  # loader guarantees it for MCUs
        if _weights_are_int8(graph):
            weights = Fit("flash", "int8 weights as stored", graph.total_param_bytes, int(target.flash.value))
        else:
            weights = Fit("flash", "int8 weights (estimate: 1 byte per parameter)", graph.total_params,
                          int(target.flash.value))
        return (Fit("SRAM", "int8 peak activations", memory["int8"].peak_bytes, int(target.sram.value)), weights)
    return (Fit("RAM", "fp32 weights + peak activations", graph.total_params * 4 + memory["fp32"].peak_bytes,
                target.activation_budget_bytes),)


def _weights_are_int8(graph: Graph) -> bool:
    return graph.source == "tflite" and any(layer.dtype == "int8" for layer in graph.layers)


def analyze(graph: Graph, target: Device | None = None, inplace_depthwise: bool = True,
            inplace_residual: bool = False, materialize_pads: bool = False) -> Analysis:
    """Per-layer memory under int8 and fp32 accounting and, with a target, fit verdicts."""
    memory = {dtype: activation_memory(graph, MemoryPolicy(dtype, inplace_depthwise, inplace_residual,
                                                           materialize_pads))
              for dtype in ("int8", "fp32")}
    fits = check_fit(graph, memory, target) if target else ()
    return Analysis(graph, memory, target, fits)
