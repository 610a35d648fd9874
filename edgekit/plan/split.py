"""Split computing (Neurosurgeon-style): which layers run on the device and which on the edge server.

A cut is the set of tensors crossing from device to server. Cuts are taken along the graph's
execution order, so a residual branch that is still open crosses too (DAG-aware: the payload is
every live tensor, not one layer's output). For each cut: device time for the head + uplink of the
crossing tensors (int8 by default) + server time for the tail + downlink of the result. Cuts whose
message exceeds the link's maximum payload, or whose head does not fit the device's memory, are
invalid. Beside the cuts, the plan can weigh sending the input compressed (JPEG or WebP, all on the server):
each from `cost.codec.CodecFigures` measured beforehand (bytes, encode and decode time, top-1 agreement), and
refused when its top-1 drop exceeds `max_drop_points`. `plan_split` is a pure function: graph + profiles +
figures in, frozen `SplitPlan` out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from edgekit.cost.codec import CodecFigures
from edgekit.cost.model import LATENCY_SOURCES, Cost, invocation_cost, layer_cost, layer_seconds, transfer_cost
from edgekit.errors import SplitError
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES
from edgekit.graph.ir import DTYPE_BYTES, Graph, numel
from edgekit.memory import MemoryPolicy, activation_memory
from edgekit.targets import Device, Link, Quantity

OBJECTIVES = ("latency", "energy")



@dataclass(frozen=True)
class SplitCandidate:
    """One cut: the first `device_layers` layers on the device, the rest on the server."""

    device_layers: int
    last_device_layer: str | None  # None: everything on the server (the raw input is sent)
    tensors: tuple[str, ...]  # crossing device -> server; empty when everything runs on the device
    payload_bytes: int
    device_seconds: float
    transfer_seconds: float
    server_seconds: float
    device_joules: float
    valid: bool
    why_invalid: str = ""
    input_codec: str = ""  # all on the server with the input sent compressed, e.g. "jpeg q75"; "" for a cut
    drop_points: float | None = None  # measured top-1 drop of a compressed input (points); None: not measured

    @property
    def name(self) -> str:
        """The cut's key in decision maps: its last device layer, or the codec of a compressed input."""
        return self.input_codec or self.last_device_layer or "(all on server)"

    @property
    def total_seconds(self) -> float:
        return self.device_seconds + self.transfer_seconds + self.server_seconds


@dataclass(frozen=True)
class SplitVerdict:
    """How the reported cut compares on the objective's figure per frame (seconds, or device joules): to the
    planner's best valid cut and to both baselines. A ratio is the cut's figure over the other's; None where
    the other is invalid or its figure is zero."""

    label: str  # "your cut" (the user named it) or "chosen" (the planner's pick)
    value: float
    best_device_layers: int
    best_value: float
    ratio_to_best: float | None
    ratio_to_all_device: float | None
    ratio_to_all_server: float | None
    figure: str = "seconds end to end"  # what `value` is: the objective's figure per frame
    best_name: str = ""  # the best option's key (SplitCandidate.name): a cut's last layer or a codec
    compared: int = 0  # how many valid options (cuts and compressed inputs) the best was chosen from


