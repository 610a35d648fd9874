"""Big frames in chunks: a request and an answer several times the broker's Maximum Packet Size arrive exactly,
every bound is refused with its reason before anything is buffered, a flood of chunks that never complete stays
under the memory caps while valid requests are answered, partial frames time out, and the keep-alive follows
the slowest frame (over a token-bucket link when a network lab can be built)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import (
    NetLab,
    activation,
    needs_mosquitto,
    netlab_unavailable,
    tiny_tail_bundle,
    wait_for,
)

from edgekit.errors import ChunkError, SignatureError
from edgekit.formats import chunk
from edgekit.formats.bundle import TensorInfo
from edgekit.formats.frame import Frame, Tensor, encode
from edgekit.formats.plans import SplitSchedule
from edgekit.offload.broker import Broker
from edgekit.offload.client import OffloadClient
from edgekit.offload.connection import keepalive_for
from edgekit.offload.protocol import Topics
from edgekit.offload.security import write_acl, write_password_file
from edgekit.offload.server import OffloadServer
from edgekit.runtime import load

pytestmark = needs_mosquitto()
ROOT = Path(__file__).resolve().parents[1]
LIMIT = 2000  # the broker's Maximum Packet Size in these tests
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tail whose int8 input is 16 KiB: a request frame is 8x LIMIT."""
    return tiny_tail_bundle(tmp_path_factory.mktemp("wide"), channels=1024)


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tail with a small input and a 4096-float output: its answer frame is 8x LIMIT."""
    return tiny_tail_bundle(tmp_path_factory.mktemp("detector"), out_features=4096)


def chunks_of(total: int, request_id: bytes = b"r" * 16, deadline_ms: int = 0, piece: int = 1000,
              key: bytes | None = None) -> list[chunk.Chunk]:
    frame = np.random.default_rng(total).bytes(total)
    return [chunk.read_chunk(c, key) for c in chunk.split(frame, request_id, deadline_ms, piece, key)]


# the envelope and the reassembler, without a broker


def test_chunks_put_back_together_are_the_frame_and_forged_ones_are_refused() -> None:
    frame = os.urandom(5500)
    pieces = chunk.split(frame, b"i" * 16, 0, 1000, KEY)
    assert len(pieces) == 6 and all(len(p) <= 1000 + chunk.overhead(True) for p in pieces)
    assert chunk.peek(pieces[3]) == (b"i" * 16, 3)
    reassembler = chunk.Reassembler(100_000, 100_000)
    got = [reassembler.add("d", chunk.read_chunk(p, KEY), 10_000) for p in reversed(pieces[1:] + pieces[:1])]
    assert got == [None] * 5 + [frame]  # chunk 0 first, then in any order
    assert reassembler.stats() == {**reassembler.counts, "open": 0, "held_bytes": 0}
    altered = bytearray(pieces[2])
    altered[60] ^= 1
    with pytest.raises(SignatureError, match="does not match the fleet key"):
        chunk.read_chunk(bytes(altered), KEY)
    with pytest.raises(SignatureError, match="not signed"):
        chunk.read_chunk(chunk.split(frame, b"i" * 16, 0, 1000)[0], KEY)
    with pytest.raises(ChunkError, match="carries 999 bytes; it must carry 1,000") as caught:
        chunk.read_chunk(chunk.split(frame, b"i" * 16, 0, 1000)[0][:-1])
    assert caught.value.reason == "malformed"


def test_each_bound_is_refused_with_its_reason_before_buffering() -> None:
    clock = SimpleNamespace(now=1000.0)
    reassembler = chunk.Reassembler(max_bytes=30_000, max_source_bytes=20_000, max_age_s=5.0,
                                    clock=lambda: clock.now)

    def refused(reason: str, source: str, piece: chunk.Chunk, limit: int = 15_000) -> str:
        with pytest.raises(ChunkError) as caught:
            reassembler.add(source, piece, limit)
        assert caught.value.reason == reason and reassembler.counts[reason] >= 1
        return str(caught.value)

    assert "a chunked frame of 16,000 bytes is more than the 15,000 this receiver expects" in \
        refused("too_large", "a", chunks_of(16_000, b"a" * 16)[0])
    assert "belongs to a frame already handled or refused" in refused("after_refusal", "a",
                                                                      chunks_of(16_000, b"a" * 16)[1])
    assert "deadline has passed" in refused("expired", "a", chunks_of(5000, b"e" * 16, deadline_ms=999_000)[0])
    assert "without its frame's first chunk" in refused("no_first_chunk", "a", chunks_of(5000, b"n" * 16)[2])
    first = chunks_of(5000, b"x" * 16)
    assert reassembler.add("a", first[0], 15_000) is None
    assert "arrived twice" in refused("duplicate", "a", first[0])
    assert "the first said 5 of 5,000" in refused("inconsistent", "a", chunks_of(6000, b"x" * 16)[1])
    assert reassembler.held_bytes == 0  # the inconsistent frame was dropped whole
    for name in (b"1", b"2", b"3"):  # a source's oldest partial makes room for its newest
        assert reassembler.add("a", chunks_of(12_000, name * 16)[0], 15_000) is None
    assert reassembler.counts["evicted"] == 2 and reassembler.held_bytes == 12_000 + chunk.ENTRY_BYTES
    assert reassembler.add("b", chunks_of(12_000, b"4" * 16)[0], 15_000) is None
    assert "no room for a 12,000-byte frame now" in refused("memory_cap", "c", chunks_of(12_000, b"5" * 16)[0])
    assert reassembler.held_bytes == 2 * (12_000 + chunk.ENTRY_BYTES) <= 30_000


def test_partial_frames_time_out_at_their_deadline_or_max_age() -> None:
    clock = SimpleNamespace(now=1000.0)
    reassembler = chunk.Reassembler(100_000, 100_000, max_age_s=5.0, clock=lambda: clock.now)
    reassembler.add("d", chunks_of(5000, b"a" * 16)[0], 10_000)  # no deadline: max_age_s
    reassembler.add("d", chunks_of(5000, b"b" * 16, deadline_ms=1_002_000)[0], 10_000)  # its deadline: 2 s
    clock.now = 1002.5
    assert reassembler.stats()["timed_out"] == 1 and reassembler.stats()["open"] == 1
    clock.now = 1005.0
    assert reassembler.sweep() == 1 and reassembler.held_bytes == 0 and reassembler.counts["timed_out"] == 2
    with pytest.raises(ChunkError, match="already handled or refused"):  # a late chunk of a dropped frame
        reassembler.add("d", chunks_of(5000, b"a" * 16)[1], 10_000)


# through a broker that takes packets of at most LIMIT bytes


def test_a_request_8x_the_packet_limit_is_answered_exactly(wide_bundle: Path) -> None:
    session = load(wide_bundle)
    with Broker(max_packet_size=LIMIT) as broker, \
            OffloadServer(wide_bundle, broker.url, answer_key=KEY) as server, \
            OffloadClient(broker.url, "tiny_tail", "cam-1", answer_key=KEY) as client:
        assert client.max_packet_bytes == LIMIT
        for seed in range(3):
            tensor = activation(seed, (1, 1024, 4, 4))
            reply = client.request(tensor, 10.0)
            assert reply.source == "remote", reply.detail
            assert np.array_equal(reply.output, session.run(tensor.array))
        assert client.counts["chunked"] == 3
        stats = server.chunk_stats()
        assert stats["completed"] == 3 and stats["held_bytes"] == 0
        assert server.metrics.snapshot()["ok"] == 3


def test_two_workers_of_one_group_behind_the_per_device_acl_each_take_whole_chunked_requests(
        wide_bundle: Path, tmp_path: Path) -> None:
    """The broker hands a shared subscription's messages round-robin: chunk 0 picks the worker, the rest reach
    every worker on the chunk topic and only the one holding chunk 0 keeps them."""
    session = load(wide_bundle)
    passwords = {"tail": "tail-secret", "cam-1": "one-secret"}
    with Broker(max_packet_size=LIMIT, password_file=write_password_file(tmp_path / "passwd", passwords),
                acl_file=write_acl(tmp_path / "acl", Topics())) as broker:
        config = broker.client_config(username="tail", password=passwords["tail"])
        with OffloadServer(wide_bundle, config) as one, OffloadServer(wide_bundle, config) as two, \
                OffloadClient(broker.client_config(username="cam-1", password=passwords["cam-1"]),
                              "tiny_tail") as client:
            for seed in range(8):
                tensor = activation(seed, (1, 1024, 4, 4))
                reply = client.request(tensor, 10.0)
                assert reply.source == "remote", reply.detail
                assert np.array_equal(reply.output, session.run(tensor.array))
            completed = [one.chunk_stats()["completed"], two.chunk_stats()["completed"]]
            assert sum(completed) == 8 and min(completed) >= 1, completed
            wait_for(lambda: one.chunk_stats()["no_first_chunk"] + two.chunk_stats()["no_first_chunk"] == 8 * 9,
                     10, "the other worker dropping the later chunks it has no first chunk for")  # it may lag behind


def test_a_big_answer_comes_back_in_chunks(detector_bundle: Path) -> None:
    session = load(detector_bundle)
    with Broker(max_packet_size=LIMIT) as broker, OffloadServer(detector_bundle, broker.url, answer_key=KEY), \
            OffloadClient(broker.url, "tiny_tail", "cam-1", answer_key=KEY) as client:
        tensor = activation(1)
        reply = client.request(tensor, 10.0)
        assert reply.source == "remote", reply.detail
        assert reply.output.shape == (1, 4096) and np.array_equal(reply.output, session.run(tensor.array))
        assert client.counts["chunked"] == 0 and client.stats()["chunks"]["completed"] == 1
        small = OffloadClient(broker.url, "tiny_tail", "cam-2", answer_key=KEY, max_answer_bytes=4096)
        with small:  # a device that expects less refuses the answer before buffering it, and falls back
            reply = small.request(tensor, 1.0)
            assert reply.source == "timeout" and small.stats()["chunks"]["too_large"] == 1


def test_a_chunked_request_over_the_servers_bound_is_refused_with_the_reason(bundle_small: Path) -> None:
    with Broker(max_packet_size=LIMIT) as broker, OffloadServer(bundle_small, broker.url) as server, \
            OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
        big = Tensor("x", np.zeros((1, 4096), np.float32))  # 16 KiB: far past the 128 int8 the tail takes
        reply = client.request(big, 5.0)
        assert reply.source == "error" and reply.detail.startswith("server: chunked request refused (too_large)")
        assert f"more than the {server.handler.max_request_bytes:,} this receiver expects" in reply.detail
        assert server.chunk_stats()["too_large"] == 1
        assert client.request(activation(0), 5.0).source == "remote"


@pytest.fixture(scope="module")
def bundle_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("small"))


def test_a_flood_of_first_chunks_stays_under_the_caps_and_valid_requests_are_answered(wide_bundle: Path) -> None:
    session = load(wide_bundle)
    per_device, total = 40_000, 120_000
    with Broker(max_packet_size=LIMIT) as broker, \
            OffloadServer(wide_bundle, broker.url, max_partial_bytes=total, max_device_partial_bytes=per_device,
                          chunk_timeout_s=1.0) as server, \
            OffloadClient(broker.url, "tiny_tail", "cam-1", breaker_after=10_000) as client:  # refusals: no breaker
        config = broker.client_config()
        attacker = config.client("attacker")
        attacker.connect(config.host, config.port)
        attacker.loop_start()
        held: list[int] = []
        stop = threading.Event()

        def flood(devices: list[str], count: int) -> None:
            deadline_ms = int(time.time() * 1000) + 60_000
            for i in range(count):
                first = chunk.split(os.urandom(30_000), i.to_bytes(16, "big"), deadline_ms, 1500)[0]
                attacker.publish(f"edgekit/req/tiny_tail/{devices[i % len(devices)]}", first, qos=1)
                if i % 50 == 0:
                    held.append(server.chunk_stats()["held_bytes"])

        def valid() -> None:
            while not stop.is_set():
                tensor = activation(len(replies), (1, 1024, 4, 4))
                replies.append((client.request(tensor, 10.0), session.run(tensor.array)))
                time.sleep(0.01)

        replies: list = []
        runner = threading.Thread(target=valid)
        runner.start()
        try:
            flood(["mallory"], 600)  # one device: its own oldest partial frames make room for its newest
            wait_for(lambda: server.chunk_stats()["evicted"] >= 500, 30, "the flood reaching the server")
            assert max(held) <= per_device + 20_000  # the flooder's share, plus cam-1's frame in flight
            flood([f"sybil-{i}" for i in range(8)], 400)  # many names: the overall cap holds
            wait_for(lambda: server.chunk_stats()["memory_cap"] >= 100, 30, "the overall cap refusing")
            assert max(held) <= total
        finally:
            stop.set()
            runner.join(30)
            attacker.disconnect()
            attacker.loop_stop()
        remote = [(r, want) for r, want in replies if r.source == "remote"]
        assert len(remote) >= 5 and all(np.array_equal(r.output, want) for r, want in remote)
        assert server.chunk_stats()["held_bytes"] <= total
        wait_for(lambda: server.chunk_stats()["open"] == 0, 10, "the flood's partial frames timing out")
        assert server.chunk_stats()["timed_out"] >= 1
        tensor = activation(99, (1, 1024, 4, 4))
        reply = client.request(tensor, 10.0)  # once they are gone the cap has room again
        assert reply.source == "remote" and np.array_equal(reply.output, session.run(tensor.array))


def test_unsigned_chunks_and_frames_on_the_chunk_topic_are_refused_unbuffered(wide_bundle: Path) -> None:
    with Broker(max_packet_size=LIMIT) as broker, OffloadServer(wide_bundle, broker.url, answer_key=KEY) as server:
        config = broker.client_config()
        attacker = config.client("attacker")
        attacker.connect(config.host, config.port)
        attacker.loop_start()
        for i in range(100):
            first = chunk.split(os.urandom(16_000), i.to_bytes(16, "big"), 0, 1500)[0]
            attacker.publish("edgekit/req/tiny_tail/mallory", first, qos=1)
        stats = wait_for(lambda: (s := server.chunk_stats())["forged"] == 100 and s, 30, "the forged chunks")
        assert stats["held_bytes"] == 0 and stats["open"] == 0
        whole = encode(Frame(b"w" * 16, int(time.time() * 1000) + 60_000, "tiny_tail", "", (activation(0),)), key=KEY)
        attacker.publish("edgekit/chunk/tiny_tail/mallory", whole, qos=1)  # every worker reads this topic
        wait_for(lambda: server.chunk_stats()["wrong_topic"] == 1, 30, "the whole frame on the chunk topic")
        assert server.metrics.snapshot()["requests"] == 100  # the forged chunks 0 were answered; this was not
        attacker.disconnect()
        attacker.loop_stop()


def test_a_partial_request_times_out_on_the_server(wide_bundle: Path) -> None:
    with Broker(max_packet_size=LIMIT) as broker, \
            OffloadServer(wide_bundle, broker.url, chunk_timeout_s=0.3) as server:
        config = broker.client_config()
        device = config.client("half")
        device.connect(config.host, config.port)
        device.loop_start()
        first = chunk.split(os.urandom(16_000), b"h" * 16, int(time.time() * 1000) + 60_000, 1500)[0]
        device.publish("edgekit/req/tiny_tail/half", first, qos=1).wait_for_publish(10)
        wait_for(lambda: server.chunk_stats()["open"] == 1, 10, "the first chunk buffered")
        stats = wait_for(lambda: (s := server.chunk_stats())["timed_out"] == 1 and s, 10, "the timeout")
        assert stats["open"] == 0 and stats["held_bytes"] == 0
        device.disconnect()
        device.loop_stop()


# keep-alive


def test_keepalive_follows_the_slowest_frame(broker: Broker, tmp_path: Path) -> None:
    assert keepalive_for(1_600_000, 1e6) == (39, "39 s: the largest packet, 1,600,000 bytes, takes 12.80 s at "
                                                 "1 Mbit/s; keep-alive is 3 x that")
    assert keepalive_for(16_000, 1e6)[0] == 10 and keepalive_for(None, None) == (10, "10 s floor (no frame size "
                                                                                     "or uplink expected)")
    plan = replace(SplitSchedule(("head",), ("tail",), "toy", "1"),  # only the two figures the keep-alive reads
                   boundary=SimpleNamespace(payload_bytes=1_599_840), figures=SimpleNamespace(uplink_bps=2e6))
    bundle = SimpleNamespace(path=tmp_path / "toy", manifest=SimpleNamespace(
        plan=plan, stages=[SimpleNamespace(outputs=(TensorInfo("y", (1, 1000), "float32"),))]))
    with OffloadClient.for_bundle(bundle, broker.url, device_id="cam-ka", slowest_uplink_bps=1e6) as client:
        assert client.stats()["keepalive_s"] == client.config.keepalive_s == 39  # the measured 1 Mbit/s is slower
        assert "1,600,000 bytes, takes 12.80 s at 1 Mbit/s" in client.stats()["keepalive_why"]
        assert client.max_answer_bytes == chunk.frame_bound([1000])
    connected = [line for line in broker.log.read_text().splitlines() if " as cam-ka-" in line]
    assert len(connected) == 1 and "k39)" in connected[0]  # what the broker was told


DEVICE = """
import json, sys
import numpy as np
from edgekit.formats.frame import Frame, Tensor, encode
from edgekit.offload.client import OffloadClient
from edgekit.offload.connection import BrokerConfig
size = 600_000
derive = dict(largest_frame_bytes=size + 200, slowest_uplink_bps=1e6) if sys.argv[2] == "1" else {}
client = OffloadClient(BrokerConfig.parse(sys.argv[1], keepalive_s=2), "big", "lab-dev", reconnect_s=(5, 10),
                       connect_timeout_s=10, **derive)
