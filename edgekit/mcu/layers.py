"""One row per TFLite operator the C generator takes: how it becomes one call into ek_kernels.c.

Each emitter reads one operator (its options, constant tensors, quantization), adds the constants it needs to
the layer's flash arrays and returns the C statement. An operator missing from `KERNELS` is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedOpError
from edgekit.formats.tflite import TENSOR_TYPES, is_constant, op_name
from edgekit.mcu import fixedpoint as fp

SAME, VALID = 0, 1  # the schema's Padding enum
_CTYPES = {"int8": "int8_t", "int32": "int32_t"}


@dataclass
class Layer:
    """One operator being emitted: its tensors, and the const arrays (flash) its call refers to."""

    model: Any
    index: int
    place: Callable[[int], str]  # activation tensor index -> its C pointer into the arena
    arrays: list[str] = field(default_factory=list)
    flash_bytes: int = 0

    @property
    def op(self) -> Any:
        return self.model.subgraphs[0].operators[self.index]

    @property
    def where(self) -> str:
        return f"operator {self.index} ({op_name(self.model, self.op)})"

    def tensor(self, position: int, outputs: bool = False) -> Any:
        return self.model.subgraphs[0].tensors[(self.op.outputs if outputs else self.op.inputs)[position]]

    def pointer(self, position: int, outputs: bool = False) -> str:
        """The C pointer of an activation input (or output) in the arena."""
        return self.place(int((self.op.outputs if outputs else self.op.inputs)[position]))

    def operand(self, position: int) -> str:
        """The C pointer of an int8 input: into the arena, or a const array in flash when it is a constant."""
        if is_constant(self.model, int(self.op.inputs[position])):
            return self.array(f"k{position}_", self.constant(position).astype(np.int8))
        return self.pointer(position)

    def constant(self, position: int) -> np.ndarray:
        """A constant input as an array of its own dtype and shape."""
        tensor = self.tensor(position)
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            raise UnsupportedOpError(f"{self.where}: input {position} must be a constant, it is computed")
        return np.frombuffer(bytes(data), TENSOR_TYPES.get(tensor.type, "uint8")).reshape(tensor.shape)

    def quant(self, position: int, outputs: bool = False) -> tuple[float, int]:
        """(scale, zero point) of a per-tensor quantized activation."""
        q = self.tensor(position, outputs).quantization
        if q is None or q.scale is None or len(q.scale) != 1 or q.zeroPoint is None:
            raise UnsupportedOpError(f"{self.where}: an activation without one scale and zero point")
        return float(q.scale[0]), int(q.zeroPoint[0])

    def array(self, kind: str, values: np.ndarray) -> str:
        """Define `values` as a const C array in flash; its name."""
        name = f"{kind}{self.index}"
        flat = np.asarray(values).reshape(-1)
        body = ",".join(str(int(v)) for v in flat)
        self.arrays.append(f"static const {_CTYPES[flat.dtype.name]} {name}[{flat.size}] = {{{body}}};")
        self.flash_bytes += flat.nbytes
        return name

    def params(self, ctype: str, fields: str, kind: str = "p") -> str:
        """Define a const parameter struct; a pointer to it."""
        self.arrays.append(f"static const {ctype} {kind}{self.index} = {{{fields}}};")
        return f"&{kind}{self.index}"


def nhwc(shape: Any) -> tuple[int, int, int, int]:
    """A shape of rank <= 4 as (N, H, W, C), leading axes of 1 added."""
    dims = [int(d) for d in (() if shape is None else shape)]
    if len(dims) > 4:
        raise UnsupportedOpError(f"a {len(dims)}-D tensor (the C kernels take up to 4-D)")
    return tuple([1] * (4 - len(dims)) + dims)  # type: ignore[return-value]


def c_shape(shape: tuple[int, ...]) -> str:
    return "(ek_shape){{{}, {}, {}, {}}}".format(*shape)


def _padding(kind: int, in_size: int, out_size: int, kernel: int, stride: int, dilation: int) -> int:
    """TF Lite's ComputePadding: SAME pads (total - 1) // 2 ahead (the reference kernels bound-check the rest)."""
    if kind == VALID:
        return 0
    effective = (kernel - 1) * dilation + 1
    return max(((out_size - 1) * stride + effective - in_size) // 2, 0)


def _requant(layer: Layer, channels: int, filter_scales: np.ndarray, activation: int) -> str:
    in_scale, _ = layer.quant(0)
    out_scale, out_zp = layer.quant(0, outputs=True)
    multipliers, shifts = fp.conv_multipliers(in_scale, filter_scales, out_scale, channels)
    low, high = fp.activation_range(activation, out_scale, out_zp, layer.where)
    m = layer.array("m", np.array(multipliers, np.int32))
    s = layer.array("s", np.array(shifts, np.int8))
    return f".rq = {{{m}, {s}, {out_zp}, {low}, {high}}}"


def _conv(layer: Layer) -> str:
    """CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: one grouped convolution kernel."""
    name, opts = op_name(layer.model, layer.op), layer.op.builtinOptions
    weights = layer.constant(1)
    wq = layer.tensor(1).quantization
    if wq is None or wq.scale is None or wq.zeroPoint is None:
        raise UnsupportedOpError(f"{layer.where}: weights that are not int8-quantized")
    if np.any(np.asarray(wq.zeroPoint) != 0):
        raise UnsupportedOpError(f"{layer.where}: weights with a non-zero zero point (int8 weights are symmetric)")
    in_shape, out_shape = nhwc(layer.tensor(0).shape), nhwc(layer.tensor(0, outputs=True).shape)
    stride, dilation, pads = (1, 1), (1, 1), (0, 0)
    if name == "FULLY_CONNECTED":  # rows of the input times the filter: a 1x1 convolution of a rows x 1 image
        rows, depth = int(np.prod(in_shape)) // weights.shape[1], weights.shape[1]
        in_shape, out_shape = (rows, 1, 1, depth), (rows, 1, 1, weights.shape[0])
        weights, groups = weights[:, None, None, :], 1
    else:
        if name == "DEPTHWISE_CONV_2D":
            weights, groups = weights.transpose(3, 1, 2, 0), in_shape[3]
        else:
            groups = in_shape[3] // weights.shape[3]
        stride, dilation = (opts.strideH, opts.strideW), (opts.dilationHFactor, opts.dilationWFactor)
        pads = (_padding(opts.padding, in_shape[1], out_shape[1], weights.shape[1], stride[0], dilation[0]),
                _padding(opts.padding, in_shape[2], out_shape[2], weights.shape[2], stride[1], dilation[1]))
    bias = layer.array("b", layer.constant(2)) if len(layer.op.inputs) > 2 and layer.op.inputs[2] >= 0 else "0"
    filt = layer.array("w", weights)
    _, in_zp = layer.quant(0)
    fields = (f".kh = {weights.shape[1]}, .kw = {weights.shape[2]}, .stride_h = {stride[0]}, .stride_w = {stride[1]}, "
              f".dilation_h = {dilation[0]}, .dilation_w = {dilation[1]}, .pad_top = {pads[0]}, "
              f".pad_left = {pads[1]}, .groups = {groups}, .in_offset = {-in_zp}, "
              + _requant(layer, out_shape[3], wq.scale, opts.fusedActivationFunction))
    params = layer.params("ek_conv_params", fields)
    return (f"ek_conv({layer.pointer(0)}, {c_shape(in_shape)}, {filt}, {bias}, {layer.pointer(0, True)}, "
            f"{c_shape(out_shape)}, {params});")


def _pool(layer: Layer) -> str:
    """AVERAGE_POOL_2D and MAX_POOL_2D."""
    opts = layer.op.builtinOptions
    in_shape, out_shape = nhwc(layer.tensor(0).shape), nhwc(layer.tensor(0, outputs=True).shape)
    scale, zp = layer.quant(0, outputs=True)
    low, high = fp.activation_range(opts.fusedActivationFunction, scale, zp, layer.where)
    kernel, stride = (opts.filterHeight, opts.filterWidth), (opts.strideH, opts.strideW)
    pads = [_padding(opts.padding, in_shape[a], out_shape[a], kernel[a - 1], stride[a - 1], 1) for a in (1, 2)]
    is_max = int(op_name(layer.model, layer.op) == "MAX_POOL_2D")
    params = layer.params("ek_pool_params", f"{is_max}, {kernel[0]}, {kernel[1]}, {stride[0]}, {stride[1]}, "
                                            f"{pads[0]}, {pads[1]}, {low}, {high}")
    return (f"ek_pool({layer.pointer(0)}, {c_shape(in_shape)}, {layer.pointer(0, True)}, {c_shape(out_shape)}, "
            f"{params});")


def _broadcast(layer: Layer) -> str:
    """The ek_broadcast of a binary elementwise operator: output shape, per input the strides (0 where repeated)."""
    out = nhwc(layer.tensor(0, outputs=True).shape)
    strides = []
    for position in (0, 1):
        dims = nhwc(layer.tensor(position).shape)
        if any(d not in (1, o) for d, o in zip(dims, out)):
            raise UnsupportedOpError(f"{layer.where}: input {position} of shape {dims} does not broadcast to {out}")
        natural = (dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1)
        strides.append(", ".join(str(0 if d == 1 and o != 1 else n) for d, o, n in zip(dims, out, natural)))
    return layer.params("ek_broadcast", f"{c_shape(out)}, {{{{{strides[0]}}}, {{{strides[1]}}}}}", kind="bc")


def _binary(layer: Layer) -> str:
    """ADD and MUL, either input broadcast along any axis of size 1 (SE blocks: MUL of N,H,W,C by N,1,1,C)."""
    (s1, z1), (s2, z2), (so, zo) = layer.quant(0), layer.quant(1), layer.quant(0, outputs=True)
    low, high = fp.activation_range(layer.op.builtinOptions.fusedActivationFunction, so, zo, layer.where)
    if op_name(layer.model, layer.op) == "ADD":
        (m1, sh1), (m2, sh2), (mo, sho) = fp.add_multipliers(s1, s2, so)
        kernel, params = "ek_add", layer.params("ek_add_params", f"{-z1}, {-z2}, {m1}, {m2}, {mo}, {sh1}, {sh2}, "
                                                                 f"{sho}, {fp.ADD_LEFT_SHIFT}, {zo}, {low}, {high}")
    else:
        multiplier, shift = fp.mul_multiplier(s1, s2, so)
        kernel, params = "ek_mul", layer.params("ek_mul_params", f"{-z1}, {-z2}, {multiplier}, {shift}, {zo}, "
                                                                 f"{low}, {high}")
    return (f"{kernel}({layer.operand(0)}, {layer.operand(1)}, {layer.pointer(0, True)}, {_broadcast(layer)}, "
            f"{params});")


def _mean(layer: Layer) -> str:
    """MEAN over any axes (global pooling over H,W, or over the last two after a TRANSPOSE)."""
    rank = len(layer.tensor(0).shape)
    axes = {int(a) % rank + 4 - rank for a in layer.constant(1).reshape(-1)}
    dims = nhwc(layer.tensor(0).shape)
    count = int(np.prod([dims[a] for a in axes]))
    (s_in, z_in), (s_out, z_out) = layer.quant(0), layer.quant(0, outputs=True)
    multiplier, shift = fp.mean_multiplier(s_in, s_out, count)
    params = layer.params("ek_mean_params", f"{z_in}, {multiplier}, {z_out}, {shift}")
    reduced = ", ".join(str(int(a in axes)) for a in range(4))
    return (f"ek_mean({layer.pointer(0)}, (const int[4]){{{', '.join(map(str, dims))}}}, (const int[4]){{{reduced}}}, "
            f"{layer.pointer(0, True)}, {params});")


def _lut(layer: Layer) -> str:
    """LOGISTIC and HARD_SWISH: a 256-entry table of TF Lite's integer result for every int8 input."""
    (s_in, z_in), (s_out, z_out) = layer.quant(0), layer.quant(0, outputs=True)
    if op_name(layer.model, layer.op) == "LOGISTIC":
        _fixed_output(layer, s_out, z_out)
        table = fp.logistic_table(s_in, z_in)
    else:
        table = fp.hard_swish_table(s_in, z_in, s_out, z_out)
    count, name = int(np.prod(nhwc(layer.tensor(0).shape))), layer.array("t", np.array(table, np.int8))
    return f"ek_lut({layer.pointer(0)}, {layer.pointer(0, True)}, {count}, {name});"


def _fixed_output(layer: Layer, scale: float, zero_point: int) -> None:
    """LOGISTIC and SOFTMAX: TF Lite takes only int8 outputs of scale 1/256 and zero point -128."""
    if zero_point != fp.INT8_MIN or abs(scale * 256 - 1) > 1e-6:
        raise UnsupportedOpError(f"{layer.where}: output scale {scale} and zero point {zero_point} (TF Lite's int8 "
                                 "kernel takes 1/256 and -128)")


def _softmax(layer: Layer) -> str:
    dims = nhwc(layer.tensor(0).shape)
    (s_in, _), (s_out, z_out) = layer.quant(0), layer.quant(0, outputs=True)
    _fixed_output(layer, s_out, z_out)
    table = layer.array("e", np.array(fp.softmax_exp_table(s_in, layer.op.builtinOptions.beta), np.int32))
    rows = int(np.prod(dims)) // dims[3]
    return f"ek_softmax({layer.pointer(0)}, {layer.pointer(0, True)}, {rows}, {dims[3]}, {table});"


def _concat(layer: Layer) -> str:
    """CONCATENATION of inputs that share the output's scale and zero point (a plain copy, as TF Lite's)."""
    opts, out = layer.op.builtinOptions, layer.tensor(0, outputs=True)
    if opts.fusedActivationFunction != 0:
        raise UnsupportedOpError(f"{layer.where}: a fused activation on CONCATENATION")
    positions = range(len(layer.op.inputs))
    if any(layer.quant(i) != layer.quant(0, outputs=True) for i in positions):
        raise UnsupportedOpError(f"{layer.where}: inputs quantized unlike the output (requantize them first)")
    axis = int(opts.axis) % len(out.shape)
    outer = int(np.prod([int(d) for d in out.shape[:axis]]))
    chunks = [int(np.prod([int(d) for d in layer.tensor(i).shape[axis:]])) for i in positions]
    return (f"ek_concat((const int8_t *const[]){{{', '.join(layer.operand(i) for i in positions)}}}, "
            f"(const int[]){{{', '.join(map(str, chunks))}}}, {len(chunks)}, {outer}, {layer.pointer(0, True)});")


def _pad(layer: Layer) -> str:
    pads = layer.constant(1).reshape(-1, 2)
    before = [0] * (4 - len(pads)) + [int(p) for p in pads[:, 0]]
    in_shape, out_shape = nhwc(layer.tensor(0).shape), nhwc(layer.tensor(0, outputs=True).shape)
    _, zp = layer.quant(0, outputs=True)
    return (f"ek_pad({layer.pointer(0)}, {c_shape(in_shape)}, {layer.pointer(0, True)}, {c_shape(out_shape)}, "
            f"(const int[4]){{{', '.join(map(str, before))}}}, {zp});")


def _transpose(layer: Layer) -> str:
    perm = [int(p) for p in layer.constant(1).reshape(-1)]
    lead = 4 - len(perm)
    perm = list(range(lead)) + [p + lead for p in perm]
    dims = nhwc(layer.tensor(0).shape)
    return (f"ek_transpose({layer.pointer(0)}, (const int[4]){{{', '.join(map(str, dims))}}}, "
            f"(const int[4]){{{', '.join(map(str, perm))}}}, {layer.pointer(0, True)});")


@dataclass(frozen=True)
class Kernel:
    """How one TFLite builtin becomes C: its emitter, or an alias (the output is the input's buffer)."""

    emit: Callable[[Layer], str] | None
    alias: bool = False


KERNELS = {
    "CONV_2D": Kernel(_conv), "DEPTHWISE_CONV_2D": Kernel(_conv), "FULLY_CONNECTED": Kernel(_conv),
    "AVERAGE_POOL_2D": Kernel(_pool), "MAX_POOL_2D": Kernel(_pool), "ADD": Kernel(_binary), "MUL": Kernel(_binary),
    "MEAN": Kernel(_mean), "LOGISTIC": Kernel(_lut), "HARD_SWISH": Kernel(_lut), "SOFTMAX": Kernel(_softmax),
    "CONCATENATION": Kernel(_concat), "PAD": Kernel(_pad), "TRANSPOSE": Kernel(_transpose),
    "RESHAPE": Kernel(None, alias=True),
}
