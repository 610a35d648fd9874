"""The patch and split plans as text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.plan.split import objective_value
from edgekit.report.analysis import policy_text
from edgekit.report.table import table
from edgekit.units import format_bytes

if TYPE_CHECKING:
    from edgekit.plan.patch import PatchPlan
    from edgekit.plan.split import SplitCandidate, SplitPlan


def render_patch_plan(plan: PatchPlan) -> str:
    """The chosen schedule, its peak against layer by layer, and the Pareto frontier."""
    lines = [f"{plan.model}: layer-by-layer peak {plan.layer_by_layer_peak_bytes:,} B "
             f"({format_bytes(plan.layer_by_layer_peak_bytes)})"
             + (f"; budget {plan.budget_bytes:,} B ({format_bytes(plan.budget_bytes)})" if plan.budget_bytes else ""),
             f"accounting: int8; {policy_text(plan.policy)}; input "
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
    if plan.already_fits and not plan.force_patch and plan.pareto:
        lines.append("the frontier below is what patching would cost; --force-patch picks from it")
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


def _head(c: SplitCandidate) -> str:
    """What the device runs: up to a layer, nothing (the raw input is sent), or an image encoder."""
    return f"({c.input_codec} encoder)" if c.input_codec else c.last_device_layer or "(raw input)"


def _drop(c: SplitCandidate) -> str:
    return "-" if c.drop_points is None else f"{c.drop_points:.2f}"


def _split_row(label: str, c: SplitCandidate) -> tuple:
    return (label, _head(c), c.device_layers, f"{c.payload_bytes:,}",
            f"{1000 * c.device_seconds:.2f}", f"{1000 * c.transfer_seconds:.2f}", f"{1000 * c.server_seconds:.2f}",
            f"{1000 * c.total_seconds:.2f}", f"{1000 * c.device_joules:.1f}" if c.device_joules else "-", _drop(c),
            "" if c.valid else c.why_invalid)


def _cut_name(plan: SplitPlan, c: SplitCandidate) -> str:
    if c.input_codec:
        return f"all server, input as {c.input_codec}"
    if c.device_layers == len(plan.candidates) - 1:
        return "all device"
    return f"cut after '{c.last_device_layer}'" if c.device_layers else "all server"


def _per_frame(plan: SplitPlan, c: SplitCandidate) -> str:
    """The cut's figure for the plan's objective: ms end to end, or the device's mJ."""
    milli = 1000 * objective_value(c, plan.objective)
    number = f"{milli:.2f}" if milli >= 1 else f"{milli:.3g}"  # two decimals as in the table; under 1, 3 digits
    return f"{number} {'ms' if plan.objective == 'latency' else 'mJ'}"


def _versus(plan: SplitPlan, name: str, other: SplitCandidate, ratio: float | None, which: str = "") -> str:
    """'0.638x all device (56.34 ms)': the chosen cut's figure over another's; an invalid one is not possible."""
    if not other.valid:
        return f"{name} not possible"
    return f"{'' if ratio is None else f'{ratio:.3g}x '}{name} ({which}{_per_frame(plan, other)})"


def split_verdict(plan: SplitPlan) -> str:
    """One line: the user's cut against the planner's best, or the planner's pick against both baselines."""
    v, c, best = plan.verdict, plan.chosen, plan.best
    best_text = _versus(plan, "the best plan", best, v.ratio_to_best, f"{_cut_name(plan, best)}, ")
    if plan.requested:
        head = f"your cut after '{c.last_device_layer}'" + (" (all device)" if c == plan.all_device else "")
        parts = ["the planner's best too" if best == c else best_text]
    else:
        head = f"chosen: {_cut_name(plan, c)}"
        parts = [_versus(plan, name, other, ratio) for name, other, ratio in
                 (("all device", plan.all_device, v.ratio_to_all_device),
                  ("all server", plan.all_server, v.ratio_to_all_server)) if other != c]
        parts += [] if best == c else [best_text]
    line = f"{head}: {_per_frame(plan, c)} per frame, {', '.join(parts)} at {_bps(plan.uplink_bps)}"
    if plan.compressed:
        line += (f"; compared on {v.figure} per frame among {v.compared} valid options (cuts and compressed inputs "
                 f"within the {plan.max_drop_points:g}-point top-1 drop limit)")
    return line


def render_split_plan(plan: SplitPlan) -> str:
    """The chosen cut beside the all-device and all-server baselines, and the bandwidth decision map."""
    headers = ("", "head ends at", "device layers", "payload B", "device ms", "link ms", "server ms", "total ms",
               "device mJ", "top-1 drop", "invalid because")
    rows = [_split_row(plan.verdict.label, plan.chosen), _split_row("all device", plan.all_device),
            _split_row("all server", plan.all_server)]
    if plan.best not in (plan.chosen, plan.all_device, plan.all_server):
        rows.insert(1, _split_row("best plan", plan.best))
    rows += [_split_row("compressed input", c) for c in plan.compressed if c != plan.chosen]
    if plan.jpeg is not None:  # SC2's baseline: not chosen, since its codec time and accuracy loss are unmodelled
        rows.append(_split_row("all server, JPEG*", plan.jpeg)[:1] + ("(JPEG of the input)",)
                    + _split_row("", plan.jpeg)[2:])
    names = {c.device_layers: c.name for c in plan.candidates}
    ranges = [(f"{_bps(lo)} .. {_bps(hi)}", names[k], k) for lo, hi, k in plan.decision_map]
    layers = {c.name: c.device_layers for c in plan.options}
    if plan.choice_map:  # every option, compressed inputs included
        ranges = [(f"{_bps(lo)} .. {_bps(hi)}", name, layers[name]) for lo, hi, name in plan.choice_map]
    return "\n".join([
        f"{plan.model}: {plan.device} -> {plan.link} ({_bps(plan.uplink_bps)} up) -> {plan.server}; "
        f"objective {plan.objective}; layer times: device {plan.figures[0]}, server {plan.figures[1]} "
        "(measured/fitted: edgekit calibrate; estimate: the profile's throughput figures)",
        *(f"warning: {w}" for w in plan.warnings),
        "", table(headers, rows), *([] if plan.jpeg is None else [
            "* JPEG: encoding and decoding time and the lossy codec's accuracy cost are not modelled"]),
        *([] if not plan.compressed else [
            "compressed inputs: bytes and top-1 drop (against the float model on the original frames) measured on "
            f"{plan.codec_frames}; encode/decode times measured "
            "on this host with Pillow, scaled by per-core fp32 MAC/s (cost.codec)"]),
        split_verdict(plan), "",
        "decision map (which cut wins as the uplink changes):",
        table(("uplink", "head ends at", "device layers"), ranges),
    ])
