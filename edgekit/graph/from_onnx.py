"""Import an ONNX file: shape inference by `onnx`, operators mapped to edgekit's vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelLoadError
from edgekit.graph.build import RawNode, build_graph, same_padding
from edgekit.graph.ir import Graph, TensorSpec
from edgekit.graph.ops import MULTI_OUTPUT_OPS, NORM_FIRST_AXIS, ONNX_OPS

_ONNX_DTYPES = {1: "fp32", 10: "fp16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64", 9: "bool", 11: "fp64"}
# Operators that only compute shapes or constants; they never touch activations.
_SHAPE_OPS = {"Shape", "Size", "Constant", "ConstantOfShape"}


def _require_onnx(path: Path) -> None:
    """The `onnx` package is an optional extra: a one-line ModelLoadError saying what to install when it is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"{path}: reading ONNX models needs the 'onnx' package, which is not installed: "
                             "pip install 'edgekit[onnx]'") from None


def _load_model(path: Path, input_shape: tuple[int, ...] | None) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if not graph_inputs:
        raise ModelLoadError(f"{path}: the ONNX graph has no inputs (empty or corrupt file?)")
    for value in graph_inputs[:1]:
        dims = value.type.tensor_type.shape.dim
        if input_shape is not None:
            if len(input_shape) != len(dims):
                raise ModelLoadError(f"{path}: input '{value.name}' has rank {len(dims)}, "
                                     f"the given input shape {tuple(input_shape)} has rank {len(input_shape)}")
            for dim, size in zip(dims, input_shape):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise ModelLoadError(f"{path}: input '{value.name}' has fixed shape "
                                         f"{[d.dim_value or d.dim_param for d in dims]}, given {tuple(input_shape)}")
                dim.dim_value = size
        elif any(not d.HasField("dim_value") for d in dims[1:]):
            raise ModelLoadError(f"{path}: input '{value.name}' has symbolic dimensions "
                                 f"{[d.dim_value or d.dim_param for d in dims]}; pass an input shape")
        elif dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, ValidationError, ...
        raise ModelLoadError(f"{path}: ONNX shape inference failed: {str(exc).splitlines()[0]}") from None


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _spatial(attrs: dict, kernel: tuple[int, int], in_hw: tuple[int, int], out_hw: tuple[int, int]) -> dict:
    """kernel/stride/padding/dilation of a Conv or Pool, resolving auto_pad SAME_* to explicit pads."""
    stride = tuple(attrs.get("strides", (1, 1)))
    dilation = tuple(attrs.get("dilations", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto.startswith("SAME"):
        pads = same_padding(in_hw, out_hw, kernel, stride, dilation, extra_at_end=auto == "SAME_UPPER")
    return {"kernel": kernel, "stride": stride, "dilation": dilation, "padding": pads}


def from_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Graph:
    """Read an ONNX model file into a Graph; `input_shape` fixes symbolic input dimensions."""
    path = Path(path)
    _require_onnx(path)
    from onnx import numpy_helper

    model = _load_model(path, input_shape)
    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    stored = {name: int(value.nbytes) for name, value in consts.items()}  # bytes of each constant as the file holds it
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = value.type.tensor_type
        shapes[value.name] = tuple(d.dim_value for d in tensor_type.shape.dim)
        dtypes[value.name] = _ONNX_DTYPES.get(tensor_type.elem_type, str(tensor_type.elem_type))
    inputs = [TensorSpec(v.name, shapes[v.name], dtypes[v.name]) for v in graph.input if v.name not in consts]
    activations = {spec.name for spec in inputs}
    nodes = []
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type.lower()}_{index}"
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
            continue
        acts = [t for t in node.input if t in activations]
        if not acts and node.op_type == "DequantizeLinear" and node.input[0] in consts:  # a QDQ model's weights
            consts[node.output[0]] = _dequantized(node, consts)
            stored[node.output[0]] = stored.get(node.input[0], 0)
        if not acts or node.op_type in _SHAPE_OPS:
            continue
        _require_shape(path, node, name, node.output[0], shapes)
        raw = _translate(node, name, acts, node.output[0], shapes, consts)
        if raw.op in _WEIGHTED:  # parameters as stored: int8 behind a DequantizeLinear, float32 otherwise
            raw.attrs["param_bytes"] = sum(stored.get(t, 0) for t in node.input if t not in activations)
        # split (and an unknown op, whose outputs edgekit cannot tell apart) lowers to one layer per output
        outs = [t for t in node.output if t] if raw.op in MULTI_OUTPUT_OPS | {"unknown"} else [node.output[0]]
        for out in outs:
            _require_shape(path, node, name, out, shapes)
            activations.add(out)
            nodes.append(RawNode(name, raw.op, acts, out, shapes[out], dtypes[out], dict(raw.attrs), raw.source_op))
    outputs = [v.name for v in graph.output]
    return build_graph(path.stem, "onnx", "NCHW", inputs, outputs, nodes)


_WEIGHTED = frozenset({"conv2d", "transpose_conv2d", "linear"})


def _dequantized(node: Any, consts: dict) -> np.ndarray:
    """The float value of a DequantizeLinear of constants: (q - zero point) x scale, per tensor or along `axis`."""
    q = consts[node.input[0]].astype(np.float32)
    scale = np.asarray(consts.get(node.input[1], 1.0), np.float32) if len(node.input) > 1 else np.float32(1.0)
    zero = np.asarray(consts.get(node.input[2], 0), np.float32) if len(node.input) > 2 and node.input[2] else 0.0
    if np.ndim(scale) == 1 and q.ndim > 1:
        axis = _attrs(node).get("axis", 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return (q - zero) * scale


def _require_shape(path: Path, node: Any, name: str, tensor: str, shapes: dict) -> None:
    """A ModelLoadError naming the node when shape inference left one of its outputs without a shape."""
    if tensor not in shapes:
        raise ModelLoadError(f"{path}: shape inference found no shape for '{tensor}', output of node '{name}' "
                             f"({node.op_type}); edgekit needs every activation's shape (give it as value_info)")


def _reduce_axes(node: Any, attrs: dict, rank: int, const: Any) -> dict:
    """axes (sorted, non-negative; all when none are given) and keep_dims of an ONNX reduction."""
    axes = const(1) if const(1) is not None else attrs.get("axes")
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [attrs.get("axis", 0)]
    axes = tuple(range(rank)) if axes is None or len(np.ravel(axes)) == 0 else \
        tuple(sorted(int(a) % rank for a in np.ravel(axes)))
    return {"axes": axes, "keep_dims": bool(attrs.get("keepdims", 1))}


def _translate(node: Any, name: str, acts: list[str], out: str, shapes: dict, consts: dict) -> RawNode:
    """Map one ONNX node to a RawNode in the op table's vocabulary ('unknown' for ops it does not know)."""
    op_type, attrs, shape = node.op_type, _attrs(node), shapes.get(out, ())
    standard = node.domain in ("", "ai.onnx")
    source = op_type if standard else f"{node.domain}.{op_type}"
    op = ONNX_OPS.get(op_type, "unknown") if standard else "unknown"
    rank = len(shapes.get(acts[0], ()))

    def raw(kind: str, **extra: Any) -> RawNode:
        return RawNode(name, kind, acts, out, shape, "", extra, source_op=source)

    def const(index: int) -> np.ndarray | None:
        return consts.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    if op in ("conv2d", "transpose_conv2d"):
        weight = const(1)
        if weight is None or weight.ndim != 4:  # a weight computed at run time, or not 2-D: shapes only
            return raw("unknown")
        groups = int(attrs.get("group", 1))
        in_hw, out_hw = shapes[acts[0]][2:], shape[2:]
        if op == "transpose_conv2d":  # ONNX stores (in, out/groups, kh, kw); the table reads (out, in/groups, ...)
            weight_shape = (weight.shape[1] * groups, weight.shape[0] // groups, *weight.shape[2:])
            return raw(op, weight_shape=weight_shape, bias=const(2) is not None, groups=groups,
                       kernel=tuple(weight.shape[2:]), stride=tuple(attrs.get("strides", (1, 1))))
        return raw("conv2d", weight_shape=weight.shape, bias=const(2) is not None, groups=groups,
                   **_spatial(attrs, weight.shape[2:], in_hw, out_hw))
    if op_type in ("Gemm", "MatMul"):
        weight = const(1)
        if weight is not None and weight.ndim == 2:
            if op_type == "MatMul" or not attrs.get("transB", 0):
                weight = weight.T
            return raw("linear", weight_shape=weight.shape, bias=const(2) is not None)
        left = shapes[acts[0]]
        return raw("batch_matmul", inner=int(left[-2] if attrs.get("transA", 0) else left[-1]))
    if op == "batchnorm":
        return raw("batchnorm", channels=shape[1])
    if op == "clip":
        low = const(1) if const(1) is not None else attrs.get("min")
        high = const(2) if const(2) is not None else attrs.get("max")
        six = low is not None and high is not None and (float(low), float(high)) == (0.0, 6.0)
        return raw("relu6" if six else "clip")
    if op in ("maxpool2d", "avgpool2d"):
        kernel = tuple(attrs["kernel_shape"])
        return raw(op, **_spatial(attrs, kernel, shapes[acts[0]][2:], shape[2:])) if len(kernel) == 2 \
            else raw("unknown")
    if op in ("mean", "sum", "reduce_max", "reduce_min", "arg_max", "arg_min"):
        return raw(op, **_reduce_axes(node, attrs, rank, const))
    if op in ("softmax", "log_softmax"):
        return raw(op, axes=(int(attrs.get("axis", -1)) % rank,))
    if op in ("layer_norm", *NORM_FIRST_AXIS):  # inputs: x, scale, bias
        first = int(attrs.get("axis", -1)) % rank if op == "layer_norm" else NORM_FIRST_AXIS[op]
        params = sum(int(np.size(c)) for c in (const(1), const(2)) if c is not None)
        return raw(op, axes=tuple(range(first, rank)), params=params)
    if op == "concat":
        return raw("concat", axis=attrs["axis"] % len(shape))
    if op == "transpose":
        return raw("transpose", perm=tuple(int(p) for p in attrs.get("perm", range(rank - 1, -1, -1))))
    if op == "resize_nearest":
        mode = attrs.get("mode", b"nearest")
        return raw("resize_bilinear" if (mode.decode() if isinstance(mode, bytes) else mode) == "linear"
                   else "resize_nearest")
    if op == "pad":
        pads, value = const(1), const(2)
        if pads is None or len(pads) != 8 or any(pads[[0, 1, 4, 5]]):  # not (only) a spatial pad of a 4-D tensor
            return raw("pad", padding=(0, 0, 0, 0), zero=False)
        zero = attrs.get("mode", b"constant") in (b"constant", "constant") and (value is None or float(value) == 0.0)
        return raw("pad", padding=(int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])), zero=zero)
    return raw(op)
