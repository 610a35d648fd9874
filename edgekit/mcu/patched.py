"""A patch schedule (MCUNetV2) compiled into the generated C: the stage patch by patch, the rest layer by layer,
all in one static arena, no interpreter.

Each patch runs the stage's operators on the part of every tensor it needs: its tile of the stage output, grown
by each window op's halo on the way back to the image and cut to each tensor's border. The kernels take those
parts in the tensor's own coordinates, so what lies beyond a tensor's true border is padding exactly as layer by
layer (a PAD before a convolution is folded into it: its zero point adds nothing to the sum). Every patch's
buffers are sized for the largest patch and reused by the next; the last stage operator writes the patch's tile
straight into the stage buffer, on which the rest runs as `generate` emits it. With a plan whose image is resident
the image stays whole in the arena through the stage (filled through ek_model_input, as layer by layer); otherwise
(the planner's default, the paper's accounting) it is streamed: each patch asks the application for its window
(ek_model_read_window: camera, flash or external memory) into a buffer of the largest window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import PlanError, UnsupportedOpError
from edgekit.graph.from_tflite import from_tflite
from edgekit.mcu.codegen import GeneratedC, call, plane, write_sources
from edgekit.mcu.layers import KERNELS, Layer, Rect, window
from edgekit.mcu.memory import Steps, steps
from edgekit.mcu.operators import Operators, read_operators
from edgekit.plan.patch import PatchPlan, Region, clip_region, window_region


def stage_tensor(tflite_path: Path, plan: PatchPlan) -> int:
    """The tensor the plan's stage ends on; PlanError when the plan has no schedule or was made on another model."""
    if plan.chosen is None:
        raise PlanError(f"{plan.model}: the plan has no patch schedule ({plan.reason})")
    layers = from_tflite(tflite_path).layers[: len(plan.stage_layers)]
    if tuple(layer.name for layer in layers) != plan.stage_layers:
        raise PlanError(f"{tflite_path}: the plan's stage ({plan.stage_layers[-1]!r} last) is not this model's first "
                        "layers; plan on from_tflite(<this file>)")
    return int(layers[-1].output[1:])


def _hw(ops: Operators, tensor: int) -> tuple[int, int]:
    shape = ops.shape(tensor)
    return shape[1], shape[2]


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _check_stage(ops: Operators, run: Steps, end: int, where: str) -> None:
    """Refuse a stage the C cannot run patch by patch, or a rest that reads inside the stage."""
    for index in range(end + 1):
        role, name, out = KERNELS[ops.names[index]].stage, ops.names[index], ops.writes[index][0]
        if role is None or len(ops.shape(out)) != 4 or ops.shape(out)[0] != 1:
            raise UnsupportedOpError(f"{where}: operator {index} ({name}) in the patch stage: the patched C takes "
                                     f"{', '.join(sorted(n for n, k in KERNELS.items() if k.stage))} on one 4-D image")
        if role == "pointwise" and any(_hw(ops, t) != _hw(ops, out) for t in ops.reads[index]):
            raise UnsupportedOpError(f"{where}: operator {index} ({name}) broadcasts inside the patch stage")
        if role == "pad" and index not in {fold.pad for fold in run.folds.values()}:
            raise UnsupportedOpError(f"{where}: operator {index} (PAD) in the patch stage must pad H and W with "
                                     "the zero point for one convolution (it is folded into it)")
    produced = {t for ws in ops.writes[end + 1:] for t in ws}
    for index in range(end + 1, len(ops.names)):
        if any(t not in produced | {ops.writes[end][0]} for t in ops.reads[index]):
            raise PlanError(f"{where}: operator {index} after the stage reads a tensor from inside it")