reply = client.request(Tensor("x", np.zeros(size, np.int8), 0.1, 0), 6.0)
print(json.dumps({"keepalive_s": client.config.keepalive_s, "acked": client.link_estimate().samples,
                  "detail": reply.detail}))
client.close()
"""


@pytest.mark.skipif(netlab_unavailable() is not None, reason=netlab_unavailable() or "")
def test_a_big_frame_over_a_slow_link_keeps_its_connection_with_the_derived_keepalive() -> None:
    """600 kB at 1 Mbit/s takes 4.8 s: a 2 s keep-alive (the broker waits 3 s) drops the device mid-publish,
    the derived one (15 s) lets the broker acknowledge it."""
    with NetLab("ekchunk") as lab:
        broker = Broker(host=lab.server_ip, launcher=lambda argv: lab.popen("srv", argv))
        with broker:
            lab.shape(1.0)
            results = {}
            for derive in ("0", "1"):
                done = lab.popen("dev", [sys.executable, "-c", DEVICE, broker.url, derive], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                out, err = done.communicate(timeout=60)
                results[derive] = json.loads(out.strip().splitlines()[-1]) if out.strip() else err
    assert results["0"]["keepalive_s"] == 2 and results["0"]["acked"] == 0, results
    assert results["0"]["detail"] == "link to the broker went down"
    assert results["1"]["keepalive_s"] == 15 and results["1"]["acked"] == 1, results
    assert results["1"]["detail"].startswith("no answer within")  # no server here: delivered, then unanswered


def test_serve_s_summary_adds_the_workers_chunk_counts_and_names_refusals() -> None:
    from edgekit.offload.server import merge_metrics
    from edgekit.report.runtime import render_metrics

    def worker(requests: int, completed: int, too_large: int) -> dict:
        counts = {"requests": requests, "dropped": 0, "ok": requests - 1, "error": 1, "expired": 0, "forged": 0,
                  "p50_ms": 1.0, "p99_ms": 2.0}
        chunks = dict.fromkeys(chunk.REASONS, 0) | {"completed": completed, "timed_out": 0, "evicted": 0,
                                                    "open": 0, "held_bytes": 0}
        return counts | {"chunks": chunks | {"too_large": too_large, "no_first_chunk": 40}}

    merged = merge_metrics([worker(10, 3, 1), worker(6, 2, 0)])
    assert merged["chunks"]["completed"] == 5 and merged["chunks"]["too_large"] == 1
    text = render_metrics(merged)
    assert "0 forged (unsigned or wrong key)" in text
    assert text.endswith("chunked requests: 5 put together, 0 timed out; chunks refused: too large 1")
    assert "chunked" not in render_metrics(merge_metrics([worker(4, 0, 0)]))  # nothing chunked, nothing said
