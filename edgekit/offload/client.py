"""The device side of offloading: `OffloadClient`, an MQTT Transport with deadlines and a local fallback.

`request()` publishes the boundary tensor as a frame (QoS 1) and waits for the answer with the same request
id until the deadline minus the fallback reserve, leaving the fallback time to finish by the deadline. The
reserve is measured: the p99 of the local tail's recent run times plus 20% and 5 ms (`calibrate()` times a
few runs at start; until then the first frame runs here and is timed), unless `fallback_reserve_s` fixes it.
A deadline no longer than the reserve runs here at once ("local"). When the broker is known to be down it
falls back at once instead of waiting, and a circuit breaker does the same for a server that stopped
answering: after `breaker_after` requests in a row that the broker acknowledged but no answer came for by
the give-up time (or an error answer did), it sends nothing for a cool-down (1 s, doubling to 30 s while
probes fail), then one probe request; an answer closes it. Answers are matched by
request id, read from the frame's fixed header before anything else: one that arrives late, twice, or for
another request is counted and dropped without being decoded. A frame over the broker's Maximum Packet Size
goes in chunks (the first on the request topic, the rest on the device's chunk topic) and a chunked answer is
put back together only for a request that waits, within `max_answer_bytes` (edgekit.formats.chunk). The MQTT
keep-alive is derived from the largest frame and the slowest uplink expected (`stats()["keepalive_why"]`).
With the fleet key (`answer_key`, see `edgekit.offload.auth`) requests are signed and only answers whose HMAC
verifies are decoded; forged ones are counted and dropped. An answer gives every output of the tail: an array
for a single-output tail, else a dict name -> array (as `Session.run`). paho's network thread reconnects with
exponential backoff; at most `max_in_flight` requests wait at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from edgekit.errors import BundleError, ChunkError, FrameError, OffloadError, SignatureError
from edgekit.formats import chunk
from edgekit.formats.bundle import Bundle
from edgekit.formats.frame import (
    CODECS,
    PROTOCOL_OVERHEAD_BYTES,
    TAG_BYTES,
    Frame,
    Tensor,
    decode,
    encode,
    peek_request_id,
)
from edgekit.formats.plans import SplitSchedule
from edgekit.offload.auth import bundle_key, report_forged
from edgekit.offload.connection import BrokerConfig, keepalive_for, packed_properties
from edgekit.offload.link import LinkEstimate, LinkMeter
from edgekit.offload.protocol import (
    CHUNK_CONTENT_TYPE,
    CONTENT_TYPE,
    Topics,
    packets,
    publish_properties,
    smallest_limit,
)
from edgekit.runtime.transport import Fallback, Reply, response_outputs

log = logging.getLogger(__name__)
DEFAULT_MAX_ANSWER_BYTES = 16 * 1024 * 1024  # the largest chunked answer taken when the tail's outputs are unknown


class _Waiter:
    """One request in flight: set once, by its answer or by the link going down."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Frame | None = None
        self.link_down = False


class TailTimer:
    """Recent run times of the local tail; the fallback reserve is their p99 plus a margin (None until timed)."""

    def __init__(self, window: int = 64, margin: float = 0.2, extra_s: float = 0.005) -> None:
        self.margin, self.extra_s = margin, extra_s
        self._times: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._times.append(seconds)

    def reserve_s(self) -> float | None:
        """p99 of the recent runs x (1 + margin) + extra_s: what a fallback started then needs to finish."""
        with self._lock:
            if not self._times:
                return None
            p99 = float(np.percentile(np.array(self._times), 99))
        return p99 * (1 + self.margin) + self.extra_s


