"""The tail server: `OffloadServer` answers one model's requests from a shared subscription; `serve` runs workers.

Each worker is one MQTT client in the shared-subscription group, so the broker spreads requests over the
workers. A request is answered on the topic derived from its request topic (docs/protocol.md), never on
a topic the request names, so a device cannot aim answers at another device. Expired requests are dropped;
malformed ones get an error answer; nothing a device sends stops the server.

`serve` supervises its children: it waits on every worker's sentinel and pipe (no shared lock a killed
worker could leave held), restarts a dead worker under RestartPolicy with the same client id and a session
the broker keeps for SESSION_EXPIRY_S (MQTT v5), so the requests the dead one had not acknowledged go to
its successor, and restarts the embedded Mosquitto on its port. Workers and broker get PR_SET_PDEATHSIG
(Linux), so they die with serve even after a SIGKILL of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ChunkError, OffloadError, PayloadTooLargeError, SignatureError
from edgekit.formats import chunk
from edgekit.formats.plans import SplitSchedule
from edgekit.offload.broker import die_with_parent
from edgekit.offload.connection import BrokerConfig, packed_properties
from edgekit.offload.handler import STATUSES, TailHandler
from edgekit.offload.protocol import Topics, packets, publish_properties, smallest_limit
from edgekit.runtime.session import Session, load

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 60  # how long the broker keeps a dead worker's session (its unacknowledged requests) for its restart
CHUNK_TIMEOUT_S = 5.0  # a partial request older than this (or past its deadline) is dropped
MAX_PARTIAL_BYTES = 64 * 1024 * 1024  # all partial requests of one worker together
ANSWERED_REFUSALS = ("malformed", "too_large", "inconsistent", "memory_cap")  # the device is told; the rest are not


class ServerMetrics:
    """Counts per outcome and handling latency; thread-safe; `snapshot()` is a plain dict."""

    def __init__(self, window: int = 10_000) -> None:
        self.counts = {"requests": 0, "dropped": 0, **{status: 0 for status in STATUSES}}
        self.latencies: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, status: str, seconds: float) -> None:
        with self._lock:
            self.counts["requests"] += 1
            self.counts[status] += 1
            self.latencies.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            kept = np.array(self.latencies) * 1000
            figures: dict[str, Any] = dict(self.counts)
        figures["p50_ms"] = float(np.percentile(kept, 50)) if kept.size else None
        figures["p99_ms"] = float(np.percentile(kept, 99)) if kept.size else None
        return figures


def merge_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' snapshots as one: counts added, latency percentiles of the slowest worker."""
    merged: dict[str, Any] = {"workers": len(parts), "per_worker_requests": [p["requests"] for p in parts]}
    for key in ("requests", "dropped", *STATUSES):
        merged[key] = sum(p[key] for p in parts)
    for key in ("p50_ms", "p99_ms"):
        values = [p[key] for p in parts if p[key] is not None]
        merged[key] = max(values) if values else None
    chunks = [p["chunks"] for p in parts if "chunks" in p]  # OffloadServer.chunk_stats() of each worker
    if chunks:
        merged["chunks"] = {key: sum(c[key] for c in chunks) for key in chunks[0]}
    return merged


def tail_session(bundle: str | Path, backend: str | None = None, threads: int | None = None) -> Session:
    """What a tail server runs: the server stages of a split bundle, or the whole of any other bundle."""
    from edgekit.formats.bundle import load_bundle

    verified = load_bundle(bundle)
    split = SplitSchedule.of(verified.manifest)
    return load(verified, backend, threads=threads, part="server" if split else None)


