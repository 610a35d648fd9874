"""A model analysis and the target profiles as text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgekit.analysis import Analysis
from edgekit.graph.ir import unknown_ops_text
from edgekit.graph.ops import Kind, op_info
from edgekit.report.table import table
from edgekit.targets import Device, Link
from edgekit.units import format_bytes, format_count

if TYPE_CHECKING:
    from edgekit.memory import MemoryPolicy


def policy_text(policy: MemoryPolicy) -> str:
    """The accounting switches of a memory policy, as a report line states them."""
    def on(flag: bool) -> str:
        return "on" if flag else "off"

    return (f"depthwise in place {on(policy.inplace_depthwise)}; residual add in place {on(policy.inplace_residual)}; "
            f"explicit pads materialised {on(policy.materialize_pads)}")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape[1:]) or "1"


def render_analysis(analysis: Analysis) -> str:
    """Per-layer table, totals, memory peaks with the accounting used, and fit verdicts."""
    graph, int8, fp32 = analysis.graph, analysis.memory["int8"], analysis.memory["fp32"]
    rows = []
    for i, (layer, m8) in enumerate(zip(graph.layers, int8.layers)):
        op = layer.op + (f"+{layer.activation}" if layer.activation else "")
        spatial = op_info(layer.op).kind is Kind.SPATIAL
        geometry = f"{layer.kernel[0]}x{layer.kernel[1]}/{layer.stride[0]}" if spatial else ""
        if not layer.macs_known:
            op = layer.source_op  # the op as the model names it: edgekit does not know it
        macs = format_count(layer.macs) if layer.macs_known else "?"
        rows.append((i, layer.name, op, _shape(layer.output_shape), geometry, macs,
                     format_count(layer.params), format_bytes(m8.output_bytes), format_bytes(m8.live_bytes),
                     f"{layer.rf[0]}x{layer.rf[1]}"))
    headers = ("#", "layer", "op", "output (CxHxW)", "k/s", "MACs", "params", "out int8", "live int8", "RF")
    inputs = ", ".join(f"{s.name} {'x'.join(map(str, s.shape))} {s.dtype}" for s in graph.inputs)
    lines = [
        f"{graph.name} ({graph.source}, {graph.layout}); input {inputs}",
        "",
        table(headers, rows),
        "",
        f"layers {len(graph.layers)}   MACs {format_count(graph.total_macs)} ({graph.total_macs:,})   "
        f"params {format_count(graph.total_params)} ({graph.total_params:,}; {format_bytes(graph.total_param_bytes)})",
        f"peak activations, layer by layer: int8 {int8.peak_bytes:,} B ({format_bytes(int8.peak_bytes)}) at "
        f"{int8.peak_layer}; fp32 {fp32.peak_bytes:,} B ({format_bytes(fp32.peak_bytes)})",
        f"accounting: {policy_text(int8.policy)}; a residual input is freed after its last consumer; "
        "reshape aliases; params after batch-norm folding",
    ]
    unknown = unknown_ops_text(graph.layers)
    if unknown:
        lines.append(f"ops edgekit does not know: {unknown}; MACs exclude them (memory counts them from their shapes)")
    if analysis.tflm is not None:
        lines.append(_tflm_line(analysis))
    if analysis.target is not None:
        lines.append(f"target {analysis.target.name} ({analysis.target.device_class}):")
        lines += [f"  {fit.describe()}" for fit in analysis.fits]
    if analysis.tflm is not None:
        lines.append("  SRAM verdict: activations only; compile measures TFLM's whole arena (it adds a persistent "
                     "tail for tensor metadata) and reserves a margin of max(1 KiB, 10%) on top")
    return "\n".join(lines)


def _tflm_line(analysis: Analysis) -> str:
    """The int8 peak under TF Lite Micro's accounting, beside the default one, with the pads it materialises."""
    tflm, pads = analysis.tflm, len(analysis.explicit_pads)
    assert tflm is not None
    where = ("where litert-torch emits a PAD op: padding that is not TFLite's SAME"
             if analysis.graph.source == "torch" else f"the PAD ops of the {analysis.graph.source} file")
    return (f"peak activations under TF Lite Micro's accounting (every op out of place; {pads} explicit "
            f"pad{'' if pads == 1 else 's'} materialised, {where}): int8 {tflm.peak_bytes:,} B "
            f"({format_bytes(tflm.peak_bytes)}) at {tflm.peak_layer}, "
            f"{tflm.peak_bytes / max(analysis.memory['int8'].peak_bytes, 1):.2f}x the layer-by-layer int8 figure")


def render_targets(devices: Sequence[Device], links: Sequence[Link]) -> str:
    """The built-in profiles: devices with memory and throughput, then links."""
    device_rows = [(d.name, d.device_class, d.cpu, _memory(d), d.throughput["int8"].text, ", ".join(d.runtimes))
                   for d in devices]
    link_rows = [(k.name, k.uplink.text, k.downlink.text, k.rtt.text, format_bytes(k.max_payload.value))
                 for k in links]
    return "\n\n".join([
        table(("device", "class", "cpu", "memory", "int8 MAC/s", "runtimes"), device_rows),
        table(("link", "uplink", "downlink", "rtt", "max payload"), link_rows),
    ])


def _memory(device: Device) -> str:
    if device.device_class == "mcu":
        return f"{device.sram.text} SRAM, {device.flash.text} flash"  # type: ignore[union-attr]
    return f"{device.ram.text} RAM"  # type: ignore[union-attr]


def render_profile(profile: Device | Link) -> str:
    """Every field of one profile with its value and provenance."""
    rows = []
    for key, value in vars(profile).items():
        if hasattr(value, "provenance"):
            rows.append((key, value.text, value.provenance))
        elif isinstance(value, dict):
            rows += [(f"{key}.{k}", v.text, v.provenance) for k, v in value.items()]
        elif value not in (None, (), ""):
            rows.append((key, ", ".join(value) if isinstance(value, tuple) else value, ""))
    return table(("field", "value", "source"), rows)

