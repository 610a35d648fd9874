"""INT8 patch-stage artifacts (MCUNetV2) cut from a full-integer `.tflite`, so patched output is bit-exact.

The plan (made on `from_tflite` of the same file) splits the stage output into tiles. For each tile the
stage ops are rewritten to compute exactly the region that tile needs: every conv/pool runs VALID on its
input region, cropped with SLICE where a tensor holds more than one reader needs (residual skips), and
padded with PAD/PADV2 only on the sides where that region crosses the tensor's true border (int8 PAD fills
with the zero point, which is what SAME padding means in int8; max pools pad with -128). Patches whose
rewritten graph is identical share a "class". Outputs:

- `patched.tflite`: one subgraph per class plus the rest of the network, all referencing the original
  weight buffers (stored once), one SignatureDef each ("class_<k>", "rest"): what LiteRT runs;
- `patch_class<k>.tflite` / `patch_rest.tflite`: the same subgraphs as standalone models (subgraph 0),
  because TF Lite Micro invokes only subgraph 0; each class file carries its own copy of the stage weights;
- the schedule (a JSON-able dict; `edgekit.convert.patch_pack` renders it as a C header): per patch its
  input window in image coordinates, border padding, class and tile in the stage buffer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError
from edgekit.graph.build import same_padding
from edgekit.graph.from_tflite import _schema, from_tflite, op_name, read_model
from edgekit.plan.patch import PatchPlan, PlanError, Region, clip_region, window_region
from edgekit.runtime.patched import SCHEDULE_VERSION

SHARED_MODEL = "patched.tflite"
_WINDOW_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"}
_PAD_OPS = {"PAD", "PADV2"}
_POINTWISE_OPS = {"ADD", "SUB", "MUL", "QUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH",
                  "HARD_SWISH", "LEAKY_RELU", "MAXIMUM", "MINIMUM", "CONCATENATION"}
_SAME, _VALID = 0, 1  # Padding enum of the TFLite schema
_INT32, _INT8 = 2, 9  # TensorType enum
_DTYPES = {_INT8: "int8", 3: "uint8", 7: "int16", 0: "float32"}


@dataclass(frozen=True)
class PatchArtifacts:
    """Model files (name -> flatbuffer bytes) and the schedule that runs them patch by patch."""

    files: dict[str, bytes]
    schedule: dict

    @property
    def stage_weight_copies_bytes(self) -> int:
        """Flash the standalone class files spend on repeated stage weights (vs one copy in patched.tflite)."""
        return self.schedule["stage_weight_bytes"] * (len(self.schedule["classes"]) - 1)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every model file and patch_schedule.json into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in self.files.items():
            (out / name).write_bytes(data)
            written.append(out / name)
        (out / "patch_schedule.json").write_text(json.dumps(self.schedule, indent=1))
        return written + [out / "patch_schedule.json"]


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _hw(region: Region) -> tuple[int, int]:
    return region[2] - region[0], region[3] - region[1]


def _border(want: Region, clipped: Region) -> tuple[int, int, int, int]:
    """Padding (top, left, bottom, right) that `want` needs beyond what the tensor holds (`clipped`)."""
    return clipped[0] - want[0], clipped[1] - want[1], want[2] - clipped[2], want[3] - clipped[3]


class _Model:
    """The source model with the helpers the rewrite needs: op names, constants, tensor shapes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model, _ = read_model(path)
        self.sub = self.model.subgraphs[0]
        self.ops = list(self.sub.operators or [])
        self.names = [op_name(self.model, op) for op in self.ops]

    def is_const(self, index: int) -> bool:
        data = self.model.buffers[self.sub.tensors[index].buffer].data
        return data is not None and len(data) > 0

    def const(self, index: int) -> np.ndarray:
        tensor = self.sub.tensors[index]
        dtype = {_INT32: np.int32, _INT8: np.int8}.get(tensor.type, np.uint8)
        shape = () if tensor.shape is None else tuple(int(d) for d in tensor.shape)  # scalars have no shape
        return np.frombuffer(self.model.buffers[tensor.buffer].data.tobytes(), dtype).reshape(shape)

    def hw(self, index: int) -> tuple[int, int]:
        shape = self.sub.tensors[index].shape
        return int(shape[1]), int(shape[2])

    def acts(self, op: Any) -> list[int]:
        return [i for i in op.inputs if i >= 0 and not self.is_const(i)]

    def window(self, index: int, out: Region) -> tuple[int, Region]:
        """(activation input, unclipped input region) that stage op `index` reads for output region `out`."""
        op, name = self.ops[index], self.names[index]
        x = self.acts(op)[0]
        if name in _PAD_OPS:
            pads = self.const(op.inputs[1])
            return x, window_region(out, (1, 1), (1, 1), (1, 1), (int(pads[1][0]), int(pads[2][0])))
        o = op.builtinOptions
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = self.sub.tensors[op.inputs[1]].shape
            kernel, dilation = (int(w[1]), int(w[2])), (o.dilationHFactor, o.dilationWFactor)
        else:
            kernel, dilation = (o.filterHeight, o.filterWidth), (1, 1)
        stride = (o.strideH, o.strideW)
        pads = same_padding(self.hw(x), self.hw(op.outputs[0]), kernel, stride, dilation) \
            if o.padding == _SAME else (0, 0, 0, 0)
        return x, window_region(out, kernel, stride, dilation, pads[:2])


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
    produced = {tensor} | {t for op in src.ops[end + 1:] for t in op.outputs}
    for index in range(end + 1, len(src.ops)):
        leaked = [t for t in src.acts(src.ops[index]) if t not in produced]
        if leaked:
            raise PlanError(f"{src.path}: operator {index} after the stage reads tensor {leaked[0]} from inside "
                            "the stage; only the stage output may cross")
    return end, tensor