@dataclass(frozen=True)
class SplitPlan:
    """All cuts at one uplink bandwidth, the reported one, and which cut wins over a bandwidth range."""

    model: str
    device: str
    server: str
    link: str
    uplink_bps: float
    objective: str
    candidates: tuple[SplitCandidate, ...]
    chosen: SplitCandidate  # the planner's pick, or with `requested` the cut the user named
    decision_map: tuple[tuple[float, float, int], ...]  # (from bit/s, to bit/s, device_layers)
    figures: tuple[str, str] = ("estimate", "estimate")  # device's and server's layer times: cost.LATENCY_SOURCES
    jpeg: SplitCandidate | None = None  # all on the server, sending a JPEG of the input (encode time not modelled)
    requested: bool = False  # `chosen` is the user's cut (`--split LAYER`), not the planner's
    warnings: tuple[str, ...] = ()  # what the plan could not use, e.g. a calibration for another dtype
    compressed: tuple[SplitCandidate, ...] = ()  # all on the server, input sent compressed (measured codecs)
    max_drop_points: float | None = None  # the top-1 drop a compressed input may cost; None without codecs
    choice_map: tuple[tuple[float, float, str], ...] = ()  # with codecs: (from, to, SplitCandidate.name) over all
    codec_frames: str = ""  # with codecs: what their figures were measured on, e.g. "64 held-out frames"

    @property
    def all_device(self) -> SplitCandidate:
        return self.candidates[-1]

    @property
    def all_server(self) -> SplitCandidate:
        return self.candidates[0]

    @property
    def options(self) -> tuple[SplitCandidate, ...]:
        """Everything the planner chooses among: every cut, then every compressed input."""
        return self.candidates + self.compressed

    @property
    def best(self) -> SplitCandidate:
        """The planner's best valid option (cut or compressed input) at this bandwidth, whatever `chosen` is."""
        return min((c for c in self.options if c.valid), key=lambda c: _rank(c, self.objective))

    @property
    def verdict(self) -> SplitVerdict:
        """The chosen option against the best one and both baselines, on the objective's figure."""
        value, best = objective_value(self.chosen, self.objective), self.best

        def ratio(other: SplitCandidate) -> float | None:
            figure = objective_value(other, self.objective)
            return value / figure if other.valid and figure > 0 else None

        figure = "seconds end to end" if self.objective == "latency" else "device joules"
        return SplitVerdict("your cut" if self.requested else "chosen", value, best.device_layers,
                            objective_value(best, self.objective), ratio(best), ratio(self.all_device),
                            ratio(self.all_server), figure, best.name, sum(c.valid for c in self.options))

    def to_dict(self) -> dict:
        """The plan's fields, and its `verdict` (derived: `from_dict` ignores it)."""
        return {**asdict(self), "verdict": asdict(self.verdict)}

    @classmethod
    def from_dict(cls, data: dict) -> SplitPlan:
        data = {k: v for k, v in data.items() if k != "verdict"}

        def candidate(c: dict) -> SplitCandidate:
            return SplitCandidate(**{**c, "tensors": tuple(c["tensors"])})

        return cls(**{**data, "candidates": tuple(map(candidate, data["candidates"])),
                      "chosen": candidate(data["chosen"]),
                      "decision_map": tuple(tuple(r) for r in data["decision_map"]),
                      "figures": tuple(data.get("figures", ("estimate", "estimate"))),
                      "jpeg": candidate(data["jpeg"]) if data.get("jpeg") else None,
                      "warnings": tuple(data.get("warnings", ())),
                      "compressed": tuple(map(candidate, data.get("compressed", ()))),
                      "choice_map": tuple(tuple(r) for r in data.get("choice_map", ()))})


def objective_value(candidate: SplitCandidate, objective: str) -> float:
    """What the objective minimises for one frame: seconds end to end (latency) or the device's joules (energy)."""
    return candidate.total_seconds if objective == "latency" else candidate.device_joules


def _rank(candidate: SplitCandidate, objective: str) -> tuple[float, int]:
    """Lower is better: the objective's figure, then more layers on the device (less to send and serve)."""
    return objective_value(candidate, objective), -candidate.device_layers


def crossing_tensors(graph: Graph, k: int) -> tuple[str, ...]:
    """Tensors written before layer k (or graph inputs) and read at or after it, and model outputs already made
    before it (the tail gives every output): what a cut after k layers sends."""
    produced = {spec.name for spec in graph.inputs} | {layer.output for layer in graph.layers[:k]}
    needed = dict.fromkeys(t for layer in graph.layers[k:] for t in layer.inputs if t in produced)
    needed |= dict.fromkeys(t for t in graph.outputs if t in produced)
    return tuple(needed)


