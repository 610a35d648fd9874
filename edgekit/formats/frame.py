"""The binary frame that carries boundary tensors between device and edge server (never pickle).

Layout, version 2, little-endian (docs in this docstring; sizes in bytes):

    magic "EKF" (3) | version (1) | kind (1) | request id (16) | deadline, unix ms (8) | model id length (1)
    | model id | model version length (1) | model version | [error length (1) | error text: kind 2 only]
    | tensor count (1) | tensors... | CRC-32 of all before (4)

    tensor: name length (1) | name | dtype code (1) | codec (1) | ndim (1) | dims (4 each)
            | scale (float32, 4) | zero point (int32, 4) | payload length (4) | payload

kind: 0 request, 1 response, 2 error (a response without tensors whose text says why). Version 1 had no
kind byte and is refused, as every other version is: both ends of a deployment ship together.
dtype codes: 1 int8, 2 uint8, 3 int16, 4 int32, 5 float16, 6 float32. codec: 0 raw, 1 zlib.
An int8 boundary tensor keeps the head's own scale and zero point, so nothing is requantised.
The decoder checks every length against what is left before reading, caps sizes and dimensions,
decompresses with a hard output limit, and checks the CRC: anything else is a FrameError.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from edgekit.errors import FrameError

MAGIC = b"EKF"
VERSION = 2
KINDS = {0: "request", 1: "response", 2: "error"}
MAX_TENSORS = 16
MAX_DIMS = 8
MAX_TENSOR_BYTES = 64 * 1024 * 1024
DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.int32, 5: np.float16, 6: np.float32}
DTYPE_CODES = {np.dtype(t): code for code, t in DTYPES.items()}
CODECS = {0: "raw", 1: "zlib"}
_CODEC_CODES = {name: code for code, name in CODECS.items()}
_KIND_CODES = {name: code for code, name in KINDS.items()}
_HEAD = struct.Struct("<3sBB16sQ")
_TENSOR = struct.Struct("<BBB")
_QUANT = struct.Struct("<fiI")
# What the cost model adds to each request's tensor bytes: the frame around one 4-D tensor with short model and
# tensor names (~75 B) plus an MQTT 3.1.1 PUBLISH with a short topic (~30 B), rounded up. v5 properties add
# offload.protocol.PUBLISH_OVERHEAD's share on top; an estimate, not an exact count.
PROTOCOL_OVERHEAD_BYTES = 128



@dataclass(frozen=True)
class Tensor:
    """One named array with its int8 quantization (scale 0 when it has none)."""

    name: str
    array: np.ndarray
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class Frame:
    """One request or answer: who, until when, for which model, the tensors, and for an error the reason."""

    request_id: bytes  # 16 bytes, e.g. uuid4().bytes
    deadline_ms: int
    model_id: str
    model_version: str
    tensors: tuple[Tensor, ...]
    kind: str = "request"  # one of KINDS' values
    error: str = ""  # kind "error" only: why there is no output


def _short_text(text: str, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise FrameError(f"{what} is {len(raw)} bytes; at most 255 fit a frame")
    return bytes([len(raw)]) + raw


def _clip(text: str) -> str:
    """Error text cut to what fits its 255-byte field, on a character boundary."""
    return text.encode()[:255].decode(errors="ignore")


def encode(frame: Frame, codec: str = "raw", level: int = 1) -> bytes:
    """The frame as bytes; `codec` 'zlib' compresses each tensor payload."""
    if len(frame.request_id) != 16:
        raise FrameError(f"request id must be 16 bytes, found {len(frame.request_id)}")
    if len(frame.tensors) > MAX_TENSORS:
        raise FrameError(f"a frame carries at most {MAX_TENSORS} tensors, found {len(frame.tensors)}")
    code = _CODEC_CODES.get(codec)
    if code is None:
        raise FrameError(f"codec must be one of {', '.join(CODECS.values())}, found {codec!r}")
    kind = _KIND_CODES.get(frame.kind)
    if kind is None:
        raise FrameError(f"frame kind must be one of {', '.join(KINDS.values())}, found {frame.kind!r}")
    if (kind == 2) != bool(frame.error) or (kind == 2 and frame.tensors):
        raise FrameError(f"an error frame has error text and no tensors, any other none: found kind {frame.kind!r}, "
                         f"{len(frame.tensors)} tensors, error {frame.error!r}")
    parts = [_HEAD.pack(MAGIC, VERSION, kind, frame.request_id, frame.deadline_ms),
             _short_text(frame.model_id, "model id"), _short_text(frame.model_version, "model version")]
    if kind == 2:
        parts.append(_short_text(_clip(frame.error), "error"))
    parts.append(bytes([len(frame.tensors)]))
    for tensor in frame.tensors:
        array = np.ascontiguousarray(tensor.array)
        dtype = DTYPE_CODES.get(array.dtype)
        if dtype is None or array.ndim > MAX_DIMS or array.nbytes > MAX_TENSOR_BYTES:
            raise FrameError(f"tensor '{tensor.name}': {array.dtype} {array.shape} cannot be framed "
                             f"(dtypes {', '.join(str(np.dtype(t)) for t in DTYPES.values())}; <= {MAX_DIMS} dims; "
                             f"<= {MAX_TENSOR_BYTES:,} bytes)")
        payload = array.tobytes()
        if code == 1:
            payload = zlib.compress(payload, level)
        parts += [_short_text(tensor.name, "tensor name"), _TENSOR.pack(dtype, code, array.ndim),
                  struct.pack(f"<{array.ndim}I", *array.shape),
                  _QUANT.pack(tensor.scale, tensor.zero_point, len(payload)), payload]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


class _Reader:
    """Bounds-checked reads over the frame body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, count: int, what: str) -> bytes:
        if count > len(self.data) - self.at:
            raise FrameError(f"frame truncated in {what}: needs {count} bytes, {len(self.data) - self.at} left")
        chunk = self.data[self.at:self.at + count]
        self.at += count
        return chunk

    def text(self, what: str) -> str:
        raw = self.take(self.take(1, what)[0], what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise FrameError(f"{what} is not UTF-8") from None


def decode(data: bytes, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> Frame:
    """Parse and verify a frame; FrameError (never another exception) for anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"a frame is bytes, found {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD.size + 4:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the {_HEAD.size + 4}-byte minimum")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    magic, version, kind, request_id, deadline = _HEAD.unpack_from(body)
    if magic != MAGIC:
        raise FrameError(f"not an edgekit frame (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise FrameError(f"frame version {version} is not supported (this side speaks {VERSION})")
    if zlib.crc32(body) != crc:
        raise FrameError("frame CRC mismatch: corrupted in transit")
    if kind not in KINDS:
        raise FrameError(f"frame kind {kind} is unknown (expected {', '.join(f'{k} {n}' for k, n in KINDS.items())})")
    reader = _Reader(body)
    reader.at = _HEAD.size
    model_id, model_version = reader.text("model id"), reader.text("model version")
    error = reader.text("error") if kind == 2 else ""
    count = reader.take(1, "tensor count")[0]
    if count > MAX_TENSORS:
        raise FrameError(f"frame declares {count} tensors; at most {MAX_TENSORS}")
    tensors = tuple(_decode_tensor(reader, max_tensor_bytes) for _ in range(count))
    if reader.at != len(body):
        raise FrameError(f"{len(body) - reader.at} unexpected bytes after the last tensor")
    if kind == 2 and (tensors or not error):
        raise FrameError(f"an error frame must have error text and no tensors, found {count} tensors")
    return Frame(request_id, deadline, model_id, model_version, tensors, KINDS[kind], error)


def peek_request_id(data: bytes) -> bytes | None:
    """The request id of bytes that start like a frame of this version, however corrupt the rest; else None.

    Lets a server address an error answer to a frame it cannot decode."""
    if len(data) < _HEAD.size or data[:3] != MAGIC or data[3] != VERSION:
        return None
    return bytes(data[5:21])


def _decode_tensor(reader: _Reader, max_tensor_bytes: int) -> Tensor:
    name = reader.text("tensor name")
    dtype_code, codec, ndim = _TENSOR.unpack(reader.take(_TENSOR.size, f"tensor '{name}' header"))
    if dtype_code not in DTYPES or codec not in CODECS or ndim > MAX_DIMS:
        raise FrameError(f"tensor '{name}': unknown dtype code {dtype_code}, codec {codec} or {ndim} dims")
    shape = struct.unpack(f"<{ndim}I", reader.take(4 * ndim, f"tensor '{name}' shape"))
    scale, zero_point, length = _QUANT.unpack(reader.take(_QUANT.size, f"tensor '{name}' quantization"))
    dtype = np.dtype(DTYPES[dtype_code])
    expected = math.prod(shape) * dtype.itemsize
    if expected > max_tensor_bytes:
        raise FrameError(f"tensor '{name}' {shape} is {expected:,} bytes; the limit is {max_tensor_bytes:,}")
    payload = reader.take(length, f"tensor '{name}' payload")
    if codec == 1:
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(payload, expected + 1)
        except zlib.error as exc:
            raise FrameError(f"tensor '{name}': corrupt zlib payload ({exc})") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise FrameError(f"tensor '{name}': compressed payload does not inflate to {expected:,} bytes")
    if len(payload) != expected:
        raise FrameError(f"tensor '{name}': payload is {len(payload):,} bytes, {shape} {dtype} needs {expected:,}")
    if not math.isfinite(scale):
        raise FrameError(f"tensor '{name}': scale {scale} is not finite")
    return Tensor(name, np.frombuffer(payload, dtype).reshape(shape), float(scale), zero_point)
