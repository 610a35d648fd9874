"""Import a `.tflite` flatbuffer (float or INT8) into a Graph, read with `edgekit.formats.tflite`.

TFLite activations are NHWC; shapes are turned to N,C,H,W here so every source reads alike.
Tensors that litert-torch keeps in NCHW (before its boundary TRANSPOSE) are detected and left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedOpError
from edgekit.formats.tflite import TENSOR_TYPES, is_constant, op_name, read_model
from edgekit.graph.build import RawNode, build_graph, same_padding
from edgekit.graph.ir import DTYPE_BYTES, Graph, TensorSpec

_TFLITE_DTYPES = {0: "fp32", 1: "fp16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}  # -> IR names
_SIMPLE = {"ADD": "add", "MUL": "mul", "SUB": "sub", "RELU": "relu", "RELU6": "relu6", "HARD_SWISH": "hardswish",
           "LOGISTIC": "sigmoid", "TANH": "tanh", "SOFTMAX": "softmax", "LEAKY_RELU": "leaky_relu", "GELU": "gelu",
           "RESHAPE": "reshape", "SQUEEZE": "reshape", "EXPAND_DIMS": "reshape", "QUANTIZE": "quantize",
           "DEQUANTIZE": "dequantize", "TRANSPOSE": "transpose", "RESIZE_NEAREST_NEIGHBOR": "upsample",
           "RESIZE_BILINEAR": "upsample"}
_FUSED = {1: "relu", 3: "relu6"}
_LAYOUT_FREE = {"QUANTIZE", "DEQUANTIZE", "RELU", "RELU6", "LOGISTIC", "TANH", "HARD_SWISH", "ADD", "MUL", "SUB"}


def _short_name(tensor_name: bytes | str) -> str:
    """'__main__.M/torch...Sequential_stem/torch...Conv2d_0;...' -> 'stem.0' (litert-torch naming)."""
    text = tensor_name.decode() if isinstance(tensor_name, bytes) else tensor_name
    scoped = [part for part in text.split(";") if "/" in part]
    if not scoped:
        return ""
    parts = [p.rsplit(".", 1)[-1] for p in scoped[-1].split("/")[1:]]
    attrs = [p.split("_", 1)[1] for p in parts if "_" in p]
    return ".".join(attrs)


def _nchw_tensors(ops: list[tuple[str, Any]], perm_of: Any) -> set[int]:
    """Indices of 4-D tensors kept in NCHW: the NCHW side of boundary transposes and what flows with it."""
    nchw: set[int] = set()
    for name, op in ops:
        if name == "TRANSPOSE":
            perm = list(perm_of(op))
            if perm == [0, 2, 3, 1]:
                nchw.add(op.inputs[0])
            elif perm == [0, 3, 1, 2]:
                nchw.add(op.outputs[0])
    changed = True
    while changed:
        changed = False
        for name, op in ops:
            if name in _LAYOUT_FREE and len(op.inputs) and len(op.outputs):
                ends = {op.inputs[0], op.outputs[0]}
                if ends & nchw and not ends <= nchw:
                    nchw |= ends
                    changed = True
    return nchw


def from_tflite(path: str | Path) -> Graph:
    """Read a `.tflite` model (first subgraph) into a Graph; INT8 weights are counted as stored."""
    path = Path(path)
    model, data = read_model(path)
    sub = model.subgraphs[0]
    ops = [(op_name(model, op), op) for op in sub.operators or []]

    def shape(index: int) -> tuple[int, ...]:
        dims = tuple(int(d) for d in sub.tensors[index].shape)
        return (dims[0], dims[3], dims[1], dims[2]) if len(dims) == 4 and index not in nchw else dims

    def tensor_id(index: int) -> str:
        return f"t{index}"

    def dtype(index: int) -> str:
        return _TFLITE_DTYPES.get(sub.tensors[index].type, str(sub.tensors[index].type))

    def const_value(index: int) -> np.ndarray:
        buffer = model.buffers[sub.tensors[index].buffer]
        raw = buffer.data if buffer.data is not None and len(buffer.data) else \
            np.frombuffer(data, np.uint8, count=buffer.size, offset=buffer.offset)
        return np.frombuffer(np.asarray(raw, np.uint8).tobytes(), TENSOR_TYPES.get(sub.tensors[index].type, "uint8"))

    def const_bytes(indices: list[int]) -> int:
        # a scalar constant (PADV2's pad value) has no shape vector: one element
        return sum(int(np.prod(sub.tensors[i].shape if sub.tensors[i].shape is not None else ()))
                   * DTYPE_BYTES.get(dtype(i), 1) for i in indices)

    nchw = _nchw_tensors(ops, lambda op: const_value(op.inputs[1]))
    inputs = [TensorSpec(tensor_id(i), shape(i), dtype(i)) for i in sub.inputs]
    nodes = []
    for index, (opname, op) in enumerate(ops):
        acts = [i for i in op.inputs if i >= 0 and not is_constant(model, i)]
        weights = [i for i in op.inputs if i >= 0 and is_constant(model, i)]
        out = op.outputs[0]
        scope = _short_name(sub.tensors[out].name)
        name = f"{scope}:{opname.lower()}" if scope else f"{opname.lower()}_{index}"
        nodes.append(_translate(opname, op, name, [tensor_id(i) for i in acts], tensor_id(out), shape(out),
                                dtype(out), [sub.tensors[i].shape if sub.tensors[i].shape is not None else ()
                                             for i in weights], const_bytes(weights),
                                [shape(i) for i in acts], const_value, path, index))
    outputs = [tensor_id(i) for i in sub.outputs]
    return build_graph(path.stem, "tflite", "NHWC", inputs, outputs, nodes)


def _translate(opname: str, op: Any, name: str, acts: list[str], out: str, out_shape: tuple, dtype: str,
               weight_shapes: list, param_bytes: int, act_shapes: list, const_value: Any, path: Path,
               index: int) -> RawNode:
    options = op.builtinOptions

    def raw(kind: str, **attrs: Any) -> RawNode:
        act = _FUSED.get(getattr(options, "fusedActivationFunction", 0))
        if act:
            attrs["act"] = act
        return RawNode(name, kind, acts, out, out_shape, dtype, attrs)

    if opname in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = [int(d) for d in weight_shapes[0]]  # conv: O,H,W,I; depthwise: 1,H,W,C*m
        stride, dilation = (options.strideH, options.strideW), (options.dilationHFactor, options.dilationWFactor)
        in_c = act_shapes[0][1]
        if opname == "CONV_2D":
            weight_shape, groups = (w[0], w[3], w[1], w[2]), in_c // w[3]
        else:
            weight_shape, groups = (w[3], 1, w[1], w[2]), in_c
        kernel = weight_shape[2:]
        padding = same_padding(act_shapes[0][2:], out_shape[2:], kernel, stride, dilation) \
            if options.padding == 0 else (0, 0, 0, 0)
        return raw("conv2d", weight_shape=weight_shape, bias=len(weight_shapes) > 1, groups=groups, kernel=kernel,
                   stride=stride, dilation=dilation, padding=padding, param_bytes=param_bytes)
    if opname == "FULLY_CONNECTED":
        return raw("linear", weight_shape=tuple(int(d) for d in weight_shapes[0]), bias=len(weight_shapes) > 1,
                   param_bytes=param_bytes)
    if opname in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        kernel, stride = (options.filterHeight, options.filterWidth), (options.strideH, options.strideW)
        padding = same_padding(act_shapes[0][2:], out_shape[2:], kernel, stride, (1, 1)) \
            if options.padding == 0 else (0, 0, 0, 0)
        return raw("maxpool2d" if opname == "MAX_POOL_2D" else "avgpool2d", kernel=kernel, stride=stride,
                   padding=padding)
    if opname == "MEAN" and len(act_shapes[0]) == 4:
        return raw("global_avgpool")
    if opname == "CONCATENATION":
        axis = options.axis % len(out_shape)
        return raw("concat", axis={3: 1, 1: 2, 2: 3}.get(axis, axis) if len(out_shape) == 4 else axis)
    if opname in ("PAD", "PADV2"):
        pads = const_value(op.inputs[1]).reshape(-1, 2)
        if len(pads) != 4 or pads[0].any() or pads[3].any():
            raise UnsupportedOpError(f"{path}: operator {index} ({name}) pads more than the spatial axes")
        return raw("pad", padding=(int(pads[1][0]), int(pads[2][0]), int(pads[1][1]), int(pads[2][1])),
                   zero=opname == "PAD")  # int8 PAD fills with the zero point, i.e. real zero
    if opname in _SIMPLE:
        return raw(_SIMPLE[opname])
    raise UnsupportedOpError(f"{path}: operator {index} ({name}) is {opname}, which edgekit cannot analyse yet")