def _regions(src: _Model, end: int, stage_tensor: int, tile: Region) -> tuple[dict[int, Region], Region]:
    """Region of each stage tensor one tile needs (clipped), and the raw window on the model input."""
    needed: dict[int, Region] = {stage_tensor: tile}
    raw: Region | None = None
    image = src.sub.inputs[0]
    for index in range(end, -1, -1):
        out = needed.get(src.ops[index].outputs[0])
        if out is None:
            continue
        if src.names[index] in _WINDOW_OPS | _PAD_OPS:
            wants = [src.window(index, out)]
        else:
            wants = [(t, out) for t in src.acts(src.ops[index])]
        for tensor, want in wants:
            if tensor == image:
                raw = _union(raw, want)
            needed[tensor] = _union(needed.get(tensor), clip_region(want, src.hw(tensor)))
    assert raw is not None  # the stage ops reach the input (checked by the planner's stage ends)
    return needed, raw


class _Patch:
    """The subgraph that computes one tile: tensors and operators over the source model's buffers."""

    def __init__(self, src: _Model, codes: dict[str, int]) -> None:
        self.src, self.codes = src, codes
        self.tensors: list[Any] = []
        self.operators: list[Any] = []
        self.new_buffers: list[np.ndarray] = []  # data of new constants; buffer index set when kept
        self.held: dict[int, tuple[int, Region]] = {}
        self._const: dict[int, int] = {}
        self._crops: dict[tuple[int, Region], int] = {}

    def tensor(self, like: int, hw: tuple[int, int], suffix: str = "") -> int:
        t = copy.deepcopy(self.src.sub.tensors[like])
        t.shape = np.array([1, hw[0], hw[1], t.shape[3]], np.int32)
        t.shapeSignature, t.buffer = None, 0
        t.name = (t.name.decode() if isinstance(t.name, bytes) else t.name or "") + suffix
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, index: int) -> int:
        if index not in self._const:
            self.tensors.append(copy.deepcopy(self.src.sub.tensors[index]))
            self._const[index] = len(self.tensors) - 1
        return self._const[index]

    def new_const(self, values: np.ndarray, name: str, quantized_like: int | None = None) -> int:
        """A new int32 constant (int8 with that tensor's quantization when `quantized_like` is given)."""
        t = _schema().TensorT()
        t.shape, t.type, t.name = np.array(values.shape, np.int32), _INT32, name
        if quantized_like is not None:
            t.type, t.quantization = _INT8, copy.deepcopy(self.tensors[quantized_like].quantization)
        t.buffer = -1 - len(self.new_buffers)  # placeholder: the buffer index is set when the class is kept
        dtype = np.int8 if quantized_like is not None else np.int32
        self.new_buffers.append(np.ascontiguousarray(values, dtype).view(np.uint8).ravel())
        self.tensors.append(t)
        return len(self.tensors) - 1

    def emit(self, code: str, inputs: list[int], output: int, options: tuple[int, Any] | None = None,
             like: Any = None) -> None:
        op = copy.deepcopy(like) if like is not None else _schema().OperatorT()
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
        if (tensor, region) not in self._crops:
            schema = _schema()
            out = self.tensor(tensor, _hw(region), "/crop")
            c = int(self.src.sub.tensors[tensor].shape[3])
            begin = self.new_const(np.array([0, region[0] - have[0], region[1] - have[1], 0]), "crop_begin")
            size = self.new_const(np.array([1, *_hw(region), c]), "crop_size")
            self.emit("SLICE", [index, begin, size], out, (schema.BuiltinOptions.SliceOptions, schema.SliceOptionsT()))
            self._crops[(tensor, region)] = out
        return self._crops[(tensor, region)]

    def pad(self, index: int, like: int, border: tuple[int, int, int, int], fill: int | None) -> int:
        """PAD (fills with the zero point) or PADV2 (fills with `fill`) by `border` (top, left, bottom, right)."""
        schema = _schema()
        hw = self.tensors[index].shape[1:3]
        out = self.tensor(like, (int(hw[0]) + border[0] + border[2], int(hw[1]) + border[1] + border[3]), "/border")
        top, left, bottom, right = border
        pads = self.new_const(np.array([[0, 0], [top, bottom], [left, right], [0, 0]]), "border_pads")
        if fill is None:
            self.emit("PAD", [index, pads], out, (schema.BuiltinOptions.PadOptions, schema.PadOptionsT()))
        else:
            value = self.new_const(np.array([fill]), "border_fill", quantized_like=index)
            self.emit("PADV2", [index, pads, value], out, (schema.BuiltinOptions.PadV2Options, schema.PadV2OptionsT()))
        return out

    def key(self) -> bytes:
        """What makes two patches run the same subgraph: ops, wiring, shapes and new constants."""
        ops = [(o.opcodeIndex, tuple(o.inputs), tuple(o.outputs)) for o in self.operators]
        shapes = [tuple(t.shape) for t in self.tensors]
        return repr((ops, shapes, [b.tobytes() for b in self.new_buffers])).encode()


