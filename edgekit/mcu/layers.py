"""One row per TFLite operator the C generator takes: how it becomes one call into ek_kernels.c.

Each emitter reads one operator (its options, constant tensors, quantization), adds the constants it needs to
the layer's flash arrays and returns the C statement. An operator missing from `KERNELS` is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedOpError
from edgekit.formats.tflite import TENSOR_TYPES, is_constant, op_name
from edgekit.mcu import fixedpoint as fp

SAME, VALID = 0, 1  # the schema's Padding enum
_CTYPES = {"int8": "int8_t", "int32": "int32_t"}
Rect = tuple[int, int, int, int, int]  # ek_rect: y, x, h, w, row (pixels from one buffer row to the next)


def _whole(_tensor: int) -> Rect | None:
    return None  # layer by layer: every buffer holds its whole tensor


@dataclass
class Layer:
    """One operator being emitted: its tensors, and the const arrays (flash) its call refers to.

    A patched stage emits one operator once per patch: `rect` then gives the part of each tensor the patch's
    buffer holds (and, for the output, computes), `tag` names the patch's own structs, and `pad_in` folds a PAD
    into the convolution after it (source tensor, rows and cols padded ahead), which reads the zero point there.
    """

    model: Any
    index: int
    place: Callable[[int], str]  # activation tensor index -> its C pointer into the arena
    rect: Callable[[int], Rect | None] = _whole  # activation tensor index -> the part its buffer holds
    tag: str = ""
    pad_in: tuple[int, int, int] | None = None
    scratch: int | None = None  # a depthwise convolution in place: the tensor id of its scratch planes
    fused_add: tuple[int, int, bool] | None = None  # a CONV_2D with a residual ADD fused in: (the ADD's operator,
    # its output tensor, which the sum is written to: the skip's buffer; the convolution is the ADD's input 1)
    arrays: list[str] = field(default_factory=list)
    flash_bytes: int = 0
    _defined: set[str] = field(default_factory=set)

    @property
    def op(self) -> Any:
        return self.model.subgraphs[0].operators[self.index]

    @property
    def where(self) -> str:
        return f"operator {self.index} ({op_name(self.model, self.op)})"

    def source(self, position: int, outputs: bool = False) -> int:
        """The tensor index of an input (or output): for input 0 of a folded PAD's reader, the PAD's input."""
        if position == 0 and not outputs and self.pad_in is not None:
            return self.pad_in[0]
        return int((self.op.outputs if outputs else self.op.inputs)[position])

    def tensor(self, position: int, outputs: bool = False) -> Any:
        return self.model.subgraphs[0].tensors[self.source(position, outputs)]

    def pointer(self, position: int, outputs: bool = False) -> str:
        """The C pointer of an activation input (or output) in the arena."""
        return self.place(self.source(position, outputs))

    def part(self, position: int, shape: tuple[int, int, int, int], outputs: bool = False) -> Rect:
        """The part of an input (or output) of kernel shape `shape` its buffer holds: the whole unless patched."""
        held = self.rect(self.source(position, outputs))
        return (0, 0, shape[1], shape[2], shape[2]) if held is None else held

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
        if name in self._defined:  # a patched stage emits the operator once per patch: its constants once
            return name
        self._defined.add(name)
        flat = np.asarray(values).reshape(-1)
        body = ",".join(str(int(v)) for v in flat)
        self.arrays.append(f"static const {_CTYPES[flat.dtype.name]} {name}[{flat.size}] = {{{body}}};")
        self.flash_bytes += flat.nbytes
        return name

    def params(self, ctype: str, fields: str, kind: str = "p") -> str:
        """Define a const parameter struct (once); a pointer to it."""
        if f"{kind}{self.index}" not in self._defined:
            self._defined.add(f"{kind}{self.index}")
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


def c_rect(rect: Rect) -> str:
    return "(ek_rect){{{}, {}, {}, {}, {}}}".format(*rect)


def _padding(kind: int, in_size: int, out_size: int, kernel: int, stride: int, dilation: int) -> int:
    """TF Lite's ComputePadding: SAME pads (total - 1) // 2 ahead (the reference kernels bound-check the rest)."""
    if kind == VALID:
        return 0
    effective = (kernel - 1) * dilation + 1
    return max(((out_size - 1) * stride + effective - in_size) // 2, 0)


@dataclass(frozen=True)
class Window:
    """The sliding window of a convolution or pool: (rows, cols) of its kernel, stride, dilation and the padding
    ahead (TF Lite's; a folded PAD's rows and cols ahead included)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int]


def window(layer: Layer) -> Window:
    """The window of a CONV_2D, DEPTHWISE_CONV_2D, AVERAGE_POOL_2D or MAX_POOL_2D."""
    opts = layer.op.builtinOptions
    if op_name(layer.model, layer.op) in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        dims = layer.model.subgraphs[0].tensors[int(layer.op.inputs[1])].shape
        kernel, dilation = (int(dims[1]), int(dims[2])), (opts.dilationHFactor, opts.dilationWFactor)
    else:
        kernel, dilation = (opts.filterHeight, opts.filterWidth), (1, 1)
    stride = (opts.strideH, opts.strideW)
    padded = nhwc(layer.model.subgraphs[0].tensors[int(layer.op.inputs[0])].shape)  # a folded PAD's output
    out = nhwc(layer.tensor(0, outputs=True).shape)
    ahead = (0, 0) if layer.pad_in is None else layer.pad_in[1:]
    pads = tuple(_padding(opts.padding, padded[a], out[a], kernel[a - 1], stride[a - 1], dilation[a - 1]) + ahead[a - 1]
                 for a in (1, 2))
    return Window(kernel, stride, dilation, pads)  # type: ignore[arg-type]


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
        sliding = window(layer)
        stride, dilation, pads = sliding.stride, sliding.dilation, sliding.pads
    bias = layer.array("b", layer.constant(2)) if len(layer.op.inputs) > 2 and layer.op.inputs[2] >= 0 else "0"
    filt = layer.array("w", weights)
    _, in_zp = layer.quant(0)
    fields = (f".kh = {weights.shape[1]}, .kw = {weights.shape[2]}, .stride_h = {stride[0]}, .stride_w = {stride[1]}, "
              f".dilation_h = {dilation[0]}, .dilation_w = {dilation[1]}, .pad_top = {pads[0]}, "
              f".pad_left = {pads[1]}, .groups = {groups}, .in_offset = {-in_zp}, "
              + _requant(layer, out_shape[3], wq.scale, opts.fusedActivationFunction))
    if layer.fused_add is None:
        output = layer.pointer(0, True)
    else:  # each output value added to the skip's and written over it (memory.FusedAdd): no buffer of its own
        add, out, conv_first = layer.fused_add
        the_add = replace(layer, index=add, pad_in=None, fused_add=None)  # for the ADD's own quantization
        added = layer.params("ek_add_params", _add_fields(the_add), kind="a")
        fields += f", .add = {added}, .add_conv_first = {int(conv_first)}"
        output = layer.place(out)
    params = layer.params("ek_conv_params", fields)
    if layer.scratch is not None:  # in place: the output over the input's buffer
        return (f"ek_depthwise_inplace({layer.pointer(0)}, {c_shape(in_shape)}, {c_rect(layer.part(0, in_shape))}, "
                f"{filt}, {bias}, {c_shape(out_shape)}, {c_rect(layer.part(0, out_shape, True))}, "
                f"{layer.place(layer.scratch)}, {params});")
    return (f"ek_conv({layer.pointer(0)}, {c_shape(in_shape)}, {c_rect(layer.part(0, in_shape))}, {filt}, {bias}, "
            f"{output}, {c_shape(out_shape)}, {c_rect(layer.part(0, out_shape, True))}, {params});")


def _pool(layer: Layer) -> str:
    """AVERAGE_POOL_2D and MAX_POOL_2D."""
    opts = layer.op.builtinOptions
    in_shape, out_shape = nhwc(layer.tensor(0).shape), nhwc(layer.tensor(0, outputs=True).shape)
    scale, zp = layer.quant(0, outputs=True)
    low, high = fp.activation_range(opts.fusedActivationFunction, scale, zp, layer.where)
    sliding = window(layer)
    kernel, stride, pads = sliding.kernel, sliding.stride, sliding.pads
    is_max = int(op_name(layer.model, layer.op) == "MAX_POOL_2D")
    params = layer.params("ek_pool_params", f"{is_max}, {kernel[0]}, {kernel[1]}, {stride[0]}, {stride[1]}, "
                                            f"{pads[0]}, {pads[1]}, {low}, {high}")
    return (f"ek_pool({layer.pointer(0)}, {c_shape(in_shape)}, {c_rect(layer.part(0, in_shape))}, "
            f"{layer.pointer(0, True)}, {c_shape(out_shape)}, {c_rect(layer.part(0, out_shape, True))}, {params});")


def _broadcast(layer: Layer) -> tuple[str, tuple[int, int]]:
    """The ek_broadcast of a binary elementwise operator over the output part it computes (the whole tensor
    unless patched): the part's shape, per input and the output the strides (0 where an input repeats), and
    where each input's part starts in its buffer."""
    whole = nhwc(layer.tensor(0, outputs=True).shape)
    y, x, h, w, row = layer.part(0, whole, outputs=True)
    strides, starts = [], []
    for position in (0, 1):
        dims = nhwc(layer.tensor(position).shape)
        if any(d not in (1, o) for d, o in zip(dims, whole)):
            raise UnsupportedOpError(f"{layer.where}: input {position} of shape {dims} does not broadcast to {whole}")
        top, left, held_h, _, held_row = layer.part(position, dims)
        natural = (held_h * held_row * dims[3], held_row * dims[3], dims[3], 1)
        strides.append(", ".join(str(0 if d == 1 and o != 1 else n) for d, o, n in zip(dims, whole, natural)))
        rows, cols = (y - top if dims[1] != 1 else 0), (x - left if dims[2] != 1 else 0)
        starts.append((rows * held_row + cols) * dims[3])
    out = f"{h * row * whole[3]}, {row * whole[3]}, {whole[3]}, 1"
    fields = f"{c_shape((whole[0], h, w, whole[3]))}, {{{{{strides[0]}}}, {{{strides[1]}}}, {{{out}}}}}"
    return layer.params("ek_broadcast", fields, kind=f"bc{layer.tag}"), (starts[0], starts[1])


def _at(pointer: str, start: int) -> str:
    return f"{pointer} + {start}" if start else pointer


def _add_fields(layer: Layer) -> str:
    """The ek_add_params of an ADD or SUB operator `layer`: both inputs to a common scale, summed, requantized."""
    (s1, z1), (s2, z2), (so, zo) = layer.quant(0), layer.quant(1), layer.quant(0, outputs=True)
    low, high = fp.activation_range(layer.op.builtinOptions.fusedActivationFunction, so, zo, layer.where)
    (m1, sh1), (m2, sh2), (mo, sho) = fp.add_multipliers(s1, s2, so)
    if sho > 0:  # TF Lite's kernel takes a multiplier below one (MultiplyByQuantizedMultiplierSmallerThanOneExp)
        raise UnsupportedOpError(f"{layer.where}: output scale {so} is below 2 x max(input scales) / 2^20")
    return f"{-z1}, {-z2}, {m1}, {m2}, {mo}, {sh1}, {sh2}, {sho}, {fp.ADD_LEFT_SHIFT}, {zo}, {low}, {high}"


def _binary(layer: Layer) -> str:
    """ADD, SUB and MUL, either input broadcast along any axis of size 1 (SE blocks: MUL of N,H,W,C by N,1,1,C)."""
    (s1, z1), (s2, z2), (so, zo) = layer.quant(0), layer.quant(1), layer.quant(0, outputs=True)
    low, high = fp.activation_range(layer.op.builtinOptions.fusedActivationFunction, so, zo, layer.where)
    name = op_name(layer.model, layer.op)
    if name in ("ADD", "SUB"):
        kernel, params = f"ek_{name.lower()}", layer.params("ek_add_params", _add_fields(layer))
    else:
        multiplier, shift = fp.mul_multiplier(s1, s2, so)
        kernel, params = "ek_mul", layer.params("ek_mul_params", f"{-z1}, {-z2}, {multiplier}, {shift}, {zo}, "
                                                                 f"{low}, {high}")
    broadcast, starts = _broadcast(layer)
    return (f"{kernel}({_at(layer.operand(0), starts[0])}, {_at(layer.operand(1), starts[1])}, "
            f"{layer.pointer(0, True)}, {broadcast}, {params});")


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


def _quantize(layer: Layer) -> str:
    """QUANTIZE: float32 -> int8 at the input edge; int8 -> int8 (a requantization: a concatenation's input, an output
    edge) as a 256-entry table."""
    (s_out, z_out), count = layer.quant(0, outputs=True), int(np.prod(nhwc(layer.tensor(0).shape)))
    if TENSOR_TYPES.get(layer.tensor(0).type) == "float32":
        return f"ek_quantize_float({layer.pointer(0)}, {layer.pointer(0, True)}, {count}, {c_float(s_out)}, {z_out});"
    s_in, z_in = layer.quant(0)
    table = layer.array("t", np.array(fp.requantize_table(s_in, z_in, s_out, z_out), np.int8))
    return f"ek_lut({layer.pointer(0)}, {layer.pointer(0, True)}, {count}, {table});"


def _dequantize(layer: Layer) -> str:
    """DEQUANTIZE int8 -> float32 at the output edge."""
    if is_constant(layer.model, int(layer.op.inputs[0])):
        raise UnsupportedOpError(f"{layer.where}: a DEQUANTIZE of constant weights (a float model)")
    (scale, zero_point), count = layer.quant(0), int(np.prod(nhwc(layer.tensor(0).shape)))
    return f"ek_dequantize({layer.pointer(0)}, {layer.pointer(0, True)}, {count}, {c_float(scale)}, {zero_point});"


def c_float(value: float) -> str:
    """A float32 value as an exact C99 literal (hexadecimal: no decimal rounding on the way)."""
    return f"{float(np.float32(value)).hex()}f"


def _resize_nearest(layer: Layer) -> str:
    """RESIZE_NEAREST_NEIGHBOR over H and W: a copy through per-axis index tables (align_corners, half_pixel_centers
    as TF Lite's reference)."""
    opts = layer.op.builtinOptions
    in_shape, out_shape = nhwc(layer.tensor(0).shape), nhwc(layer.tensor(0, outputs=True).shape)
    if [int(v) for v in layer.constant(1).reshape(-1)] != list(out_shape[1:3]):
        raise UnsupportedOpError(f"{layer.where}: size {layer.constant(1).reshape(-1).tolist()} is not the output's "
                                 f"H x W {out_shape[1:3]}")
    corners, centers = bool(opts.alignCorners), bool(opts.halfPixelCenters)
    rows, cols = (layer.array(kind, np.array(fp.nearest_indices(in_shape[a], out_shape[a], corners, centers), np.int32))
                  for kind, a in (("r", 1), ("c", 2)))
    return (f"ek_resize_nearest({layer.pointer(0)}, {c_shape(in_shape)}, {layer.pointer(0, True)}, "
            f"{c_shape(out_shape)}, {rows}, {cols});")


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
    """PAD (with the output's zero point) and PADV2 (with its constant: -128 ahead of a max pool)."""
    pads = layer.constant(1).reshape(-1, 2)
    before = [0] * (4 - len(pads)) + [int(p) for p in pads[:, 0]]
    in_shape, out_shape = nhwc(layer.tensor(0).shape), nhwc(layer.tensor(0, outputs=True).shape)
    if layer.quant(0) != layer.quant(0, outputs=True):
        raise UnsupportedOpError(f"{layer.where}: input and output quantized differently (an int8 PAD copies "
                                 "values: TF Lite needs one quantization)")
    _, value = layer.quant(0, outputs=True)
    if op_name(layer.model, layer.op) == "PADV2":
        value = int(layer.constant(2).astype(np.int32).reshape(-1)[0])
    return (f"ek_pad({layer.pointer(0)}, {c_shape(in_shape)}, {layer.pointer(0, True)}, {c_shape(out_shape)}, "
            f"(const int[4]){{{', '.join(map(str, before))}}}, {value});")


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
    stage: str | None = None  # in a patched stage: "window" (conv, pool), "pointwise", "pad" (folded); None: not
    float_edge: str | None = None  # "input": may read the graph's float32 input; "output": may write its output


KERNELS = {
    "CONV_2D": Kernel(_conv, stage="window"), "DEPTHWISE_CONV_2D": Kernel(_conv, stage="window"),
    "FULLY_CONNECTED": Kernel(_conv), "AVERAGE_POOL_2D": Kernel(_pool, stage="window"),
    "MAX_POOL_2D": Kernel(_pool, stage="window"), "ADD": Kernel(_binary, stage="pointwise"),
    "MUL": Kernel(_binary, stage="pointwise"), "SUB": Kernel(_binary), "MEAN": Kernel(_mean), "LOGISTIC": Kernel(_lut),
    "HARD_SWISH": Kernel(_lut), "SOFTMAX": Kernel(_softmax), "CONCATENATION": Kernel(_concat),
    "PAD": Kernel(_pad, stage="pad"), "PADV2": Kernel(_pad), "TRANSPOSE": Kernel(_transpose),
    "RESHAPE": Kernel(None, alias=True), "QUANTIZE": Kernel(_quantize, float_edge="input"),
    "DEQUANTIZE": Kernel(_dequantize, float_edge="output"), "RESIZE_NEAREST_NEIGHBOR": Kernel(_resize_nearest),
}
