"""INT8 patch-stage artifacts (MCUNetV2) cut from a full-integer `.tflite`, so patched output is bit-exact.

The plan (made on `from_tflite` of the same file) splits the stage output into tiles. One *stage model*
computes any tile: every patch runs the same ops on same-sized regions (the largest tile plus its halo),
each conv/pool VALID, SLICE cropping what a reader needs from a larger tensor (residual skips). Where a
region crosses a tensor's true border (image-border patches), a padded op must see its pad value there,
not computed junk: the stage model masks those positions with SELECT_V2 (zero point, or -128 before a
max pool), driven by per-patch row/column masks that are small bool inputs. So border and interior
patches share one subgraph and one weight copy, and TF Lite Micro, which invokes only subgraph 0, runs
it as is. Outputs:

- `patch_stage.tflite`: input 0 the patch's window of the int8 image (outside the image: the schedule's
  fill value), then a (rows, cols) bool pair per mask; output the tile (the largest tile's size: smaller
  tiles take its top-left part);
- `patch_rest.tflite`: the rest of the network on the stage buffer, giving every output of the model (in its
  order, under its names), with an offline arena plan (`edgekit.convert.arena_plan`) that puts its input, the
  stage buffer, at offset 0 of TFLM's arena;
- `patch_stage_unrolled.tflite`, for LiteRT: every patch in one subgraph, one after the other, each on its
  regions cut to the tensors (VALID ops, PAD/PADV2 where a region meets the border, no masks), the tiles
  concatenated into the stage buffer. One invoke instead of one per patch, every op one XNNPACK takes (the
  masks' LOGICAL_AND / SELECT_V2 are not, and split the stage model into several delegate partitions), and
  the planner's per-patch MACs instead of whole border windows. Its weights are the stage model's, stored
  again in this file; TF Lite Micro never runs it (it would hold the whole image, every tile beside the stage
  buffer at the concatenation, and a tensor table per patch in its persistent arena);
- the schedule (an `edgekit.formats.plans.PatchSchedule`; `edgekit.convert.patch_pack` renders it as a C
  header): per patch its window in image coordinates, tile in the stage buffer, and the valid part of each mask.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.arena_plan import attach_arena_plan, plan_arena
from edgekit.errors import ConversionError, PlanError
from edgekit.formats import tflite
from edgekit.formats.bundle import TensorInfo
from edgekit.formats.plans import (
    FlashBytes,
    Patch,
    PatchMask,
    PatchSchedule,
    PlannerFigures,
    RestArena,
    ScheduleTensor,
    StageMacs,
)
from edgekit.graph.build import same_padding
from edgekit.graph.from_tflite import from_tflite
from edgekit.plan.patch import PatchPlan, Region, clip_region, window_region

STAGE_MODEL, REST_MODEL, UNROLLED_MODEL = "patch_stage.tflite", "patch_rest.tflite", "patch_stage_unrolled.tflite"
_WINDOW_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"}
_PAD_OPS = {"PAD", "PADV2"}
_POINTWISE_OPS = {"ADD", "SUB", "MUL", "QUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH",
                  "HARD_SWISH", "LEAKY_RELU", "MAXIMUM", "MINIMUM", "CONCATENATION"}
_SAME, _VALID = 0, 1  # Padding enum of the TFLite schema
_INT32, _BOOL, _INT8 = 2, 6, 9  # TensorType enum
_DTYPES = {_INT8: "int8", 3: "uint8", 7: "int16", 0: "float32", _BOOL: "bool"}
Shift = tuple[int, int]


@dataclass(frozen=True)
class PatchArtifacts:
    """Model files (name -> flatbuffer bytes), the schedule that runs them patch by patch, and every output
    the rest model gives (the model's outputs; the schedule's `output` is the first of them)."""

    files: dict[str, bytes]
    schedule: PatchSchedule
    outputs: tuple[TensorInfo, ...]

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every model file and patch_schedule.json into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in self.files.items():
            (out / name).write_bytes(data)
            written.append(out / name)
        (out / "patch_schedule.json").write_text(json.dumps(self.schedule.to_dict(), indent=1))
        return written + [out / "patch_schedule.json"]


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _hw(region: Region) -> tuple[int, int]:
    return region[2] - region[0], region[3] - region[1]


def _shifted(region: Region, by: Shift) -> Region:
    return region[0] + by[0], region[1] + by[1], region[2] + by[0], region[3] + by[1]


class _Model:
    """The source model with the helpers the rewrite needs: op names, constants, tensor shapes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model, self.data = tflite.read_model(path)
        self.sub = self.model.subgraphs[0]
        self.ops = list(self.sub.operators or [])
        self.names = [tflite.op_name(self.model, op) for op in self.ops]

    def is_const(self, index: int) -> bool:
        return tflite.is_constant(self.model, index)

    def const(self, index: int) -> np.ndarray:
        tensor = self.sub.tensors[index]
        dtype = {_INT32: np.int32, _INT8: np.int8}.get(tensor.type, np.uint8)
        shape = () if tensor.shape is None else tuple(int(d) for d in tensor.shape)  # scalars have no shape
        return np.frombuffer(self.model.buffers[tensor.buffer].data.tobytes(), dtype).reshape(shape)

    def hw(self, index: int) -> tuple[int, int]:
        shape = self.sub.tensors[index].shape
        return int(shape[1]), int(shape[2])

    def zero_point(self, index: int) -> int:
        q = self.sub.tensors[index].quantization
        return int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0

    def acts(self, op: Any) -> list[int]:
        return [i for i in op.inputs if i >= 0 and not self.is_const(i)]

    def window(self, index: int, out: Region) -> tuple[int, Region, int | None]:
        """(activation input, unclipped input region, pad value or None) of stage op `index` for output `out`.

        The pad value is what the op reads beyond its input's border: the zero point (PAD, SAME convs),
        PADV2's constant, -128 for a SAME max pool; None when the op does not pad."""
        op, name = self.ops[index], self.names[index]
        x = self.acts(op)[0]
        fill: int | None
        if name in _PAD_OPS:
            paddings = self.const(op.inputs[1])
            fill = self.zero_point(x) if name == "PAD" else int(self.const(op.inputs[2]).ravel()[0])
            return x, window_region(out, (1, 1), (1, 1), (1, 1), (int(paddings[1][0]), int(paddings[2][0]))), fill
        o = op.builtinOptions
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = self.sub.tensors[op.inputs[1]].shape
            kernel, dilation = (int(w[1]), int(w[2])), (o.dilationHFactor, o.dilationWFactor)
        else:
            kernel, dilation = (o.filterHeight, o.filterWidth), (1, 1)
        stride = (o.strideH, o.strideW)
        pads = same_padding(self.hw(x), self.hw(op.outputs[0]), kernel, stride, dilation) \
            if o.padding == _SAME else (0, 0, 0, 0)
        if not any(pads):
            fill = None
        elif name == "AVERAGE_POOL_2D":
            raise ConversionError(f"{self.path}: operator {index} (AVERAGE_POOL_2D) pads at the border; TFLite "
                                  "averages over the valid pixels only, which a padded patch cannot reproduce")
        else:
            fill = -128 if name == "MAX_POOL_2D" else self.zero_point(x)
        return x, window_region(out, kernel, stride, dilation, pads[:2]), fill

    def macs(self, index: int, out_hw: tuple[int, int]) -> int:
        """Multiply-accumulates of conv op `index` producing `out_hw` rows x cols (0 for other ops)."""
        op, name = self.ops[index], self.names[index]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            return 0
        w = [int(d) for d in self.sub.tensors[op.inputs[1]].shape]  # OHWI (conv) or 1HWO (depthwise)
        per_output = w[1] * w[2] * (w[3] if name == "CONV_2D" else 1)
        channels = w[0] if name == "CONV_2D" else w[3]
        return out_hw[0] * out_hw[1] * channels * per_output