class OffloadServer:
    """One tail worker: a Session behind a shared subscription; `start()`, then `stop()` (or a `with` block)."""

    def __init__(self, bundle: str | Path | Session, broker: str | BrokerConfig, *, model_id: str | None = None,
                 model_version: str = "", prefix: str = "edgekit", group: str = "tail",
                 backend: str | None = None, threads: int | None = None, answer_key: bytes | None = None,
                 client_id: str | None = None, session_expiry_s: int = 0, max_packet_bytes: int | None = None,
                 max_partial_bytes: int = MAX_PARTIAL_BYTES, max_device_partial_bytes: int | None = None,
                 chunk_timeout_s: float = CHUNK_TIMEOUT_S) -> None:
        """`answer_key`, the fleet key (edgekit.offload.auth): answers are signed, unsigned requests dropped.

        With `session_expiry_s` (MQTT v5) the broker keeps this `client_id`'s session that long after a crash, and
        a worker restarted under the same id gets the requests the dead one had not acknowledged.
        Chunked requests are put back together within `max_partial_bytes` in all and `max_device_partial_bytes`
        per device (default: four of the largest request the tail takes), each for at most `chunk_timeout_s`;
        answers over `max_packet_bytes` (or the broker's announced limit) go back in chunks."""
        session = bundle if isinstance(bundle, Session) else tail_session(bundle, backend, threads)
        layout = SplitSchedule.of(session.manifest)  # a split bundle names the model id and version
        self.handler = TailHandler(session, model_id or (layout.model_id if layout else None),
                                   model_version or (layout.model_version if layout else ""), key=answer_key)
        self.config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.parse(broker)
        self.topics = Topics(prefix)
        self.subscription = self.topics.shared_requests(self.handler.model_id, group)
        self.chunk_topic = self.topics.all_chunks(self.handler.model_id)
        self.metrics = ServerMetrics()
        per_device = max_device_partial_bytes or 4 * (self.handler.max_request_bytes + chunk.ENTRY_BYTES)
        self.chunks = chunk.Reassembler(max_partial_bytes, per_device, chunk_timeout_s)
        self._chunk_lock = threading.Lock()  # paho's thread fills the reassembler, stats() may read it from another
        self._configured_max, self._broker_max = max_packet_bytes, None
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self.session_expiry_s = session_expiry_s if self.config.protocol == 5 else 0
        client_id = client_id or f"tail-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._mqtt = self.config.client(client_id)
        self._mqtt.on_connect, self._mqtt.on_subscribe = self._on_connect, self._on_subscribe
        self._mqtt.on_message, self._mqtt.on_disconnect = self._on_message, self._on_disconnect

    def start(self, timeout_s: float = 10.0) -> OffloadServer:
        """Connect and subscribe; OffloadError when the broker refuses or is not there within `timeout_s`."""
        if self.session_expiry_s:
            self._mqtt.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s,
                                     clean_start=False, properties=_session(self.session_expiry_s, "CONNECT"))
            self._mqtt.loop_start()
        else:
            self.config.connect_async(self._mqtt)
        if not self._subscribed.wait(timeout_s) or self._refused:
            self.stop()
            raise OffloadError(f"tail server could not subscribe to {self.subscription} on {self.config.url}: "
                               f"{self._refused or f'no connection within {timeout_s:g} s'}")
        return self

    def stop(self) -> None:
        """Disconnect (answers already published are delivered by the broker), ending a kept session too."""
        self._mqtt.disconnect(properties=_session(0, "DISCONNECT") if self.session_expiry_s else None)
        self._mqtt.loop_stop()

    @property
    def max_packet_bytes(self) -> int | None:
        """The largest MQTT packet the broker takes (its CONNACK limit or the configured one), None if unknown."""
        return smallest_limit(self._broker_max, self._configured_max)

    def chunk_stats(self) -> dict[str, int]:
        """The reassembler's counts (completed, timed out, each refusal reason) and the partial requests it holds."""
        with self._chunk_lock:
            return self.chunks.stats()

    def __enter__(self) -> OffloadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._subscribed.set()
            return
        self._broker_max = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        client.subscribe([(self.subscription, 1), (self.chunk_topic, 1)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list, properties: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._refused = f"subscription refused ({reasons[0]})"
        self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason is not None and reason.is_failure:
            log.warning("tail worker lost broker %s (%s); reconnecting", self.config.url, reason)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        start = time.perf_counter()
        props = getattr(message, "properties", None)
        try:
            device = self.topics.device_of(message.topic)
        except OffloadError as exc:
            self.metrics.record("dropped", 0.0)
            log.warning("dropped a message: %s", exc)
            return
        answer_topic = self.topics.response(device)
        named = getattr(props, "ResponseTopic", None)
        if named is not None and named != answer_topic:
            log.warning("request from '%s' names response topic %r; answering on %s", device, named, answer_topic)
        payload = message.payload
        try:
            on_chunk_topic = message.topic.startswith(f"{self.topics.prefix}/chunk/")
            if on_chunk_topic or chunk.is_chunk(payload):
                payload = self._reassembled(client, device, answer_topic, payload, start, on_chunk_topic)
                if payload is None:
                    return
            status, answer = self.handler.handle(payload, getattr(props, "CorrelationData", None))
            if status != "expired":
                self._publish(client, answer_topic, answer)
        except Exception:  # noqa: BLE001 - the handler answers every input; this keeps paho's thread alive anyway
            log.exception("dropped a request from '%s'", device)
            status = "dropped"
        self.metrics.record(status, time.perf_counter() - start)

    def _reassembled(self, client: Any, device: str, answer_topic: str, data: bytes, start: float,
                     on_chunk_topic: bool) -> bytes | None:
        """The whole request once chunk `data` from `device` completes one, else None. A refused chunk is counted
        by its reason before anything is buffered; a refused chunk 0 is answered with why (once per request).
        Every worker reads the chunk topic: anything there but a later chunk (a whole frame, a chunk 0) is
        dropped, or each worker would take it."""
        request_id, index = chunk.peek(data) or (bytes(16), -1)
        with self._chunk_lock:
            if on_chunk_topic != (index > 0):
                self.chunks.counts["wrong_topic"] += 1
                return None
            try:
                return self.chunks.add(device, chunk.read_chunk(data, self.handler.key), self.handler.max_request_bytes)
            except SignatureError as exc:
                self.chunks.counts["forged"] += 1
                status, answer = "forged", self.handler.unsigned_refusal(request_id, str(exc))
            except ChunkError as exc:
                if exc.reason == "malformed":  # read_chunk's refusal; the reassembler counts its own
                    self.chunks.counts["malformed"] += 1
                if exc.reason not in ANSWERED_REFUSALS:
                    return None
                status, answer = "error", self.handler.error_answer(request_id, 0, f"chunked request refused "
                                                                                   f"({exc.reason}): {exc}")
        if index == 0:
            self._publish(client, answer_topic, answer)
            self.metrics.record(status, time.perf_counter() - start)
        return None

    def _publish(self, client: Any, topic: str, answer: bytes) -> None:
        """Publish an answer (QoS 1), in chunks when it is over the broker's packet size limit."""
        deadline_ms = int.from_bytes(answer[21:29], "little")  # where every frame keeps its deadline
        try:
            parts = packets(answer, answer[5:21], deadline_ms, topic, topic, "", self.max_packet_bytes,
                            self.handler.key)
        except PayloadTooLargeError as exc:
            parts = [(topic, self.handler.error_answer(answer[5:21], deadline_ms, str(exc)))]
        properties = self._properties(answer)
        for part_topic, payload in parts:
            client.publish(part_topic, payload, qos=1, properties=properties)

    def _properties(self, answer: bytes) -> Any:
        """v5: the request id as CorrelationData (the frame carries it too; 3.1.1 answers have nothing else)."""
        if self.config.protocol != 5:
            return None
        return packed_properties(publish_properties(answer[5:21]))  # where every frame keeps its request id


def _session(expiry_s: int, packet: str) -> Any:
    """MQTT v5 properties of a CONNECT or DISCONNECT setting the session expiry interval."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(getattr(PacketTypes, packet))
    properties.SessionExpiryInterval = expiry_s
    return properties


def _worker(bundle: str, config: BrokerConfig, options: dict[str, Any], conn: Connection, parent: int) -> None:
    """A worker process: serve until told on `conn` (or the parent dies), then send its metrics back on `conn`.

    Each worker has a pipe of its own: a worker killed mid-write leaves no lock held that others wait on."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        server = OffloadServer(bundle, config, **options).start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while os.getppid() == parent and not conn.poll(0.5):  # a word or the pipe's end (parent gone) stops it
        pass
    server.stop()
    with contextlib.suppress(OSError):
        conn.send(("metrics", {**server.metrics.snapshot(), "chunks": server.chunk_stats()}))


@dataclass(frozen=True)
class RestartPolicy:
    """How serve restarts a dead worker or broker: after `first_s`, doubling up to `max_s`, back to `first_s`
    once one has lived `healthy_s`; more than `max_restarts` deaths in a row, each within `healthy_s` of its
    start, and serve gives up with an OffloadError (a crash loop, not bad luck)."""

    first_s: float = 0.5
    max_s: float = 10.0
    healthy_s: float = 60.0
    max_restarts: int = 5


class _Lives:
    """One supervised child's history: when it last started, its quick deaths in a row, when it is due again."""

    def __init__(self, what: str, policy: RestartPolicy) -> None:
        self.what, self.policy = what, policy
        self.started, self.streak, self.restarts = time.monotonic(), 0, 0
        self.due: float | None = None

    def started_now(self) -> None:
        self.started, self.due = time.monotonic(), None

    def schedule(self, cause: str) -> str:
        """Plan the next start after a death from `cause`; the line announcing it, or OffloadError to give up."""
        now = time.monotonic()
        lived = now - self.started
        if lived >= self.policy.healthy_s:
            self.streak = 0
        if self.streak >= self.policy.max_restarts:
            raise OffloadError(f"{self.what} died ({cause}) {self.streak + 1} times in a row, each within "
                               f"{self.policy.healthy_s:g} s of starting; gave up instead of restarting it again")
        delay = min(self.policy.max_s, self.policy.first_s * 2 ** self.streak)
        self.streak, self.restarts, self.due = self.streak + 1, self.restarts + 1, now + delay
        return f"{self.what} died ({cause}) after {lived:.1f} s; restarting it in {delay:g} s (restart {self.restarts})"


def _exit_cause(code: int | None) -> str:
    """'killed by SIGKILL' or 'exit code 1', from a Popen/Process exit code."""
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class _Worker:
    """One worker slot: the process running it now, the pipe to it, what it said, and its restarts."""

    def __init__(self, index: int, policy: RestartPolicy) -> None:
        self.index = index
        self.lives = _Lives(f"worker {index}", policy)
        self.process: Any = None
        self.conn: Connection | None = None
        self.ready, self.failure = False, ""
        self.metrics: dict[str, Any] | None = None

    def receive(self) -> None:
        """Take one message from the worker (a pipe at its end means the worker is gone: its sentinel says so)."""
        assert self.conn is not None
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            return
        if kind == "ready":
            self.ready = True
        elif kind == "failed":
            self.failure = value
        else:
            self.metrics = value


class _Pool:
    """The worker processes of `serve`: started, watched through their sentinels, restarted, stopped in time."""

    def __init__(self, bundle: str, configs: list[BrokerConfig], options: dict[str, Any], policy: RestartPolicy,
                 announce: Callable[[str], None], client_stem: str) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.bundle, self.configs, self.options, self.announce = bundle, configs, options, announce
        self.client_stem = client_stem
        self.workers = [_Worker(i, policy) for i in range(len(configs))]
        self.unreported = 0  # worker runs that ended without sending their metrics
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: _Worker) -> None:
        mine, theirs = self.context.Pipe()
        options = {**self.options, "client_id": f"{self.client_stem}-{worker.index}",
                   "session_expiry_s": SESSION_EXPIRY_S}
        worker.process = self.context.Process(target=_worker, name=f"edgekit-tail-{worker.index}", daemon=True,
                                              args=(self.bundle, self.configs[worker.index], options, theirs,
                                                    os.getpid()))
        worker.process.start()
        theirs.close()
        worker.conn, worker.ready, worker.failure, worker.metrics = mine, False, "", None
        worker.lives.started_now()

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.process is not None]

    @property
    def ready(self) -> bool:
        return all(w.ready for w in self.workers)

    def watch(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for word from a worker or its death; restart the dead, start those due again."""
        running = self._running()
        readable = wait([w.conn for w in running] + [w.process.sentinel for w in running], timeout_s)
        for worker in running:
            if worker.conn in readable:
                worker.receive()
            if not worker.process.is_alive():
                self._died(worker)
        for worker in self.workers:
            if worker.process is None and worker.lives.due is not None and time.monotonic() >= worker.lives.due:
                self._start(worker)

    def _died(self, worker: _Worker) -> None:
        cause = worker.failure or _exit_cause(worker.process.exitcode)
        pid = worker.process.pid
        first_start = not worker.ready and worker.lives.restarts == 0
        self._forget(worker)
        if first_start:
            raise OffloadError(f"a tail worker could not start: {cause}")
        self.announce(worker.lives.schedule(cause).replace(f"worker {worker.index}",
                                                           f"worker {worker.index} (pid {pid})", 1))

    def _forget(self, worker: _Worker) -> None:
        """Drop a dead worker's process and pipe; its metrics, unless it sent them, are lost."""
        self.unreported += worker.metrics is None
        assert worker.conn is not None
        worker.conn.close()
        worker.process.join(0)
        worker.process, worker.conn = None, None

    def stop(self, grace_s: float = 2.5) -> list[dict[str, Any]]:
        """Ask every worker to stop, collect what they report within `grace_s`, kill the rest; the snapshots."""
        running = self._running()
        for worker in running:
            with contextlib.suppress(OSError):
                worker.conn.send("stop")  # type: ignore[union-attr]
        end = time.monotonic() + grace_s
        while (pending := [w for w in running if w.metrics is None and w.process.is_alive()]) and \
                time.monotonic() < end:
            readable = wait([w.conn for w in pending] + [w.process.sentinel for w in pending],
                            max(0.0, end - time.monotonic()))
            for worker in pending:
                if worker.conn in readable:
                    worker.receive()
        snapshots = [w.metrics for w in self.workers if w.metrics is not None]
        self.kill()
        return snapshots

    def kill(self) -> None:
        """SIGKILL whatever still runs (a hung worker included) and reap it."""
        for worker in self._running():
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1)
            self._forget(worker)


