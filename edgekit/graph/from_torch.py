"""Import a torch `nn.Module` by tracing it once with `torch.export` (host side only)."""

from __future__ import annotations

from typing import Any

from edgekit.errors import ModelLoadError
from edgekit.graph.build import RawNode, build_graph, same_padding
from edgekit.graph.ir import Graph, TensorSpec, numel
from edgekit.graph.ops import ATEN_OPS, NORM_FIRST_AXIS

_TORCH_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.int8": "int8", "torch.uint8": "uint8",
                 "torch.int32": "int32", "torch.int64": "int64", "torch.bool": "bool", "torch.float64": "fp64"}


def _pair(value: Any, default: int) -> tuple[int, int]:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return (default, default)
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[-1]))


def _arg(node: Any, index: int, default: Any = None) -> Any:
    return node.args[index] if len(node.args) > index else default


def _layer_name(node: Any) -> str:
    """The module path for calls of built-in leaf modules ('features.1.conv.0'), path.op otherwise."""
    stack = node.meta.get("nn_module_stack") or {}
    path, cls = list(stack.values())[-1] if stack else ("", "")
    cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    leaf = cls.startswith("torch.nn.modules.") and ".container." not in cls
    if leaf and path:
        return path
    op = str(node.target).split(".")[1] if str(node.target).startswith("aten.") else node.name
    return f"{path}.{op}" if path else op


def _axes(dims: Any, rank: int) -> tuple[int, ...]:
    """Reduction dims as sorted non-negative axes; None or [] means all of them."""
    if dims is None or isinstance(dims, (list, tuple)) and len(dims) == 0:
        return tuple(range(rank))
    return tuple(sorted(int(d) % rank for d in (dims if isinstance(dims, (list, tuple)) else [dims])))


def _rank(node: Any) -> int:
    return len(node.args[0].meta["val"].shape)


def _translate(node: Any, name: str, inputs: list[str], output: str, shape: tuple, dtype: str,
               is_weight: Any) -> RawNode:
    """Map one aten call to a RawNode in the op table's vocabulary ('unknown' for aten ops it does not know)."""
    target = str(node.target)
    op = ATEN_OPS.get(target, "unknown")

    def raw(kind: str, **attrs: Any) -> RawNode:
        return RawNode(name, kind, inputs, output, shape, dtype, attrs, source_op=target)

    if op in ("conv2d", "transpose_conv2d"):
        weight = tuple(node.args[1].meta["val"].shape)
        if len(weight) != 4:  # a 1-D or 3-D convolution: shapes known, semantics not in the table
            return raw("unknown")
        if target == "aten.convolution.default":  # (x, w, b, stride, padding, dilation, transposed, out_pad, groups)
            stride, padding, dilation, groups = node.args[3], node.args[4], node.args[5], node.args[8]
            op = "transpose_conv2d" if _arg(node, 6) else "conv2d"
        elif op == "transpose_conv2d":  # (x, w, b, stride, padding, output_padding, groups, dilation)
            stride, padding, dilation, groups = _arg(node, 3), _arg(node, 4, 0), _arg(node, 7), _arg(node, 6, 1)
        else:
            stride, padding, dilation, groups = _arg(node, 3), _arg(node, 4, 0), _arg(node, 5), _arg(node, 6, 1)
        groups = int(groups)
        if op == "transpose_conv2d":  # torch stores (in, out/groups, kh, kw); the table reads (out, in/groups, ...)
            weight = (weight[1] * groups, weight[0] // groups, *weight[2:])
        if isinstance(padding, str):  # conv2d.padding: 'valid', or 'same' (torch puts the odd pixel last)
            in_hw, out_hw = tuple(node.args[0].meta["val"].shape[-2:]), tuple(shape[-2:])
            pads = same_padding(in_hw, out_hw, weight[2:], _pair(stride, 1), _pair(dilation, 1)) \
                if padding == "same" else (0, 0, 0, 0)
        else:
            pad = _pair(padding, 0)
            pads = (pad[0], pad[1], pad[0], pad[1])
        return raw(op, weight_shape=weight, bias=_arg(node, 2) is not None, kernel=weight[2:],
                   stride=_pair(stride, 1), padding=pads, dilation=_pair(dilation, 1), groups=groups)
    if op == "linear":
        return raw("linear", weight_shape=tuple(node.args[1].meta["val"].shape), bias=_arg(node, 2) is not None)
    if op == "batch_matmul":
        left, right = node.args[0].meta["val"].shape, node.args[1].meta["val"].shape
        if is_weight(node.args[1]) and len(right) == 2:  # x @ W with a parameter: a linear layer
            return raw("linear", weight_shape=(int(right[1]), int(right[0])), bias=False)
        return raw("batch_matmul", inner=int(left[-1]))
    if op == "batchnorm":
        return raw("batchnorm", channels=shape[1])
    if op == "clip":
        low, high = _arg(node, 1), _arg(node, 2)
        return raw("relu6" if (low, high) == (0.0, 6.0) or (low, high) == (0, 6) else "clip")
    if op == "concat":
        return raw("concat", axis=int(_arg(node, 1, 0)) % len(shape))
    if op in ("maxpool2d", "avgpool2d"):
        kernel = _pair(node.args[1], 1)
        stride = _pair(_arg(node, 2), 0)
        pad = _pair(_arg(node, 3, 0), 0)
        return raw(op, kernel=kernel, stride=stride if stride != (0, 0) else kernel, padding=(*pad, *pad))
    if op == "global_avgpool":  # adaptive_avg_pool2d: global, identity or an even pool
        in_hw, out_hw = tuple(node.args[0].meta["val"].shape[-2:]), tuple(shape[-2:])
        if out_hw == (1, 1):
            return raw("global_avgpool")
        if in_hw == out_hw:
            return raw("identity")
        if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
            kernel = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
            return raw("avgpool2d", kernel=kernel, stride=kernel)
        return raw("unknown")
    if op in ("mean", "sum", "reduce_max", "reduce_min", "arg_max", "arg_min"):
        whole = target in ("aten.mean.default", "aten.sum.default")  # (x, dtype): over every axis
        dims = None if whole else _arg(node, 1, node.kwargs.get("dim"))
        keep = not whole and bool(_arg(node, 2, node.kwargs.get("keepdim", False)))
        return raw(op, axes=_axes(dims, _rank(node)), keep_dims=keep)
    if op in ("softmax", "log_softmax"):
        return raw(op, axes=_axes(_arg(node, 1), _rank(node)))
    if op == "layer_norm":
        normalized = tuple(node.args[1])
        rank = _rank(node)
        weights = sum(1 for index in (2, 3) if _arg(node, index) is not None)
        return raw("layer_norm", axes=tuple(range(rank - len(normalized), rank)), params=weights * numel(normalized))
    if op in NORM_FIRST_AXIS:  # group_norm(x, groups, w, b), native_group_norm(x, w, b, ...), instance_norm(x, w, b)
        first = 2 if target == "aten.group_norm.default" else 1
        affine = [arg for arg in node.args[first:first + 2] if arg is not None]
        return raw(op, axes=tuple(range(NORM_FIRST_AXIS[op], _rank(node))),
                   params=sum(numel(tuple(arg.meta["val"].shape)) for arg in affine))
    if op == "transpose":
        rank = _rank(node)
        if target == "aten.permute.default":
            perm = [int(d) % rank for d in node.args[1]]
        else:  # transpose.int(x, a, b) swaps two dims; t() swaps the two of a matrix
            first, second = (int(_arg(node, 1, 0)) % rank, int(_arg(node, 2, 1)) % rank)
            perm = list(range(rank))
            perm[first], perm[second] = perm[second], perm[first]
        return raw("transpose", perm=tuple(perm))
    if op == "pad":
        sizes = [int(d) for d in node.args[1]]
        left, right, top, bottom = (sizes + [0, 0, 0, 0])[:4]
        if target == "aten.pad.default":  # (input, pad, mode="constant", value=None)
            constant, value = _arg(node, 2, "constant") == "constant", _arg(node, 3, None)
        else:  # constant_pad_nd(input, pad, value=0)
            constant, value = True, _arg(node, 2, 0.0)
        spatial = len(sizes) <= 4 and _rank(node) == 4
        return raw("pad", padding=(top, left, bottom, right) if spatial else (0, 0, 0, 0),
                   zero=spatial and constant and float(value or 0.0) == 0.0)
    return raw(op)


def export_program(model: Any, input_shape: tuple[int, ...], name: str | None = None) -> Any:
    """Trace `model` once with torch.export on a zero input of `input_shape` (host side only)."""
    import torch  # host-side only: the device runtime never imports this module

    try:
        return torch.export.export(model.eval(), (torch.zeros(*input_shape),))
    except Exception as exc:  # torch raises many types for a shape that does not fit
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{name or type(model).__name__}: tracing with input shape {tuple(input_shape)} "
                             f"failed: {first}") from None