def _stage_split(src: _Model, plan: PatchPlan) -> tuple[int, int]:
    """(index of the op that writes the stage output, its tensor); checks the plan was made on this file."""
    if plan.chosen is None:
        raise PlanError(f"{plan.model}: the plan has no patch schedule ({plan.reason})")
    graph = from_tflite(src.path)
    names = tuple(layer.name for layer in graph.layers[: len(plan.stage_layers)])
    if names != plan.stage_layers:
        raise PlanError(f"{src.path}: the plan's stage layers ({plan.stage_layers[-1]!r} last) are not this "
                        f"model's first layers ({names[-1] if names else 'none'!r} found); plan on "
                        "from_tflite(<this file>)")
    tensor = int(graph.layers[len(names) - 1].output[1:])
    end = next(i for i, op in enumerate(src.ops) if tensor in op.outputs)
    for index in range(end + 1):
        name = src.names[index]
        if name not in _WINDOW_OPS | _PAD_OPS | _POINTWISE_OPS:
            raise ConversionError(f"{src.path}: operator {index} in the patch stage is {name}; patches can "
                                  f"only rewrite {', '.join(sorted(_WINDOW_OPS | _PAD_OPS | _POINTWISE_OPS))} "
                                  "(an NCHW-input model starts with TRANSPOSE: convert with NHWC input)")
        if name == "CONCATENATION" and src.ops[index].builtinOptions.axis not in (3, -1):
            raise ConversionError(f"{src.path}: operator {index} concatenates along axis "
                                  f"{src.ops[index].builtinOptions.axis}; patches need channel concatenation (axis 3)")
    rest = {t for op in src.ops[end + 1:] for t in op.outputs}
    for index in range(end + 1, len(src.ops)):
        leaked = [t for t in src.acts(src.ops[index]) if t not in rest | {tensor}]
        if leaked:
            raise PlanError(f"{src.path}: operator {index} after the stage reads tensor {leaked[0]} from inside "
                            "the stage; only the stage output may cross")
    early = [tflite.tensor_name(src.sub.tensors[t]) for t in src.sub.outputs if t not in rest]
    if early:
        raise PlanError(f"{src.path}: model output '{early[0]}' is computed inside the patch stage; the rest model "
                        "must give every output, so end the stage before it")
    return end, tensor