class _BrokerWatch:
    """The embedded Mosquitto: restarted on its own port, with its config, when it dies (announced)."""

    def __init__(self, broker: Any, policy: RestartPolicy, announce: Callable[[str], None]) -> None:
        self.broker, self.announce = broker, announce
        self.lives = _Lives(f"embedded broker on port {broker.port}", policy)

    def check(self) -> None:
        """Notice a dead broker, or start it again when its time has come."""
        from edgekit.errors import BrokerError

        process = self.broker.process
        if self.lives.due is None:
            if process is not None and process.poll() is not None:
                self.announce(self.lives.schedule(f"pid {process.pid}, {_exit_cause(process.returncode)}"))
        elif time.monotonic() >= self.lives.due:
            try:
                self.broker.start(timeout_s=3.0)
                self.lives.started_now()
            except BrokerError as exc:
                self.announce(self.lives.schedule(f"no restart: {str(exc).splitlines()[0]}"))


def serve(bundle: str | Path, broker: str | BrokerConfig | None = None, *, workers: int = 1,
          model_id: str | None = None, model_version: str = "", prefix: str = "edgekit", group: str = "tail",
          backend: str | None = None, threads: int | None = None, listen: str = "127.0.0.1",
          secrets: str | Path | None = None, devices: Sequence[str] = ("device-1",),
          policy: RestartPolicy = RestartPolicy(), announce: Callable[[str], None] = print,
          stop: threading.Event | None = None, answer_key: bytes | None = None) -> dict[str, Any]:
    """Serve `bundle`'s tail with `workers` processes until SIGINT/SIGTERM (or `stop`); the merged metrics.

    Answers are signed with `answer_key`, by default the fleet key in `secrets` (the folder BUNDLE.secrets beside
    the bundle; made on first use). Without `broker`, an embedded Mosquitto is started on a free port of `listen`
    (see broker.Broker): on loopback anonymous, elsewhere with generated logins and the per-device ACL in
    `secrets` (one credentials file per name in `devices`). Dead workers and a
    dead embedded broker are restarted under `policy`; SIGINT/SIGTERM stop serve within 5 s in any state.
    Children are started from the calling thread and die with it (Linux), so call it from a long-lived one.
    """
    from edgekit.formats.bundle import load_bundle
    from edgekit.offload.auth import fleet_key
    from edgekit.offload.security import secrets_folder

    if workers < 1:
        raise OffloadError(f"workers must be at least 1, found {workers}")
    verified = load_bundle(bundle)
    layout = SplitSchedule.of(verified.manifest)
    model_id = model_id or (layout.model_id if layout else verified.manifest.model)
    topics = Topics(prefix)
    stop = stop or threading.Event()
    folder = Path(secrets) if secrets else secrets_folder(bundle)
    if answer_key is None:
        answer_key, key_file, created = fleet_key(folder)
        announce(f"fleet key: {key_file}{' (new)' if created else ''}; answers are signed with it and only requests "
                 "signed with it are served (devices: edgekit run BUNDLE --broker URL --fleet-key FILE; a device "
                 "running this bundle path finds it by itself)")
    handlers = _stop_on_signals(stop)
    embedded, pool, lock = None, None, None
    try:
        if broker is None:
            embedded, configs = _embedded_broker(listen, folder, devices, topics, workers, announce)
        else:
            config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.parse(broker)
            announce(f"broker: {config.url} ({'TLS' if config.tls else 'plain TCP'}, "
                     f"{f'login as {config.username}' if config.username else 'anonymous'})")
            configs = [config] * workers
        client_stem, lock = _client_stem(configs[0], topics, model_id, group)
        watch = _BrokerWatch(embedded, policy, announce) if embedded is not None else None
        pool = _Pool(str(bundle), configs, {"model_id": model_id, "model_version": model_version, "prefix": prefix,
                                            "group": group, "backend": backend, "threads": threads,
                                            "answer_key": answer_key},
                     policy, announce, client_stem)
        if _supervise(pool, watch, stop, until_ready=True):
            outputs = verified.manifest.stages[-1].outputs  # the tail's: every one goes back in each answer
            announce(f"serving model '{model_id}' with {workers} worker(s): devices publish to "
                     f"{topics.request(model_id, 'DEVICE_ID')}, answers on {topics.response('DEVICE_ID')} "
                     f"carrying {len(outputs)} output(s): " + ", ".join(f"{o.name} {list(o.shape)}" for o in outputs))
            announce("ready")
            _supervise(pool, watch, stop, until_ready=False)
        return _summary(pool, announce)
    finally:
        if pool is not None:
            pool.kill()
        if lock is not None:
            lock.close()
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        if embedded is not None:
            embedded.close()


