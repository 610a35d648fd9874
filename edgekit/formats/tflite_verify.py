"""Verify a `.tflite` flatbuffer before any interpreter reads it: every offset, index and size inside its bounds.

The flatbuffers Python reader checks no bounds and TF Lite Micro verifies nothing (an MCU has no room for a
verifier), so a tampered file whose hashes were made consistent could send either outside the buffer. This walks
the file as flatbuffers' C++ `Verifier` does, each table, vtable, vector and string inside the buffer, over the
TFLite schema's tables (the vtable slots of ai-edge-litert's `schema_py_generated`), then checks what the
interpreters trust: buffer indices, data offsets and sizes past the flatbuffer, constant tensor sizes, opcode
indices and builtin codes, operator and subgraph tensor indices, quantization vector lengths. What a bundle has no
use for and an interpreter would follow blindly (external buffer files, StableHLO options, quantization details)
is refused. Standard library only, like the bundle loader that calls it.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Any

from edgekit.errors import EdgekitError, ModelLoadError

IDENTIFIER = b"TFL3"
MAX_TENSOR_BYTES = 2**31 - 1  # one tensor's bytes fit a C int, as TFLite's kernels index them
CUSTOM = 32  # BuiltinOperator.CUSTOM
OFFLINE_PLAN = b"OfflineMemoryAllocation"  # TFLM's metadata: [version, subgraph, tensor count, offsets...] int32
# TensorType -> bits per element; the others (STRING 5, RESOURCE 13, VARIANT 14: no fixed size, no numbers) are
# refused, as no edgekit model holds them and interpreters crash on them where a number was expected
ELEMENT_BITS = {0: 32, 1: 16, 2: 32, 3: 8, 4: 64, 6: 8, 7: 16, 8: 64, 9: 8, 10: 64, 11: 128, 12: 64, 15: 32,
                16: 16, 17: 4, 18: 16, 19: 2, 20: 4, 21: 8, 22: 8}
# The operators that may leave out inputs (-1), and which: LSTM, RNN, SVDF and their sequence forms any but the
# first (CIFG weights, peepholes); convolutions and FULLY_CONNECTED their bias, the last. Every other kernel reads
# each input without checking it is there (LiteRT's RESHAPE and TRANSPOSE crash on a -1)
RECURRENT_CODES = frozenset((16, 24, 27, 35, 44, 46, 52))
BIAS_CODES = frozenset((3, 4, 9, 67, 132, 141))  # CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, 3-D
PLACEHOLDER = 127  # deprecated_builtin_code of every operator whose code does not fit its int8
# BuiltinOptions with vectors: union type -> (vtable slot, element bytes, field); every other option table holds
# scalars only, checked as a table
OPTION_VECTORS = {3: ((6, 4, "num_columns_per_channel"), (8, 4, "embedding_dim_per_channel")),
                  8: ((14, 1, "quant_spec"),), 17: ((4, 4, "new_shape"),), 30: ((4, 4, "squeeze_dims"),),
                  115: ((4, 4, "boundaries"),)}
SPARSE_INDEX_BYTES = {0: 0, 1: 4, 2: 2, 3: 1}  # SparseIndexVector: NONE, Int32Vector, Uint16Vector, Uint8Vector
OPTION_STRINGS = {111: ((4, "container"), (6, "shared_name"))}  # VarHandleOptions


@functools.lru_cache(maxsize=1)
def schema() -> Any:
    """The generated schema module (`schema_py_generated`); ModelLoadError when no package ships one."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # pragma: no cover - depends on what is installed
        try:
            from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
        except ImportError:
            raise ModelLoadError("reading .tflite files needs ai-edge-litert "
                                 "(pip install 'edgekit[runtime]')") from None
    return schema_py_generated


COMMON_BUILTINS = 210  # BuiltinOperator 0..209: all in the schema of ai-edge-litert >= 1.2 (a test checks)