def _regions(src: _Model, end: int, stage_tensor: int, tile: Region, clip: bool = False) -> dict[int, Region]:
    """Region of each stage tensor that computing `tile` reads: unclipped (it may reach past the border: the
    stage model's whole windows), or with `clip` cut to each tensor (each patch's own part, the planner's)."""
    needed: dict[int, Region] = {stage_tensor: tile}
    for index in range(end, -1, -1):
        out = needed.get(src.ops[index].outputs[0])
        if out is None:
            continue
        if src.names[index] in _WINDOW_OPS | _PAD_OPS:
            x, want, _ = src.window(index, out)
            wants = [(x, clip_region(want, src.hw(x)) if clip else want)]
        else:
            wants = [(t, out) for t in src.acts(src.ops[index])]
        for tensor, want in wants:
            needed[tensor] = _union(needed.get(tensor), want)
    return needed


def _inside(low: int, high: int, size: int) -> tuple[int, int]:
    """The part of [low, high) inside [0, size), in coordinates local to low (empty: a == b)."""
    start = min(max(0, -low), high - low)
    return start, max(start, min(size, high) - low)


class _Stage:
    """The stage subgraph under construction: tensors and operators over the source model's buffers.

    Built once on patch 0's regions; `shifts[p][t]` is where patch p's region of source tensor t starts
    relative to patch 0's, which decides which reads can cross a border (and so need a mask) and where.
    """

    def __init__(self, src: _Model, codes: dict[str, int], shifts: list[dict[int, Shift]]) -> None:
        self.src, self.codes, self.shifts = src, codes, shifts
        self.tensors: list[Any] = []
        self.operators: list[Any] = []
        self.inputs: list[int] = []  # the window, then a (rows, cols) pair per mask
        self.masks: list[tuple[int, Region, int]] = []  # (source tensor, region, fill) per mask
        self.new_buffers: list[np.ndarray] = []  # data of new constants; buffer index set when kept
        self.held: dict[int, tuple[int, Region]] = {}
        self.image_fill: int | None = None
        self.macs = 0
        self._const: dict[int, int] = {}
        self._derived: dict[tuple[int, Region, int | None], int] = {}

    def start(self, image: int, tensor: int, region: Region) -> None:
        """Begin a patch: only `region` of the source image, held in `tensor`, is computed so far."""
        self.held, self._derived = {image: (tensor, region)}, {}

    def tensor(self, like: int, hw: tuple[int, int], suffix: str = "") -> int:
        t = copy.deepcopy(self.src.sub.tensors[like])
        t.shape = np.array([1, hw[0], hw[1], t.shape[3]], np.int32)
        t.shapeSignature, t.buffer = None, 0
        t.name = tflite.tensor_name(t) + suffix
        self.tensors.append(t)
        return len(self.tensors) - 1

    def bool_tensor(self, shape: tuple[int, ...], name: str) -> int:
        t = tflite.schema().TensorT()
        t.shape, t.type, t.name, t.buffer = np.array(shape, np.int32), _BOOL, name, 0
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, index: int) -> int:
        if index not in self._const:
            self.tensors.append(copy.deepcopy(self.src.sub.tensors[index]))
            self._const[index] = len(self.tensors) - 1
        return self._const[index]

    def new_const(self, values: np.ndarray, name: str, quantized_like: int | None = None) -> int:
        """A new int32 constant (int8 with that tensor's quantization when `quantized_like` is given)."""
        t = tflite.schema().TensorT()
        t.shape, t.type, t.name = np.array(values.shape, np.int32), _INT32, name
        if quantized_like is not None:
            t.type, t.quantization = _INT8, copy.deepcopy(self.tensors[quantized_like].quantization)
        t.buffer = -1 - len(self.new_buffers)  # placeholder: the buffer index is set when the model is packed
        dtype = np.int8 if quantized_like is not None else np.int32
        self.new_buffers.append(np.ascontiguousarray(values, dtype).view(np.uint8).ravel())
        self.tensors.append(t)
        return len(self.tensors) - 1

    def place_buffers(self, buffers: list[Any]) -> None:
        """Append the new constants' data to the model's `buffers` and point their tensors at it."""
        for t in self.tensors:
            if t.buffer < 0:
                t.buffer = len(buffers) + (-1 - t.buffer)
        for data in self.new_buffers:
            buffers.append(tflite.schema().BufferT())
            buffers[-1].data = data

    def emit(self, code: str, inputs: list[int], output: int, options: tuple[int, Any] | None = None,
             like: Any = None) -> None:
        op = copy.deepcopy(like) if like is not None else tflite.schema().OperatorT()
        op.opcodeIndex = self.codes[code]
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array([output], np.int32)
        if options is not None:
            op.builtinOptionsType, op.builtinOptions = options
        self.operators.append(op)

    def take(self, tensor: int, region: Region) -> int:
        """A tensor holding exactly `region` of source `tensor`: what is held, or a SLICE of it."""
        index, have = self.held[tensor]
        if have == region:
            return index
        if (tensor, region, None) not in self._derived:
            schema = tflite.schema()
            out = self.tensor(tensor, _hw(region), "/crop")
            c = int(self.src.sub.tensors[tensor].shape[3])
            begin = self.new_const(np.array([0, region[0] - have[0], region[1] - have[1], 0]), "crop_begin")
            size = self.new_const(np.array([1, *_hw(region), c]), "crop_size")
            self.emit("SLICE", [index, begin, size], out, (schema.BuiltinOptions.SliceOptions, schema.SliceOptionsT()))
            self._derived[(tensor, region, None)] = out
        return self._derived[(tensor, region, None)]

    def crosses(self, tensor: int, region: Region) -> bool:
        """Whether some patch's copy of `region` reaches past the border of source `tensor`."""
        hw = self.src.hw(tensor)
        return any(clip_region(_shifted(region, s[tensor]), hw) != _shifted(region, s[tensor]) for s in self.shifts)

    def masked(self, tensor: int, region: Region, fill: int) -> int:
        """`region` of source `tensor`, reading `fill` wherever a patch's copy of it lies beyond the border.

        The image's fill is the window's (written by whoever cuts it); elsewhere SELECT_V2 picks the tensor
        or `fill` by the patch's row and column masks (two small bool inputs, ANDed)."""
        taken = self.take(tensor, region)
        if not self.crosses(tensor, region):
            return taken
        if tensor == self.src.sub.inputs[0] and self.image_fill in (None, fill):
            self.image_fill = fill
            return taken
        if (tensor, region, fill) not in self._derived:
            schema = tflite.schema()
            height, width = _hw(region)
            k = len(self.masks)
            rows, cols = self.bool_tensor((1, height, 1, 1), f"mask{k}_rows"), self.bool_tensor((1, 1, width, 1),
                                                                                                f"mask{k}_cols")
            inside = self.bool_tensor((1, height, width, 1), f"mask{k}")
            self.emit("LOGICAL_AND", [rows, cols], inside,
                      (schema.BuiltinOptions.LogicalAndOptions, schema.LogicalAndOptionsT()))
            value = self.new_const(np.array([fill]), f"mask{k}_fill", quantized_like=taken)
            out = self.tensor(tensor, (height, width), "/masked")
            self.emit("SELECT_V2", [inside, taken, value], out,
                      (schema.BuiltinOptions.SelectV2Options, schema.SelectV2OptionsT()))
            self.inputs += [rows, cols]
            self.masks.append((tensor, region, fill))
            self._derived[(tensor, region, fill)] = out
        return self._derived[(tensor, region, fill)]

    def padded(self, tensor: int, want: Region, fill: int) -> int:
        """`want` of source `tensor` (it may reach past the border) from the part inside it, PAD (the zero point)
        or PADV2 (another fill) writing `fill` beyond the border: a static patch's own padding."""
        have = clip_region(want, self.src.hw(tensor))
        taken = self.take(tensor, have)
        if have == want:
            return taken
        if (tensor, want, fill) not in self._derived:
            schema = tflite.schema()
            pads = [[0, 0], [have[0] - want[0], want[2] - have[2]], [have[1] - want[1], want[3] - have[3]], [0, 0]]
            out = self.tensor(tensor, _hw(want), "/pad")
            paddings = self.new_const(np.array(pads), "pad_paddings")
            if fill == self.src.zero_point(tensor):
                self.emit("PAD", [taken, paddings], out, (schema.BuiltinOptions.PadOptions, schema.PadOptionsT()))
            else:
                value = self.new_const(np.array([fill]), "pad_fill", quantized_like=taken)
                self.emit("PADV2", [taken, paddings, value], out,
                          (schema.BuiltinOptions.PadV2Options, schema.PadV2OptionsT()))
            self._derived[(tensor, want, fill)] = out
        return self._derived[(tensor, want, fill)]

    def concatenate(self, parts: list[int], axis: int, like: int, hw: tuple[int, int]) -> int:
        """One tensor of `parts` side by side along `axis` (1: rows, 2: cols), shaped like `like` at `hw`."""
        if len(parts) == 1:
            return parts[0]
        schema = tflite.schema()
        options = schema.ConcatenationOptionsT()
        options.axis = axis
        out = self.tensor(like, hw, "/tiles")
        self.emit("CONCATENATION", parts, out, (schema.BuiltinOptions.ConcatenationOptions, options))
        return out

    def valid(self, patch: int) -> tuple[Region, ...]:
        """Per mask, the part (top, left, bottom, right; local rows/cols) of patch `patch`'s region inside
        the tensor: the rows and columns its masks mark True."""
        out = []
        for tensor, region, _ in self.masks:
            top, left, bottom, right = _shifted(region, self.shifts[patch][tensor])
            height, width = self.src.hw(tensor)
            (r0, r1), (c0, c1) = _inside(top, bottom, height), _inside(left, right, width)
            out.append((r0, c0, r1, c1))
        return tuple(out)