def _client_stem(config: BrokerConfig, topics: Topics, model_id: str, group: str) -> tuple[str, Any]:
    """The workers' client id stem, and the open lock file that reserves it on this host while serve runs.

    The stem names the host, broker, prefix, model and group, not the process: a serve restarted after a crash
    resumes its predecessor's sessions and answers the requests they still held (instead of leaving them, and
    the requests the broker keeps routing there, to expire). A second serve of the same fleet on this host
    finds the lock taken and adds its pid, so the two never take each other's sessions over."""
    import fcntl  # Unix only, as the rest of serve's process handling

    fleet = f"{config.host}:{config.port}/{topics.prefix}/{model_id}/{group}"
    digest = hashlib.sha256(fleet.encode()).hexdigest()[:12]
    stem = f"tail-{socket.gethostname()}-{digest}"
    lock = None
    try:
        lock = open(Path(tempfile.gettempdir()) / f"edgekit-serve-{digest}.lock", "w")  # noqa: SIM115 - held till the end
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return stem, lock
    except OSError:  # taken by a running serve (or the file is another user's)
        if lock is not None:
            lock.close()
        return f"{stem}-{os.getpid()}", None


def _supervise(pool: _Pool, watch: _BrokerWatch | None, stop: threading.Event, until_ready: bool,
               start_timeout_s: float = 120.0) -> bool:
    """Watch workers and broker until `stop` (False) or, with `until_ready`, every worker is ready (True)."""
    give_up = time.monotonic() + start_timeout_s
    while not stop.is_set():
        if until_ready and pool.ready:
            return True
        if until_ready and time.monotonic() > give_up:
            raise OffloadError(f"a tail worker could not start: no word from it within {start_timeout_s:g} s")
        pool.watch(0.2)
        if watch is not None and not stop.is_set():  # a broker that stopped with serve is not restarted
            watch.check()
    return False


