"""Offload over MQTT, measured: load (devices x frames against 1 and 2 tail workers) and protocol overhead.

    .venv/bin/python tools/bench_offload.py            # the full run in BENCHMARKS.md
    .venv/bin/python tools/bench_offload.py --quick    # a smoke-sized run

(a) load: N simulated devices (threads, one OffloadClient each) send M frames each, back to back, against
`edgekit serve`-style workers behind a shared subscription on a fresh Mosquitto: lost frames (answered by
neither the tail nor in time), p50/p99 round trip, throughput. (b) overhead: one device's edgekit round
trip against a hand-written paho request/response (same payload bytes, same QoS 1, same broker, the same
tail run on the server), interleaved in rounds; the ratio of medians.

The tail is the tests' small int8 one (tests/helpers.py: `tiny_tail_bundle`, `activation`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

from helpers import SHAPE, activation, tiny_tail_bundle  # noqa: E402

from edgekit.runtime.session import load  # noqa: E402


def _percentiles(values: list[float]) -> tuple[float, float]:
    ms = np.array(values) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def load_test(bundle: Path, url: str, workers: int, devices: int, frames: int, deadline_s: float) -> dict:
    """`devices` threads x `frames` requests each against `workers` tail processes; lost, latency, req/s."""
    from edgekit.offload.auth import bundle_key
    from edgekit.offload.client import OffloadClient
    from edgekit.offload.server import serve

    stop, lines = threading.Event(), []
    server = threading.Thread(target=lambda: lines.append(serve(bundle, url, workers=workers, stop=stop,
                                                                announce=lines.append)))
    server.start()
    while "ready" not in lines:
        if not server.is_alive():
            raise RuntimeError(f"server failed: {lines}")
        time.sleep(0.05)
    key = bundle_key(bundle)  # serve's default fleet key: requests signed, answers verified, as in production
    clients = [OffloadClient(url, "tiny_tail", f"bench-{i}", answer_key=key) for i in range(devices)]
    latencies: list[list[float]] = [[] for _ in clients]
    sources: list[list[str]] = [[] for _ in clients]

    def device(i: int) -> None:
        tensor = activation(i)
        for _ in range(frames):
            reply = clients[i].request(tensor, deadline_s)
            latencies[i].append(reply.latency_s)
            sources[i].append(reply.source)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(devices)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in clients:
        c.close()
    stop.set()
    server.join()
    flat = [s for per in sources for s in per]
    p50, p99 = _percentiles([v for per in latencies for v in per])
    return {"workers": workers, "devices": devices, "frames": len(flat), "lost": sum(s != "remote" for s in flat),
            "p50_ms": p50, "p99_ms": p99, "req_per_s": len(flat) / elapsed,
            "served_per_worker": lines[-1]["per_worker_requests"]}


def overhead_test(bundle: Path, url: str, rounds: int, per_round: int, protocol: int) -> dict:
    """Median round trips (ms) of edgekit and of hand-written paho request/response, interleaved in rounds.

    The hand-written server runs the same tail on the payload's bytes. 'raw' publishes bare payloads; on
    MQTT v5 'raw v5 req/resp' adds what a v5 request/response needs (ResponseTopic, CorrelationData) with
    paho's own Properties.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edgekit.formats.frame import Frame, encode
    from edgekit.offload.client import OffloadClient
    from edgekit.offload.connection import BrokerConfig
    from edgekit.offload.server import OffloadServer

    session = load(bundle)
    tensor = activation(0)
    payload_bytes = len(encode(Frame(bytes(16), 0, "tiny_tail", "", (tensor,))))
    raw_payload = tensor.array.tobytes() + bytes(payload_bytes - tensor.array.nbytes)  # same bytes on the wire
    config = BrokerConfig.parse(url, protocol=protocol)

    def echo(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        props = None
        if getattr(message.properties, "ResponseTopic", None):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = message.properties.CorrelationData
        x = np.frombuffer(message.payload, np.int8)[:tensor.array.size].reshape(SHAPE)
        client.publish("raw/res", session.run(x).tobytes(), qos=1, properties=props)

    raw_server, raw_device = config.client("raw-server"), config.client("raw-device")
    raw_server.on_message = echo
    answered = threading.Event()
    raw_device.on_message = lambda c, u, m: answered.set()
    for client, topic in ((raw_server, "raw/req"), (raw_device, "raw/res")):
        client.connect(config.host, config.port)
        client.subscribe(topic, qos=1)
        client.loop_start()
    time.sleep(0.3)

    def raw_round_trip(with_properties: bool) -> float:
        answered.clear()
        start = time.perf_counter()
        props = None
        if with_properties:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = "raw/res", os.urandom(16)
        raw_device.publish("raw/req", raw_payload, qos=1, properties=props)
        if not answered.wait(2):
            raise RuntimeError("raw round trip lost")
        return time.perf_counter() - start

    paths = {"edgekit": [], "raw": [], **({"raw v5 req/resp": []} if protocol == 5 else {})}
    with OffloadServer(bundle, config), OffloadClient(config, "tiny_tail", "bench-overhead") as client:
        for _ in range(rounds):
            for _ in range(per_round):
                reply = client.request(tensor, 2.0)
                assert reply.source == "remote", reply
                paths["edgekit"].append(reply.latency_s)
            paths["raw"] += [raw_round_trip(False) for _ in range(per_round)]
            if protocol == 5:
                paths["raw v5 req/resp"] += [raw_round_trip(True) for _ in range(per_round)]
    for client in (raw_server, raw_device):
        client.disconnect()
        client.loop_stop()
    return {"payload_bytes": payload_bytes, **{name: _percentiles(values) for name, values in paths.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 devices x 50 frames, 3 overhead rounds")
    args = parser.parse_args()
    from edgekit.offload.broker import Broker

    devices, frames, rounds = (2, 50, 3) if args.quick else (8, 500, 10)
    with tempfile.TemporaryDirectory() as tmp, Broker() as broker:
        bundle = tiny_tail_bundle(Path(tmp))
        print(f"(a) load: {devices} devices x {frames} frames, deadline 2 s, QoS 1, Mosquitto on loopback")
        print("workers  frames  lost  p50 ms  p99 ms  req/s   served per worker")
        for workers in (1, 2):
            r = load_test(bundle, broker.url, workers, devices, frames, 2.0)
            print(f"{r['workers']:<7}  {r['frames']:<6}  {r['lost']:<4}  {r['p50_ms']:<6.2f}  {r['p99_ms']:<6.2f}  "
                  f"{r['req_per_s']:<6.0f}  {r['served_per_worker']}")
        print(f"\n(b) overhead: {rounds} interleaved rounds x 50 round trips per path, one device, QoS 1")
        print("protocol  path              p50 ms  p99 ms  edgekit p50 / this p50")
        for protocol in (5, 4):
            r = overhead_test(bundle, broker.url, rounds, 50, protocol)
            edgekit = r["edgekit"][0]
            for name in ("edgekit", "raw", "raw v5 req/resp"):
                if name in r:
                    p50, p99 = r[name]
                    print(f"{'v5' if protocol == 5 else '3.1.1':<8}  {name:<16}  {p50:<6.3f}  {p99:<6.3f}  "
                          f"{edgekit / p50:.2f}x")
        print(f"(payload {r['payload_bytes']} bytes: the frame for edgekit, as many raw bytes for the others)")


if __name__ == "__main__":
    main()