def _emit_ops(stage: _Stage, end: int, needed: dict[int, Region], border: Callable[[int, Region, int], int]) -> None:
    """Stage ops 0..end on the `needed` regions, every conv/pool VALID; a padded op reads `border(tensor, region,
    fill)`: its input region with `fill` wherever it lies beyond the tensor (masked or padded)."""
    src = stage.src
    for index in range(end + 1):
        op, name = src.ops[index], src.names[index]
        out_tensor = op.outputs[0]
        region = needed.get(out_tensor)
        if region is None:
            continue
        if name in _WINDOW_OPS | _PAD_OPS:
            x, want, fill = src.window(index, region)
            held = stage.take(x, want) if fill is None else border(x, want, fill)
            if name in _PAD_OPS:  # the border-filled region is the padded tensor: the PAD itself disappears
                stage.held[out_tensor] = (held, region)
                continue
            out = stage.tensor(out_tensor, _hw(region))
            options = copy.deepcopy(op.builtinOptions)
            options.padding = _VALID
            weights = [stage.const(i) if i >= 0 else -1 for i in op.inputs[1:]]
            stage.emit(name, [held, *weights], out, (op.builtinOptionsType, options), like=op)
        else:
            inputs = [stage.take(i, region) if i >= 0 and not src.is_const(i) else
                      (stage.const(i) if i >= 0 else -1) for i in op.inputs]
            out = stage.tensor(out_tensor, _hw(region))
            stage.emit(name, inputs, out, like=op)
        stage.held[out_tensor] = (out, region)
        stage.macs += src.macs(index, _hw(region))


