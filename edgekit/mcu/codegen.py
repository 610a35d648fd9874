"""C code generation for microcontrollers: a full-integer INT8 .tflite as plain C99, no interpreter.

`generate` writes ek_model.c (weights as const arrays, one kernel call per operator, every activation at a fixed
offset of one static arena), ek_model.h (the entry points and sizes) and the portable kernels (ek_kernels.c/h),
which follow TF Lite's reference integer arithmetic so the output equals the tflite-micro interpreter's.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgekit.errors import UnsupportedOpError
from edgekit.formats.tflite import TENSOR_TYPES, is_constant, op_name, parse_model, tensor_name
from edgekit.mcu.arena import plan_arena
from edgekit.mcu.layers import KERNELS, Layer

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


def generate(tflite: bytes, out_dir: Path, where: str = "the model") -> GeneratedC:
    """Write the C sources of full-integer INT8 model `tflite` into `out_dir`; UnsupportedOpError naming any
    operator or tensor type the kernels do not take, ModelLoadError when it is not a TFLite model."""
    model = parse_model(tflite, where)
    sub = model.subgraphs[0]
    if len(model.subgraphs) != 1 or len(sub.inputs) != 1 or len(sub.outputs) != 1:
        raise UnsupportedOpError(f"{where}: {len(model.subgraphs)} subgraphs, {len(sub.inputs)} inputs and "
                                 f"{len(sub.outputs)} outputs (the C generator takes one of each)")
    names = [op_name(model, op) for op in sub.operators]
    missing = sorted(set(names) - set(KERNELS))
    if missing:
        raise UnsupportedOpError(f"{where}: the C generator has no kernel for {', '.join(missing)} "
                                 f"(it takes {', '.join(sorted(KERNELS))})")
    reads = [[int(t) for t in op.inputs if t >= 0 and not is_constant(model, int(t))] for op in sub.operators]
    writes = [[int(t) for t in op.outputs] for op in sub.operators]
    sizes = {t: _int8_bytes(sub.tensors[t], where) for ts in (*reads, *writes) for t in ts}
    shared = [i for i, name in enumerate(names) if KERNELS[name].alias]
    if any(not reads[i] for i in shared):
        raise UnsupportedOpError(f"{where}: a {names[shared[0]]} of a constant (fold it into the constant)")
    aliases = {writes[i][0]: reads[i][0] for i in shared}
    io = [int(sub.inputs[0])], [int(sub.outputs[0])]
    arena = plan_arena(sizes, reads, writes, *io, aliases)

    def place(tensor: int) -> str:
        return f"(arena + {arena.offsets[tensor]})"

    layers = [Layer(model, index, place) for index in range(len(names))]
    calls = [f"    /* {i} {name}: {_comment(tensor_name(sub.tensors[writes[i][0]]))} */\n    {_call(name, layer)}"
             for i, (name, layer) in enumerate(zip(names, layers))]
    out_dir.mkdir(parents=True, exist_ok=True)
    model_c, model_h = out_dir / "ek_model.c", out_dir / "ek_model.h"
    flash = sum(layer.flash_bytes for layer in layers)
    model_c.write_text(_MODEL_C.format(
        where=_comment(where), ops=len(names), arena=arena.size_bytes, flash=flash,
        arrays="\n".join(a for layer in layers for a in layer.arrays), calls="\n".join(calls),
        input=arena.offsets[io[0][0]], output=arena.offsets[io[1][0]]))
    model_h.write_text(_MODEL_H.format(arena=arena.size_bytes, input=sizes[io[0][0]], output=sizes[io[1][0]]))
    kernels = resources.files("edgekit.mcu") / "kernels"
    for name in KERNEL_FILES:
        with resources.as_file(kernels / name) as source:
            shutil.copyfile(source, out_dir / name)
    return GeneratedC((model_c, model_h, *(out_dir / n for n in KERNEL_FILES)), arena.size_bytes,
                      arena.lower_bound_bytes, flash, tuple(int(d) for d in sub.tensors[io[0][0]].shape),
                      tuple(int(d) for d in sub.tensors[io[1][0]].shape))


def _comment(text: str) -> str:
    """`text` safe inside a C comment: names come from the model file, so no '*' (no '*/') and no line breaks."""
    return re.sub(r"[^\w.:;,/ ()\[\]-]", "_", text)[:200]


def _call(name: str, layer: Layer) -> str:
    """The C statement of one operator (a comment for an alias, which needs no code)."""
    emit = KERNELS[name].emit
    return emit(layer) if emit is not None else "/* alias of its input: no code */"


def _int8_bytes(tensor: object, where: str) -> int:
    """Bytes of an int8 activation; UnsupportedOpError for any other type (the model is not full-integer)."""
    dtype = TENSOR_TYPES.get(tensor.type, str(tensor.type))  # type: ignore[attr-defined]
    if dtype != "int8":
        raise UnsupportedOpError(f"{where}: activation {tensor_name(tensor)!r} is {dtype}; the C generator takes "
                                 "full-integer INT8 models (edgekit compile --int8)")
    return int(np.prod(tensor.shape))  # type: ignore[attr-defined]


_MODEL_C = """\
/* Generated by edgekit from {where}: {ops} operators, a {arena}-byte arena, {flash} bytes of constants. */
#include "ek_kernels.h"
#include "ek_model.h"

static int8_t arena[EK_ARENA_BYTES];

{arrays}

int8_t *ek_model_input(void) {{ return arena + {input}; }}

const int8_t *ek_model_output(void) {{ return arena + {output}; }}

void ek_model_invoke(void) {{
{calls}
}}
"""

_MODEL_H = """\
/* Generated by edgekit: the model's entry points. Fill ek_model_input(), call ek_model_invoke(), read
 * ek_model_output(); all activations live in one static arena of EK_ARENA_BYTES. */
#ifndef EK_MODEL_H
#define EK_MODEL_H

#include <stdint.h>

#define EK_ARENA_BYTES {arena}
#define EK_INPUT_BYTES {input}
#define EK_OUTPUT_BYTES {output}

int8_t *ek_model_input(void);
const int8_t *ek_model_output(void);
void ek_model_invoke(void);

#endif
"""