def _patch_subgraph(src: _Model, codes: dict[str, int], end: int, needed: dict[int, Region]) -> _Patch:
    """Rewrite stage ops 0..end to compute the `needed` regions, padding only at true borders."""
    patch = _Patch(src, codes)
    image = src.sub.inputs[0]
    patch.held[image] = (patch.tensor(image, _hw(needed[image])), needed[image])
    for index in range(end + 1):
        op, name = src.ops[index], src.names[index]
        out_tensor = op.outputs[0]
        region = needed.get(out_tensor)
        if region is None:
            continue
        if name in _WINDOW_OPS | _PAD_OPS:
            x, want = src.window(index, region)
            clipped = clip_region(want, src.hw(x))
            border = _border(want, clipped)
            held = patch.take(x, clipped)
            if name in _PAD_OPS:
                fill = None if name == "PAD" else int(src.const(op.inputs[2]).ravel()[0])
                patch.held[out_tensor] = (patch.pad(held, x, border, fill) if any(border) else held, region)
                continue
            if any(border):
                if name == "AVERAGE_POOL_2D":
                    raise ConversionError(f"{src.path}: operator {index} (AVERAGE_POOL_2D) pads at the image "
                                          "border; TFLite averages over the valid pixels only, which a padded "
                                          "patch cannot reproduce")
                held = patch.pad(held, x, border, -128 if name == "MAX_POOL_2D" else None)
            out = patch.tensor(out_tensor, _hw(region))
            options = copy.deepcopy(op.builtinOptions)
            options.padding = _VALID
            weights = [patch.const(i) if i >= 0 else -1 for i in op.inputs[1:]]
            patch.emit(name, [held, *weights], out, (op.builtinOptionsType, options), like=op)
        else:
            if name == "CONCATENATION" and op.builtinOptions.axis not in (3, -1):
                raise ConversionError(f"{src.path}: operator {index} concatenates along axis "
                                      f"{op.builtinOptions.axis}; patches need channel concatenation (axis 3)")
            inputs = [patch.take(i, region) if i >= 0 and not src.is_const(i) else
                      (patch.const(i) if i >= 0 else -1) for i in op.inputs]
            out = patch.tensor(out_tensor, _hw(region))
            patch.emit(name, inputs, out, like=op)
        patch.held[out_tensor] = (out, region)
    return patch


