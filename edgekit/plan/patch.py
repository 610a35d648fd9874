"""Patch-based inference planning (MCUNetV2): run the memory-heavy first stage patch by patch.

The stage's output is split into an n x n grid of non-overlapping tiles. Each tile is computed
through the whole stage from its own input window (its receptive field: overlapping "halos"), and
written into one buffer that holds the full stage output; the rest of the network then runs layer
by layer. Memory accounting (int8 bytes, the MCUNetV2 convention, see `edgekit.memory`):

- patch stage: the largest per-patch working set (every live tensor cut to the region that patch
  needs, depthwise in place) + the full stage-output buffer. The input image is streamed patch by
  patch (camera or flash: the window's pixels inside the image; border padding is not stored)
  unless `input_resident`, when the whole image is counted instead;
- rest: the layer-by-layer peak of the layers after the stage;
- extra MACs: what overlapping halos recompute, relative to the whole model.

`plan_patches` is a pure function: graph + budget in, frozen `PatchPlan` out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from edgekit.errors import PlanError
from edgekit.graph.ir import Graph, Layer
from edgekit.graph.ops import SPATIAL_OPS, Kind, op_info
from edgekit.memory import MemoryPolicy, activation_memory, live_bytes

Region = tuple[int, int, int, int]  # rows [top, bottom), cols [left, right), in a tensor's own H,W
DEFAULT_MAX_EXTRA_MACS = 0.20
GRIDS = (2, 3, 4, 5, 6, 7, 8)



@dataclass(frozen=True)
class PatchCandidate:
    """One (stage end, grid) choice and what it costs."""

    stage_end: str
    grid: int
    peak_bytes: int
    patch_stage_bytes: int
    rest_bytes: int
    stage_output_bytes: int
    extra_macs: int  # each patch computing its own clipped regions (the paper's figure, the float executor's)
    stage_model_extra_macs: int = 0  # one stage model for all patches (the INT8 artifacts): whole windows

    def extra_macs_ratio(self, total_macs: int) -> float:
        return self.extra_macs / total_macs if total_macs else 0.0


@dataclass(frozen=True)
class PatchPlan:
    """The chosen schedule, why, and the alternatives (serialisable: `to_dict` / `from_dict`)."""

    model: str
    policy: MemoryPolicy
    budget_bytes: int | None
    max_extra_macs: float
    input_resident: bool
    layer_by_layer_peak_bytes: int
    total_macs: int
    chosen: PatchCandidate | None
    stage_layers: tuple[str, ...]
    tiles: tuple[Region, ...]  # stage-output tile of each patch, row-major
    input_windows: tuple[Region, ...]  # each patch's window on the model input (may reach past the border)
    pareto: tuple[PatchCandidate, ...]
    reason: str
    already_fits: bool = False  # the layer-by-layer peak is within the budget
    force_patch: bool = False  # patch anyway when it already fits (without it such a plan chooses no schedule)

    @property
    def feasible(self) -> bool:
        return self.chosen is not None and (self.budget_bytes is None or self.chosen.peak_bytes <= self.budget_bytes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PatchPlan:
        candidate = lambda d: PatchCandidate(**d) if d is not None else None  # noqa: E731
        return cls(**{**data, "policy": MemoryPolicy(**data["policy"]), "chosen": candidate(data["chosen"]),
                      "stage_layers": tuple(data["stage_layers"]),
                      "tiles": tuple(tuple(t) for t in data["tiles"]),
                      "input_windows": tuple(tuple(w) for w in data["input_windows"]),
                      "pareto": tuple(candidate(c) for c in data["pareto"])})


def split_tiles(height: int, width: int, grid: int) -> tuple[Region, ...]:
    """n x n non-overlapping tiles covering H x W (row-major); sizes differ by at most one."""
    rows = [height * i // grid for i in range(grid + 1)]
    cols = [width * i // grid for i in range(grid + 1)]
    return tuple((rows[i], cols[j], rows[i + 1], cols[j + 1]) for i in range(grid) for j in range(grid))


def input_region(layer: Layer, out: Region) -> Region:
    """Rows/cols of the layer's input needed for output region `out` (before clipping: may pass borders)."""
    if layer.op not in SPATIAL_OPS:
        return out
    return window_region(out, layer.kernel, layer.stride, layer.dilation, layer.padding[:2])