@functools.lru_cache(maxsize=1)
def _known_builtins() -> frozenset[int] | None:
    """The builtin operator codes of the installed schema; None where none is installed (tflite-runtime)."""
    try:
        return frozenset(v for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_"))
    except ModelLoadError:
        return None


class _Invalid(Exception):
    """A check failed: the field, and what is wrong with it (made an edgekit error by `verify_tflite`)."""


class _Table:
    """One flatbuffer table whose vtable and inline part were checked to lie inside the buffer."""

    def __init__(self, data: bytes, pos: int, field: str) -> None:
        self.data, self.pos, self.field = data, pos, field
        _need(data, pos, 4, field, "table")
        vtable = pos - struct.unpack_from("<i", data, pos)[0]
        _need(data, vtable, 4, field, "vtable")
        self.vtable_bytes, self.inline_bytes = struct.unpack_from("<HH", data, vtable)
        if self.vtable_bytes < 4 or self.vtable_bytes % 2 or self.inline_bytes < 4:
            raise _Invalid(f"{field}: malformed vtable ({self.vtable_bytes} vtable bytes, {self.inline_bytes} "
                           "table bytes)")
        _need(data, vtable, self.vtable_bytes, field, "vtable")
        _need(data, pos, self.inline_bytes, field, "table")
        self.vtable = vtable
        for slot in range(4, self.vtable_bytes, 2):
            offset = struct.unpack_from("<H", data, vtable + slot)[0]
            if offset >= self.inline_bytes or (offset and offset < 4):
                raise _Invalid(f"{field}: field at vtable slot {slot} lies outside its table (offset {offset}, "
                               f"table {self.inline_bytes} bytes)")

    def _at(self, slot: int, width: int, name: str) -> int | None:
        """Where the field in `slot` starts, checked to hold `width` bytes inside the table; None when absent."""
        if slot >= self.vtable_bytes:
            return None
        offset = struct.unpack_from("<H", self.data, self.vtable + slot)[0]
        if not offset:
            return None
        if offset + width > self.inline_bytes:
            raise _Invalid(f"{self.field}: {name} runs past the end of its table")
        return self.pos + offset

    def scalar(self, slot: int, fmt: str, name: str, default: int = 0) -> int:
        at = self._at(slot, struct.calcsize("<" + fmt), name)
        return default if at is None else struct.unpack_from("<" + fmt, self.data, at)[0]

    def _target(self, slot: int, name: str) -> int | None:
        """Where the uoffset in `slot` points, checked to lie inside the buffer."""
        at = self._at(slot, 4, name)
        if at is None:
            return None
        target = at + struct.unpack_from("<I", self.data, at)[0]
        _need(self.data, target, 4, f"{self.field}: {name}", "offset")
        return target

    def vector(self, slot: int, element_bytes: int, name: str) -> tuple[int, int]:
        """(start, length) of the vector in `slot`, every element inside the buffer; (0, 0) when absent."""
        target = self._target(slot, name)
        if target is None:
            return 0, 0
        length = struct.unpack_from("<I", self.data, target)[0]
        _need(self.data, target + 4, length * element_bytes, f"{self.field}: {name}", f"vector of {length:,}")
        return target + 4, length

    def numbers(self, slot: int, fmt: str, name: str) -> tuple[Any, ...]:
        start, length = self.vector(slot, struct.calcsize("<" + fmt), name)
        return struct.unpack_from(f"<{length}{fmt}", self.data, start) if length else ()

    def string(self, slot: int, name: str) -> bytes:
        start, length = self.vector(slot, 1, name)
        if start and length:
            _need(self.data, start, length + 1, f"{self.field}: {name}", "string and its terminator")
        return self.data[start:start + length]

    def table(self, slot: int, name: str) -> _Table | None:
        target = self._target(slot, name)
        return None if target is None else _Table(self.data, target, f"{self.field}: {name}")

    def tables(self, slot: int, name: str, label: str) -> list[_Table]:
        """The vector of tables in `slot`, each checked; `label` names one in errors ('tensor {}' for tensor i)."""
        start, length = self.vector(slot, 4, name)
        found = []
        for i in range(length):
            at = start + 4 * i
            found.append(_Table(self.data, at + struct.unpack_from("<I", self.data, at)[0], label.format(i)))
        return found


def _need(data: bytes, start: int, size: int, field: str, what: str) -> None:
    if start < 0 or start + size > len(data):
        raise _Invalid(f"{field}: {what} lies outside the file (at byte {start:,}, {size:,} bytes; the file has "
                       f"{len(data):,})")


_VERIFIED: dict[tuple[int, int], tuple[tuple[int, ...], ...]] = {}  # (length, hash) of bytes that passed -> shapes
_VERIFIED_KEPT = 16


def verify_tflite(data: bytes, where: str, error: type[EdgekitError]) -> tuple[tuple[int, ...], ...]:
    """Check the flatbuffer `data` (see the module docstring); `error` naming `where` and the field if it fails.
    The shapes of subgraph 0's tensors, as the file declares them (what TF Lite Micro allocates).

    Loading a bundle, opening its interpreter and reading its memory all verify the same bytes, so a pass is
    remembered by the bytes' length and hash (Python keeps a bytes object's hash; its SipHash key is random per
    process unless PYTHONHASHSEED fixes it, so a file made to collide with one that passed needs that key); no
    reference to the bytes is kept."""
    key = (len(data), hash(data)) if isinstance(data, bytes) else None
    if key is not None and key in _VERIFIED:
        return _VERIFIED[key]
    try:
        shapes = tuple(_verify_model(data))
    except _Invalid as exc:
        raise error(f"{where}: invalid TFLite model: {exc}") from None
    if key is not None:
        if len(_VERIFIED) >= _VERIFIED_KEPT:
            _VERIFIED.pop(next(iter(_VERIFIED)))
        _VERIFIED[key] = shapes
    return shapes


def _verify_model(data: bytes) -> list[tuple[int, ...]]:
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise _Invalid("not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    model = _Table(data, struct.unpack_from("<I", data, 0)[0], "model")
    codes = [_operator_code(code) for code in model.tables(6, "operator_codes", "operator code {}")]
    buffers = [_buffer(buffer, len(data)) for buffer in model.tables(12, "buffers", "buffer {}")]
    model.string(10, "description")
    for index in model.numbers(14, "i", "metadata_buffer"):
        _index(index, len(buffers), "model: metadata_buffer entry", "buffers")
    if model.vector(20, 4, "external_buffer_groups")[1] or model.vector(22, 4, "external_buffers")[1]:
        raise _Invalid("model: external buffers (data in other files) are not supported; inline the weights")
    subgraphs = model.tables(8, "subgraphs", "subgraph {}")
    if not subgraphs:
        raise _Invalid("model: no subgraphs (a model needs at least one)")
    tensors = [_subgraph(sub, buffers) for sub in subgraphs]
    for sub, found in zip(subgraphs, tensors):
        _operators(sub, codes, found)
    for meta in model.tables(16, "metadata", "metadata {}"):
        _metadata(meta, buffers, tensors[0].count)
    for signature in model.tables(18, "signature_defs", "signature {}"):
        _signature(signature, [found.count for found in tensors])
    return tensors[0].shapes


def _index(value: int, count: int, field: str, what: str, optional: bool = False) -> None:
    if not (0 <= value < count or (optional and value == -1)):
        raise _Invalid(f"{field} {value} out of range ({count} {what})")


def _operator_code(code: _Table) -> int:
    """The builtin code, checked to be known, and its two fields to agree: the int32 one, and the deprecated int8
    one (the same code, 127 for codes past it, alone in files older than the int32 field, or 0 beside it, as
    ai-edge-quantizer writes; TFLite itself takes the larger of the two)."""
    deprecated, current = code.scalar(4, "b", "deprecated_builtin_code"), code.scalar(10, "i", "builtin_code")
    if deprecated not in (0, min(current, PLACEHOLDER)) and current != 0:
        raise _Invalid(f"{code.field}: builtin_code {current} and deprecated_builtin_code {deprecated} disagree")
    builtin = max(deprecated, current)
    if not 0 <= builtin < COMMON_BUILTINS:  # past them, the installed schema's (an import of ~10 ms) decides
        known = _known_builtins()
        if builtin < 0 or (known is not None and builtin not in known):
            raise _Invalid(f"{code.field}: unknown builtin operator code {builtin}")
    if builtin == CUSTOM and not code.string(6, "custom_code"):
        raise _Invalid(f"{code.field}: a custom operator without a custom_code")
    code.string(6, "custom_code")
    return builtin


def _buffer(buffer: _Table, file_bytes: int) -> int:
    """Bytes of the buffer's data, inside the flatbuffer or stored by offset past it (checked inside the file)."""
    _, length = buffer.vector(4, 1, "data")
    offset, size = buffer.scalar(6, "Q", "offset"), buffer.scalar(8, "Q", "size")
    if offset > 1:
        if offset + size > file_bytes:
            raise _Invalid(f"{buffer.field} lies past the end of the file (data at offset {offset:,}, {size:,} bytes; "
                           f"the file has {file_bytes:,})")
        return size
    return length


@dataclass(frozen=True)
class _Tensors:
    """What the data-flow checks need of a subgraph's tensors."""

    count: int
    given: frozenset[int]  # hold values before any operator runs: inputs and constants
    variables: frozenset[int]
    shapes: list[tuple[int, ...]]


def _subgraph(sub: _Table, buffers: list[int]) -> _Tensors:
    """Check the subgraph's tensors and its input/output indices."""
    tensors = sub.tables(4, "tensors", f"tensor {{}} of {sub.field}")
    kinds, shapes = zip(*(_tensor(tensor, buffers) for tensor in tensors)) if tensors else ((), ())
    for side in ("inputs", "outputs"):
        for index in sub.numbers(6 if side == "inputs" else 8, "i", side):
            _index(index, len(tensors), f"{sub.field}: {side[:-1]} tensor index", "tensors")
    sub.string(12, "name")
    given = {i for i, kind in enumerate(kinds) if kind == "constant"} | set(sub.numbers(6, "i", "inputs"))
    return _Tensors(len(tensors), frozenset(given), frozenset(i for i, kind in enumerate(kinds) if kind == "variable"),
                    list(shapes))


def _tensor(tensor: _Table, buffers: list[int]) -> tuple[str, tuple[int, ...]]:
    """Type, shape, buffer index, a constant's size against its buffer, quantization vectors: whether the tensor
    is a 'constant', a 'variable' or an 'activation', and its shape."""
    where = tensor.field
    dtype = tensor.scalar(6, "b", "type")
    if dtype not in ELEMENT_BITS:
        raise _Invalid(f"{where}: tensor type {dtype} is not a numeric type edgekit runs")
    sparsity = tensor.table(16, "sparsity")
    if sparsity is not None:
        _sparsity(sparsity)
    shape = tensor.numbers(4, "i", "shape")
    if any(d < 0 for d in shape):
        raise _Invalid(f"{where}: negative dimension in shape {list(shape)}")
    tensor.numbers(18, "i", "shape_signature")
    tensor.string(10, "name")
    elements = math.prod(shape)
    needed = math.ceil(elements * ELEMENT_BITS[dtype] / 8)
    if needed > MAX_TENSOR_BYTES:
        raise _Invalid(f"{where}: shape {list(shape)} needs {needed:,} bytes, over the cap of {MAX_TENSOR_BYTES:,}")
    index = tensor.scalar(8, "I", "buffer")
    _index(index, len(buffers), f"{where}: buffer index", "buffers")
    held = buffers[index]
    if held and sparsity is None and held != needed:
        raise _Invalid(f"{where}: constant of shape {list(shape)} needs {needed:,} bytes, buffer {index} holds "
                       f"{held:,}")
    if tensor.scalar(24, "I", "external_buffer"):
        raise _Invalid(f"{where}: external buffers (data in other files) are not supported; inline the weights")
    for variant in tensor.tables(22, "variant_tensors", f"variant {{}} of {where}"):
        variant.numbers(4, "i", "shape")
    quantization = tensor.table(12, "quantization")
    if quantization is not None:
        _quantization(quantization, shape)
    kind = "constant" if held else "variable" if tensor.scalar(14, "B", "is_variable") else "activation"
    return kind, shape


def _sparsity(sparsity: _Table) -> None:
    """A sparse tensor's traversal order, block map and per-dimension segment and index vectors."""
    sparsity.numbers(4, "i", "traversal_order")
    sparsity.numbers(6, "i", "block_map")
    for dim in sparsity.tables(8, "dim_metadata", f"dimension {{}} of {sparsity.field}"):
        for type_slot, slot, name in ((8, 10, "array_segments"), (12, 14, "array_indices")):
            kind = dim.scalar(type_slot, "B", f"{name}_type")
            vector = dim.table(slot, name)
            if kind not in SPARSE_INDEX_BYTES:
                raise _Invalid(f"{dim.field}: unknown {name} type {kind}")
            if vector is not None and kind:
                vector.vector(4, SPARSE_INDEX_BYTES[kind], "values")


def _quantization(q: _Table, shape: tuple[int, ...]) -> None:
    """Scale and zero point vectors of one length; per channel, that of the quantized dimension."""
    q.numbers(4, "f", "min")
    q.numbers(6, "f", "max")
    scales, zero_points = q.numbers(8, "f", "scale"), q.numbers(10, "q", "zero_point")
    if q.scalar(12, "B", "details_type"):
        raise _Invalid(f"{q.field}: quantization details are not supported")
    if scales and zero_points and len(scales) != len(zero_points):
        raise _Invalid(f"{q.field}: {len(scales)} scales but {len(zero_points)} zero points")
    if len(scales) > 1:
        axis = q.scalar(16, "i", "quantized_dimension")
        if not 0 <= axis < len(shape) or shape[axis] != len(scales):
            raise _Invalid(f"{q.field}: {len(scales)} per-channel scales on dimension {axis} of shape {list(shape)}")


def _operators(sub: _Table, codes: list[int], tensors: _Tensors) -> None:
    """Each operator's opcode index, tensor indices (-1: an optional input left out), options and custom data,
    and the data flow TF Lite Micro assumes: an operator reads only tensors that hold values by then (inputs,
    constants, variables, earlier outputs) and writes a tensor no input, constant or other operator fills."""
    count, written, variables = tensors.count, set(tensors.given), tensors.variables
    for op in sub.tables(10, "operators", f"operator {{}} of {sub.field}"):
        where = op.field
        opcode = op.scalar(4, "I", "opcode_index")
        _index(opcode, len(codes), f"{where}: opcode index", "operator codes")
        _left_out(op.numbers(6, "i", "inputs"), codes[opcode], where)
        for slot, side, optional in ((6, "input", True), (8, "output", False), (20, "intermediate", False)):
            for index in op.numbers(slot, "i", f"{side}s"):
                _index(index, count, f"{where}: {side} tensor index", "tensors", optional)
        for index in op.numbers(6, "i", "inputs"):
            if index != -1 and index not in written and index not in variables:
                raise _Invalid(f"{where}: input tensor {index} is read before anything writes it")
        for index in op.numbers(8, "i", "outputs"):
            if index in written:
                raise _Invalid(f"{where}: output tensor {index} is already written (an input, a constant or the "
                               "output of an earlier operator)")
            written.add(index)
        op.vector(14, 1, "custom_options")
        op.vector(18, 1, "mutating_variable_inputs")
        offset = op.scalar(22, "Q", "large_custom_options_offset")
        size = op.scalar(24, "Q", "large_custom_options_size")
        if offset > 1 and offset + size > len(op.data):
            raise _Invalid(f"{where}: custom options at offset {offset:,} with {size:,} bytes lie past the end of "
                           f"the file ({len(op.data):,} bytes)")
        _options(op, where)


def _left_out(inputs: tuple[int, ...], code: int, where: str) -> None:
    """Inputs left out (-1) only where the operator has optional ones (see RECURRENT_CODES, BIAS_CODES)."""
    missing = [i for i, index in enumerate(inputs) if index == -1]
    allowed = missing and missing[0] > 0 and (code in RECURRENT_CODES or
                                              (code in BIAS_CODES and missing == [len(inputs) - 1]))
    if missing and not allowed:
        raise _Invalid(f"{where}: input {missing[0]} is left out (-1), which this operator (builtin code {code}) "
                       "does not allow; only a bias, or the inputs of a recurrent operator but its first, may be")


def _options(op: _Table, where: str) -> None:
    """The builtin options table (its vectors and strings); StableHLO options are refused."""
    if op.scalar(26, "B", "builtin_options_2_type"):
        raise _Invalid(f"{where}: StableHLO operator options are not supported")
    kind = op.scalar(10, "B", "builtin_options_type")
    options = op.table(12, "builtin_options")
    if options is None or not kind:
        return
    options.field = f"{where}: builtin_options"
    for slot, element_bytes, name in OPTION_VECTORS.get(kind, ()):
        options.vector(slot, element_bytes, name)
    for slot, name in OPTION_STRINGS.get(kind, ()):
        options.string(slot, name)


def _metadata(meta: _Table, buffers: list[int], tensor_count: int) -> None:
    """A metadata entry's buffer index; TFLM's offline arena plan must hold one offset per tensor."""
    name = meta.string(4, "name")
    index = meta.scalar(6, "I", "buffer")
    _index(index, len(buffers), f"{meta.field}: buffer index", "buffers")
    if name == OFFLINE_PLAN and buffers[index] < 4 * (3 + tensor_count):
        raise _Invalid(f"{meta.field}: the offline arena plan holds {buffers[index]} bytes, fewer than the "
                       f"{4 * (3 + tensor_count)} its {tensor_count} tensors need")


def _signature(signature: _Table, tensor_counts: list[int]) -> None:
    """A signature's subgraph index and its tensor indices in that subgraph."""
    sub = signature.scalar(12, "I", "subgraph_index")
    _index(sub, len(tensor_counts), f"{signature.field}: subgraph index", "subgraphs")
    signature.string(8, "signature_key")
    for slot, side in ((4, "inputs"), (6, "outputs")):
        for entry in signature.tables(slot, side, f"{side[:-1]} {{}} of {signature.field}"):
            entry.string(4, "name")
            _index(entry.scalar(6, "I", "tensor_index"), tensor_counts[sub], f"{entry.field}: tensor index",
                   "tensors")