def evaluate_cuts(graph: Graph, device: Device, server: Device, link: Link, dtype: str = "int8",
                  server_dtype: str = "fp32") -> tuple[SplitCandidate, ...]:
    """Every cut along the execution order, from all-on-server (0 device layers) to all-on-device."""
    device_costs = [layer_cost(layer, device, dtype, graph.name) for layer in graph.layers]
    server_costs = [layer_cost(layer, server, server_dtype, graph.name) for layer in graph.layers]
    head_call, tail_call = invocation_cost(device, dtype), invocation_cost(server, server_dtype)
    live = [m.live_bytes for m in activation_memory(graph, MemoryPolicy(dtype)).layers]
    result_bytes = sum(numel(graph.tensor_shape(t)) * DTYPE_BYTES["fp32"] for t in graph.outputs)
    n = len(graph.layers)
    candidates = []
    for k in range(n + 1):
        head = sum(device_costs[:k], head_call if k else Cost(0.0))  # a stage that runs costs one call
        tail = sum(server_costs[k:], tail_call if k < n else Cost(0.0))
        tensors = crossing_tensors(graph, k) if k < n else ()
        payload = sum(numel(graph.tensor_shape(t)) for t in tensors) * DTYPE_BYTES[dtype if k else "uint8"]
        transfer = Cost(0.0)
        if k < n:
            transfer = transfer_cost(payload, link, device)
            transfer = Cost(transfer.seconds + result_bytes * 8 / link.downlink.value, transfer.joules)
        why = _invalid(graph, device, link, k, payload, live, dtype)
        candidates.append(SplitCandidate(k, graph.layers[k - 1].name if k else None, tensors, payload,
                                         head.seconds, transfer.seconds, tail.seconds, head.joules + transfer.joules,
                                         not why, why))
    return tuple(candidates)


def _invalid(graph: Graph, device: Device, link: Link, k: int, payload: int, live: list[int], dtype: str) -> str:
    """Why a cut cannot be used, or '' when it can."""
    n = len(graph.layers)
    if k < n and payload + PROTOCOL_OVERHEAD_BYTES > link.max_payload.value:
        return f"{payload:,} B per frame exceeds {link.name}'s {int(link.max_payload.value):,} B maximum payload"
    if k and max(live[:k]) > device.activation_budget_bytes:
        return f"head activations ({max(live[:k]):,} B) exceed {device.name}'s {device.activation_budget_bytes:,} B"
    if k and device.flash is not None:
        weights = sum(layer.params for layer in graph.layers[:k]) * DTYPE_BYTES[dtype]
        if weights > device.flash.value:
            return f"head weights ({weights:,} B) exceed {device.name}'s {int(device.flash.value):,} B flash"
    return ""


def plan_split(graph: Graph, device: Device, server: Device, link: Link, uplink_bps: float | None = None,
               objective: str = "latency", dtype: str = "int8", server_dtype: str = "fp32",
               jpeg_bytes: int | None = None, codecs: tuple[CodecFigures, ...] = (),
               max_drop_points: float = 1.0) -> SplitPlan:
    """The best valid option at `uplink_bps` (default: the link profile's), and the decision map.

    With `codecs` (`cost.codec.measure_codecs`) the plan also weighs sending the input compressed, all on the
    server, and chooses among cuts and compressed inputs alike; a codec whose top-1 drop exceeds
    `max_drop_points` is shown but refused. `decision_map` stays over cuts (what a split bundle can switch
    between); `choice_map` is over every option. With `jpeg_bytes` (a JPEG size the user knows) the plan reports
    the old unmeasured JPEG baseline beside the choice (its codec time and accuracy unknown, never chosen).
    """
    if objective not in OBJECTIVES:
        raise SplitError(f"objective must be one of {', '.join(OBJECTIVES)}, found {objective!r}")
    if max_drop_points < 0:
        raise SplitError(f"max_drop_points must be >= 0, found {max_drop_points}")
    link = _with_uplink(link, uplink_bps) if uplink_bps else link

    def options(at: Link) -> tuple[tuple[SplitCandidate, ...], tuple[SplitCandidate, ...]]:
        cuts = evaluate_cuts(graph, device, server, at, dtype, server_dtype)
        return cuts, tuple(compressed_input(cuts[0], f, at, device, max_drop_points) for f in codecs)

    candidates, compressed = options(link)
    chosen = _best(candidates, objective, graph, device, link, compressed)
    grid = [10 ** (3 + 6 * i / 120) for i in range(121)]  # 1 kbit/s .. 1 Gbit/s
    cut_winners, winners = [], []
    for bps in grid:
        cuts, inputs = options(_with_uplink(link, bps))
        if any(c.valid for c in cuts):
            cut_winners.append((bps, _best(cuts, objective, graph, device, link).device_layers))
        winners.append((bps, _best(cuts, objective, graph, device, link, inputs).name))
    figures = (_figures(graph, device, dtype), _figures(graph, server, server_dtype))
    jpeg = _jpeg_baseline(candidates[0], jpeg_bytes, link, device) if jpeg_bytes is not None else None
    unused = (_unused_calibration(device, "device", dtype), _unused_calibration(server, "server", server_dtype))
    return SplitPlan(graph.name, device.name, server.name, link.name, link.uplink.value, objective, candidates,
                     chosen, _ranges(cut_winners), figures, jpeg, warnings=tuple(w for w in unused if w),
                     compressed=compressed, max_drop_points=max_drop_points if codecs else None,
                     choice_map=_ranges(winners) if codecs else (),
                     codec_frames=f"{codecs[0].frames} {codecs[0].data} frames" if codecs else "")