def _compact(src: _Model, ops: list[Any], inputs: list[int], outputs: list[int], name: str) -> Any:
    """A subgraph of source `ops` holding only the tensors they use (indices renumbered)."""
    tensors: list[Any] = []
    remap: dict[int, int] = {}

    def index(t: int) -> int:
        if t < 0:
            return t
        if t not in remap:
            remap[t] = len(tensors)
            tensors.append(copy.deepcopy(src.sub.tensors[t]))
        return remap[t]

    operators = []
    for op in ops:
        new = copy.deepcopy(op)
        new.inputs = np.array([index(int(t)) for t in op.inputs], np.int32)
        new.outputs = np.array([index(int(t)) for t in op.outputs], np.int32)
        operators.append(new)
    return _subgraph(tensors, [index(t) for t in inputs], [index(t) for t in outputs], operators, name)


def _subgraph(tensors: list[Any], inputs: list[int], outputs: list[int], operators: list[Any], name: str) -> Any:
    sub = _schema().SubGraphT()
    sub.tensors, sub.operators, sub.name = tensors, operators, name
    sub.inputs, sub.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
    return sub


def _signature(key: str, index: int, sub: Any) -> Any:
    """SignatureDef `key` for subgraph `index`: its one input and one output, named "input" / "output"."""
    schema = _schema()

    def entry(name: str, tensor: int) -> Any:
        mapping = schema.TensorMapT()
        mapping.name, mapping.tensorIndex = name, int(tensor)
        return mapping

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = key, index
    sig.inputs, sig.outputs = [entry("input", sub.inputs[0])], [entry("output", sub.outputs[0])]
    return sig


def _opcodes(src: _Model) -> tuple[list[Any], dict[str, int]]:
    """The model's operator codes plus PAD, PADV2 and SLICE, and name -> index for all of them."""
    schema = _schema()
    codes = list(src.model.operatorCodes)
    index = {name: int(op.opcodeIndex) for name, op in zip(src.names, src.ops)}
    for name in ("PAD", "PADV2", "SLICE"):
        if name not in index:
            code = schema.OperatorCodeT()
            code.builtinCode = getattr(schema.BuiltinOperator, name)
            code.deprecatedBuiltinCode, code.version = min(code.builtinCode, 127), 2
            index[name] = len(codes)
            codes.append(code)
    return codes, index


