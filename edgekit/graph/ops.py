"""The one table of op facts: every edgekit op's kind, MACs rule, patch-stage fitness and TF Lite Micro kernel,
and how each importer's source ops (TFLite builtins, ONNX op types, aten targets) map onto them.

A new op is one row in `OPS` plus its source names in the mappings below. An op no mapping knows becomes a
layer of op "unknown" (its source name kept): analysed for memory from its shapes, MACs marked unknown.

MACs convention: one per input element each output accumulates: multiply-adds for conv, linear, matmul and
attention; adds for average pools, means and sums; compares for max pools, max/min reductions and arg max.
Pointwise, elementwise, normalisation and data-movement ops count 0.

`kernel_flash_bytes` is an ESTIMATE of the int8 TFLM kernel's code, not a measurement: the order of magnitude
of -Os Thumb-2 builds (10 KiB for conv and depthwise conv, 8 KiB transposed conv, 6 KiB fully connected, 4 KiB
softmax, mean, sum and the broadcasting add/sub/mul, 2 KiB for the other kernels), the figures
`edgekit.convert.mcu` adds to the model bytes for an MCU's flash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Kind(Enum):
    """What an op does to its tensors, as the planners need to know it."""

    SPATIAL = "spatial"  # sliding window over H,W: conv, depthwise, pools
    UPSAMPLING = "upsampling"  # H,W grow: resize, transposed conv
    POINTWISE = "pointwise"  # one activation, element by element (activations, per-channel affine)
    BINARY = "elementwise-binary"  # two activations, element by element with broadcasting
    NORMALIZATION = "normalization"  # each element depends on a whole axis: softmax, layer norm
    ALIAS = "alias"  # the output is the input buffer under another shape (no copy)
    REDUCTION = "reduction"  # mean / sum / max over some axes
    GLOBAL = "global"  # each output reads every input position: global pooling, fully connected
    MATMUL = "matmul"  # two activations contracted: batch matmul, attention
    LAYOUT = "layout"  # a permutation of the axes
    DATA_MOVEMENT = "data-movement"  # copies parts of tensors: concat, slice, split, pad, gather
    QUANTIZATION = "quantization"  # (de)quantize, cast
    UNKNOWN = "unknown"  # an op edgekit does not know: memory from shapes only


class Macs(Enum):
    """How a layer's MACs follow from its shapes and attributes (see the module's convention)."""

    NONE = "none"
    CONV = "conv"  # output elements x input channels per group x kh x kw
    TRANSPOSE_CONV = "transpose_conv"  # input elements x output channels per group x kh x kw
    LINEAR = "linear"  # output elements x input features
    MATMUL = "matmul"  # output elements x the contracted dimension
    ATTENTION = "attention"  # Q.K^T and P.V: 2 x batch x heads x L x S x E
    WINDOW = "window"  # output elements x kh x kw
    REDUCE = "reduce"  # input elements
    UNKNOWN = "unknown"  # not known: the layer's macs_known is False

    def count(self, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...], attrs: Mapping) -> int:
        """MACs of one layer with these activation shapes and attributes (0 for NONE and UNKNOWN)."""
        out = _numel(out_shape)
        if self is Macs.CONV:
            _, in_per_group, kh, kw = attrs["weight_shape"]
            return out * in_per_group * kh * kw
        if self is Macs.TRANSPOSE_CONV:
            out_c, _, kh, kw = attrs["weight_shape"]
            return _numel(in_shapes[0]) * out_c // attrs.get("groups", 1) * kh * kw
        if self is Macs.LINEAR:
            return out * attrs["weight_shape"][1]
        if self is Macs.MATMUL:
            return out * attrs.get("inner", in_shapes[0][-1] if in_shapes and in_shapes[0] else 1)
        if self is Macs.ATTENTION:
            query, key = in_shapes[0], in_shapes[1]
            return 2 * _numel(query) * key[-2]
        if self is Macs.WINDOW:  # a window larger than the padded input (ceil-mode pools) reads only the input
            kh, kw = attrs.get("kernel", (1, 1))
            top, left, bottom, right = attrs.get("padding", (0, 0, 0, 0))
            if in_shapes and len(in_shapes[0]) == 4:
                kh, kw = min(kh, in_shapes[0][2] + top + bottom), min(kw, in_shapes[0][3] + left + right)
            return out * kh * kw
        if self is Macs.REDUCE:
            return _numel(in_shapes[0]) if in_shapes else 0
        return 0


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


@dataclass(frozen=True)
class OpInfo:
    """The facts about one edgekit op that importers, memory, cost and planners read."""

    name: str
    kind: Kind
    macs: Macs = Macs.NONE
    patchable: bool = False  # may sit in a patch stage: spatial and per-pixel ops only
    tflm_kernel: str | None = None  # the builtin TF Lite Micro registers for it; None: no TFLM kernel
    kernel_flash_bytes: int = 0  # estimate of that kernel's code (see the module docstring)
    takes_activation: bool = False  # a following relu/relu6 fuses into it (TFLite's fused activation)
    fuses_into_producer: bool = False  # an activation that folds into the op before it


KIB = 1024
_SIMPLE_KERNEL = 2 * KIB


def _op(name: str, kind: Kind, tflm: str | None, flash: int = _SIMPLE_KERNEL, **facts: object) -> OpInfo:
    return OpInfo(name, kind, tflm_kernel=tflm, kernel_flash_bytes=flash if tflm else 0, **facts)  # type: ignore[arg-type]


_S, _U, _P, _B, _N = Kind.SPATIAL, Kind.UPSAMPLING, Kind.POINTWISE, Kind.BINARY, Kind.NORMALIZATION
_A, _R, _G, _M, _L = Kind.ALIAS, Kind.REDUCTION, Kind.GLOBAL, Kind.MATMUL, Kind.LAYOUT
_D, _Q = Kind.DATA_MOVEMENT, Kind.QUANTIZATION
_ROWS = (
    # spatial: their window is what patch regions propagate through
    _op("conv2d", _S, "CONV_2D", 10 * KIB, macs=Macs.CONV, patchable=True, takes_activation=True),
    _op("depthwise_conv2d", _S, "DEPTHWISE_CONV_2D", 10 * KIB, macs=Macs.CONV, patchable=True,
        takes_activation=True),
    _op("maxpool2d", _S, "MAX_POOL_2D", macs=Macs.WINDOW, patchable=True, takes_activation=True),
    _op("avgpool2d", _S, "AVERAGE_POOL_2D", macs=Macs.WINDOW, patchable=True, takes_activation=True),
    _op("transpose_conv2d", _U, "TRANSPOSE_CONV", 8 * KIB, macs=Macs.TRANSPOSE_CONV, takes_activation=True),
    _op("resize_nearest", _U, "RESIZE_NEAREST_NEIGHBOR"),
    _op("resize_bilinear", _U, "RESIZE_BILINEAR"),
    # global and matmul
    _op("global_avgpool", _G, "MEAN", 4 * KIB, macs=Macs.REDUCE),
    _op("global_maxpool", _G, "REDUCE_MAX", macs=Macs.REDUCE),
    _op("linear", _G, "FULLY_CONNECTED", 6 * KIB, macs=Macs.LINEAR, takes_activation=True),
    _op("batch_matmul", _M, "BATCH_MATMUL", macs=Macs.MATMUL, takes_activation=True),
    _op("attention", _M, None, macs=Macs.ATTENTION),  # torch's fused SDPA; converters lower it to matmuls
    # reductions over some axes (over exactly H,W a mean is global_avgpool)
    _op("mean", _R, "MEAN", 4 * KIB, macs=Macs.REDUCE),
    _op("sum", _R, "SUM", 4 * KIB, macs=Macs.REDUCE),
    _op("reduce_max", _R, "REDUCE_MAX", macs=Macs.REDUCE),
    _op("reduce_min", _R, "REDUCE_MIN", macs=Macs.REDUCE),
    _op("arg_max", _R, "ARG_MAX", macs=Macs.REDUCE),
    _op("arg_min", _R, "ARG_MIN", macs=Macs.REDUCE),
    # pointwise: one activation, per element (per pixel: patchable)
    _op("relu", _P, "RELU", patchable=True, fuses_into_producer=True),
    _op("relu6", _P, "RELU6", patchable=True, fuses_into_producer=True),
    _op("relu_n1_to_1", _P, None, patchable=True),  # TFLite has it; TFLM registers no kernel for it
    _op("clip", _P, None, patchable=True),  # a clamp other than relu6: converters write MAXIMUM + MINIMUM
    _op("leaky_relu", _P, "LEAKY_RELU", patchable=True),
    _op("prelu", _P, "PRELU", patchable=True),
    _op("hardswish", _P, "HARD_SWISH", patchable=True),
    _op("hardsigmoid", _P, None, patchable=True),  # converters write it as ADD + RELU6 + MUL
    _op("sigmoid", _P, "LOGISTIC", patchable=True),
    _op("silu", _P, None, patchable=True),  # converters write it as LOGISTIC + MUL
    _op("tanh", _P, "TANH", patchable=True),
    _op("gelu", _P, None, patchable=True),  # TFLite GELU has no TFLM kernel
    _op("erf", _P, None, patchable=True),
    _op("elu", _P, "ELU", patchable=True),
    _op("exp", _P, "EXP", patchable=True),
    _op("log", _P, "LOG", patchable=True),
    _op("sqrt", _P, "SQRT", patchable=True),
    _op("rsqrt", _P, "RSQRT", patchable=True),
    _op("reciprocal", _P, None, patchable=True),
    _op("abs", _P, "ABS", patchable=True),
    _op("neg", _P, "NEG", patchable=True),
    _op("square", _P, "SQUARE", patchable=True),
    _op("batchnorm", _P, None, patchable=True, takes_activation=True),  # folded into the conv before it
    # elementwise binary, with broadcasting (per pixel when both inputs have the output's H x W)
    _op("add", _B, "ADD", 4 * KIB, patchable=True, takes_activation=True),
    _op("sub", _B, "SUB", 4 * KIB, patchable=True, takes_activation=True),
    _op("mul", _B, "MUL", 4 * KIB, patchable=True, takes_activation=True),
    _op("div", _B, "DIV", patchable=True, takes_activation=True),
    _op("pow", _B, None, patchable=True),
    _op("squared_difference", _B, "SQUARED_DIFFERENCE", patchable=True),
    _op("maximum", _B, "MAXIMUM", patchable=True),
    _op("minimum", _B, "MINIMUM", patchable=True),
    _op("where", _B, "SELECT_V2", patchable=True),
    # normalisation over an axis
    _op("softmax", _N, "SOFTMAX", 4 * KIB),
    _op("log_softmax", _N, "LOG_SOFTMAX", 4 * KIB),
    _op("layer_norm", _N, None),  # converters write it as MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, ADD
    _op("group_norm", _N, None),  # converters write it as RESHAPE, MEAN, SUB, MUL, RSQRT, ADD (TFLite has no builtin)
    _op("instance_norm", _N, None),  # the same ops, one group per channel
    _op("l2_norm", _N, "L2_NORMALIZATION"),
    # no data moved
    _op("reshape", _A, "RESHAPE"),
    _op("identity", _A, None),  # dropped when the graph is built
    # layout and data movement: a new buffer, no arithmetic
    _op("transpose", _L, "TRANSPOSE"),
    _op("concat", _D, "CONCATENATION", patchable=True, takes_activation=True),
    _op("pad", _D, "PAD"),
    _op("mirror_pad", _D, "MIRROR_PAD"),
    _op("slice", _D, "STRIDED_SLICE"),
    _op("split", _D, "SPLIT"),  # one layer per output, each reading the whole input
    _op("pack", _D, "PACK"),
    _op("unpack", _D, "UNPACK"),  # one layer per output, like split
    _op("gather", _D, "GATHER"),
    _op("tile", _D, None),
    _op("broadcast_to", _D, "BROADCAST_TO"),
    _op("space_to_depth", _D, "SPACE_TO_DEPTH"),
    _op("depth_to_space", _D, "DEPTH_TO_SPACE"),
    _op("quantize", _Q, "QUANTIZE", patchable=True),
    _op("dequantize", _Q, "DEQUANTIZE", patchable=True),
    _op("cast", _Q, "CAST"),
    OpInfo("unknown", Kind.UNKNOWN, Macs.UNKNOWN),
)
OPS: dict[str, OpInfo] = {row.name: row for row in _ROWS}
UNKNOWN = OPS["unknown"]


def op_info(op: str) -> OpInfo:
    """The table row of an edgekit op; ops outside the table read as 'unknown'."""
    return OPS.get(op, UNKNOWN)


_KERNEL_FLASH = {row.tflm_kernel: row.kernel_flash_bytes for row in _ROWS if row.tflm_kernel}


def tflm_kernel_flash_bytes(kernel: str) -> int:
    """The estimated code bytes of one TFLM builtin kernel (by its name, e.g. "CONV_2D"): the table's figure, or
    the simple-kernel figure for a builtin no row names (LSTM, SVDF, ...)."""
    return _KERNEL_FLASH.get(kernel, _SIMPLE_KERNEL)


def _ops_of(*kinds: Kind) -> frozenset[str]:
    return frozenset(row.name for row in _ROWS if row.kind in kinds)


ALIAS_OPS = _ops_of(Kind.ALIAS)
SPATIAL_OPS = _ops_of(Kind.SPATIAL)
GLOBAL_OPS = _ops_of(Kind.GLOBAL)
ELEMENTWISE_OPS = frozenset(row.name for row in _ROWS if row.patchable and row.kind is not Kind.SPATIAL)
FUSABLE_ACTIVATIONS = frozenset(row.name for row in _ROWS if row.fuses_into_producer)
MULTI_OUTPUT_OPS = frozenset({"split", "unpack"})
# Normalisations over a fixed trailing block of N,C,H,W axes: a group norm over each group's channels and H,W
# (axes from 1), an instance norm over H,W (axes from 2); importers give the layer `axes` from here.
NORM_FIRST_AXIS = {"group_norm": 1, "instance_norm": 2}

# --- source ops -> edgekit ops ---------------------------------------------------------------------------------
# An importer may refine the op from attributes (CONV_2D with groups = channels -> depthwise_conv2d, a MEAN over
# H,W -> global_avgpool, a Clip to [0, 6] -> relu6, a MatMul on a constant -> linear).

TFLITE_OPS: dict[str, str] = {
    "CONV_2D": "conv2d", "DEPTHWISE_CONV_2D": "conv2d", "MAX_POOL_2D": "maxpool2d",
    "AVERAGE_POOL_2D": "avgpool2d", "TRANSPOSE_CONV": "transpose_conv2d", "FULLY_CONNECTED": "linear",
    "BATCH_MATMUL": "batch_matmul", "RESIZE_NEAREST_NEIGHBOR": "resize_nearest", "RESIZE_BILINEAR": "resize_bilinear",
    "MEAN": "mean", "SUM": "sum", "REDUCE_MAX": "reduce_max", "REDUCE_MIN": "reduce_min", "ARG_MAX": "arg_max",
    "ARG_MIN": "arg_min", "RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "relu_n1_to_1",
    "LEAKY_RELU": "leaky_relu", "PRELU": "prelu", "HARD_SWISH": "hardswish", "LOGISTIC": "sigmoid", "TANH": "tanh",
    "GELU": "gelu", "ELU": "elu", "EXP": "exp", "LOG": "log", "SQRT": "sqrt", "RSQRT": "rsqrt", "ABS": "abs",
    "NEG": "neg", "SQUARE": "square", "ADD": "add", "SUB": "sub", "MUL": "mul", "DIV": "div", "POW": "pow",
    "SQUARED_DIFFERENCE": "squared_difference", "MAXIMUM": "maximum", "MINIMUM": "minimum", "SELECT_V2": "where",
    "SOFTMAX": "softmax", "LOG_SOFTMAX": "log_softmax", "L2_NORMALIZATION": "l2_norm", "RESHAPE": "reshape",
    "SQUEEZE": "reshape", "EXPAND_DIMS": "reshape", "TRANSPOSE": "transpose", "CONCATENATION": "concat",
    "PAD": "pad", "PADV2": "pad", "MIRROR_PAD": "mirror_pad", "STRIDED_SLICE": "slice", "SLICE": "slice",
    "SPLIT": "split", "SPLIT_V": "split", "PACK": "pack", "UNPACK": "unpack", "GATHER": "gather", "TILE": "tile",
    "BROADCAST_TO": "broadcast_to", "SPACE_TO_DEPTH": "space_to_depth", "DEPTH_TO_SPACE": "depth_to_space",
    "QUANTIZE": "quantize", "DEQUANTIZE": "dequantize", "CAST": "cast",
}

ONNX_OPS: dict[str, str] = {
    "Conv": "conv2d", "ConvTranspose": "transpose_conv2d", "MaxPool": "maxpool2d", "AveragePool": "avgpool2d",
    "GlobalAveragePool": "global_avgpool", "GlobalMaxPool": "global_maxpool", "Gemm": "linear",
    "MatMul": "batch_matmul", "Resize": "resize_nearest", "Upsample": "resize_nearest",
    "ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "reduce_max", "ReduceMin": "reduce_min",
    "ArgMax": "arg_max", "ArgMin": "arg_min", "Relu": "relu", "Clip": "clip", "LeakyRelu": "leaky_relu",
    "PRelu": "prelu", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid", "Sigmoid": "sigmoid", "Tanh": "tanh",
    "Gelu": "gelu", "Erf": "erf", "Elu": "elu", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
    "Abs": "abs", "Neg": "neg", "BatchNormalization": "batchnorm", "Add": "add", "Sub": "sub", "Mul": "mul",
    "Div": "div", "Pow": "pow", "Max": "maximum", "Min": "minimum", "Where": "where", "Softmax": "softmax",
    "LogSoftmax": "log_softmax", "LayerNormalization": "layer_norm", "GroupNormalization": "group_norm",
    "InstanceNormalization": "instance_norm", "Flatten": "reshape", "Reshape": "reshape",
    "Squeeze": "reshape", "Unsqueeze": "reshape", "Identity": "identity", "Dropout": "identity",
    "Transpose": "transpose", "Concat": "concat", "Pad": "pad", "Slice": "slice", "Split": "split",
    "Gather": "gather", "Tile": "tile", "Expand": "broadcast_to", "SpaceToDepth": "space_to_depth",
    "DepthToSpace": "depth_to_space", "QuantizeLinear": "quantize", "DequantizeLinear": "dequantize", "Cast": "cast",
}

ATEN_OPS: dict[str, str] = {
    "aten.conv2d.default": "conv2d", "aten.conv2d.padding": "conv2d", "aten.convolution.default": "conv2d",
    "aten.conv_transpose2d.input": "transpose_conv2d", "aten.max_pool2d.default": "maxpool2d",
    "aten.max_pool2d_with_indices.default": "maxpool2d", "aten.avg_pool2d.default": "avgpool2d",
    "aten.adaptive_avg_pool2d.default": "global_avgpool", "aten.linear.default": "linear",
    "aten.matmul.default": "batch_matmul", "aten.bmm.default": "batch_matmul", "aten.mm.default": "batch_matmul",
    "aten.scaled_dot_product_attention.default": "attention",
    "aten.upsample_nearest2d.vec": "resize_nearest", "aten.upsample_nearest2d.default": "resize_nearest",
    "aten.upsample_bilinear2d.vec": "resize_bilinear", "aten.upsample_bilinear2d.default": "resize_bilinear",
    "aten.mean.dim": "mean", "aten.mean.default": "mean", "aten.sum.dim_IntList": "sum", "aten.sum.default": "sum",
    "aten.amax.default": "reduce_max", "aten.amin.default": "reduce_min", "aten.argmax.default": "arg_max",
    "aten.argmin.default": "arg_min", "aten.relu.default": "relu", "aten.relu6.default": "relu6",
    "aten.hardtanh.default": "clip", "aten.clamp.default": "clip", "aten.leaky_relu.default": "leaky_relu",
    "aten.prelu.default": "prelu", "aten.hardswish.default": "hardswish", "aten.hardsigmoid.default": "hardsigmoid",
    "aten.sigmoid.default": "sigmoid", "aten.silu.default": "silu", "aten.tanh.default": "tanh",
    "aten.gelu.default": "gelu", "aten.erf.default": "erf", "aten.elu.default": "elu", "aten.exp.default": "exp",
    "aten.log.default": "log", "aten.sqrt.default": "sqrt", "aten.rsqrt.default": "rsqrt",
    "aten.reciprocal.default": "reciprocal", "aten.abs.default": "abs", "aten.neg.default": "neg",
    "aten.batch_norm.default": "batchnorm", "aten._native_batch_norm_legit_no_training.default": "batchnorm",
    "aten.add.Tensor": "add", "aten.sub.Tensor": "sub", "aten.mul.Tensor": "mul", "aten.div.Tensor": "div",
    "aten.add_.Tensor": "add", "aten.mul_.Tensor": "mul", "aten.relu_.default": "relu",
    "aten.hardtanh_.default": "clip", "aten.silu_.default": "silu", "aten.hardswish_.default": "hardswish",
    "aten.rsub.Scalar": "sub", "aten.pow.Tensor_Scalar": "pow", "aten.pow.Tensor_Tensor": "pow",
    "aten.maximum.default": "maximum", "aten.minimum.default": "minimum", "aten.where.self": "where",
    "aten.softmax.int": "softmax", "aten._softmax.default": "softmax", "aten.log_softmax.int": "log_softmax",
    "aten.layer_norm.default": "layer_norm", "aten.group_norm.default": "group_norm",
    "aten.native_group_norm.default": "group_norm", "aten.instance_norm.default": "instance_norm",
    "aten.flatten.using_ints": "reshape", "aten.view.default": "reshape",
    "aten.reshape.default": "reshape", "aten._unsafe_view.default": "reshape", "aten.squeeze.dim": "reshape",
    "aten.squeeze.dims": "reshape", "aten.squeeze.default": "reshape", "aten.unsqueeze.default": "reshape",
    "aten.unflatten.int": "reshape", "aten.dropout.default": "identity", "aten.clone.default": "identity",
    "aten.contiguous.default": "identity", "aten.alias.default": "identity", "aten.detach.default": "identity",
    "aten.feature_dropout.default": "identity", "aten.dropout_.default": "identity",
    "aten.permute.default": "transpose",
    "aten.transpose.int": "transpose", "aten.t.default": "transpose", "aten.cat.default": "concat",
    "aten.pad.default": "pad", "aten.constant_pad_nd.default": "pad", "aten.slice.Tensor": "slice",
    "aten.select.int": "slice", "aten.narrow.default": "slice", "aten.split.Tensor": "split",
    "aten.split_with_sizes.default": "split", "aten.chunk.default": "split", "aten.unbind.int": "unpack",
    "aten.stack.default": "pack", "aten.index_select.default": "gather", "aten.embedding.default": "gather",
    "aten.repeat.default": "tile", "aten.expand.default": "broadcast_to",
    "aten.pixel_unshuffle.default": "space_to_depth", "aten.pixel_shuffle.default": "depth_to_space",
    "aten.to.dtype": "cast", "aten._to_copy.default": "cast",
}
