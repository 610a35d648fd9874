"""The offload wire protocol's names: topic layout, content type, errors, and how big a publish may be.

Topics (docs/protocol.md): a device publishes requests on `{prefix}/req/{model_id}/{device_id}` and reads
answers on `{prefix}/res/{device_id}`; tail workers share `$share/{group}/{prefix}/req/{model_id}/+`. The
answer address is derived from the request topic's last level, so the frame plus its topic are enough on an
MQTT 3.1.1 broker, and an ACL that lets a device write only topics ending in its own name stops it from
having answers sent to another device.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgekit.errors import OffloadError, PayloadTooLargeError

CONTENT_TYPE = "application/x-edgekit-frame; v=3"
# Bytes a PUBLISH adds to its payload besides the two topic names: fixed header, packet id, property
# lengths, correlation data (16), message expiry and content type. Generous, so a publish that passes
# the size check is never over the broker's limit.
PUBLISH_OVERHEAD = 5 + 2 + 2 + 4 + 3 + 19 + 5 + 3 + len(CONTENT_TYPE) + 16



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

    def shared_requests(self, model_id: str, group: str) -> str:
        """The shared subscription that spreads `model_id`'s requests over the workers of `group`."""
        return f"$share/{_level(group, 'group')}/{self.prefix}/req/{_level(model_id, 'model id')}/+"

    def device_of(self, request_topic: str) -> str:
        """The device id in a request topic (its last level); OffloadError for a topic outside the layout."""
        head, _, device = request_topic.rpartition("/")
        if not head.startswith(f"{self.prefix}/req/") or head.count("/") != self.prefix.count("/") + 2:
            raise OffloadError(f"request topic must be {self.prefix}/req/MODEL/DEVICE, found {request_topic!r}")
        return _level(device, "device id")


def check_publish_size(payload_bytes: int, topic: str, response_topic: str, maximum: int | None) -> None:
    """PayloadTooLargeError when a publish of this payload would exceed the broker's `maximum` packet size."""
    if maximum is None:
        return
    size = payload_bytes + len(topic.encode()) + len(response_topic.encode()) + PUBLISH_OVERHEAD
    if size > maximum:
        raise PayloadTooLargeError(f"a frame of {payload_bytes:,} bytes makes a {size:,}-byte MQTT packet; the broker "
                                   f"accepts at most {maximum:,} (its Maximum Packet Size): cut the model later, "
                                   "use codec='zlib', or raise the broker's limit")


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
