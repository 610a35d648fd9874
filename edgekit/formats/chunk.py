"""Chunked frames: a (signed) frame too big for one MQTT packet, cut into numbered chunks and put back together
within bounds that are checked before a byte is buffered (docs/protocol.md, "Chunked frames").

Layout, version 1, little-endian (sizes in bytes):

    magic "EKC" (3) | version (1) | flags (1) | request id (16) | deadline, unix ms (8) | index (4) | count (4)
    | total frame bytes (4) | piece bytes (4) | piece | [HMAC-SHA256 of all before (32): flags bit 0 only]

Every chunk but the last carries exactly `piece bytes` of the frame, the last one the rest, and
count = ceil(total / piece bytes): each chunk is checked on its own. The request id sits at bytes 5-20, as in a
frame, so a receiver drops a chunk nobody waits for by its id alone. The frame's own CRC and HMAC still cover the
whole frame after reassembly; the chunk's tag (with the fleet key) lets a receiver refuse a forged chunk before
buffering it, so no forger can poison a frame being put together.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgekit.errors import ChunkError, SignatureError
from edgekit.formats.frame import MAX_DIMS, MAX_TENSORS, TAG_BYTES

MAGIC = b"EKC"
VERSION = 1
SIGNED = 1
MIN_PIECE_BYTES = 256  # so a frame's chunk count (and the reassembler's per-chunk bookkeeping) stays small
MAX_CHUNKS = 65_535
_HEAD = struct.Struct("<3sBB16sQIIII")
HEADER_BYTES = _HEAD.size  # 45
# The most a frame adds to its tensors' payloads: fixed head, model id, version and error text at their 255-byte
# limit, tensor count, CRC and tag; and per tensor a 255-byte name, codes, MAX_DIMS dims and the quantization.
_FRAME_HEAD_MAX = 30 + 3 * 256 + 1 + 4 + TAG_BYTES
_TENSOR_HEAD_MAX = 256 + 3 + 4 * MAX_DIMS + 12


def overhead(signed: bool) -> int:
    """Bytes a chunk adds to its piece: the header, and the tag when signed."""
    return HEADER_BYTES + (TAG_BYTES if signed else 0)


def deflate_bound(size: int) -> int:
    """The most zlib.compress can make of `size` bytes (zlib's compressBound): a compressed payload is never larger."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


def frame_bound(tensor_elements: Iterable[int]) -> int:
    """The largest frame carrying tensors of these element counts, as float32 (the widest dtype a frame holds)
    raw or zlib: what a receiver expecting those tensors may accept, compressed or not."""
    sizes = list(tensor_elements)[:MAX_TENSORS]
    return _FRAME_HEAD_MAX + sum(_TENSOR_HEAD_MAX + deflate_bound(4 * n) for n in sizes)


def is_chunk(data: bytes) -> bool:
    """True for bytes that start like a chunk (of any version); anything else is taken for a frame."""
    return bytes(data[:3]) == MAGIC


def peek(data: bytes) -> tuple[bytes, int] | None:
    """The request id and index of bytes that start like a chunk of this version, else None; nothing is verified
    (a receiver drops a chunk nobody waits for on this alone, and answers a refusal only once, for chunk 0)."""
    if len(data) < HEADER_BYTES or not is_chunk(data) or data[3] != VERSION:
        return None
    return bytes(data[5:21]), int.from_bytes(data[29:33], "little")


def split(frame: bytes, request_id: bytes, deadline_ms: int, piece_bytes: int, key: bytes | None = None) -> list[bytes]:
    """`frame` as chunks of `piece_bytes` each (the last the rest), signed with `key`; ChunkError when the frame
    needs fewer than 2 or more than MAX_CHUNKS chunks, or the piece is under MIN_PIECE_BYTES."""
    count = math.ceil(len(frame) / piece_bytes) if piece_bytes > 0 else 0
    if piece_bytes < MIN_PIECE_BYTES or not 2 <= count <= MAX_CHUNKS:
        raise ChunkError("too_large", f"a frame of {len(frame):,} bytes in pieces of {piece_bytes:,} makes {count:,} "
                                      f"chunks; chunking takes 2 to {MAX_CHUNKS:,} pieces of at least "
                                      f"{MIN_PIECE_BYTES} bytes")
    chunks = []
    for index in range(count):
        body = _HEAD.pack(MAGIC, VERSION, SIGNED if key else 0, request_id, deadline_ms, index, count, len(frame),
                          piece_bytes) + frame[index * piece_bytes:(index + 1) * piece_bytes]
        chunks.append(body + _tag(key, body) if key else body)
    return chunks


@dataclass(frozen=True)
class Chunk:
    """One chunk as read and checked: whose, until when, where it sits in the frame, and its piece."""

    request_id: bytes
    deadline_ms: int
    index: int
    count: int
    total: int
    piece_bytes: int
    piece: bytes

    @property
    def layout(self) -> tuple[int, int, int, int]:
        """What every chunk of one frame must agree on: deadline, count, total and piece size."""
        return self.deadline_ms, self.count, self.total, self.piece_bytes


def read_chunk(data: bytes, key: bytes | None = None) -> Chunk:
    """Verify (tag with `key`, every length) and read one chunk; SignatureError or ChunkError ('malformed')."""
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise ChunkError("malformed", f"chunk of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    magic, version, flags, request_id, deadline, index, count, total, piece_bytes = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION or flags & ~SIGNED:
        raise ChunkError("malformed", f"not an edgekit chunk of version {VERSION} (magic {magic!r}, version "
                                      f"{version}, flags {flags:#04x})")
    signed = bool(flags & SIGNED)
    body = data[:-TAG_BYTES] if signed else data
    if signed and len(body) < HEADER_BYTES:
        raise ChunkError("malformed", f"signed chunk of {len(data)} bytes is too short to hold its tag")
    if key is not None:
        if not signed:
            raise SignatureError("chunk is not signed, and this side requires the fleet key's signature")
        if not hmac.compare_digest(_tag(key, body), data[-TAG_BYTES:]):
            raise SignatureError("chunk signature does not match the fleet key (forged, altered, or another key)")
    piece = body[HEADER_BYTES:]
    expected = _piece_length(index, count, total, piece_bytes)
    if expected is None or len(piece) != expected:
        should = "no such chunk exists" if expected is None else f"it must carry {expected:,}"
        raise ChunkError("malformed", f"chunk {index} of {count} (frame of {total:,} bytes in pieces of "
                                      f"{piece_bytes:,}) carries {len(piece):,} bytes; {should}")
    return Chunk(request_id, deadline, index, count, total, piece_bytes, piece)


def _piece_length(index: int, count: int, total: int, piece_bytes: int) -> int | None:
    """The bytes chunk `index` of this layout carries, or None when the layout or the index is impossible."""
    if piece_bytes < MIN_PIECE_BYTES or not 2 <= count <= MAX_CHUNKS or count != math.ceil(total / piece_bytes):
        return None
    if index >= count:
        return None
    return piece_bytes if index < count - 1 else total - piece_bytes * (count - 1)


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@dataclass
class _Partial:
    layout: tuple[int, int, int, int]
    expires_at: float
    pieces: list[bytes | None]
    reserved: int
    missing: int = field(init=False)

    def __post_init__(self) -> None:
        self.missing = len(self.pieces)


ENTRY_BYTES = 1024  # what each partial frame costs besides its pieces (dict entry, list, bookkeeping), reserved too
REASONS = ("malformed", "forged", "too_large", "expired", "no_first_chunk", "duplicate", "inconsistent",
           "memory_cap", "after_refusal", "wrong_topic")  # wrong_topic: the receiver's check (a chunk topic's rules)


class Reassembler:
    """Partial frames keyed by (source, request id). The first chunk (index 0) opens one and reserves its declared
    total up front against a per-source cap (its own oldest partials are evicted to make room) and an overall cap
    (refused when full): the bytes held never exceed either, whatever the chunks claim. Later chunks only fill an
    open partial. A partial expires at its deadline or `max_age_s` after it opened, whichever is first; `sweep()`
    drops those (`add` sweeps first). Every refusal is a ChunkError whose `reason` is counted in `counts`."""

    def __init__(self, max_bytes: int, max_source_bytes: int, max_age_s: float = 5.0,
                 clock: Callable[[], float] = time.time, remember: int = 4096) -> None:
        """`clock` gives unix seconds (deadlines are unix ms); `remember` finished ids are kept to refuse
        redelivered chunks of a frame already handled or refused."""
        self.max_bytes, self.max_source_bytes = max_bytes, min(max_source_bytes, max_bytes)
        self.max_age_s, self.clock, self.remember = max_age_s, clock, remember
        self.counts = {"completed": 0, "timed_out": 0, "evicted": 0, **dict.fromkeys(REASONS, 0)}
        self._open: dict[tuple[str, bytes], _Partial] = {}
        self._expiry: list[tuple[float, tuple[str, bytes]]] = []  # a heap; entries of closed partials are skipped
        self._sources: dict[str, OrderedDict[bytes, None]] = {}  # each source's open request ids, oldest first
        self._finished: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._held = 0
        self._by_source: dict[str, int] = {}

    @property
    def held_bytes(self) -> int:
        """Bytes reserved by the partial frames now open (never more than `max_bytes`)."""
        return self._held

    def stats(self) -> dict[str, int]:
        """The counts, the partial frames open and the bytes they reserve (swept first)."""
        self.sweep()
        return {**self.counts, "open": len(self._open), "held_bytes": self._held}

    def _refuse(self, reason: str, message: str) -> ChunkError:
        """Count a refusal and give the error to raise."""
        self.counts[reason] += 1
        return ChunkError(reason, message)

    def add(self, source: str, chunk: Chunk, limit_bytes: int) -> bytes | None:
        """The whole frame when `chunk` completes one, else None. ChunkError (counted) for a chunk refused before
        buffering: a frame over `limit_bytes`, past its deadline, duplicate, inconsistent, over the caps, or a
        later chunk of a frame that was never opened, is finished or was refused."""
        self.sweep()
        key = (source, chunk.request_id)
        partial = self._open.get(key)
        if partial is None:
            partial = self._open_with(key, chunk, limit_bytes)
        elif chunk.layout != partial.layout:
            self._drop(key)
            raise self._refuse("inconsistent", f"chunk {chunk.index} says {chunk.count} chunks of a {chunk.total:,}-"
                              f"byte frame; the first said {partial.layout[1]} of {partial.layout[2]:,}")
        elif partial.pieces[chunk.index] is not None:
            raise self._refuse("duplicate", f"chunk {chunk.index} of {chunk.count} arrived twice")
        partial.pieces[chunk.index] = chunk.piece
        partial.missing -= 1
        if partial.missing:
            return None
        self._drop(key)
        self.counts["completed"] += 1
        return b"".join(p for p in partial.pieces if p is not None)

    def discard(self, source: str, request_id: bytes) -> None:
        """Forget a partial frame nobody waits for any more (its request gave up)."""
        if (source, request_id) in self._open:
            self._drop((source, request_id))

    def sweep(self) -> int:
        """Drop the partial frames past their expiry, counted as timed out; how many went."""
        now, gone = self.clock(), 0
        while self._expiry and self._expiry[0][0] <= now:
            key = heapq.heappop(self._expiry)[1]
            if key in self._open:
                self._drop(key)
                gone += 1
        if len(self._expiry) > 2 * len(self._open) + 1024:  # closed partials' entries: keep the heap bounded
            self._expiry = [(p.expires_at, k) for k, p in self._open.items()]
            heapq.heapify(self._expiry)
        self.counts["timed_out"] += gone
        return gone

    def _open_with(self, key: tuple[str, bytes], chunk: Chunk, limit_bytes: int) -> _Partial:
        """A new partial frame for chunk 0, its bytes reserved; ChunkError for every chunk that may not open one."""
        source = key[0]
        if key in self._finished:
            raise self._refuse("after_refusal" if chunk.index else "duplicate",
                                f"chunk {chunk.index} of {chunk.count} belongs to a frame already handled or refused")
        if chunk.index:
            raise self._refuse("no_first_chunk", f"chunk {chunk.index} of {chunk.count} came without its frame's "
                                                  "first chunk (only chunk 0 opens a frame)")
        reserve = chunk.total + ENTRY_BYTES
        limit = min(limit_bytes, self.max_source_bytes - ENTRY_BYTES)
        if chunk.total > limit:
            self._finish(key)
            raise self._refuse("too_large", f"a chunked frame of {chunk.total:,} bytes is more than the {limit:,} "
                                             "this receiver expects")
        now = self.clock()
        if chunk.deadline_ms and chunk.deadline_ms <= now * 1000:
            self._finish(key)
            raise self._refuse("expired", "the chunked frame's deadline has passed")
        while self._by_source.get(source, 0) + reserve > self.max_source_bytes:  # a source's oldest make room
            self._drop((source, next(iter(self._sources[source]))))
            self.counts["evicted"] += 1
        if self._held + reserve > self.max_bytes:
            self._finish(key)
            raise self._refuse("memory_cap", f"{self._held:,} of the {self.max_bytes:,} bytes for partial frames "
                                              f"are taken; no room for a {chunk.total:,}-byte frame now")
        expires = now + self.max_age_s
        if chunk.deadline_ms:
            expires = min(expires, chunk.deadline_ms / 1000)
        partial = self._open[key] = _Partial(chunk.layout, expires, [None] * chunk.count, reserve)
        heapq.heappush(self._expiry, (expires, key))
        self._sources.setdefault(source, OrderedDict())[key[1]] = None
        self._held += reserve
        self._by_source[source] = self._by_source.get(source, 0) + reserve
        return partial

    def _drop(self, key: tuple[str, bytes]) -> None:
        """Close a partial frame (done, refused, evicted or expired): its bytes freed, its id remembered."""
        partial = self._open.pop(key)
        self._held -= partial.reserved
        source, request_id = key
        del self._sources[source][request_id]
        self._by_source[source] -= partial.reserved
        if not self._sources[source]:
            del self._sources[source], self._by_source[source]
        self._finish(key)

    def _finish(self, key: tuple[str, bytes]) -> None:
        self._finished[key] = None
        if len(self._finished) > self.remember:
            self._finished.popitem(last=False)
