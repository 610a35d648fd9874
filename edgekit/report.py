"""Human-readable tables for the CLI: plain text, fixed-width columns, no extra dependency."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgekit.analysis import Analysis
from edgekit.targets import Device, Link
from edgekit.units import format_bytes, format_count

if TYPE_CHECKING:
    from edgekit.memory import MemoryPolicy
    from edgekit.plan.patch import PatchPlan
    from edgekit.plan.split import SplitCandidate, SplitPlan


def _policy_text(policy: MemoryPolicy) -> str:
    """The accounting switches of a memory policy, as a report line states them."""
    def on(flag: bool) -> str:
        return "on" if flag else "off"

    return (f"depthwise in place {on(policy.inplace_depthwise)}; residual add in place {on(policy.inplace_residual)}; "
            f"explicit pads materialised {on(policy.materialize_pads)}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns sized to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape[1:]) or "1"


def render_analysis(analysis: Analysis) -> str:
    """Per-layer table, totals, memory peaks with the accounting used, and fit verdicts."""
    graph, int8, fp32 = analysis.graph, analysis.memory["int8"], analysis.memory["fp32"]
    rows = []
    for i, (layer, m8) in enumerate(zip(graph.layers, int8.layers)):
        op = layer.op + (f"+{layer.activation}" if layer.activation else "")
        geometry = f"{layer.kernel[0]}x{layer.kernel[1]}/{layer.stride[0]}" if layer.op.endswith(("conv2d", "pool2d")) else ""
        rows.append((i, layer.name, op, _shape(layer.output_shape), geometry, format_count(layer.macs),
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
        f"accounting: {_policy_text(int8.policy)}; a residual input is freed after its last consumer; "
        "reshape aliases; params after batch-norm folding",
    ]
    if analysis.target is not None:
        lines.append(f"target {analysis.target.name} ({analysis.target.device_class}):")
        lines += [f"  {fit.describe()}" for fit in analysis.fits]
    return "\n".join(lines)


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


def render_patch_plan(plan: PatchPlan) -> str:
    """The chosen schedule, its peak against layer by layer, and the Pareto frontier."""
    lines = [f"{plan.model}: layer-by-layer peak {plan.layer_by_layer_peak_bytes:,} B "
             f"({format_bytes(plan.layer_by_layer_peak_bytes)})"
             + (f"; budget {plan.budget_bytes:,} B ({format_bytes(plan.budget_bytes)})" if plan.budget_bytes else ""),
             f"accounting: int8; {_policy_text(plan.policy)}; input "
             f"{'resident in SRAM' if plan.input_resident else 'streamed per patch'}"]
    c = plan.chosen
    if c is not None:
        lines.append(f"chosen: patch stage = layers 0..'{c.stage_end}' ({len(plan.stage_layers)} layers), "
                     f"{c.grid}x{c.grid} patches; peak {c.peak_bytes:,} B ({format_bytes(c.peak_bytes)}), "
                     f"{plan.layer_by_layer_peak_bytes / c.peak_bytes:.1f}x lower; extra MACs {c.extra_macs:,} "
                     f"({c.extra_macs_ratio(plan.total_macs):.1%}; "
                     f"{c.stage_model_extra_macs / max(plan.total_macs, 1):.1%} as the INT8 artifacts run it: "
                     "one stage model, whole windows at the border)")
        lines.append(f"  patch stage {c.patch_stage_bytes:,} B (worst patch + {c.stage_output_bytes:,} B stage "
                     f"buffer), rest {c.rest_bytes:,} B")
    lines.append(("why: " if plan.feasible else "") + plan.reason)
    rows = [(x.stage_end, f"{x.grid}x{x.grid}", f"{x.peak_bytes:,}", f"{x.patch_stage_bytes:,}", f"{x.rest_bytes:,}",
             f"{x.extra_macs_ratio(plan.total_macs):.1%}", "<- chosen" if x == c else "") for x in plan.pareto]
    lines += ["", "Pareto frontier (peak bytes vs extra MACs):",
              table(("stage end", "grid", "peak B", "patch stage B", "rest B", "extra MACs", ""), rows)]
    return "\n".join(lines)


def _bps(bps: float) -> str:
    for unit, factor in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= factor:
            return f"{bps / factor:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def _split_row(label: str, c: SplitCandidate) -> tuple:
    return (label, c.last_device_layer or "(raw input)", c.device_layers, f"{c.payload_bytes:,}",
            f"{1000 * c.device_seconds:.2f}", f"{1000 * c.transfer_seconds:.2f}", f"{1000 * c.server_seconds:.2f}",
            f"{1000 * c.total_seconds:.2f}", f"{1000 * c.device_joules:.1f}" if c.device_joules else "-",
            "" if c.valid else c.why_invalid)


def render_split_plan(plan: SplitPlan) -> str:
    """The chosen cut beside the all-device and all-server baselines, and the bandwidth decision map."""
    headers = ("", "head ends at", "device layers", "payload B", "device ms", "link ms", "server ms", "total ms",
               "device mJ", "invalid because")
    rows = [_split_row("chosen", plan.chosen), _split_row("all device", plan.all_device),
            _split_row("all server", plan.all_server)]
    if plan.jpeg is not None:  # SC2's baseline: not chosen, since its codec time and accuracy loss are unmodelled
        rows.append(_split_row("all server, JPEG*", plan.jpeg)[:1] + ("(JPEG of the input)",)
                    + _split_row("", plan.jpeg)[2:])
    names = {c.device_layers: c.last_device_layer or "(all on server)" for c in plan.candidates}
    ranges = [(f"{_bps(lo)} .. {_bps(hi)}", names[k], k) for lo, hi, k in plan.decision_map]
    return "\n".join([
        f"{plan.model}: {plan.device} -> {plan.link} ({_bps(plan.uplink_bps)} up) -> {plan.server}; "
        f"objective {plan.objective}; layer times: device {plan.figures[0]}, server {plan.figures[1]} "
        "(measured/fitted: edgekit calibrate; estimate: the profile's throughput figures)",
        "", table(headers, rows), *([] if plan.jpeg is None else [
            "* JPEG: encoding and decoding time and the lossy codec's accuracy cost are not modelled"]), "",
        "decision map (which cut wins as the uplink changes):",
        table(("uplink", "head ends at", "device layers"), ranges),
    ])
