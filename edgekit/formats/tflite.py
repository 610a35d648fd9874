"""`.tflite` flatbuffers through the schema bindings LiteRT ships: parse, name operators, tell constants, serialise.

The bindings (ai-edge-litert's, else tflite-micro's copy; `tflite_verify.schema`) are imported on first use; every
file is checked by `tflite_verify` before the bindings' unchecked reader sees it. Models are the schema's
object API (`ModelT`), which edgekit reads (graph import, MCU checks, backend memory) and rewrites (patch
artifacts, arena plans, latency prefixes) alike.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelLoadError
from edgekit.formats.tflite_verify import schema, verify_tflite

# TensorType enum of the schema -> numpy dtype name, for the types edgekit meets
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8"}


@functools.lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


def op_name(model: Any, op: Any) -> str:
    """Builtin name of an operator ('CONV_2D'), or 'CUSTOM:<code>' for a custom op."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = _builtin_names().get(builtin, str(builtin))
    if name == "CUSTOM":
        custom = code.customCode
        name = f"CUSTOM:{custom.decode(errors='replace') if isinstance(custom, bytes) else custom}"
    return name


def tensor_name(tensor: Any) -> str:
    """A tensor's name as text (the object API gives bytes; bytes that are not UTF-8 shown replaced)."""
    return tensor.name.decode(errors="replace") if isinstance(tensor.name, bytes) else tensor.name or ""


def parse_model(data: bytes, where: str) -> Any:
    """The ModelT of flatbuffer `data`; ModelLoadError naming `where` when it is not a TFLite model."""
    verify_tflite(data, where, ModelLoadError)
    try:
        model = schema().ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # the generated parser raises whatever struct/index error it hits
        raise ModelLoadError(f"{where}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    for buffer in model.buffers or []:  # data stored past the flatbuffer (inside the file: verified): read it in
        offset, size = int(buffer.offset or 0), int(buffer.size or 0)
        if offset > 1:
            buffer.data, buffer.offset, buffer.size = np.frombuffer(data, np.uint8, size, offset), 0, 0
    return model


def external_buffers(data: bytes) -> int:
    """How many buffers the flatbuffer `data` keeps past its end (by offset), which TF Lite Micro does not read
    (0 for bytes that are not a readable flatbuffer: loading them reports that)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        return 0
    try:
        model = schema().Model.GetRootAs(data, 0)
        return sum(1 for i in range(model.BuffersLength()) if (model.Buffers(i).Offset() or 0) > 1)
    except Exception:  # noqa: BLE001 - the generated reader raises whatever struct/index error it hits
        return 0


def inline_buffers(data: bytes, where: str) -> bytes:
    """`data` with every buffer inside the flatbuffer (as TF Lite Micro needs); unchanged when it has none outside."""
    return pack_model(parse_model(data, where)) if external_buffers(data) else data


def read_model(path: Path) -> tuple[Any, bytes]:
    """Parse a .tflite file: (model object, raw bytes); ModelLoadError if not one."""
    schema()  # a missing schema package is the error to report, before any about the file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    return parse_model(data, str(path)), data


def is_constant(model: Any, tensor: int, subgraph: int = 0) -> bool:
    """Whether a tensor is a constant (weights, biases, shapes): its buffer holds data, inside the flatbuffer
    or past its end (offset > 1; offset 1 is the schema's placeholder; `parse_model` reads such data in)."""
    index = model.subgraphs[subgraph].tensors[tensor].buffer
    if not 0 <= index < len(model.buffers or []):
        return False
    buffer = model.buffers[index]
    return (buffer.data is not None and len(buffer.data) > 0) or (buffer.offset or 0) > 1


def pack_model(model: Any) -> bytes:
    """Serialise a ModelT with every byte vector (weight buffers) on a 16-byte boundary, as TFLM expects."""
    import flatbuffers

    class Builder(flatbuffers.Builder):
        def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - flatbuffers' own name
            if x.dtype != np.uint8:
                return super().CreateNumpyVector(x)
            self.StartVector(1, x.size, 16)
            self.head -= x.size
            self.Bytes[self.head: self.head + x.size] = x.tobytes()
            self.vectorNumElems = x.size
            return self.EndVector()

    builder = Builder(1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def extract_model(model: Any, ops: list[int], inputs: list[int], outputs: list[int]) -> Any:
    """A model of its own made of subgraph 0's operators `ops` (indices, run in that order), taking the tensors
    `inputs` and giving `outputs`: only the tensors and buffers they use, renumbered; operator codes as they are."""
    sub = model.subgraphs[0]
    tensors: list[Any] = []
    remap: dict[int, int] = {}

    def index(t: int) -> int:
        if t < 0:  # an optional input left out
            return t
        if t not in remap:
            remap[t] = len(tensors)
            tensors.append(copy.deepcopy(sub.tensors[t]))
        return remap[t]

    part = schema().SubGraphT()
    part.inputs = np.array([index(int(t)) for t in inputs], np.int32)
    part.operators = []
    for i in ops:
        op = copy.deepcopy(sub.operators[i])
        op.inputs = np.array([index(int(t)) for t in op.inputs], np.int32)
        op.outputs = np.array([index(int(t)) for t in op.outputs], np.int32)
        part.operators.append(op)
    part.outputs = np.array([index(int(t)) for t in outputs], np.int32)
    part.tensors, part.name = tensors, sub.name
    used = sorted({0} | {int(t.buffer) for t in tensors})  # buffer 0 is the schema's empty sentinel
    renumber = {b: i for i, b in enumerate(used)}
    for t in tensors:
        t.buffer = renumber[int(t.buffer)]
    out = copy.copy(model)
    out.subgraphs, out.buffers = [part], [model.buffers[b] for b in used]
    out.signatureDefs, out.metadata, out.metadataBuffer = None, None, None
    return out
