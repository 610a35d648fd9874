"""C code generation for microcontrollers: a full-integer INT8 .tflite as plain C99, no interpreter.

`generate` writes ek_model.c (weights as const arrays, one kernel call per operator, every activation at a fixed
offset of one static arena), ek_model.h (the entry points and sizes) and the portable kernels (ek_kernels.c/h),
which follow TF Lite's reference integer arithmetic so the output equals the tflite-micro interpreter's. PADs
before a convolution are folded into it and depthwise convolutions run in place (`edgekit.mcu.memory`), so the
arena follows edgekit's default memory accounting; `edgekit.mcu.patched` compiles a patch schedule in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgekit.formats.tflite import TENSOR_TYPES
from edgekit.mcu.arena import Arena
from edgekit.mcu.layers import KERNELS, Layer, nhwc
from edgekit.mcu.memory import steps
from edgekit.mcu.operators import Operators, comment, read_operators

KERNEL_FILES = ("ek_kernels.c", "ek_kernels.h")


@dataclass(frozen=True)
class GeneratedC:
    """What `generate` wrote and the memory the model needs: the arena (SRAM) and its constants (flash)."""

    files: tuple[Path, ...]
    arena_bytes: int
    arena_lower_bound_bytes: int  # the most activation bytes live at once: no arena plan needs less
    weight_flash_bytes: int  # const arrays: weights, biases, requantization multipliers and shifts
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_dtype: str = "int8"  # "float32" when a QUANTIZE takes the model's float input
    output_dtype: str = "int8"  # "float32" when a DEQUANTIZE gives the model's output
    input_quantization: tuple[float, int] | None = None  # a float32 input: the (scale, zero point) it is quantized to

    @property
    def output_bytes(self) -> int:
        return int(np.prod(self.output_shape)) * np.dtype(self.output_dtype).itemsize


def generate(tflite: bytes, out_dir: Path, where: str = "the model") -> GeneratedC:
    """Write the C sources of full-integer INT8 model `tflite` into `out_dir`, layer by layer; UnsupportedOpError
    naming any operator or tensor type the kernels do not take, ModelLoadError when it is not a TFLite model."""
    ops = read_operators(tflite, where)
    run = steps(ops)
    scratch = {i: plane(ops, run.reads[i][0]) for i in run.inplace}  # a copy of one input channel
    arena = run.arena(ops, ops.sizes, scratch, [ops.input])

    def place(tensor: int) -> str:
        return f"(arena + {arena.offsets[tensor]})"

    layers = [run.layer(ops, index, place=place) for index in run.reads]
    calls = [f"{ops.comment(layer.index)}\n    {call(ops.names[layer.index], layer)}" for layer in layers]
    return write_sources(out_dir, where, ops, arena, layers, calls)


def plane(ops: Operators, tensor: int) -> int:
    """Bytes of one channel of an NHWC tensor: H x W."""
    shape = ops.shape(tensor)
    return shape[1] * shape[2]


def write_sources(out_dir: Path, where: str, ops: Operators, arena: Arena, layers: list[Layer],
                  calls: list[str], streamed: bool = False) -> GeneratedC:
    """Write ek_model.c (the layers' constants, `calls` as the body of ek_model_invoke), ek_model.h and the
    kernels into `out_dir`; what was written. `streamed`: no ek_model_input(); the calls read the image window by
    window through ek_model_read_window, which the application provides."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_c, model_h = out_dir / "ek_model.c", out_dir / "ek_model.h"
    flash = sum(layer.flash_bytes for layer in layers)
    model_c.write_text(_MODEL_C.format(
        where=comment(where), ops=len(ops.names), arena=arena.size_bytes, flash=flash,
        arrays="\n".join(a for layer in layers for a in layer.arrays), calls="\n".join(calls),
        input="" if streamed else _INPUT_C.format(arena.offsets[ops.input]), output=arena.offsets[ops.output]))
    _, height, width, channels = nhwc(ops.shape(ops.input))
    dtypes = [TENSOR_TYPES[ops.tensor(t).type] for t in (ops.input, ops.output)]
    floats = "".join(f"#define EK_{edge}_FLOAT32 1\n" for edge, dtype in zip(("INPUT", "OUTPUT"), dtypes)
                     if dtype == "float32")
    model_h.write_text(_MODEL_H.format(arena=arena.size_bytes, input=ops.sizes[ops.input], height=height,
                                       width=width, channels=channels, output=ops.sizes[ops.output], floats=floats,
                                       entry=_STREAMED_H if streamed else "int8_t *ek_model_input(void);"))
    kernels = resources.files("edgekit.mcu") / "kernels"
    for name in KERNEL_FILES:
        with resources.as_file(kernels / name) as source:
            shutil.copyfile(source, out_dir / name)
    quantized = None
    if dtypes[0] == "float32":  # a QUANTIZE reads it: what it quantizes to
        reader = next(i for i, ins in enumerate(ops.reads) if ops.input in ins)
        quantized = Layer(ops.model, reader, str).quant(0, outputs=True)
    return GeneratedC((model_c, model_h, *(out_dir / n for n in KERNEL_FILES)), arena.size_bytes,
                      arena.lower_bound_bytes, flash, ops.shape(ops.input), ops.shape(ops.output), dtypes[0],
                      dtypes[1], quantized)


def call(name: str, layer: Layer) -> str:
    """The C statement of one operator (a comment for an alias, which needs no code), in a block of its own: the
    compound literals of its arguments live only there, so the compiler reuses their stack for the next call."""
    emit = KERNELS[name].emit
    return f"{{ {emit(layer)} }}" if emit is not None else "/* alias of its input: no code */"


_MODEL_C = """\
/* Generated by edgekit from {where}: {ops} operators, a {arena}-byte arena, {flash} bytes of constants. */
#include "ek_kernels.h"
#include "ek_model.h"

static int8_t arena[EK_ARENA_BYTES];

{arrays}
{input}
const int8_t *ek_model_output(void) {{ return arena + {output}; }}

void ek_model_invoke(void) {{
{calls}
}}
"""

_INPUT_C = """
int8_t *ek_model_input(void) {{ return arena + {}; }}
"""

_STREAMED_H = """\
/* The image is streamed: ek_model_invoke() asks the application for each patch's window of the int8 NHWC image,
 * rows [y, y + h) and cols [x, x + w), written row after row (w * EK_INPUT_C bytes each) to `dst`. */
#define EK_STREAMED_INPUT 1
void ek_model_read_window(int y, int x, int h, int w, int8_t *dst);"""

_MODEL_H = """\
/* Generated by edgekit: the model's entry points. Fill ek_model_input() (or provide ek_model_read_window when
 * EK_STREAMED_INPUT), call ek_model_invoke(), read ek_model_output(); all activations live in one static arena
 * of EK_ARENA_BYTES. Input and output are int8, or native float32 where EK_INPUT_FLOAT32 / EK_OUTPUT_FLOAT32 is
 * defined: then copy them in and out with memcpy (they need not be 4-byte aligned in the arena). Sizes are bytes. */
#ifndef EK_MODEL_H
#define EK_MODEL_H

#include <stdint.h>

#define EK_ARENA_BYTES {arena}
#define EK_INPUT_BYTES {input}
#define EK_INPUT_H {height}
#define EK_INPUT_W {width}
#define EK_INPUT_C {channels}
#define EK_OUTPUT_BYTES {output}
{floats}
{entry}
const int8_t *ek_model_output(void);
void ek_model_invoke(void);

#endif
"""