def _stage_subgraph(src: _Model, codes: dict[str, int], end: int, needed: dict[int, Region],
                    shifts: list[dict[int, Shift]]) -> _Stage:
    """Rewrite stage ops 0..end to compute the `needed` regions (VALID everywhere, masks at borders)."""
    stage = _Stage(src, codes, shifts)
    image = src.sub.inputs[0]
    window = stage.tensor(image, _hw(needed[image]), "/window")
    stage.inputs.append(window)
    stage.start(image, window, needed[image])
    _emit_ops(stage, end, needed, stage.masked)
    return stage


def _unrolled_subgraph(src: _Model, codes: dict[str, int], end: int, stage_tensor: int,
                       tiles: tuple[Region, ...], grid: int) -> _Stage:
    """Every patch of the stage in one subgraph, patch after patch, each on its own regions cut to the tensors
    (VALID ops, PAD/PADV2 where a region meets the border): the whole image in, the stage buffer out (tiles
    concatenated row by row). No masks and no window beyond the image, so it computes the planner's per-patch
    MACs; one invoke runs every patch."""
    stage = _Stage(src, codes, [])
    image = src.sub.inputs[0]
    whole = stage.tensor(image, src.hw(image), "/image")
    stage.inputs.append(whole)
    computed = []
    for tile in tiles:
        stage.start(image, whole, (0, 0, *src.hw(image)))
        _emit_ops(stage, end, _regions(src, end, stage_tensor, tile, clip=True), stage.padded)
        computed.append(stage.take(stage_tensor, tile))
    width = src.hw(stage_tensor)[1]
    rows = [stage.concatenate(computed[r * grid:(r + 1) * grid], 2, stage_tensor,
                              (_hw(tiles[r * grid])[0], width)) for r in range(grid)]
    stage.held[stage_tensor] = (stage.concatenate(rows, 1, stage_tensor, src.hw(stage_tensor)),
                                (0, 0, *src.hw(stage_tensor)))
    return stage


