"""The binary frame that carries boundary tensors between device and edge server (never pickle).

Layout, version 3, little-endian (docs in this docstring; sizes in bytes):

    magic "EKF" (3) | version (1) | kind (1) | request id (16) | deadline, unix ms (8) | flags (1)
    | model id length (1) | model id | model version length (1) | model version
    | [error length (1) | error text: kind 2 only] | tensor count (1) | tensors... | CRC-32 of all before (4)
    | [HMAC-SHA256 of all before (32): flags bit 0 only]

    tensor: name length (1) | name | dtype code (1) | codec (1) | ndim (1) | dims (4 each)
            | scale (float32, 4) | zero point (int32, 4) | payload length (4) | payload

kind: 0 request, 1 response, 2 error (a response without tensors whose text says why). flags: bit 0 signed
(the trailer authenticates the whole frame, request id included, under a fleet key); other bits must be 0.
Versions 1 and 2 (no flags byte) are refused, as every other version is: both ends of a deployment ship together.
dtype codes: 1 int8, 2 uint8, 3 int16, 4 int32, 5 float16, 6 float32. codec: 0 raw, 1 zlib, 2 jpeg, 3 webp.
An image codec (jpeg, webp: a device sending its input compressed) takes only a uint8 1,C,H,W tensor, C 1 or 3:
the payload is the encoded image (Pillow), the dims are the decoded image's, checked with the header (size caps
included) before anything is decoded; decoding refuses an image of any other size (formats.image). `encode` names
it with its quality, e.g. codec "jpeg:75" (default quality 75).
An int8 boundary tensor keeps the head's own scale and zero point, so nothing is requantised.
Decoding has two phases so a receiver can refuse a frame before paying for it: `read_header` checks the
signature (when given a key), the CRC and every length, and reads every field but the tensor payloads;
`Header.frame()` then inflates each payload, never past the bytes its own dtype and shape need. `decode` is both.
Anything malformed is a FrameError (SignatureError for a missing or wrong signature).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from edgekit.errors import FrameError, SignatureError
from edgekit.formats.image import IMAGE_CODECS, decode_image, encode_image

MAGIC = b"EKF"
VERSION = 3
KINDS = {0: "request", 1: "response", 2: "error"}
MAX_TENSORS = 16
MAX_DIMS = 8
MAX_TENSOR_BYTES = 64 * 1024 * 1024
DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.int32, 5: np.float16, 6: np.float32}
DTYPE_CODES = {np.dtype(t): code for code, t in DTYPES.items()}
CODECS = {0: "raw", 1: "zlib", 2: "jpeg", 3: "webp"}
DEFAULT_QUALITY = 75  # an image codec named without its quality
SIGNED = 1  # flags bit: an HMAC-SHA256 trailer follows the CRC
TAG_BYTES = 32
_CODEC_CODES = {name: code for code, name in CODECS.items()}
_KIND_CODES = {name: code for code, name in KINDS.items()}
_HEAD = struct.Struct("<3sBB16sQB")
_TENSOR = struct.Struct("<BBB")
_QUANT = struct.Struct("<fiI")
# What the cost model adds to each request's tensor bytes: the frame around one 4-D tensor with short model and
# tensor names (~76 B) plus an MQTT 3.1.1 PUBLISH with a short topic (~30 B), rounded up; a signed frame adds its
# 32-byte tag and v5 properties add offload.protocol.PUBLISH_OVERHEAD's share on top; an estimate, not an exact count.
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


@dataclass(frozen=True)
class TensorHeader:
    """A tensor as its header declares it, payload still as sent (compressed or not)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    codec: str
    scale: float
    zero_point: int
    payload: bytes

    @property
    def nbytes(self) -> int:
        """The bytes the array needs (dtype size x shape product): the most its payload may inflate to."""
        return math.prod(self.shape) * self.dtype.itemsize

    def tensor(self) -> Tensor:
        """The array, inflated (never past `nbytes`) or decoded (never to another shape), checked against its size."""
        if self.codec in IMAGE_CODECS:
            _, channels, height, width = self.shape
            pixels = decode_image(self.payload, self.codec, (height, width, channels))
            return Tensor(self.name, np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]), self.scale,
                          self.zero_point)
        payload = self.payload
        if self.codec == "zlib":
            payload = _inflate(payload, self.nbytes, self.name)
        if len(payload) != self.nbytes:
            raise FrameError(f"tensor '{self.name}': payload is {len(payload):,} bytes, {self.shape} {self.dtype} "
                             f"needs {self.nbytes:,}")
        return Tensor(self.name, np.frombuffer(payload, self.dtype).reshape(self.shape), self.scale, self.zero_point)


