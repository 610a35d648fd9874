"""The tail server: `OffloadServer` answers one model's requests from a shared subscription; `serve` runs workers.

Each worker is one MQTT client in the shared-subscription group, so the broker spreads requests over the
workers. A request is answered on the topic derived from its request topic (docs/protocol.md), never on
a topic the request names, so a device cannot aim answers at another device. Expired requests are dropped;
malformed ones get an error answer; nothing a device sends stops the server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import OffloadError
from edgekit.formats.plans import SplitSchedule
from edgekit.offload.connection import BrokerConfig, packed_properties
from edgekit.offload.handler import STATUSES, TailHandler
from edgekit.offload.protocol import Topics, publish_properties
from edgekit.runtime.session import Session, load

log = logging.getLogger(__name__)


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
                 backend: str | None = None, threads: int | None = None) -> None:
        session = bundle if isinstance(bundle, Session) else tail_session(bundle, backend, threads)
        layout = SplitSchedule.of(session.manifest)  # a split bundle names the model id and version
        self.handler = TailHandler(session, model_id or (layout.model_id if layout else None),
                                   model_version or (layout.model_version if layout else ""))
        self.config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.parse(broker)
        self.topics = Topics(prefix)
        self.subscription = self.topics.shared_requests(self.handler.model_id, group)
        self.metrics = ServerMetrics()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._mqtt = self.config.client(f"tail-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        self._mqtt.on_connect, self._mqtt.on_subscribe = self._on_connect, self._on_subscribe
        self._mqtt.on_message, self._mqtt.on_disconnect = self._on_message, self._on_disconnect

    def start(self, timeout_s: float = 10.0) -> OffloadServer:
        """Connect and subscribe; OffloadError when the broker refuses or is not there within `timeout_s`."""
        self.config.connect_async(self._mqtt)
        if not self._subscribed.wait(timeout_s) or self._refused:
            self.stop()
            raise OffloadError(f"tail server could not subscribe to {self.subscription} on {self.config.url}: "
                               f"{self._refused or f'no connection within {timeout_s:g} s'}")
        return self

    def stop(self) -> None:
        """Disconnect (answers already published are delivered by the broker)."""
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def __enter__(self) -> OffloadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._subscribed.set()
            return
        client.subscribe(self.subscription, qos=1)

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
        try:
            status, answer = self.handler.handle(message.payload, getattr(props, "CorrelationData", None))
            if status != "expired":
                client.publish(answer_topic, answer, qos=1, properties=self._properties(answer))
        except Exception:  # noqa: BLE001 - the handler answers every input; this keeps paho's thread alive anyway
            log.exception("dropped a request from '%s'", device)
            status = "dropped"
        self.metrics.record(status, time.perf_counter() - start)

    def _properties(self, answer: bytes) -> Any:
        """v5: the request id as CorrelationData (the frame carries it too; 3.1.1 answers have nothing else)."""
        if self.config.protocol != 5:
            return None
        return packed_properties(publish_properties(answer[5:21]))  # where every frame keeps its request id


def _worker(bundle: str, config: BrokerConfig, options: dict[str, Any], stop: Any, results: Any) -> None:
    """A worker process: serve until `stop` is set (or the parent dies), then report its metrics on `results`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        server = OffloadServer(bundle, config, **options).start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(("failed", f"{type(exc).__name__}: {exc}"))
        return
    results.put(("ready", None))
    parent = os.getppid()
    while not stop.wait(0.5) and os.getppid() == parent:  # a parent killed outright takes its workers along
        pass
    server.stop()
    results.put(("metrics", server.metrics.snapshot()))


def serve(bundle: str | Path, broker: str | BrokerConfig | None = None, *, workers: int = 1,
          model_id: str | None = None, model_version: str = "", prefix: str = "edgekit", group: str = "tail",
          backend: str | None = None, threads: int | None = None, listen: str = "0.0.0.0",
          announce: Callable[[str], None] = print, stop: threading.Event | None = None) -> dict[str, Any]:
    """Serve `bundle`'s tail with `workers` processes until SIGINT/SIGTERM (or `stop`); the merged metrics.

    Without `broker`, an embedded Mosquitto is started on a free port of `listen` (see broker.Broker) and
    its URL announced for devices. Announces the broker, the request topic and readiness through `announce`.
    """
    from edgekit.formats.bundle import load_bundle
    from edgekit.offload.broker import Broker, advertised_host

    if workers < 1:
        raise OffloadError(f"workers must be at least 1, found {workers}")
    verified = load_bundle(bundle)
    layout = SplitSchedule.of(verified.manifest)
    model_id = model_id or (layout.model_id if layout else verified.manifest.model)
    topics = Topics(prefix)
    embedded = None
    if broker is None:
        embedded = Broker(host=listen).start()
        config = BrokerConfig.parse(embedded.url)
        announce(f"embedded broker: {embedded.url_for(advertised_host(listen))} (anonymous, plain TCP: for a lab, "
                 "not for production)")
    else:
        config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.parse(broker)
        announce(f"broker: {config.url}")
    stop = stop or threading.Event()
    handlers = _stop_on_signals(stop)
    context = multiprocessing.get_context("spawn")
    stop_workers, results = context.Event(), context.Queue()
    options = {"model_id": model_id, "model_version": model_version, "prefix": prefix, "group": group,
               "backend": backend, "threads": threads}
    procs = [context.Process(target=_worker, args=(str(bundle), config, options, stop_workers, results))
             for _ in range(workers)]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            try:
                kind, value = results.get(timeout=120)
            except queue.Empty:
                kind, value = "failed", "no word from it within 120 s"
            if kind == "failed":
                raise OffloadError(f"a tail worker could not start: {value}")
        outputs = verified.manifest.stages[-1].outputs  # the tail's: every one goes back in each answer
        announce(f"serving model '{model_id}' with {workers} worker(s): devices publish to "
                 f"{topics.request(model_id, 'DEVICE_ID')}, answers on {topics.response('DEVICE_ID')} carrying "
                 f"{len(outputs)} output(s): " + ", ".join(f"{o.name} {list(o.shape)}" for o in outputs))
        announce("ready")
        while not stop.wait(0.2) and all(proc.is_alive() for proc in procs):
            pass
        stop_workers.set()
        snapshots = []
        for _ in procs:
            try:
                kind, value = results.get(timeout=10)
            except queue.Empty:  # a worker that died reports nothing
                break
            snapshots.append(value)
        if len(snapshots) < workers:
            announce(f"warning: {workers - len(snapshots)} worker(s) died; their counts are missing")
        return merge_metrics(snapshots)
    finally:
        stop_workers.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        if embedded is not None:
            embedded.close()


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM set `stop` (main thread only); the handlers they replace, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous
