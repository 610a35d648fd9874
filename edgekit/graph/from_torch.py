"""Import a torch `nn.Module` by tracing it once with `torch.export` (host side only)."""

from __future__ import annotations

import operator
from typing import Any

from edgekit.errors import ModelLoadError, UnsupportedOpError
from edgekit.graph.build import RawNode, build_graph
from edgekit.graph.ir import Graph, TensorSpec

_TORCH_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.int8": "int8", "torch.uint8": "uint8",
                 "torch.int32": "int32", "torch.int64": "int64"}
_ELEMENTWISE = {"aten.add.Tensor": "add", "aten.mul.Tensor": "mul", "aten.sub.Tensor": "sub",
                "aten.relu.default": "relu", "aten.hardswish.default": "hardswish", "aten.sigmoid.default": "sigmoid",
                "aten.silu.default": "silu", "aten.tanh.default": "tanh", "aten.gelu.default": "gelu",
                "aten.leaky_relu.default": "leaky_relu", "aten.softmax.int": "softmax",
                "aten._softmax.default": "softmax", "aten.hardsigmoid.default": "hardsigmoid"}
_RESHAPES = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten.squeeze.dim",
             "aten.squeeze.dims", "aten.unsqueeze.default", "aten._unsafe_view.default"}
_IDENTITIES = {"aten.dropout.default", "aten.clone.default", "aten.contiguous.default", "aten.alias.default",
               "aten.detach.default", "aten.feature_dropout.default"}


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


def _translate(node: Any, name: str, inputs: list[str], shape: tuple, dtype: str) -> RawNode:
    """Map one aten call to a RawNode; raise UnsupportedOpError for anything not understood."""
    target = str(node.target)
    if node.target is operator.getitem:
        target = "getitem"

    def raw(op: str, **attrs: Any) -> RawNode:
        return RawNode(name, op, inputs, node.name, shape, dtype, attrs)

    if target in ("aten.conv2d.default", "aten.convolution.default"):
        weight = tuple(node.args[1].meta["val"].shape)
        if target == "aten.convolution.default":
            if _arg(node, 6):
                raise UnsupportedOpError(f"torch graph: layer '{name}' is a transposed convolution (not supported yet)")
            stride, padding, dilation, groups = node.args[3], node.args[4], node.args[5], node.args[8]
        else:
            stride, padding, dilation, groups = _arg(node, 3), _arg(node, 4, 0), _arg(node, 5), _arg(node, 6, 1)
        if len(weight) != 4:
            raise UnsupportedOpError(f"torch graph: layer '{name}' is a {len(weight) - 2}-D convolution "
                                     "(only 2-D is supported)")
        pad = _pair(padding, 0)
        return raw("conv2d", weight_shape=weight, bias=_arg(node, 2) is not None, kernel=weight[2:],
                   stride=_pair(stride, 1), padding=(pad[0], pad[1], pad[0], pad[1]), dilation=_pair(dilation, 1),
                   groups=int(groups))
    if target == "aten.linear.default":
        return raw("linear", weight_shape=tuple(node.args[1].meta["val"].shape), bias=_arg(node, 2) is not None)
    if target in ("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"):
        return raw("batchnorm", channels=shape[1])
    if target in ("aten.hardtanh.default", "aten.clamp.default") and \
            (float(_arg(node, 1, -1)), float(_arg(node, 2, 1))) == (0.0, 6.0):
        return raw("relu6")
    if target in _ELEMENTWISE:
        return raw(_ELEMENTWISE[target])
    if target == "aten.cat.default":
        return raw("concat", axis=int(_arg(node, 1, 0)) % len(shape))
    if target in ("aten.max_pool2d.default", "aten.avg_pool2d.default"):
        kernel = _pair(node.args[1], 1)
        stride = _pair(_arg(node, 2), 0)
        pad = _pair(_arg(node, 3, 0), 0)
        op = "maxpool2d" if "max" in target else "avgpool2d"
        return raw(op, kernel=kernel, stride=stride if stride != (0, 0) else kernel, padding=(*pad, *pad))
    if target == "aten.adaptive_avg_pool2d.default" and tuple(shape[-2:]) == (1, 1) or \
            target == "aten.mean.dim" and sorted(d % 4 for d in node.args[1]) == [2, 3]:
        return raw("global_avgpool")
    if target in _RESHAPES:
        return raw("reshape")
    if target in _IDENTITIES or target == "getitem" and node.args[1] == 0:
        return raw("identity")
    if target in ("aten.upsample_nearest2d.vec", "aten.upsample_bilinear2d.vec", "aten.upsample_nearest2d.default"):
        return raw("upsample")
    if target == "aten.permute.default":
        return raw("transpose")
    if target in ("aten.pad.default", "aten.constant_pad_nd.default"):
        left, right, top, bottom = (list(node.args[1]) + [0, 0, 0, 0])[:4]
        if target == "aten.pad.default":  # (input, pad, mode="constant", value=None)
            constant, value = _arg(node, 2, "constant") == "constant", _arg(node, 3, None)
        else:  # constant_pad_nd(input, pad, value=0)
            constant, value = True, _arg(node, 2, 0.0)
        return raw("pad", padding=(top, left, bottom, right), zero=constant and float(value or 0.0) == 0.0)
    raise UnsupportedOpError(f"torch graph: layer '{name}' uses operator {target}, which edgekit cannot analyse yet")


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
    """The Graph of an ExportedProgram; tensor names are its FX node names."""
    user_inputs = set(program.graph_signature.user_inputs)
    inputs, nodes, outputs = [], [], []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta["val"]
            inputs.append(TensorSpec(node.name, tuple(val.shape), _TORCH_DTYPES.get(str(val.dtype), str(val.dtype))))
        elif node.op == "call_function":
            val = node.meta.get("val")
            shape = tuple(int(d) for d in val.shape) if hasattr(val, "shape") else ()
            dtype = _TORCH_DTYPES.get(str(getattr(val, "dtype", "")), "fp32")
            activations = [a.name for a in node.all_input_nodes if a.op != "placeholder" or a.name in user_inputs]
            nodes.append(_translate(node, _layer_name(node), activations, shape, dtype))
        elif node.op == "output":
            outputs = [a.name for a in node.all_input_nodes]
    return build_graph(model_name, "torch", "NCHW", inputs, outputs, nodes)