def _subgraph(tensors: list[Any], inputs: list[int], outputs: list[int], operators: list[Any], name: str) -> Any:
    sub = tflite.schema().SubGraphT()
    sub.tensors, sub.operators, sub.name = tensors, operators, name
    sub.inputs, sub.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
    return sub


# op -> the version whose kernels take int8/bool: what the stage model adds to
# the source's ops, and what the unrolled model adds on top
_STAGE_OPS = {"SLICE": 2, "LOGICAL_AND": 1, "SELECT_V2": 1}
_UNROLLED_OPS = {"PAD": 2, "PADV2": 2, "CONCATENATION": 2}


def _opcodes(codes: list[Any], index: dict[str, int], added: dict[str, int]) -> tuple[list[Any], dict[str, int]]:
    """Operator codes `codes` (op name -> position: `index`) plus the `added` ops they lack, and the new index."""
    schema = tflite.schema()
    codes, index = list(codes), dict(index)
    for name, version in added.items():
        if name not in index:
            code = schema.OperatorCodeT()
            code.builtinCode = getattr(schema.BuiltinOperator, name)
            code.deprecatedBuiltinCode, code.version = min(code.builtinCode, 127), version
            index[name] = len(codes)
            codes.append(code)
    return codes, index


def _standalone(src: _Model, codes: list[Any], sub: Any, buffers: list[Any]) -> Any:
    """A model of its own whose subgraph 0 is `sub`, carrying only the buffers it uses."""
    model = copy.copy(src.model)
    used = sorted({0} | {int(t.buffer) for t in sub.tensors})
    remap = {b: i for i, b in enumerate(used)}
    for t in sub.tensors:
        t.buffer = remap[int(t.buffer)]
    model.subgraphs, model.buffers, model.operatorCodes = [sub], [buffers[b] for b in used], codes
    model.signatureDefs, model.metadata, model.metadataBuffer = None, None, None
    return model