def _pack(model: Any) -> bytes:
    """Serialise a ModelT with every byte vector (weight buffers) on a 16-byte boundary, as TFLM expects."""
    import flatbuffers

    class Builder(flatbuffers.Builder):
        def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - flatbuffers' own name
            if x.dtype != np.uint8:
                return super().CreateNumpyVector(x)
            self.StartVector(1, x.size, 16)
            self.head -= x.size
            self.Bytes[self.head: self.head + x.size] = x.tobytes()
            self.vectorNumElems = x.size
            return self.EndVector()

    builder = Builder(1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _standalone(shared: Any, index: int) -> Any:
    """Subgraph `index` of the shared model as a model of its own (subgraph 0), with only its buffers."""
    model = copy.copy(shared)
    sub = copy.deepcopy(shared.subgraphs[index])
    used = sorted({0} | {int(t.buffer) for t in sub.tensors})
    remap = {b: i for i, b in enumerate(used)}
    for t in sub.tensors:
        t.buffer = remap[int(t.buffer)]
    model.subgraphs, model.buffers = [sub], [shared.buffers[b] for b in used]
    model.signatureDefs = [_signature(shared.signatureDefs[index].signatureKey, 0, sub)]
    model.metadata, model.metadataBuffer = None, None
    return model


def _tensor_info(tensor: Any) -> dict:
    q = tensor.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else None
    return {"shape": [int(d) for d in tensor.shape], "dtype": _DTYPES.get(tensor.type, str(tensor.type)),
            "scale": scale, "zero_point": int(q.zeroPoint[0]) if scale is not None else None}


def build_patch_artifacts(tflite_path: str | Path, plan: PatchPlan) -> PatchArtifacts:
    """Rewrite a full-integer NHWC `.tflite` into per-class patch-stage subgraphs + the rest, per `plan`.

    `plan` must come from `plan_patches` / `fixed_plan` on `from_tflite(tflite_path)` (same layer names).
    """
    src = _Model(Path(tflite_path))
    end, stage_tensor = _stage_split(src, plan)
    codes, code_index = _opcodes(src)
    image = src.sub.inputs[0]
    kept: dict[bytes, _Patch] = {}
    patches = []
    for tile, window in zip(plan.tiles, plan.input_windows):
        needed, raw = _regions(src, end, stage_tensor, tile)
        if raw != tuple(window):
            raise PlanError(f"{src.path}: tile {tile} needs input window {raw}, the plan says {tuple(window)}; "
                            "the plan was made on another model")
        patch = _patch_subgraph(src, code_index, end, needed)
        key = patch.key()
        kept.setdefault(key, patch)
        patches.append({"class": list(kept).index(key), "window": list(needed[image]),
                        "pad": list(_border(raw, needed[image])), "tile": list(tile)})
    buffers = list(src.model.buffers)
    subgraphs = []
    for k, patch in enumerate(kept.values()):
        for t in patch.tensors:
            if t.buffer < 0:
                t.buffer = len(buffers) + (-1 - t.buffer)
        for data in patch.new_buffers:
            buffer = _schema().BufferT()
            buffer.data = data
            buffers.append(buffer)
        subgraphs.append(_subgraph(patch.tensors, [patch.held[image][0]], [patch.held[stage_tensor][0]],
                                   patch.operators, f"class_{k}"))
    subgraphs.append(_compact(src, src.ops[end + 1:], [stage_tensor], [int(t) for t in src.sub.outputs], "rest"))
    shared = copy.copy(src.model)
    shared.subgraphs, shared.buffers, shared.operatorCodes = subgraphs, buffers, codes
    keys = [f"class_{k}" for k in range(len(kept))] + ["rest"]
    shared.signatureDefs = [_signature(key, i, sub) for i, (key, sub) in enumerate(zip(keys, subgraphs))]
    files = {SHARED_MODEL: _pack(shared)}
    names = [f"patch_class{k}.tflite" for k in range(len(kept))] + ["patch_rest.tflite"]
    for i, name in enumerate(names):
        files[name] = _pack(_standalone(shared, i))
    stage_weights = sum(len(buffers[b].data) for b in {int(t.buffer) for t in subgraphs[0].tensors}
                        if buffers[b].data is not None)
    assert plan.chosen is not None  # checked by _stage_split
    schedule = {
        "kind": "patch", "version": SCHEDULE_VERSION, "shared_model": SHARED_MODEL, "layout": "NHWC",
        "stage_end": plan.chosen.stage_end, "grid": plan.chosen.grid,
        "input": _tensor_info(src.sub.tensors[image]), "stage": _tensor_info(src.sub.tensors[stage_tensor]),
        "output": _tensor_info(src.sub.tensors[src.sub.outputs[0]]),
        "classes": [{"model": names[k], "signature": keys[k], "subgraph": k,
                     "input": _tensor_info(sub.tensors[sub.inputs[0]]),
                     "output": _tensor_info(sub.tensors[sub.outputs[0]])} for k, sub in enumerate(subgraphs[:-1])],
        "rest": {"model": names[-1], "signature": "rest", "subgraph": len(subgraphs) - 1},
        "patches": patches,
        "stage_weight_bytes": stage_weights,
        "planner": {"peak_bytes": plan.chosen.peak_bytes, "layer_by_layer_peak_bytes": plan.layer_by_layer_peak_bytes},
    }
    return PatchArtifacts(files, schedule)

