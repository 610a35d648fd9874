"""Import a `.tflite` flatbuffer (float or INT8) into a Graph, read with `edgekit.formats.tflite`.

TFLite activations are NHWC; shapes are turned to N,C,H,W here so every source reads alike.
Tensors that litert-torch keeps in NCHW (before its boundary TRANSPOSE) are detected and left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.formats.tflite import TENSOR_TYPES, is_constant, op_name, read_model
from edgekit.graph.build import RawNode, build_graph, same_padding
from edgekit.graph.ir import DTYPE_BYTES, Graph, TensorSpec
from edgekit.graph.ops import MULTI_OUTPUT_OPS, TFLITE_OPS, Kind, op_info

_TFLITE_DTYPES = {0: "fp32", 1: "fp16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
                  10: "fp64"}  # -> IR names
_FUSED = {1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
# Ops that keep their input's layout: an NCHW tensor (litert-torch's, before its boundary TRANSPOSE) stays NCHW.
_LAYOUT_FREE = frozenset(name for name, op in TFLITE_OPS.items()
                         if op_info(op).kind in (Kind.POINTWISE, Kind.BINARY, Kind.QUANTIZATION))
_NHWC = (0, 3, 1, 2)  # canonical N,C,H,W axis k is axis _NHWC[k] of an NHWC tensor


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
    """Read a `.tflite` model (first subgraph) into a Graph; INT8 weights are counted as stored.

    A multi-output op (SPLIT, SPLIT_V, UNPACK, an unknown op) becomes one layer per output, each reading the
    op's whole input: the same buffers are live as when one op writes them all."""
    path = Path(path)
    model, _ = read_model(path)
    sub = model.subgraphs[0]
    ops = [(op_name(model, op), op) for op in sub.operators or []]
    # weights stored as float16 or sparse behind a DEQUANTIZE / DENSIFY (MediaPipe's files) are weights too
    stored_as = {i: i for i in range(len(sub.tensors)) if is_constant(model, i)}
    for opname, op in ops:
        if opname in ("DEQUANTIZE", "DENSIFY") and len(op.inputs) and all(i in stored_as for i in op.inputs):
            stored_as.update({out: stored_as[op.inputs[0]] for out in op.outputs})
    ops = [(opname, op) for opname, op in ops if not all(out in stored_as for out in op.outputs)]

    def stored_shape(index: int) -> tuple[int, ...]:
        dims = sub.tensors[index].shape
        return tuple(int(d) for d in dims) if dims is not None else ()

    def order(index: int) -> tuple[int, ...]:
        """Canonical axis k of tensor `index` is its stored axis order(index)[k]."""
        rank = len(stored_shape(index))
        return _NHWC if rank == 4 and index not in nchw else tuple(range(rank))

    def shape(index: int) -> tuple[int, ...]:
        dims = stored_shape(index)
        return tuple(dims[k] for k in order(index))

    def tensor_id(index: int) -> str:
        return f"t{index}"

    def dtype(index: int) -> str:
        return _TFLITE_DTYPES.get(sub.tensors[index].type, str(sub.tensors[index].type))

    def const_value(index: int) -> np.ndarray:
        raw = model.buffers[sub.tensors[index].buffer].data  # parse_model read any data stored past the flatbuffer
        return np.frombuffer(np.asarray(raw, np.uint8).tobytes(), TENSOR_TYPES.get(sub.tensors[index].type, "uint8"))

    def const_bytes(indices: list[int]) -> int:
        # as stored (a float16 weight: 2 bytes each); a scalar constant (PADV2's pad value) has no shape: one element
        return sum(int(np.prod(stored_shape(stored_as[i]))) * DTYPE_BYTES.get(dtype(stored_as[i]), 1) for i in indices)

    nchw = _nchw_tensors(ops, lambda op: const_value(op.inputs[1]))
    source = _Source(order, const_value, stored_shape)
    inputs = [TensorSpec(tensor_id(i), shape(i), dtype(i)) for i in sub.inputs]
    nodes = []
    for index, (opname, op) in enumerate(ops):
        acts = [i for i in op.inputs if i >= 0 and i not in stored_as]
        weights = [i for i in op.inputs if i >= 0 and i in stored_as]
        scope = _short_name(sub.tensors[op.outputs[0]].name)
        name = f"{scope}:{opname.lower()}" if scope else f"{opname.lower()}_{index}"
        raw = _translate(opname, op, name, acts, op.outputs[0], shape(op.outputs[0]),
                         [stored_shape(i) for i in weights],
                         const_bytes(weights), source)
        outs = op.outputs if raw.op in MULTI_OUTPUT_OPS | {"unknown"} else op.outputs[:1]
        for out in outs:
            nodes.append(RawNode(name, raw.op, [tensor_id(i) for i in acts], tensor_id(out), shape(out), dtype(out),
                                 dict(raw.attrs), opname))
    outputs = [tensor_id(i) for i in sub.outputs]
    return build_graph(path.stem, "tflite", "NHWC", inputs, outputs, nodes)