def _regions(ops: Operators, layers: dict[int, Layer], tile: Region) -> dict[int, Region]:
    """The part of each stage tensor one patch computes (cut to the tensor) for stage-output tile `tile`."""
    last = max(layers)
    needed: dict[int, Region] = {ops.writes[last][0]: tile}
    for index in sorted(layers, reverse=True):
        out, layer = needed.get(ops.writes[index][0]), layers[index]
        if out is None:
            continue
        if KERNELS[ops.names[index]].stage == "window":
            w, source = window(layer), layer.source(0)
            wants = [(source, clip_region(window_region(out, w.kernel, w.stride, w.dilation, w.pads),
                                          _hw(ops, source)))]
        else:
            wants = [(t, out) for t in ops.reads[index]]
        for tensor, region in wants:
            needed[tensor] = _union(needed.get(tensor), region)
    return needed


def _area(region: Region) -> int:
    return max(region[2] - region[0], 0) * max(region[3] - region[1], 0)


def generate_patched(tflite_path: Path, plan: PatchPlan, out_dir: Path) -> GeneratedC:
    """Write the C of full-integer INT8 model `tflite_path` with `plan`'s stage (made on from_tflite of the same
    file) compiled in patch by patch, the image streamed unless the plan holds it resident; UnsupportedOpError for
    a stage operator the patched C does not take."""
    where, stage = tflite_path.name, stage_tensor(tflite_path, plan)
    ops = read_operators(tflite_path.read_bytes(), where)
    end = next(i for i, ws in enumerate(ops.writes) if stage in ws)
    run = steps(ops, keep=frozenset({stage}), fuse_from=end + 1)
    _check_stage(ops, run, end, where)
    width, streamed = _hw(ops, stage)[1], not plan.input_resident
    patch: dict[str, Any] = {}  # the patch being emitted: its tile and regions

    def place(tensor: int) -> str:
        start = (patch["tile"][0] * width + patch["tile"][1]) * ops.shape(stage)[3] if tensor == stage and patch else 0
        return f"(arena + {arena.offsets[tensor] + start})"

    def rect(tensor: int) -> Rect | None:
        if (tensor == ops.input and not streamed) or not patch:
            return None
        top, left, bottom, right = patch["tile"] if tensor == stage else patch["regions"][tensor]
        return top, left, bottom - top, right - left, width if tensor == stage else right - left

    stage_layers = {i: run.layer(ops, i, place=place, rect=rect) for i in run.reads if i <= end}
    regions = [_regions(ops, stage_layers, tile) for tile in plan.tiles]
    inside = {t for i in stage_layers for t in (*run.reads[i], *ops.writes[i])} - {stage, *([] if streamed else
                                                                                           [ops.input])}
    sizes = dict(ops.sizes) | {t: max(_area(r.get(t, (0, 0, 0, 0))) for r in regions) * ops.shape(t)[3] for t in inside}
    scratch = {i: max(_area(r.get(run.reads[i][0], (0, 0, 0, 0))) for r in regions) if i <= end else
               plane(ops, run.reads[i][0]) for i in run.inplace}  # a copy of one input channel
    arena = run.arena(ops, sizes, scratch, [ops.input, stage], {} if streamed else {ops.input: max(stage_layers)})
    calls = []
    for index, (tile, needed) in enumerate(zip(plan.tiles, regions)):
        patch.update(tile=tile, regions=needed)
        calls.append(f"    /* patch {index}: rows {tile[0]}-{tile[2]}, cols {tile[1]}-{tile[3]} of the stage output */")
        if streamed:
            top, left, h, w, _ = rect(ops.input) or (0, 0, 0, 0, 0)
            calls.append(f"    ek_model_read_window({top}, {left}, {h}, {w}, {place(ops.input)});")
        for i, layer in stage_layers.items():
            layer.tag = f"p{index}_"
            if ops.writes[i][0] in needed:
                calls.append(f"    {call(ops.names[i], layer)}")
    patch.clear()
    rest = [run.layer(ops, i, place=place) for i in run.reads if i > end]
    calls += [f"{ops.comment(layer.index)}\n    {call(ops.names[layer.index], layer)}" for layer in rest]
    return write_sources(out_dir, f"{where}, patched ({len(plan.tiles)} patches)", ops, arena,
                         [*stage_layers.values(), *rest], calls, streamed)