def _ranges(winners: list[tuple[float, Any]]) -> tuple[tuple[float, float, Any], ...]:
    """(bandwidth, winner) points merged into (from, to, winner) ranges."""
    ranges: list[tuple[float, float, Any]] = []
    for bps, winner in winners:
        if ranges and ranges[-1][2] == winner:
            ranges[-1] = (ranges[-1][0], bps, winner)
        else:
            ranges.append((bps, bps, winner))
    return tuple(ranges)


def compressed_input(all_server: SplitCandidate, figures: CodecFigures, link: Link, device: Device,
                     max_drop_points: float) -> SplitCandidate:
    """The all-on-server candidate with the input encoded on the device, sent as `figures` measured, decoded on
    the server; invalid when its frames exceed the link's payload or its top-1 drop exceeds the limit."""
    raw, sent = transfer_cost(all_server.payload_bytes, link, device), transfer_cost(figures.payload_bytes, link,
                                                                                    device)
    power = device.power_active.value if device.power_active else 0.0
    why = ""
    if figures.max_payload_bytes + PROTOCOL_OVERHEAD_BYTES > link.max_payload.value:
        why = f"{figures.max_payload_bytes:,} B frames exceed {link.name}'s maximum payload"
    elif figures.drop_points > max_drop_points:
        why = (f"top-1 drops {figures.drop_points:.2f} points on {figures.frames} {figures.data} frames, "
               f"over the {max_drop_points:g}-point limit")
    return replace(all_server, payload_bytes=figures.payload_bytes, device_seconds=figures.encode_seconds,
                   transfer_seconds=all_server.transfer_seconds - raw.seconds + sent.seconds,
                   server_seconds=all_server.server_seconds + figures.decode_seconds,
                   device_joules=all_server.device_joules - raw.joules + sent.joules + figures.encode_seconds * power,
                   valid=not why, why_invalid=why, input_codec=figures.label, drop_points=figures.drop_points)


def _unused_calibration(profile: Device, side: str, dtype: str) -> str:
    """Why `profile`'s calibration was not used ('' when it was, or there is none): it is for another dtype."""
    calibration = profile.calibration
    if calibration is None or calibration.dtype == dtype:
        return ""
    stage, use = ("head", f"`edgekit plan split --dtype {calibration.dtype}`") if side == "device" else \
        ("tail", f"plan_split(server_dtype={calibration.dtype!r})")
    return (f"{side} profile '{profile.name}' ({profile.path}) is calibrated for {calibration.dtype}, but the {stage} "
            f"runs {dtype}: the plan used the profile's {dtype} estimates instead; {use} plans with the calibration")


def _jpeg_baseline(all_server: SplitCandidate, jpeg_bytes: int, link: Link, device: Device) -> SplitCandidate:
    """The all-on-server candidate with the raw input's message swapped for a `jpeg_bytes` one."""
    if jpeg_bytes < 1:
        raise SplitError(f"jpeg_bytes must be a positive size, found {jpeg_bytes}")
    raw, sent = transfer_cost(all_server.payload_bytes, link, device), transfer_cost(jpeg_bytes, link, device)
    why = f"{jpeg_bytes:,} B exceeds {link.name}'s maximum payload" \
        if jpeg_bytes + PROTOCOL_OVERHEAD_BYTES > link.max_payload.value else ""
    return replace(all_server, payload_bytes=jpeg_bytes,
                   transfer_seconds=all_server.transfer_seconds - raw.seconds + sent.seconds,
                   device_joules=all_server.device_joules - raw.joules + sent.joules, valid=not why, why_invalid=why)