def _tensor_info(tensor: Any) -> ScheduleTensor:
    q = tensor.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else None
    return ScheduleTensor(tuple(int(d) for d in tensor.shape), _DTYPES.get(tensor.type, str(tensor.type)), scale,
                          int(q.zeroPoint[0]) if scale is not None else None)


def _output_info(tensor: Any) -> TensorInfo:
    """A model output as the manifest describes it: its name, and NHWC when 4-D (the model is NHWC)."""
    info = _tensor_info(tensor)
    return TensorInfo(tflite.tensor_name(tensor), info.shape, info.dtype, "NHWC" if len(info.shape) == 4 else None,
                      info.scale, info.zero_point)


def _contains(outer: Region, inner: Region) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def build_patch_artifacts(tflite_path: str | Path, plan: PatchPlan) -> PatchArtifacts:
    """Rewrite a full-integer NHWC `.tflite` into one patch-stage model and the rest model, per `plan`.

    `plan` must come from `plan_patches` / `fixed_plan` on `from_tflite(tflite_path)` (same layer names).
    """
    src = _Model(Path(tflite_path))
    end, stage_tensor = _stage_split(src, plan)
    assert plan.chosen is not None  # checked by _stage_split
    codes, code_index = _opcodes(list(src.model.operatorCodes),
                                 {name: int(op.opcodeIndex) for name, op in zip(src.names, src.ops)}, _STAGE_OPS)
    unrolled_codes, unrolled_index = _opcodes(codes, code_index, _UNROLLED_OPS)
    image = src.sub.inputs[0]
    tile_h, tile_w = (max(_hw(t)[axis] for t in plan.tiles) for axis in (0, 1))
    needed = [_regions(src, end, stage_tensor, (t[0], t[1], t[0] + tile_h, t[1] + tile_w)) for t in plan.tiles]
    for tile, window, regions in zip(plan.tiles, plan.input_windows, needed):
        if not _contains(regions[image], window):
            raise PlanError(f"{src.path}: tile {tile} needs input window {tuple(window)} by the plan, more than "
                            f"this model's {regions[image]}; the plan was made on another model")
        if {t: _hw(r) for t, r in regions.items()} != {t: _hw(r) for t, r in needed[0].items()}:
            raise ConversionError(f"{src.path}: tile {tile} needs differently sized regions than tile "
                                  f"{plan.tiles[0]}; one stage model cannot compute both")
    shifts = [{t: (r[t][0] - needed[0][t][0], r[t][1] - needed[0][t][1]) for t in r} for r in needed]
    stage = _stage_subgraph(src, code_index, end, needed[0], shifts)
    buffers = list(src.model.buffers)
    unrolled = _unrolled_subgraph(src, unrolled_index, end, stage_tensor, plan.tiles, plan.chosen.grid)
    for built in (stage, unrolled):
        built.place_buffers(buffers)
    stage_out = stage.held[stage_tensor][0]
    stage_sub = _subgraph(stage.tensors, stage.inputs, [stage_out], stage.operators, "patch_stage")
    unrolled_sub = _subgraph(unrolled.tensors, unrolled.inputs, [unrolled.held[stage_tensor][0]], unrolled.operators,
                             "patch_stage_unrolled")
    rest_model = tflite.extract_model(src.model, list(range(end + 1, len(src.ops))), [stage_tensor],
                                      [int(t) for t in src.sub.outputs])
    rest_arena = plan_arena(rest_model, {int(rest_model.subgraphs[0].inputs[0]): 0})  # the stage buffer heads it
    attach_arena_plan(rest_model, rest_arena)
    files = {STAGE_MODEL: tflite.pack_model(_standalone(src, codes, stage_sub, buffers)),
             REST_MODEL: tflite.pack_model(rest_model),
             UNROLLED_MODEL: tflite.pack_model(_standalone(src, unrolled_codes, unrolled_sub, buffers))}
    full_macs = sum(src.macs(i, src.hw(src.ops[i].outputs[0])) for i in range(end + 1))
    input_info = _tensor_info(src.sub.tensors[image])
    window_fill = stage.image_fill if stage.image_fill is not None else input_info.zero_point or 0
    schedule = PatchSchedule(
        STAGE_MODEL, REST_MODEL, UNROLLED_MODEL, plan.chosen.stage_end, plan.chosen.grid, input_info,
        _tensor_info(src.sub.tensors[stage_tensor]),
        tuple(_tensor_info(src.sub.tensors[t]) for t in src.sub.outputs),
        _tensor_info(stage.tensors[stage.inputs[0]]), window_fill, _tensor_info(stage.tensors[stage_out]),
        tuple(PatchMask(tflite.tensor_name(src.sub.tensors[t]), _hw(region), fill, (1 + 2 * k, 2 + 2 * k))
              for k, (t, region, fill) in enumerate(stage.masks)),
        tuple(Patch(r[image], tile, stage.valid(p)) for p, (tile, r) in enumerate(zip(plan.tiles, needed))),
        StageMacs(full_macs, stage.macs * len(plan.tiles), unrolled.macs),
        FlashBytes(len(src.data), len(files[STAGE_MODEL]) + len(files[REST_MODEL])),
        RestArena(0, rest_arena.head_bytes, rest_arena.lower_bound_bytes),
        PlannerFigures(plan.chosen.peak_bytes, plan.layer_by_layer_peak_bytes, plan.chosen.extra_macs))
    return PatchArtifacts(files, schedule, tuple(_output_info(src.sub.tensors[t]) for t in src.sub.outputs))
