"""The operators of a full-integer INT8 .tflite as the C generator reads them: names, the activations each reads
and writes, their bytes, RESHAPE aliases; anything the kernels cannot take refused by name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedOpError
from edgekit.formats.tflite import TENSOR_TYPES, is_constant, op_name, parse_model, tensor_name
from edgekit.mcu.layers import KERNELS


@dataclass(frozen=True)
class Operators:
    """A model's one subgraph as the generator reads it: per operator its name and the activations it reads and
    writes, every activation's bytes, RESHAPE outputs (aliases of their input) and the graph input and output."""

    model: Any
    names: list[str]
    reads: list[list[int]]
    writes: list[list[int]]
    sizes: dict[int, int]
    aliases: dict[int, int]
    input: int
    output: int

    def comment(self, index: int) -> str:
        """The C comment line above operator `index`'s code."""
        return f"    /* {index} {self.names[index]}: {comment(tensor_name(self.tensor(self.writes[index][0])))} */"

    def tensor(self, index: int) -> Any:
        return self.model.subgraphs[0].tensors[index]

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor(index).shape)


def read_operators(tflite: bytes, where: str) -> Operators:
    """The operators of full-integer INT8 model `tflite`; UnsupportedOpError naming any operator or tensor type
    the kernels do not take, ModelLoadError when it is not a TFLite model."""
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
    edges = _float_edges(names, reads, writes, int(sub.inputs[0]), int(sub.outputs[0]))
    sizes = {t: _activation_bytes(sub.tensors[t], where, t in edges) for ts in (*reads, *writes) for t in ts}
    shared = [i for i, name in enumerate(names) if KERNELS[name].alias]
    if any(not reads[i] for i in shared):
        raise UnsupportedOpError(f"{where}: a {names[shared[0]]} of a constant (fold it into the constant)")
    aliases = {writes[i][0]: reads[i][0] for i in shared}
    return Operators(model, names, reads, writes, sizes, aliases, int(sub.inputs[0]), int(sub.outputs[0]))


def _float_edges(names: list[str], reads: list[list[int]], writes: list[list[int]], graph_input: int,
                 graph_output: int) -> set[int]:
    """The graph input and output that may be float32: an input only QUANTIZEs read, an output a DEQUANTIZE writes."""
    readers = [KERNELS[n].float_edge for n, ins in zip(names, reads) if graph_input in ins]
    writer = [KERNELS[n].float_edge for n, outs in zip(names, writes) if graph_output in outs]
    return ({graph_input} if readers and set(readers) == {"input"} else set()) | \
        ({graph_output} if writer == ["output"] else set())


def _activation_bytes(tensor: object, where: str, float_edge: bool) -> int:
    """Bytes of an int8 activation (or a float32 edge); UnsupportedOpError for any other type (the model is not
    full-integer)."""
    dtype = TENSOR_TYPES.get(tensor.type, str(tensor.type))  # type: ignore[attr-defined]
    count = int(np.prod(tensor.shape))  # type: ignore[attr-defined]
    if dtype == "float32" and float_edge:
        return 4 * count
    if dtype != "int8":
        raise UnsupportedOpError(f"{where}: activation {tensor_name(tensor)!r} is {dtype}; the C generator takes "
                                 "full-integer INT8 models (edgekit compile --int8), float32 only as the input of "
                                 "QUANTIZE or the output of DEQUANTIZE")
    return count


def comment(text: str) -> str:
    """`text` safe inside a C comment: names come from the model file, so no '*' (no '*/') and no line breaks."""
    return re.sub(r"[^\w.:;,/ ()\[\]-]", "_", text)[:200]
