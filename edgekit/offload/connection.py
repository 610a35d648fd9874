"""Where the broker is and how to log in: a broker URL plus TLS/password options, turned into a paho client.

`mqtt://host:1883` is plain TCP, `mqtts://host:8883` TLS (the system CA store unless `ca_certs` is given);
TLS options with an `mqtt://` URL are an error, never silently plain TCP.
Both the device client and the tail server connect through here, so TLS and authentication work the same
on both sides. paho-mqtt 2.x with its VERSION2 callbacks; MQTT v5 unless `protocol=4` (3.1.1).
"""

from __future__ import annotations

import functools
import math
import socket
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from edgekit.errors import OffloadError

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
KEEPALIVE_FLOOR_S = 10
# A broker drops a client it hears no complete packet from for 1.5 x keep-alive, even mid-publish: the slowest
# packet is given a third of the keep-alive, so half of that broker's grace is left for a slower link than expected.
KEEPALIVE_MULTIPLE = 3


def keepalive_for(packet_bytes: int | None, slowest_bps: float | None,
                  floor_s: int = KEEPALIVE_FLOOR_S) -> tuple[int, str]:
    """The MQTT keep-alive (s) that lets the largest packet cross at the slowest expected uplink, and why:
    KEEPALIVE_MULTIPLE x its transfer time, never under `floor_s`."""
    if not packet_bytes or not slowest_bps:
        return floor_s, f"{floor_s} s floor (no frame size or uplink expected)"
    transfer_s = packet_bytes * 8 / slowest_bps
    derived = math.ceil(KEEPALIVE_MULTIPLE * transfer_s)
    why = (f"the largest packet, {packet_bytes:,} bytes, takes {transfer_s:.2f} s at {slowest_bps / 1e6:g} Mbit/s; "
           f"keep-alive is {KEEPALIVE_MULTIPLE} x that")
    if derived <= floor_s:
        return floor_s, f"{floor_s} s floor ({why}: {derived} s)"
    return derived, f"{derived} s: {why}"


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """Turn off Nagle's algorithm: small frames and acks otherwise wait ~40 ms on each other's delayed ACKs."""
    if hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@functools.cache
def _packed_type() -> type:
    from paho.mqtt.properties import Properties

    class Packed(Properties):
        """Properties that are already wire bytes. paho's publish only calls pack() (and str() when logging),
        so the generic tables Properties.__init__ builds, slower than the frame itself, are skipped."""

        def __init__(self, block: bytes) -> None:  # no super().__init__(), on purpose (see above)
            object.__setattr__(self, "block", block)  # Properties refuses unknown attribute names

        def pack(self) -> bytes:
            return self.block  # type: ignore[attr-defined]

        def __str__(self) -> str:
            return f"[packed {self.block.hex()}]"  # type: ignore[attr-defined]

    return Packed


def packed_properties(block: bytes) -> Any:
    """paho Properties whose wire bytes are `block` (from protocol.publish_properties), for publish()."""
    return _packed_type()(block)


@dataclass(frozen=True)
class BrokerConfig:
    """One broker endpoint and the credentials to use on it."""

    host: str
    port: int = 1883
    tls: bool = False
    ca_certs: str | None = None  # CA bundle that signed the broker's certificate (TLS)
    certfile: str | None = None  # client certificate, for brokers that require one
    keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: int = 5  # 5 (MQTT v5) or 4 (MQTT 3.1.1)
    keepalive_s: int = KEEPALIVE_FLOOR_S  # also how soon a silently dead link is noticed (1.5x this)

    @classmethod
    def parse(cls, url: str, **options: Any) -> BrokerConfig:
        """`mqtt[s]://[user@]host[:port]`; `options` set the other fields (password, ca_certs, protocol...)."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.password:
            raise OffloadError(f"broker URL must look like mqtt://host:1883 or mqtts://user@host:8883 (pass the "
                               f"password separately), found {url!r}")
        tls, default_port = SCHEMES[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise OffloadError(f"broker URL {url!r} has an invalid port") from None
        username = unquote(parts.username) if parts.username else None
        return replace(cls(parts.hostname, port, tls, username=username), **options)

    def __post_init__(self) -> None:
        if self.protocol not in (4, 5):
            raise OffloadError(f"MQTT protocol must be 5 (v5) or 4 (3.1.1), found {self.protocol}")
        tls_options = [name for name in ("ca_certs", "certfile", "keyfile") if getattr(self, name) is not None]
        if tls_options and not self.tls:
            raise OffloadError(f"TLS options ({', '.join(tls_options)}: --ca/--cert/--key) were given for the plain "
                               f"TCP broker mqtt://{self.host}:{self.port}, which would ignore them and send the "
                               f"password in clear; use mqtts://{self.host}:8883 (or the broker's TLS port)")

    @property
    def url(self) -> str:
        """The URL devices use (no password)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def client(self, client_id: str, reconnect_s: tuple[float, float] = (0.1, 5.0)) -> Any:
        """A paho-mqtt 2.x client (VERSION2 callbacks) set up for this broker, not yet connected."""
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise OffloadError("offloading needs paho-mqtt: pip install 'edgekit[runtime]'") from None
        version = mqtt.MQTTv5 if self.protocol == 5 else mqtt.MQTTv311
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        if self.tls:
            client.tls_set(ca_certs=self.ca_certs, certfile=self.certfile, keyfile=self.keyfile)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.reconnect_delay_set(*reconnect_s)  # type: ignore[arg-type]  # hinted int; sub-second floats work
        client.max_inflight_messages_set(1000)  # our own window bounds what is in flight
        client.on_socket_open = _no_delay
        return client

    def connect_async(self, client: Any) -> None:
        """Start connecting in the background (paho's network thread retries with backoff until it works)."""
        client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        client.loop_start()