@dataclass(frozen=True)
class Header:
    """Everything a frame says but its tensor payloads: enough to refuse it before inflating anything."""

    request_id: bytes
    deadline_ms: int
    model_id: str
    model_version: str
    kind: str
    error: str
    tensors: tuple[TensorHeader, ...]
    signed: bool

    def frame(self) -> Frame:
        """The whole frame, every tensor inflated; FrameError for a payload that is not what its header says."""
        return Frame(self.request_id, self.deadline_ms, self.model_id, self.model_version,
                     tuple(t.tensor() for t in self.tensors), self.kind, self.error)


def _short_text(text: str, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise FrameError(f"{what} is {len(raw)} bytes; at most 255 fit a frame")
    return bytes([len(raw)]) + raw


def _clip(text: str) -> str:
    """Error text cut to what fits its 255-byte field, on a character boundary."""
    return text.encode()[:255].decode(errors="ignore")


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def codec_quality(codec: str) -> tuple[str, int | None]:
    """'jpeg:75' -> ('jpeg', 75); an image codec without a quality gets DEFAULT_QUALITY, raw and zlib None.
    FrameError for an unknown codec or a quality outside 1..100."""
    name, _, quality = codec.partition(":")
    if name not in _CODEC_CODES or (quality and name not in IMAGE_CODECS):
        raise FrameError(f"codec must be one of {', '.join(CODECS.values())} (an image codec optionally with "
                         f":QUALITY, e.g. jpeg:75), found {codec!r}")
    if name not in IMAGE_CODECS:
        return name, None
    if quality and not (quality.isdigit() and 1 <= int(quality) <= 100):
        raise FrameError(f"{name} quality must be 1..100, found {quality!r}")
    return name, int(quality) if quality else DEFAULT_QUALITY


def encode(frame: Frame, codec: str = "raw", level: int = 1, key: bytes | None = None) -> bytes:
    """The frame as bytes; `codec` 'zlib' compresses each tensor payload (at `level`), 'jpeg:Q' or 'webp:Q' sends
    each (uint8 1,C,H,W image) tensor as an image at quality Q; `key` signs it (HMAC-SHA256 trailer)."""
    if len(frame.request_id) != 16:
        raise FrameError(f"request id must be 16 bytes, found {len(frame.request_id)}")
    if len(frame.tensors) > MAX_TENSORS:
        raise FrameError(f"a frame carries at most {MAX_TENSORS} tensors, found {len(frame.tensors)}")
    name, quality = codec_quality(codec)
    code = _CODEC_CODES[name]
    kind = _KIND_CODES.get(frame.kind)
    if kind is None:
        raise FrameError(f"frame kind must be one of {', '.join(KINDS.values())}, found {frame.kind!r}")
    if (kind == 2) != bool(frame.error) or (kind == 2 and frame.tensors):
        raise FrameError(f"an error frame has error text and no tensors, any other none: found kind {frame.kind!r}, "
                         f"{len(frame.tensors)} tensors, error {frame.error!r}")
    parts = [_HEAD.pack(MAGIC, VERSION, kind, frame.request_id, frame.deadline_ms, SIGNED if key else 0),
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
        if quality is not None:
            _check_image(tensor.name, array.dtype, array.shape, name)
            payload = encode_image(np.ascontiguousarray(array[0].transpose(1, 2, 0)), name, quality)
        else:
            payload = zlib.compress(array.tobytes(), level) if code == 1 else array.tobytes()
        parts += [_short_text(tensor.name, "tensor name"), _TENSOR.pack(dtype, code, array.ndim),
                  struct.pack(f"<{array.ndim}I", *array.shape),
                  _QUANT.pack(tensor.scale, tensor.zero_point, len(payload)), payload]
    body = b"".join(parts)
    sealed = body + struct.pack("<I", zlib.crc32(body))
    return sealed + _tag(key, sealed) if key else sealed


class _Reader:
    """Bounds-checked reads over the frame body."""

    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at = data, at

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


def _unsealed(data: bytes, flags: int, key: bytes | None) -> bytes:
    """The frame without its tag, the tag checked against `key` first (constant time); SignatureError if wrong."""
    if flags & ~SIGNED:
        raise FrameError(f"frame flags {flags:#04x} are unknown (only bit 0, signed, is defined)")
    signed = bool(flags & SIGNED)
    if signed and len(data) < _HEAD.size + 4 + TAG_BYTES:
        raise FrameError(f"signed frame of {len(data)} bytes is too short to hold its {TAG_BYTES}-byte tag")
    sealed = data[:-TAG_BYTES] if signed else data
    if key is not None:
        if not signed:
            raise SignatureError("frame is not signed, and this side requires the fleet key's signature")
        if not hmac.compare_digest(_tag(key, sealed), data[-TAG_BYTES:]):
            raise SignatureError("frame signature does not match the fleet key (forged, altered, or another key)")
    return sealed


def read_header(data: bytes, key: bytes | None = None, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> Header:
    """Verify (signature with `key`, CRC, every length, size caps) and read a frame without inflating anything.

    With `key`, an unsigned or wrongly signed frame is a SignatureError before any other field is trusted;
    without it a signature is not checked. Payloads are sliced, not copied or inflated."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"a frame is bytes, found {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD.size + 4:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the {_HEAD.size + 4}-byte minimum")
    magic, version, kind, request_id, deadline, flags = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"not an edgekit frame (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise FrameError(f"frame version {version} is not supported (this side speaks {VERSION})")
    sealed = _unsealed(data, flags, key)
    body, (crc,) = sealed[:-4], struct.unpack("<I", sealed[-4:])
    if zlib.crc32(body) != crc:
        raise FrameError("frame CRC mismatch: corrupted in transit")
    if kind not in KINDS:
        raise FrameError(f"frame kind {kind} is unknown (expected {', '.join(f'{k} {n}' for k, n in KINDS.items())})")
    reader = _Reader(body, _HEAD.size)
    model_id, model_version = reader.text("model id"), reader.text("model version")
    error = reader.text("error") if kind == 2 else ""
    count = reader.take(1, "tensor count")[0]
    if count > MAX_TENSORS:
        raise FrameError(f"frame declares {count} tensors; at most {MAX_TENSORS}")
    tensors = tuple(_tensor_header(reader, max_tensor_bytes) for _ in range(count))
    if reader.at != len(body):
        raise FrameError(f"{len(body) - reader.at} unexpected bytes after the last tensor")
    if kind == 2 and (tensors or not error):
        raise FrameError(f"an error frame must have error text and no tensors, found {count} tensors")
    return Header(request_id, deadline, model_id, model_version, KINDS[kind], error, tensors, bool(flags & SIGNED))


def decode(data: bytes, max_tensor_bytes: int = MAX_TENSOR_BYTES, key: bytes | None = None) -> Frame:
    """Parse and verify a whole frame (`read_header`, then every tensor); FrameError for anything malformed."""
    return read_header(data, key, max_tensor_bytes).frame()


def peek_request_id(data: bytes) -> bytes | None:
    """The request id of bytes that start like a frame of this version, however corrupt the rest; else None.

    Lets a server address an error answer to a frame it cannot decode, and a client drop an answer it is not
    waiting for before reading any further."""
    if len(data) < _HEAD.size or data[:3] != MAGIC or data[3] != VERSION:
        return None
    return bytes(data[5:21])


def _tensor_header(reader: _Reader, max_tensor_bytes: int) -> TensorHeader:
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
    if CODECS[codec] in IMAGE_CODECS:
        _check_image(name, dtype, shape, CODECS[codec])
    if not math.isfinite(scale):
        raise FrameError(f"tensor '{name}': scale {scale} is not finite")
    payload = reader.take(length, f"tensor '{name}' payload")
    return TensorHeader(name, dtype, shape, CODECS[codec], float(scale), zero_point, payload)


def _inflate(payload: bytes, expected: int, name: str) -> bytes:
    """A zlib payload inflated to at most `expected` + 1 bytes: a bomb stops there, at the cost of that much."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, expected + 1)
    except zlib.error as exc:
        raise FrameError(f"tensor '{name}': corrupt zlib payload ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise FrameError(f"tensor '{name}': compressed payload does not inflate to {expected:,} bytes")
    return out


def _check_image(name: str, dtype: np.dtype, shape: tuple[int, ...], codec: str) -> None:
    """FrameError unless a tensor sent as an image is uint8 1,C,H,W with C 1 or 3."""
    if dtype != np.uint8 or len(shape) != 4 or shape[0] != 1 or shape[1] not in (1, 3):
        raise FrameError(f"tensor '{name}': a {codec} image is a uint8 1,C,H,W tensor with C 1 or 3, found "
                         f"{dtype} {tuple(shape)}")
