"""Import an ONNX file: shape inference by `onnx`, operators mapped to edgekit's vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelLoadError, UnsupportedOpError
from edgekit.graph.build import RawNode, build_graph, same_padding
from edgekit.graph.ir import Graph, TensorSpec

_ONNX_DTYPES = {1: "fp32", 10: "fp16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}
_SIMPLE = {"Relu": "relu", "Add": "add", "Mul": "mul", "Sub": "sub", "HardSwish": "hardswish",
           "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax", "LeakyRelu": "leaky_relu", "Gelu": "gelu",
           "HardSigmoid": "hardsigmoid", "GlobalAveragePool": "global_avgpool", "Flatten": "reshape",
           "Reshape": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape", "Identity": "identity",
           "Dropout": "identity", "Resize": "upsample", "Upsample": "upsample", "Transpose": "transpose",
           "QuantizeLinear": "quantize", "DequantizeLinear": "dequantize"}
# Operators that only compute shapes or constants; they never touch activations.
_SHAPE_OPS = {"Shape", "Size", "Constant", "ConstantOfShape"}


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
    from onnx import numpy_helper

    path = Path(path)
    model = _load_model(path, input_shape)
    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
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
        if not acts or node.op_type in _SHAPE_OPS:
            continue
        out = node.output[0]
        if out not in shapes:
            raise ModelLoadError(f"{path}: shape inference could not find the shape of '{out}' (node '{name}')")
        activations.add(out)
        nodes.append(_translate(node, name, acts, out, shapes, dtypes[out], consts, path))
    outputs = [v.name for v in graph.output]
    return build_graph(path.stem, "onnx", "NCHW", inputs, outputs, nodes)


def _translate(node: Any, name: str, acts: list[str], out: str, shapes: dict, dtype: str, consts: dict,
               path: Path) -> RawNode:
    op_type, attrs, shape = node.op_type, _attrs(node), shapes[out]

    def raw(op: str, **extra: Any) -> RawNode:
        return RawNode(name, op, acts, out, shape, dtype, extra)

    def const(index: int) -> np.ndarray | None:
        return consts.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    if op_type == "Conv":
        weight = const(1)
        if weight is None or weight.ndim != 4:
            raise UnsupportedOpError(f"{path}: node '{name}' is a Conv whose weight is not a constant 4-D tensor")
        in_hw, out_hw = shapes[acts[0]][2:], shape[2:]
        return raw("conv2d", weight_shape=weight.shape, bias=const(2) is not None, groups=attrs.get("group", 1),
                   **_spatial(attrs, weight.shape[2:], in_hw, out_hw))
    if op_type in ("Gemm", "MatMul"):
        weight = const(1)
        if weight is None or weight.ndim != 2:
            raise UnsupportedOpError(f"{path}: node '{name}' is a {op_type} without a constant 2-D weight")
        if op_type == "MatMul" or not attrs.get("transB", 0):
            weight = weight.T
        return raw("linear", weight_shape=weight.shape, bias=const(2) is not None)
    if op_type == "BatchNormalization":
        return raw("batchnorm", channels=shape[1])
    if op_type == "Clip":
        low = const(1) if const(1) is not None else attrs.get("min")
        high = const(2) if const(2) is not None else attrs.get("max")
        if low is not None and high is not None and (float(low), float(high)) == (0.0, 6.0):
            return raw("relu6")
        raise UnsupportedOpError(f"{path}: node '{name}' is a Clip to [{low}, {high}] (only relu6 is supported)")
    if op_type in ("MaxPool", "AveragePool"):
        kernel = tuple(attrs["kernel_shape"])
        spatial = _spatial(attrs, kernel, shapes[acts[0]][2:], shape[2:])
        return raw("maxpool2d" if op_type == "MaxPool" else "avgpool2d", **spatial)
    if op_type == "ReduceMean":
        axes = const(1) if const(1) is not None else attrs.get("axes")
        if axes is not None and sorted(int(a) % 4 for a in np.ravel(axes)) == [2, 3]:
            return raw("global_avgpool")
        raise UnsupportedOpError(f"{path}: node '{name}' is a ReduceMean over axes {axes} (only H,W is supported)")
    if op_type == "Concat":
        return raw("concat", axis=attrs["axis"] % len(shape))
    if op_type == "Pad":
        pads = const(1)
        value = const(2)
        if pads is None or len(pads) != 8 or any(pads[[0, 1, 4, 5]]):
            raise UnsupportedOpError(f"{path}: node '{name}' is a Pad that is not a constant spatial pad")
        zero = attrs.get("mode", b"constant") in (b"constant", "constant") and (value is None or float(value) == 0.0)
        return raw("pad", padding=(int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])), zero=zero)
    if op_type in _SIMPLE:
        return raw(_SIMPLE[op_type])
    raise UnsupportedOpError(f"{path}: node '{name}' uses ONNX operator {op_type}, which edgekit cannot analyse yet")