class CircuitBreaker:
    """Closed: requests go to the server. `after` misses in a row open it: none go until the cool-down passes,
    then one probe does (half-open); its success closes the breaker, its failure reopens it for twice as long.
    A miss is the server's: an error answer, or no answer to a request the broker acknowledged. A request the
    link never delivered is no verdict (keep-alive and the link estimate deal with links)."""

    def __init__(self, after: int = 3, cooldown_s: tuple[float, float] = (1.0, 30.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.after, (self.first_s, self.max_s), self.clock = after, cooldown_s, clock
        self.state, self.misses, self.opens = "closed", 0, 0
        self._cooldown_s, self._opened_at = self.first_s, 0.0
        self._prober: int | None = None  # the thread whose request is the probe
        self._lock = threading.Lock()

    def refusal(self) -> str | None:
        """None when a request may go to the server now (the probe, when the cool-down is over), else why not."""
        with self._lock:
            if self.state == "closed":
                return None
            wait_s = self._opened_at + self._cooldown_s - self.clock()
            if self.state == "open" and wait_s <= 0:
                self.state, self._prober = "half-open", threading.get_ident()
                return None
            what = "a probe request is out" if self.state == "half-open" else f"next probe in {_ms(wait_s)} ms"
            return f"circuit open after {self.misses} missed answers in a row; {what}"

    def settle(self) -> None:
        """This thread's request is over: a probe that got no verdict (the link failed it) leaves it open."""
        with self._lock:
            if self.state == "half-open" and self._prober == threading.get_ident():
                self.state, self._opened_at = "open", self.clock()

    def record(self, answered: bool) -> None:
        """The server's verdict on a request the breaker let through: answered, or missed."""
        with self._lock:
            if answered:
                self.state, self.misses, self._cooldown_s = "closed", 0, self.first_s
                return
            self.misses += 1
            if self.state == "half-open":
                self._cooldown_s = min(self._cooldown_s * 2, self.max_s)
            elif self.state == "open" or self.misses < self.after:
                return
            self.state, self._opened_at = "open", self.clock()
            self.opens += 1


class OffloadClient:
    """Send boundary tensors to the tail workers serving `model_id`; implements the runtime's Transport."""

    def __init__(self, broker: str | BrokerConfig, model_id: str, device_id: str | None = None, *,
                 model_version: str = "", prefix: str = "edgekit", codec: str = "raw",
                 fallback_reserve_s: float | None = None, max_in_flight: int = 16,
                 max_packet_bytes: int | None = None, connect_timeout_s: float = 5.0,
                 reconnect_s: tuple[float, float] = (0.1, 5.0), answer_key: bytes | None = None,
                 breaker_after: int = 3, breaker_cooldown_s: tuple[float, float] = (1.0, 30.0),
                 max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES, largest_frame_bytes: int | None = None,
                 slowest_uplink_bps: float | None = None) -> None:
        """Connect in the background; waits up to `connect_timeout_s` for the first connection.

        `device_id` defaults to the broker username (what an ACL with %u expects), else a random name.
        `fallback_reserve_s` fixes the time kept for the fallback (default: measured from the local tail).
        `answer_key` is the fleet key: requests are signed with it and answers must verify under it.
        `breaker_after` missed answers in a row open the circuit for `breaker_cooldown_s` (first, longest).
        `max_packet_bytes` caps packets on brokers that do not announce a limit (EMQX: 1 MB by default); a frame
        over the limit goes in chunks. A chunked answer larger than `max_answer_bytes` is refused unbuffered.
        The MQTT keep-alive is at least `config.keepalive_s` (10 s by default) and at least 3x the time
        `largest_frame_bytes` (its largest packet) takes at `slowest_uplink_bps` (connection.keepalive_for).
        A broker that refuses the login is an OffloadError; one that cannot be reached is retried quietly
        and requests fall back meanwhile.
        """
        config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.parse(broker)
        packet = smallest_limit(largest_frame_bytes, max_packet_bytes) if largest_frame_bytes else None
        keepalive_s, self.keepalive_why = keepalive_for(packet, slowest_uplink_bps, config.keepalive_s)
        self.config = replace(config, keepalive_s=keepalive_s)
        self.topics = Topics(prefix)
        self.model_id, self.model_version, self.codec = model_id, model_version, codec
        self.device_id = device_id or self.config.username or f"dev-{uuid.uuid4().hex[:12]}"
        self.request_topic = self.topics.request(model_id, self.device_id)
        self.response_topic = self.topics.response(self.device_id)
        self.chunk_topic = self.topics.chunks(model_id, self.device_id)
        if (fallback_reserve_s or 0) < 0 or max_in_flight < 1 or breaker_after < 1 or \
                codec.partition(":")[0] not in CODECS.values():
            raise OffloadError(f"fallback_reserve_s must be >= 0, max_in_flight and breaker_after >= 1 and codec one "
                               f"of {', '.join(CODECS.values())}; found {fallback_reserve_s}, {max_in_flight}, "
                               f"{breaker_after}, {codec!r}")
        self.fallback_reserve_s, self.answer_key = fallback_reserve_s, answer_key
        self.tail_timer = TailTimer()
        self.breaker = CircuitBreaker(breaker_after, breaker_cooldown_s)
        self._configured_max, self._broker_max = max_packet_bytes, None
        self.max_answer_bytes = max_answer_bytes
        bound = max_in_flight * (max_answer_bytes + chunk.ENTRY_BYTES)  # every waiting request's answer at once
        self._chunks = chunk.Reassembler(bound, bound, max_age_s=3600.0)  # expires at deadlines; given-up ones go
        self._window = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()  # guards the dicts below; never held while calling paho
        self._pending: dict[bytes, _Waiter] = {}
        self._answered: deque[bytes] = deque(maxlen=4096)  # recent ids, to tell a duplicate answer
        self._gave_up: deque[bytes] = deque(maxlen=4096)  # ids given up on, to tell a late answer from a stray
        self._sent: dict[int, tuple[float, int, int]] = {}  # publish mid -> (time, bytes, meter.delivered)
        self._acks: dict[int, float] = {}  # PUBACKs that overtook their _sent entry
        self.meter = LinkMeter()
        self.counts = {"sent": 0, "remote": 0, "fallback": 0, "timeout": 0, "error": 0, "late": 0, "duplicate": 0,
                       "unknown": 0, "bad_answer": 0, "forged": 0, "local": 0, "reconnects": 0, "chunked": 0}
        self._ready = threading.Event()  # connected and subscribed to the answer topic
        self._outcome = threading.Event()  # the first connection attempt finished, either way
        self._refused: str | None = None
        self._closed = False
        self._mqtt = self.config.client(f"{self.device_id}-{uuid.uuid4().hex[:6]}", reconnect_s)
        self._mqtt.on_connect, self._mqtt.on_disconnect = self._on_connect, self._on_disconnect
        self._mqtt.on_subscribe, self._mqtt.on_message = self._on_subscribe, self._on_message
        self._mqtt.on_publish = self._on_publish
        self.config.connect_async(self._mqtt)
        self._outcome.wait(connect_timeout_s)
        if self._refused is not None:
            self.close()
            raise OffloadError(f"broker {self.config.url} refused device '{self.device_id}': {self._refused}")
        if not self._ready.is_set():
            log.warning("broker %s not reachable yet; requests fall back until it is", self.config.url)

    # paho callbacks (its network thread)


    @classmethod
    def for_bundle(cls, bundle: Bundle, broker: str | BrokerConfig, **options: Any) -> OffloadClient:
        """A client for a split bundle's tail, named by the model id and version its plan records; its
        `answer_key` defaults to the fleet key serve keeps beside the bundle (auth.bundle_key), if there is one, and
        `codec` to the plan's input codec (a compressed-input bundle); the
        keep-alive is derived from the plan's boundary bytes and link bandwidth (or a slower `slowest_uplink_bps`),
        and answers are bounded by the tail's outputs."""
        layout = SplitSchedule.of(bundle.manifest)
        if layout is None:
            raise BundleError(f"{bundle.path}: offloading needs a split bundle (compile with --split); this one runs "
                              "whole on the device")
        if "answer_key" not in options:
            options["answer_key"] = bundle_key(bundle.path)
        if layout.input_codec is not None:  # a compressed-input bundle: its pixels go image-coded
            options.setdefault("codec", layout.input_codec)
        if layout.boundary is not None:
            options.setdefault("largest_frame_bytes",
                               layout.boundary.payload_bytes + PROTOCOL_OVERHEAD_BYTES + TAG_BYTES)
        if layout.figures is not None:  # the plan's link, or the slower uplink the caller measured
            given = options.get("slowest_uplink_bps")
            options["slowest_uplink_bps"] = min(layout.figures.uplink_bps, given or math.inf)
        options.setdefault("max_answer_bytes",
                           chunk.frame_bound(math.prod(o.shape) for o in bundle.manifest.stages[-1].outputs))
        return cls(broker, layout.model_id, model_version=layout.model_version, **options)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._outcome.set()
            return
        self._refused = None
        self._broker_max = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        client.subscribe(self.response_topic, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list, properties: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._refused = f"may not subscribe to {self.response_topic} ({reasons[0]})"
        else:
            if self._outcome.is_set():  # not the first connection
                self.counts["reconnects"] += 1
            self._ready.set()
        self._outcome.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._ready.clear()
        with self._lock:
            waiters = list(self._pending.values())
            self._sent.clear()
            self._acks.clear()
        for waiter in waiters:  # waiting any longer is pointless: fall back now
            waiter.link_down = True
            waiter.done.set()
        if not self._closed:
            log.warning("lost broker %s (%s); reconnecting", self.config.url, reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        now = time.monotonic()
        with self._lock:
            sent = self._sent.pop(mid, None)
            if sent is None:
                self._acks[mid] = now
        if sent is not None:
            self.meter.acked(sent[1], now - sent[0], sent[2])

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """Drop what no request waits for by its id alone; verify and decode only the rest."""
        payload = message.payload
        if chunk.is_chunk(payload):
            payload = self._reassembled(payload, message.topic)
            if payload is None:
                return
        request_id = peek_request_id(payload)
        if request_id is None:
            self.counts["bad_answer"] += 1
            log.warning("dropped an unreadable answer on %s: not an edgekit frame of this version", message.topic)
            return
        if self._waiting(request_id, pop=False) is None:
            return
        try:
            answer = decode(payload, key=self.answer_key)
        except SignatureError as exc:
            self.counts["forged"] += 1
            report_forged(log, self.counts["forged"], f"device '{self.device_id}'", str(exc))
            return
        except FrameError as exc:
            self.counts["bad_answer"] += 1
            log.warning("dropped an unreadable answer on %s: %s", message.topic, exc)
            return
        waiter = self._waiting(request_id, pop=True)
        if waiter is not None:
            waiter.answer = answer
            waiter.done.set()

    def _reassembled(self, data: bytes, topic: str) -> bytes | None:
        """The whole answer once chunk `data` completes one, else None: a chunk nobody waits for is dropped (and
        counted) on its id alone, a forged one before it is buffered, a refused one counted in stats()["chunks"]."""
        peeked = chunk.peek(data)
        if peeked is None:
            self.counts["bad_answer"] += 1
            log.warning("dropped an unreadable answer chunk on %s: not an edgekit chunk of this version", topic)
            return None
        if self._waiting(peeked[0], pop=False) is None:
            return None
        try:
            piece = chunk.read_chunk(data, self.answer_key)
        except SignatureError as exc:
            self.counts["forged"] += 1
            report_forged(log, self.counts["forged"], f"device '{self.device_id}'", str(exc))
            return None
        except ChunkError as exc:
            self.counts["bad_answer"] += 1
            log.warning("dropped an unreadable answer chunk on %s: %s", topic, exc)
            return None
        with self._lock:
            try:
                return self._chunks.add("server", piece, self.max_answer_bytes)
            except ChunkError as exc:
                if exc.reason != "after_refusal":  # the rest of a refused answer: counted, not logged again
                    log.warning("dropped an answer chunk on %s (%s): %s", topic, exc.reason, exc)
                return None

    def _waiting(self, request_id: bytes, pop: bool) -> _Waiter | None:
        """The waiter for `request_id` (removed with `pop`), or None after counting the answer as a duplicate,
        late (given up on) or unknown."""
        with self._lock:
            waiter = self._pending.pop(request_id, None) if pop else self._pending.get(request_id)
            if waiter is None:
                key = "duplicate" if request_id in self._answered else \
                    "late" if request_id in self._gave_up else "unknown"
                self.counts[key] += 1
            elif pop:
                self._answered.append(request_id)
        return waiter

    # the Transport

    @property
    def connected(self) -> bool:
        """True while connected and subscribed to the answer topic."""
        return self._ready.is_set()

    @property
    def max_packet_bytes(self) -> int | None:
        """The largest MQTT packet the broker takes (its CONNACK limit or the configured one), None if unknown."""
        return smallest_limit(self._broker_max, self._configured_max)

    def link_estimate(self) -> LinkEstimate:
        """Measured base RTT and uplink bandwidth (feed `uplink_bps` to the split plan's decision map)."""
        return self.meter.estimate(self.connected)

    def stats(self) -> dict[str, Any]:
        """The counts, the circuit breaker's state, the fallback reserve now in use (ms; None until measured), the
        keep-alive and why, and the answer reassembler's counts."""
        reserve = self._reserve_s()
        with self._lock:
            chunks = self._chunks.stats()
        return {**self.counts, "circuit": self.breaker.state, "circuit_opens": self.breaker.opens,
                "fallback_reserve_ms": None if reserve is None else round(reserve * 1000, 1),
                "keepalive_s": self.config.keepalive_s, "keepalive_why": self.keepalive_why, "chunks": chunks}

    def calibrate(self, fallback: Fallback, tensor: Tensor, runs: int = 5) -> float | None:
        """Time `runs` runs of the local tail on `tensor` (after one warm-up) for the measured fallback reserve;
        the reserve it gives, in seconds."""
        fallback(tensor)
        for _ in range(runs):
            begin = time.monotonic()
            fallback(tensor)
            self.tail_timer.record(time.monotonic() - begin)
        return self._reserve_s()

    def _reserve_s(self) -> float | None:
        """The time kept for the fallback: fixed, or measured (None while the local tail is untimed)."""
        return self.fallback_reserve_s if self.fallback_reserve_s is not None else self.tail_timer.reserve_s()

    def request(self, tensor: Tensor, deadline_s: float, fallback: Fallback | None = None) -> Reply:
        """The tail's outputs for `tensor` within `deadline_s`, or the fallback's, or a Reply saying why not.

        Raises only for bad arguments: a non-positive deadline, or a frame that not even chunking fits under the
        broker's packet size limit (PayloadTooLargeError), which no retry can fix. A deadline no longer than the
        fallback reserve is answered here at once (source "local"), as is the first frame while the local tail is
        untimed.
        """
        start = time.monotonic()
        if not deadline_s > 0:
            raise OffloadError(f"deadline_s must be a positive number of seconds, found {deadline_s}")
        if self._closed:
            return self._fall_back(tensor, fallback, start, "error", "client closed")
        if not self._ready.is_set():
            return self._fall_back(tensor, fallback, start, "error", f"broker {self.config.url} unreachable")
        reserve = self._reserve_s() if fallback is not None else 0.0
        if reserve is None:
            return self._fall_back(tensor, fallback, start, "local", "the local tail has not been timed yet "
                                   "(OffloadClient.calibrate): this frame ran here to time it")
        if deadline_s <= reserve:
            return self._fall_back(tensor, fallback, start, "local", f"the {_ms(deadline_s)} ms deadline is not longer "
                                   f"than the {_ms(reserve)} ms kept for the local tail, so the server was not asked")
        refusal = self.breaker.refusal()
        if refusal is not None:
            return self._fall_back(tensor, fallback, start, "error", refusal)
        try:
            return self._offload(tensor, deadline_s, fallback, start, start + deadline_s - reserve)
        finally:
            self.breaker.settle()

    def _offload(self, tensor: Tensor, deadline_s: float, fallback: Fallback | None, start: float,
                 give_up: float) -> Reply:
        """One request through the in-flight window: the server's answer, or the fallback's by the deadline."""
        if not self._window.acquire(timeout=max(0.0, give_up - time.monotonic())):
            return self._fall_back(tensor, fallback, start, "timeout", "in-flight window full until the deadline")
        try:
            return self._round_trip(tensor, deadline_s, fallback, start, give_up)
        finally:
            self._window.release()

    def _round_trip(self, tensor: Tensor, deadline_s: float, fallback: Fallback | None, start: float,
                    give_up: float) -> Reply:
        request_id = uuid.uuid4().bytes
        deadline_ms = int(time.time() * 1000 + deadline_s * 1000)
        data = encode(Frame(request_id, deadline_ms, self.model_id, self.model_version, (tensor,)), self.codec,
                      key=self.answer_key)
        parts = packets(data, request_id, deadline_ms, self.request_topic, self.chunk_topic, self.response_topic,
                        self.max_packet_bytes, self.answer_key)
        waiter = _Waiter()
        with self._lock:
            self._pending[request_id] = waiter
        infos = []
        for topic, payload in parts:
            infos.append(self._send(topic, payload, request_id, deadline_s, chunked=len(parts) > 1))
            if infos[-1].rc != 0:
                break
        self.counts["sent"] += 1
        self.counts["chunked"] += len(parts) > 1
        failed = next((info.rc for info in infos if info.rc != 0), 0)
        if not failed:
            waiter.done.wait(max(0.0, give_up - time.monotonic()))
        with self._lock:
            if self._pending.pop(request_id, None) is not None:
                self._gave_up.append(request_id)
            self._chunks.discard("server", request_id)
            delivered = all(info.mid not in self._sent for info in infos)  # the broker acknowledged it (PUBACK)
        answer = waiter.answer
        if answer is None:
            if failed:
                return self._fall_back(tensor, fallback, start, "error", f"publish failed (paho error {failed})")
            if waiter.link_down:
                return self._fall_back(tensor, fallback, start, "error", "link to the broker went down")
            if delivered:
                self.breaker.record(False)
            return self._fall_back(tensor, fallback, start, "timeout", _no_answer(give_up - start, deadline_s))
        try:
            if answer.kind == "error":
                raise FrameError(answer.error)
            outputs = response_outputs(answer)
        except FrameError as exc:
            self.breaker.record(False)
            return self._fall_back(tensor, fallback, start, "error", f"server: {exc}")
        self.breaker.record(True)
        latency = time.monotonic() - start
        self.meter.answered(latency)
        self.counts["remote"] += 1
        return Reply(outputs, "remote", latency)

    def _send(self, topic: str, payload: bytes, request_id: bytes, deadline_s: float, chunked: bool) -> Any:
        """Publish one frame or chunk (QoS 1), noted for the link meter; paho's MQTTMessageInfo."""
        sent_at, delivered = time.monotonic(), self.meter.delivered
        info = self._mqtt.publish(topic, payload, qos=1, properties=self._properties(request_id, deadline_s, chunked))
        with self._lock:
            acked_at = self._acks.pop(info.mid, None)
            if acked_at is None:
                self._sent[info.mid] = (sent_at, len(payload), delivered)
        if acked_at is not None:
            self.meter.acked(len(payload), acked_at - sent_at, delivered)
        return info

    def _properties(self, request_id: bytes, deadline_s: float, chunked: bool) -> Any:
        """MQTT v5 request properties (None on 3.1.1, where the frame and topic carry everything)."""
        if self.config.protocol != 5:
            return None
        return packed_properties(publish_properties(request_id, self.response_topic, max(1, math.ceil(deadline_s)),
                                                    CHUNK_CONTENT_TYPE if chunked else CONTENT_TYPE))

    def _fall_back(self, tensor: Tensor, fallback: Fallback | None, start: float, source: str, detail: str) -> Reply:
        """The fallback's answer (source "fallback", or "local" when the server was not worth asking), timed for
        the reserve; without a fallback, no output and `source` as the reason."""
        if fallback is None:
            self.counts[source] += 1
            return Reply(None, source, time.monotonic() - start, detail)
        begin = time.monotonic()
        output = fallback(tensor)
        now = time.monotonic()
        self.tail_timer.record(now - begin)
        answered_as = "local" if source == "local" else "fallback"
        self.counts[answered_as] += 1
        return Reply(output, answered_as, now - start, detail)

    def close(self) -> None:
        """Disconnect; waiting requests fall back now and later ones at once."""
        if self._closed:
            return
        self._closed = True
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        self._on_disconnect(self._mqtt, None, None, None, None)

    def __enter__(self) -> OffloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms(seconds: float) -> str:
    """Seconds as milliseconds for a message: '20', '0.5', '1000'."""
    return f"{round(seconds * 1000, 1):g}"


def _no_answer(waited_s: float, deadline_s: float) -> str:
    """What a timeout waited: the whole deadline, or the deadline less the time kept for the fallback."""
    if waited_s >= deadline_s - 1e-6:  # no reserve kept: `give_up - start` may miss the deadline by rounding
        return f"no answer within {_ms(deadline_s)} ms (the deadline)"
    return (f"no answer within {_ms(waited_s)} ms (the {_ms(deadline_s)} ms deadline less "
            f"{_ms(deadline_s - waited_s)} ms kept for the local fallback)")