def window_region(out: Region, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                  pad_top_left: tuple[int, int]) -> Region:
    """Input rows/cols a sliding-window op (conv, pool, pad) reads for output region `out`, before clipping."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    pad_top, pad_left = pad_top_left
    top, left, bottom, right = out
    return (top * sh - pad_top, left * sw - pad_left,
            (bottom - 1) * sh - pad_top + dh * (kh - 1) + 1, (right - 1) * sw - pad_left + dw * (kw - 1) + 1)


def clip_region(region: Region, shape: tuple[int, ...]) -> Region:
    """The part of `region` inside a tensor of `shape` (what padding does not cover)."""
    height, width = shape[-2], shape[-1]
    return (max(region[0], 0), max(region[1], 0), min(region[2], height), min(region[3], width))


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _area(region: Region) -> int:
    return max(region[2] - region[0], 0) * max(region[3] - region[1], 0)


def patch_regions(graph: Graph, stage: list[Layer], tile: Region,
                  clip: bool = True) -> tuple[dict[str, Region], Region]:
    """Region of every stage tensor one patch computes (clipped to each tensor unless `clip` is False, as
    one stage model for all patches computes them), and its raw window on the model input."""
    needed: dict[str, Region] = {stage[-1].output: tile}
    raw_input: Region | None = None
    for layer in reversed(stage):
        out = needed.get(layer.output)
        if out is None:
            continue
        want = input_region(layer, out)
        for tensor in layer.inputs:
            if graph.producer_index(tensor) is None:
                raw_input = _union(raw_input, want)
            held = clip_region(want, graph.tensor_shape(tensor)) if clip else want
            needed[tensor] = _union(needed.get(tensor), held)
    assert raw_input is not None  # a valid stage starts at the graph input
    return needed, raw_input


def stage_blocker(layer: Layer) -> str:
    """Why `layer` cannot sit in a patch stage ('' when it can): not a spatial or per-pixel op of the op table,
    not 4-D, or reading a tensor of another H x W (broadcasting, concatenation along H or W)."""
    info = op_info(layer.op)
    layout_only = info.kind is Kind.LAYOUT and layer.input_shapes[0] == layer.output_shape  # NCHW<->NHWC
    if info.kind is Kind.UNKNOWN:
        return f"'{layer.name}' is {layer.source_op}, an op edgekit does not know"
    if not (info.patchable or layout_only):
        return f"'{layer.name}' is {layer.op} ({info.kind.value}), which cannot be computed patch by patch"
    if len(layer.output_shape) != 4:
        return f"'{layer.name}' has a {len(layer.output_shape)}-D output"
    if info.kind is not Kind.SPATIAL and any(len(s) != 4 or s[-2:] != layer.output_shape[-2:]
                                             for s in layer.input_shapes):
        return f"'{layer.name}' ({layer.op}) reads a tensor of another height x width than it writes"
    return ""


def stage_ends(graph: Graph) -> list[int]:
    """Indices of layers that can end a patch stage: patchable ops from the input, one tensor crossing."""
    ends = []
    for index, layer in enumerate(graph.layers):
        if stage_blocker(layer):
            break
        produced = {l.output for l in graph.layers[: index + 1]}
        crossing = {t for l in graph.layers[index + 1:] for t in l.inputs if t in produced}
        if crossing <= {layer.output} and layer.output not in graph.outputs:
            ends.append(index)
    return ends


def _patch_live(graph: Graph, stage: list[Layer], regions: dict[str, Region], window: Region,
                input_resident: bool, policy: MemoryPolicy) -> list[int]:
    """Live int8 bytes at each stage layer while one patch runs (its output tile goes to the stage buffer). A
    resident image stays live through the whole stage: every later patch reads it again. Residual adds are not
    fused inside a patch (a patch's skip region is larger than its sum's), only after the stage."""
    inputs = [spec.name for spec in graph.inputs]
    policy = replace(policy, inplace_residual=False)

    def size_of(tensor: str) -> int:
        shape = graph.tensor_shape(tensor)
        if tensor == stage[-1].output:
            return 0
        if tensor in inputs:
            return _area((0, 0, shape[-2], shape[-1]) if input_resident else clip_region(window, shape)) * shape[1]
        return _area(regions.get(tensor, (0, 0, 0, 0))) * shape[1]

    def padded_of(layer: Layer) -> int:  # the patch's padded window: its input region, before clipping
        return _area(input_region(layer, regions.get(layer.output, (0, 0, 0, 0)))) * layer.input_shapes[0][1]

    return live_bytes(stage, inputs, inputs if input_resident else [], size_of, policy, padded_of)


def evaluate(graph: Graph, end: int, grid: int, input_resident: bool = False,
             policy: MemoryPolicy = MemoryPolicy()) -> tuple[PatchCandidate, tuple[Region, ...], tuple[Region, ...]]:
    """Cost of running layers 0..end patch by patch on an n x n grid; also its tiles and input windows."""
    stage = list(graph.layers[: end + 1])
    out_shape = stage[-1].output_shape
    if grid < 1 or grid > min(out_shape[-2], out_shape[-1]):
        raise PlanError(f"{graph.name}: a {grid}x{grid} grid does not fit the {out_shape[-2]}x{out_shape[-1]} "
                        f"output of '{stage[-1].name}'")
    tiles = split_tiles(out_shape[-2], out_shape[-1], grid)
    working, windows, patched_macs = 0, [], 0
    for tile in tiles:
        regions, window = patch_regions(graph, stage, tile)
        windows.append(window)
        working = max(working, *_patch_live(graph, stage, regions, window, input_resident, policy))
        for layer in stage:
            full = layer.output_shape[-2] * layer.output_shape[-1]
            patched_macs += layer.macs * _area(regions.get(layer.output, tile)) // full
    stage_output = stage[-1].output_elements
    profile = activation_memory(graph, policy)
    rest = max((m.live_bytes for m in profile.layers[end + 1:]), default=0)
    base = sum(layer.macs for layer in stage)
    largest = (0, 0, max(t[2] - t[0] for t in tiles), max(t[3] - t[1] for t in tiles))
    uniform, _ = patch_regions(graph, stage, largest, clip=False)
    stage_model_macs = len(tiles) * sum(layer.macs * _area(uniform.get(layer.output, largest)) //
                                        (layer.output_shape[-2] * layer.output_shape[-1]) for layer in stage)
    candidate = PatchCandidate(stage[-1].name, grid, max(working + stage_output, rest), working + stage_output,
                               rest, stage_output, patched_macs - base, stage_model_macs - base)
    return candidate, tiles, tuple(windows)


def patched_live_bytes(graph: Graph, plan: PatchPlan) -> list[int]:
    """Per-layer live int8 bytes under the plan: stage layers take their worst patch plus the stage buffer."""
    profile = [m.live_bytes for m in activation_memory(graph, plan.policy).layers]
    if plan.chosen is None:
        return profile
    stage = list(graph.layers[: len(plan.stage_layers)])
    worst = [0] * len(stage)
    for tile, window in zip(plan.tiles, plan.input_windows):
        regions, _ = patch_regions(graph, stage, tile)
        rows = _patch_live(graph, stage, regions, window, plan.input_resident, plan.policy)
        worst = [max(a, b) for a, b in zip(worst, rows)]
    return [w + plan.chosen.stage_output_bytes for w in worst] + profile[len(stage):]


def fixed_plan(graph: Graph, stage_end: str, grid: int, input_resident: bool = False,
               policy: MemoryPolicy = MemoryPolicy()) -> PatchPlan:
    """A plan for a stage end and grid chosen by hand (to compare with the search, or to test)."""
    names = [layer.name for layer in graph.layers]
    if stage_end not in names or names.index(stage_end) not in stage_ends(graph):
        valid = ", ".join(graph.layers[i].name for i in stage_ends(graph)) or "none"
        before = graph.layers[: names.index(stage_end) + 1] if stage_end in names else ()
        blocker = next((why for why in map(stage_blocker, before) if why), "")
        raise PlanError(f"{graph.name}: '{stage_end}' cannot end a patch stage (valid: {valid})"
                        + (f"; {blocker}" if blocker else ""))
    end = names.index(stage_end)
    candidate, tiles, windows = evaluate(graph, end, grid, input_resident, policy)
    baseline = activation_memory(graph, policy).peak_bytes
    return PatchPlan(graph.name, policy, None, 1.0, input_resident, baseline, graph.total_macs, candidate,
                     tuple(names[: end + 1]), tiles, windows, (candidate,), "requested stage end and grid")


def pareto_front(candidates: list[PatchCandidate]) -> tuple[PatchCandidate, ...]:
    """Candidates no other beats on both peak bytes and extra MACs, by ascending peak."""
    front: list[PatchCandidate] = []
    for c in sorted(candidates, key=lambda c: (c.peak_bytes, c.extra_macs)):
        if not front or c.extra_macs < front[-1].extra_macs:
            front.append(c)
    return tuple(front)


def plan_patches(graph: Graph, budget_bytes: int | None = None, max_extra_macs: float = DEFAULT_MAX_EXTRA_MACS,
                 input_resident: bool = False, policy: MemoryPolicy = MemoryPolicy(),
                 grids: tuple[int, ...] = GRIDS, force_patch: bool = False) -> PatchPlan:
    """Search (stage end, grid) for the smallest peak within the recompute budget; say why it was chosen.

    A model whose layer-by-layer peak fits `budget_bytes` gets no schedule (patching only adds MACs), with the
    frontier for reference, unless `force_patch`.
    """
    baseline = activation_memory(graph, policy).peak_bytes
    fits = budget_bytes is not None and baseline <= budget_bytes
    results = {}
    for end in stage_ends(graph):
        shape = graph.layers[end].output_shape
        for grid in grids:
            if grid <= min(shape[-2], shape[-1]):
                results[(end, grid)] = evaluate(graph, end, grid, input_resident, policy)
    if fits and not force_patch:
        return PatchPlan(graph.name, policy, budget_bytes, max_extra_macs, input_resident, baseline, graph.total_macs,
                         None, (), (), (), pareto_front([c for c, _, _ in results.values()]),
                         f"already fits layer by layer (peak {baseline:,} B of a {budget_bytes:,}-byte budget); "
                         "no patching needed", already_fits=True)
    if not results:
        why = next((why for why in map(stage_blocker, graph.layers) if why), "")
        raise PlanError(f"{graph.name}: no layer can end a patch stage (only patchable layers from the input with "
                        f"a single tensor leaving them can{'; ' + why if why else ''})")
    total = graph.total_macs
    candidates = [c for c, _, _ in results.values()]
    allowed = [c for c in candidates if c.extra_macs_ratio(total) <= max_extra_macs]
    chosen = min(allowed, key=lambda c: (c.peak_bytes, c.extra_macs), default=None)
    if chosen is None:
        reason = f"no candidate stays within {max_extra_macs:.0%} extra MACs"
    elif chosen.peak_bytes >= baseline:
        chosen, reason = None, f"patching does not lower the peak below layer-by-layer {baseline:,} B"
    elif budget_bytes is not None and chosen.peak_bytes > budget_bytes:
        reason = (f"infeasible: the smallest peak within {max_extra_macs:.0%} extra MACs is {chosen.peak_bytes:,} B, "
                  f"{chosen.peak_bytes - budget_bytes:,} B over the {budget_bytes:,} B budget")
    else:
        bound = "patch stage" if chosen.patch_stage_bytes >= chosen.rest_bytes else "layers after the stage"
        reason = (f"smallest peak within {max_extra_macs:.0%} extra MACs "
                  f"({chosen.extra_macs_ratio(total):.1%} used); the peak is set by the {bound}")
    if fits:
        reason += f" (patching was forced: layer by layer, {baseline:,} B, already fits the budget)"
    key = next((k for k, v in results.items() if v[0] == chosen), None)
    stage_layers = tuple(l.name for l in graph.layers[: key[0] + 1]) if key else ()
    tiles, windows = (results[key][1], results[key][2]) if key else ((), ())
    return PatchPlan(graph.name, policy, budget_bytes, max_extra_macs, input_resident, baseline, total, chosen,
                     stage_layers, tiles, windows, pareto_front(candidates), reason, fits, force_patch)