class _Source:
    """What `_translate` reads of the flatbuffer: axis orders, constants and stored shapes of tensors."""

    def __init__(self, order: Any, const_value: Any, stored_shape: Any) -> None:
        self.order, self.const_value, self.stored_shape = order, const_value, stored_shape

    def axis(self, tensor: int, stored_axis: int) -> int:
        """The canonical (N,C,H,W-order) axis of a stored axis of `tensor`."""
        order = self.order(tensor)
        return order.index(int(stored_axis) % len(order))

    def axes(self, tensor: int, stored: Any) -> tuple[int, ...]:
        return tuple(sorted(self.axis(tensor, a) for a in np.ravel(stored)))


def _translate(opname: str, op: Any, name: str, acts: list[int], out: int, out_shape: tuple, weight_shapes: list,
               param_bytes: int, src: _Source) -> RawNode:
    """Map one operator to a RawNode in the op table's vocabulary ('unknown' for builtins it does not know)."""
    options = op.builtinOptions
    first = acts[0] if acts else -1

    def raw(kind: str, **attrs: Any) -> RawNode:
        act = _FUSED.get(getattr(options, "fusedActivationFunction", 0))
        if act:
            attrs["act"] = act
        return RawNode(name, kind, [], "", out_shape, "", attrs, opname)

    kind = TFLITE_OPS.get(opname, "unknown")
    if opname in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if not weight_shapes or len(weight_shapes[0]) != 4:  # a weight computed at run time: shapes only
            return raw("unknown")
        w = [int(d) for d in weight_shapes[0]]  # conv: O,H,W,I; depthwise: 1,H,W,C*m
        stride, dilation = (options.strideH, options.strideW), (options.dilationHFactor, options.dilationWFactor)
        in_c = src.stored_shape(first)[-1]
        if opname == "CONV_2D":
            weight_shape, groups = (w[0], w[3], w[1], w[2]), in_c // w[3]
        else:
            weight_shape, groups = (w[3], 1, w[1], w[2]), in_c
        kernel = weight_shape[2:]
        in_hw = src.stored_shape(first)[1:3]
        padding = same_padding(in_hw, out_shape[2:], kernel, stride, dilation) \
            if options.padding == 0 else (0, 0, 0, 0)
        return raw("conv2d", weight_shape=weight_shape, bias=len(weight_shapes) > 1, groups=groups, kernel=kernel,
                   stride=stride, dilation=dilation, padding=padding, param_bytes=param_bytes)
    if opname == "TRANSPOSE_CONV":  # inputs: output shape, weights (O,H,W,I), input[, bias]
        w = [int(d) for d in weight_shapes[1]] if len(weight_shapes) > 1 else []
        if len(w) != 4:
            return raw("unknown")
        return raw("transpose_conv2d", weight_shape=(w[0], w[3], w[1], w[2]), bias=len(weight_shapes) > 2,
                   kernel=(w[1], w[2]), stride=(options.strideH, options.strideW), param_bytes=param_bytes)
    if opname == "FULLY_CONNECTED":
        return raw("linear", weight_shape=tuple(int(d) for d in weight_shapes[0]), bias=len(weight_shapes) > 1,
                   param_bytes=param_bytes)
    if opname == "BATCH_MATMUL":
        left = src.stored_shape(first)
        return raw("batch_matmul", inner=left[-2] if options.adjX else left[-1], param_bytes=param_bytes,
                   params=sum(int(np.prod(s)) for s in weight_shapes))
    if opname in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        kernel, stride = (options.filterHeight, options.filterWidth), (options.strideH, options.strideW)
        padding = same_padding(src.stored_shape(first)[1:3], out_shape[2:], kernel, stride, (1, 1)) \
            if options.padding == 0 else (0, 0, 0, 0)
        return raw(kind, kernel=kernel, stride=stride, padding=padding)
    if opname in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"):
        return raw(kind, axes=src.axes(first, src.const_value(op.inputs[1])), keep_dims=bool(options.keepDims))
    if opname in ("ARG_MAX", "ARG_MIN"):
        return raw(kind, axes=src.axes(first, src.const_value(op.inputs[1])), keep_dims=False)
    if opname in ("SOFTMAX", "LOG_SOFTMAX"):
        return raw(kind, axes=(src.axis(first, -1),))
    if opname == "TRANSPOSE":
        stored = [int(p) for p in src.const_value(op.inputs[1])]
        in_order, out_order = src.order(first), src.order(out)
        return raw("transpose", perm=tuple(in_order.index(stored[out_order[k]]) for k in range(len(stored))))
    if opname == "CONCATENATION":
        return raw("concat", axis=src.axis(out, options.axis))
    if opname in ("PAD", "PADV2"):
        pads = src.const_value(op.inputs[1]).reshape(-1, 2)
        if len(pads) != 4 or pads[0].any() or pads[3].any() or src.order(first) != _NHWC:
            return raw("pad", padding=(0, 0, 0, 0), zero=False)  # not (only) a spatial pad: a copy, not folded
        return raw("pad", padding=(int(pads[1][0]), int(pads[2][0]), int(pads[1][1]), int(pads[2][1])),
                   zero=opname == "PAD")  # int8 PAD fills with the zero point, i.e. real zero
    return raw(kind)