def _figures(graph: Graph, device: Device, dtype: str) -> str:
    """Which figures a side's layer times come from: one of cost.LATENCY_SOURCES, or a '+'-joined mix."""
    used = {layer_seconds(layer, device, dtype, graph.name)[1] for layer in graph.layers}
    return "+".join(source for source in LATENCY_SOURCES if source in used)


def _best(candidates: tuple[SplitCandidate, ...], objective: str, graph: Graph, device: Device,
          link: Link, compressed: tuple[SplitCandidate, ...] = ()) -> SplitCandidate:
    valid = [c for c in candidates + compressed if c.valid]
    if not valid:
        sent = min(candidates[:-1], key=lambda c: c.payload_bytes)
        where = f"after '{sent.last_device_layer}'" if sent.last_device_layer else "the raw input"
        raise SplitError(f"{graph.name}: no cut works for {device.name} over {link.name}: the smallest message "
                         f"({sent.payload_bytes:,} B, {where}) is refused: {sent.why_invalid}; all on the device: "
                         f"{candidates[-1].why_invalid}. What would work: a link that carries "
                         f"{sent.payload_bytes + PROTOCOL_OVERHEAD_BYTES:,} B messages, or a head that fits the device "
                         "(see `edgekit plan patch`)")
    return min(valid, key=lambda c: _rank(c, objective))


def deployable_cut(plan: SplitPlan) -> SplitCandidate:
    """The best valid cut that at most one tensor crosses: what a two-stage bundle can run (one input per stage)."""
    usable = [c for c in plan.candidates if c.valid and len(c.tensors) <= 1]
    if not usable:
        raise SplitError(f"{plan.model}: every valid cut for {plan.device} over {plan.link} is crossed by several "
                         "tensors; a split bundle needs a cut crossed by one (between blocks)")
    return min(usable, key=lambda c: _rank(c, plan.objective))


def choose_cut(plan: SplitPlan, split: str) -> SplitCandidate:
    """The cut to deploy: the planner's best single-tensor cut (`auto`) or the one after layer `split`.

    All-device and all-server are refused with the plain compile that fits them: a split bundle has
    one stage on each side.
    """
    cut = deployable_cut(plan) if split == "auto" else check_cut(plan, split)
    layers = len(plan.candidates) - 1
    baseline = f"{'all on the device' if cut.device_layers else 'all on the server'} " \
               f"({1000 * cut.total_seconds:.1f} ms)"
    if cut.device_layers in (0, layers):
        chosen = "the planner's best is" if split == "auto" else f"cutting after '{split}' means"
        target = plan.device if cut.device_layers else plan.server
        raise SplitError(f"{plan.model}: {chosen} {baseline}, so there is nothing to split; compile a single-stage "
                         f"bundle with `edgekit compile {plan.model} --target {target} --int8 ...`, or pass "
                         "--split LAYER to force a cut")
    return cut


def _with_uplink(link: Link, bps: float) -> Link:
    return replace(link, uplink=Quantity(bps, _format_bps(bps), estimate="what-if bandwidth"))


def _format_bps(bps: float) -> str:
    exponent = min(int(math.log10(max(bps, 1.0)) // 3), 3)
    unit = ("bit/s", "kbit/s", "Mbit/s", "Gbit/s")[exponent]
    return f"{bps / 10 ** (3 * exponent):.3g} {unit}"


def check_cut(plan: SplitPlan, last_device_layer: str) -> SplitCandidate:
    """The candidate that ends the head at `last_device_layer`, or a SplitError saying why it cannot."""
    for candidate in plan.candidates:
        if candidate.last_device_layer == last_device_layer:
            if not candidate.valid:
                raise SplitError(f"cutting after '{last_device_layer}' is not possible: {candidate.why_invalid}; "
                                 f"the planner's choice is after '{plan.best.last_device_layer}'")
            return candidate
    raise SplitError(f"{plan.model} has no layer '{last_device_layer}'")


def request_cut(plan: SplitPlan, last_device_layer: str) -> SplitPlan:
    """The plan reporting the user's cut after `last_device_layer` (checked by `check_cut`) as `chosen`."""
    return replace(plan, chosen=check_cut(plan, last_device_layer), requested=True)