def from_torch(model: Any, input_shape: tuple[int, ...], name: str | None = None) -> Graph:
    """Trace `model` with torch.export on a zero input of `input_shape` and build its Graph."""
    model_name = name or type(model).__name__
    return graph_from_program(export_program(model, input_shape, model_name), model_name)


def graph_from_program(program: Any, model_name: str) -> Graph:
    """The Graph of an ExportedProgram; tensor names are its FX node names.

    A multi-output call (split, chunk, unbind) becomes one layer per output it is indexed for, each reading
    the call's whole input (the same buffers live as one call writing all outputs). Calls on no activation
    (constants computed in the graph) are not layers. Every tensor the model returns is a graph output,
    whether it returns a tensor, a tuple, a dict or a ModelOutput dataclass."""
    import operator

    user_inputs = set(program.graph_signature.user_inputs)
    activations: set[str] = set()
    inputs, nodes, outputs = [], [], []

    def is_weight(arg: Any) -> bool:
        return getattr(arg, "op", "") == "placeholder" and arg.name not in user_inputs

    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta["val"]
            inputs.append(TensorSpec(node.name, tuple(val.shape), _TORCH_DTYPES.get(str(val.dtype), str(val.dtype))))
            activations.add(node.name)
        elif node.op == "call_function":
            call = node.args[0] if node.target is operator.getitem else node
            val = node.meta.get("val")
            reads = [a.name for a in call.all_input_nodes if a.name in activations]
            if not reads or not hasattr(val, "shape"):  # a constant, or a tuple only its getitems take apart
                continue
            shape = tuple(int(d) for d in val.shape)
            dtype = _TORCH_DTYPES.get(str(val.dtype), "fp32")
            nodes.append(_translate(call, _layer_name(call), reads, node.name, shape, dtype, is_weight))
            activations.add(node.name)
        elif node.op == "output":
            outputs = [a.name for a in node.all_input_nodes if a.name in activations]
    return build_graph(model_name, "torch", "NCHW", inputs, outputs, nodes)
