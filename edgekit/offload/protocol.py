"""The offload wire protocol's names: topic layout, content type, errors, and how big a publish may be.

Topics (docs/protocol.md): a device publishes requests on `{prefix}/req/{model_id}/{device_id}` and reads
answers on `{prefix}/res/{device_id}`; tail workers share `$share/{group}/{prefix}/req/{model_id}/+`. A request
too big for one packet goes as chunks: the first on the request topic (so one worker of the group takes it),
the rest on `{prefix}/chunk/{model_id}/{device_id}`, which every worker reads unshared and the taker keeps. The
answer address is derived from the request topic's last level, so the frame plus its topic are enough on an
MQTT 3.1.1 broker, and an ACL that lets a device write only topics ending in its own name stops it from
having answers sent to another device.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgekit.errors import ChunkError, OffloadError, PayloadTooLargeError
from edgekit.formats import chunk

CONTENT_TYPE = "application/x-edgekit-frame; v=3"
CHUNK_CONTENT_TYPE = "application/x-edgekit-chunk; v=1"
# Bytes a PUBLISH adds to its payload besides the two topic names: fixed header, packet id, property
# lengths, correlation data (16), message expiry and content type. Generous, so a publish that passes
# the size check is never over the broker's limit.
PUBLISH_OVERHEAD = 5 + 2 + 2 + 4 + 3 + 19 + 5 + 3 + max(len(CONTENT_TYPE), len(CHUNK_CONTENT_TYPE)) + 16



def _level(text: str, what: str) -> str:
    if not text or any(c in text for c in "/+#\0") or text.startswith("$"):
        raise OffloadError(f"{what} must be a non-empty topic level without '/', '+', '#' or a leading '$', "
                           f"found {text!r}")
    return text


@dataclass(frozen=True)
class Topics:
    """The topic names of one fleet (`prefix`, may hold '/'), checked so no name can smuggle in a wildcard."""

    prefix: str = "edgekit"

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            _level(part, "topic prefix level")

    def request(self, model_id: str, device_id: str) -> str:
        """Where `device_id` publishes requests for `model_id`."""
        return f"{self.prefix}/req/{_level(model_id, 'model id')}/{_level(device_id, 'device id')}"

    def response(self, device_id: str) -> str:
        """Where `device_id` reads its answers."""
        return f"{self.prefix}/res/{_level(device_id, 'device id')}"

    def chunks(self, model_id: str, device_id: str) -> str:
        """Where `device_id` publishes the chunks after the first of a request too big for one packet."""
        return f"{self.prefix}/chunk/{_level(model_id, 'model id')}/{_level(device_id, 'device id')}"

    def all_chunks(self, model_id: str) -> str:
        """What every worker of `model_id` reads unshared: the later chunks of every device's big requests."""
        return f"{self.prefix}/chunk/{_level(model_id, 'model id')}/+"

    def shared_requests(self, model_id: str, group: str) -> str:
        """The shared subscription that spreads `model_id`'s requests over the workers of `group`."""
        return f"$share/{_level(group, 'group')}/{self.prefix}/req/{_level(model_id, 'model id')}/+"

    def device_of(self, request_topic: str) -> str:
        """The device id in a request or chunk topic (its last level); OffloadError for a topic outside the layout."""
        head, _, device = request_topic.rpartition("/")
        if not head.startswith((f"{self.prefix}/req/", f"{self.prefix}/chunk/")) or \
                head.count("/") != self.prefix.count("/") + 2:
            raise OffloadError(f"request topic must be {self.prefix}/req/MODEL/DEVICE, found {request_topic!r}")
        return _level(device, "device id")


def payload_room(topic: str, response_topic: str, maximum: int | None) -> int | None:
    """The largest payload a publish on `topic` (v5 properties naming `response_topic`) may carry under the broker's
    `maximum` packet size; None when the broker sets no limit."""
    if maximum is None:
        return None
    return maximum - len(topic.encode()) - len(response_topic.encode()) - PUBLISH_OVERHEAD


def smallest_limit(*limits: int | None) -> int | None:
    """The tightest of the packet size limits that are known (the broker's CONNACK, a configured one), or None."""
    known = [m for m in limits if m is not None]
    return min(known) if known else None


def packets(frame: bytes, request_id: bytes, deadline_ms: int, first_topic: str, rest_topic: str,
            response_topic: str, maximum: int | None, key: bytes | None = None) -> list[tuple[str, bytes]]:
    """The publishes (topic, payload) that carry `frame`: itself on `first_topic` when it fits the broker's
    `maximum` packet size (or there is none), else its chunks (signed with `key`), the first on `first_topic`
    and the rest on `rest_topic`. PayloadTooLargeError for a frame that not even chunking fits."""
    room = payload_room(rest_topic if len(rest_topic) > len(first_topic) else first_topic, response_topic, maximum)
    if room is None or len(frame) <= room:
        return [(first_topic, frame)]
    piece = room - chunk.overhead(key is not None)
    try:
        pieces = chunk.split(frame, request_id, deadline_ms, piece, key)
    except ChunkError as exc:
        raise PayloadTooLargeError(f"a frame of {len(frame):,} bytes does not fit the broker's Maximum Packet Size of "
                                   f"{maximum:,} even in chunks ({exc}): cut the model later, use codec='zlib', or "
                                   "raise the broker's limit") from None
    return [(first_topic, pieces[0]), *((rest_topic, p) for p in pieces[1:])]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (128 if value else 0))
        if not value:
            return bytes(out)


def _sized(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


def publish_properties(correlation: bytes, response_topic: str | None = None, expiry_s: int | None = None,
                       content_type: str | None = None) -> bytes:
    """The MQTT v5 PUBLISH property block (length prefix included) for a request or an answer.

    Encoded here because paho's generic Properties packer costs more per message than the whole frame
    does; the ids are the MQTT v5 ones (2 expiry, 3 content type, 8 response topic, 9 correlation data).
    """
    body = b"\x09" + _sized(correlation)
    if response_topic is not None:
        body += b"\x08" + _sized(response_topic.encode())
    if expiry_s is not None:
        body += b"\x02" + struct.pack(">I", expiry_s)
    if content_type is not None:
        body += b"\x03" + _sized(content_type.encode())
    return _varint(len(body)) + body