def _summary(pool: _Pool, announce: Callable[[str], None]) -> dict[str, Any]:
    """Stop the workers; their merged metrics, with the restarts and the runs whose counts were lost."""
    merged = merge_metrics(pool.stop())
    merged["restarts"] = sum(w.lives.restarts for w in pool.workers)
    merged["unreported_runs"] = pool.unreported
    if pool.unreported:
        announce(f"warning: {pool.unreported} worker run(s) ended without reporting (killed, crashed or hung; "
                 f"{merged['restarts']} restart(s)): their counts are missing from the summary")
    return merged


def _embedded_broker(listen: str, secrets: Path, devices: Sequence[str], topics: Topics,
                     workers: int, announce: Callable[[str], None]) -> tuple[Any, list[BrokerConfig]]:
    """Start Mosquitto on `listen` (tied to this process); the workers' configs. Off loopback: logins and ACL."""
    from edgekit.offload.broker import Broker, advertised_host, is_loopback
    from edgekit.offload.security import fleet_secrets

    if is_loopback(listen):
        embedded = Broker(host=listen, tied=True).start()
        announce(f"embedded broker: {embedded.url} (anonymous, plain TCP, on loopback: only this machine can "
                 "reach it; --listen ADDRESS serves a network, with generated logins and a per-device ACL)")
        return embedded, [BrokerConfig.parse(embedded.url)] * workers
    fleet = fleet_secrets(secrets, topics, devices, [f"edgekit-server-{i}" for i in range(workers)])
    embedded = Broker(host=listen, password_file=fleet.password_file, acl_file=fleet.acl_file, tied=True,
                      username_as_clientid=True).start()
    url = embedded.url_for(advertised_host(listen))
    announce(f"embedded broker: {url} (login required, per-device ACL; plain TCP: logins and frames cross the "
             "network unencrypted, so keep it on a network you trust)")
    for name, path in fleet.devices.items():
        announce(f"device '{name}' logs in with {path} (copy it to the device only: edgekit run BUNDLE --broker "
                 f"{url} --credentials FILE)")
    return embedded, [BrokerConfig.parse(embedded.url, username=c.username, password=c.password)
                      for c in fleet.servers]


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM set `stop` (main thread only); the handlers they replace, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous
