"""Offload over MQTT on real Mosquitto brokers: exact round trips, deadlines and fallback, broker and server
faults, duplicate suppression, hostile frames, shared-subscription workers and the `serve` command."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import SCALE, SHAPE, ZERO_POINT, activation, mutated, needs_mosquitto, tiny_tail_bundle, wait_for

from edgekit.errors import OffloadError, PayloadTooLargeError
from edgekit.formats.frame import Frame, Tensor, decode, encode
from edgekit.offload.auth import bundle_key
from edgekit.offload.broker import Broker
from edgekit.offload.client import OffloadClient
from edgekit.offload.connection import BrokerConfig
from edgekit.offload.handler import TailHandler
from edgekit.offload.link import LinkEstimate, LinkMeter
from edgekit.offload.protocol import Topics, publish_properties
from edgekit.offload.server import OffloadServer, serve
from edgekit.runtime import load
from edgekit.runtime.session import Session
from edgekit.runtime.transport import InProcessTransport

pytestmark = needs_mosquitto()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("offload"))


@pytest.fixture(scope="module")
def session(bundle: Path) -> Session:
    return load(bundle)


def local_tail(session: Session) -> Callable[[Tensor], np.ndarray]:
    return lambda tensor: session.run(tensor.array) * 0 - 1  # recognisable: all -1


def request_frame(tensor: Tensor, deadline_s: float = 5.0, model_id: str = "tiny_tail",
                  request_id: bytes = b"") -> bytes:
    return encode(Frame(request_id or os.urandom(16), int(time.time() * 1000 + deadline_s * 1000), model_id, "",
                        (tensor,)))


# protocol


def test_topics_follow_the_documented_layout() -> None:
    topics = Topics("fleet/a")
    assert topics.request("mbv2", "cam-7") == "fleet/a/req/mbv2/cam-7"
    assert topics.response("cam-7") == "fleet/a/res/cam-7"
    assert topics.shared_requests("mbv2", "tail") == "$share/tail/fleet/a/req/mbv2/+"
    assert topics.device_of("fleet/a/req/mbv2/cam-7") == "cam-7"
    for bad in ("fleet/a/res/cam-7", "fleet/a/req/cam-7", "other/req/m/d"):
        with pytest.raises(OffloadError, match="request topic must be fleet/a/req/MODEL/DEVICE"):
            topics.device_of(bad)
    for bad in ("a+b", "#", "", "x/y", "$SYS"):
        with pytest.raises(OffloadError, match="device id must be a non-empty topic level"):
            topics.response(bad)


def test_broker_urls() -> None:
    config = BrokerConfig.parse("mqtts://cam-7@edge.local", ca_certs="ca.crt", password="s3cret")
    assert (config.host, config.port, config.tls, config.username, config.ca_certs) == \
        ("edge.local", 8883, True, "cam-7", "ca.crt")
    assert config.url == "mqtts://cam-7@edge.local:8883" and "s3cret" not in repr(config)
    assert BrokerConfig.parse("mqtt://10.0.0.2").port == 1883
    for bad in ("http://x", "mqtt://u:p@x", "mqtt://x/path", "mqtt://x:99999"):
        with pytest.raises(OffloadError, match="broker URL"):
            BrokerConfig.parse(bad)


def test_v5_properties_are_what_paho_reads() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.unpack(publish_properties(bytes(range(16)), "edgekit/res/d", 3, "application/x-edgekit-frame; v=2"))
    assert (props.CorrelationData, props.ResponseTopic, props.MessageExpiryInterval, props.ContentType) == \
        (bytes(range(16)), "edgekit/res/d", 3, "application/x-edgekit-frame; v=2")


def test_link_meter_sees_rtt_and_bandwidth_even_behind_a_backlog() -> None:
    meter = LinkMeter(min_bytes=1000)
    meter.acked(100, 0.010, meter.delivered)  # a small frame: the base RTT
    meter.acked(10_000, 0.090, meter.delivered)  # 80,000 bits in 90 - 10 ms: 1 Mbit/s
    assert meter.estimate(True) == LinkEstimate(True, 0.010, 1e6, None, 2)
    first = second = meter.delivered  # two frames sent back to back: the second waits for the first
    meter.acked(10_000, 0.090, first)
    meter.acked(10_000, 0.170, second)  # 160,000 bits delivered in 160 ms: still 1 Mbit/s, not half
    assert meter.estimate(True).uplink_bps == pytest.approx(1e6)


# the handler, without a broker


def test_handler_gives_exactly_what_the_local_tail_gives(session: Session) -> None:
    handler = TailHandler(session)
    tensor = activation(3)
    expected = session.run(tensor.array)
    status, answer = handler.handle(request_frame(tensor))
    assert status == "ok" and decode(answer).kind == "response"
    assert np.array_equal(decode(answer).tensors[0].array, expected)  # int8 with the model's quantization: as is
    floats = (tensor.array.astype(np.float32) - ZERO_POINT) * SCALE
    assert np.array_equal(decode(handler(request_frame(Tensor("x", floats)))).tensors[0].array, expected)
    requantized = Tensor("x", (tensor.array // 2).astype(np.int8), SCALE * 2, ZERO_POINT // 2)  # dequantized first
    assert decode(handler(request_frame(requantized))).kind == "response"


def test_a_quantized_tail_output_travels_as_int8_and_arrives_exact(tmp_path: Path) -> None:
    session = load(tiny_tail_bundle(tmp_path, int8_output=True))
    handler = TailHandler(session)
    for seed in range(20):
        tensor = activation(seed)
        got = InProcessTransport(handler, "tiny_tail", "").request(tensor, 1.0)
        assert got.source == "remote" and np.array_equal(got.output, session.run(tensor.array))
    answer = decode(handler(request_frame(activation(0)))).tensors[0]
    assert answer.array.dtype == np.int8 and (answer.scale, answer.zero_point) == (pytest.approx(0.1), 2)


@pytest.mark.parametrize("frame, status, message", [
    (lambda: request_frame(activation(0), -1.0), "expired", "deadline passed"),
    (lambda: request_frame(activation(0), model_id="resnet"), "error", "runs model 'tiny_tail', the request is "
                                                                       "for 'resnet'"),
    (lambda: request_frame(Tensor("x", np.zeros((1, 3), np.float32))), "error", r"input 'x' takes int8 \(1, 8, 4, 4\)"),
    (lambda: request_frame(Tensor("x", np.zeros(SHAPE, np.int8))), "error", "int8 without a scale"),
    (lambda: b"EKF\x03\x00" + bytes(range(16)) + bytes(20), "error", "CRC mismatch"),
    (lambda: b"hello", "error", "shorter than"),
])
def test_handler_answers_bad_requests_with_the_reason(session: Session, frame: Callable[[], bytes], status: str,
                                                      message: str) -> None:
    got, answer = TailHandler(session).handle(frame())
    assert got == status
    assert decode(answer).kind == "error"
    assert re.search(message, decode(answer).error)
    if message == "CRC mismatch":  # addressed to the id where a frame keeps it, readable or not
        assert decode(answer).request_id == bytes(range(16))


def test_an_unreadable_frame_is_answered_to_its_correlation_data(session: Session) -> None:
    status, answer = TailHandler(session).handle(b"garbage", correlation=bytes(range(16)))
    assert status == "error" and decode(answer).request_id == bytes(range(16))


# through a broker


@pytest.mark.parametrize("protocol", [5, 4])
def test_round_trip_through_a_broker_is_bit_exact(broker: Broker, bundle: Path, session: Session,
                                                  protocol: int) -> None:
    config = broker.client_config(protocol=protocol)
    with OffloadServer(bundle, config), OffloadClient(config, "tiny_tail", "cam-1") as client:
        latencies = []
        for seed in range(20):
            tensor = activation(seed)
            reply = client.request(tensor, 10.0)
            assert reply.source == "remote", reply.detail
            assert reply.output.dtype == np.float32 and np.array_equal(reply.output, session.run(tensor.array))
            latencies.append(reply.latency_s)
        estimate = client.link_estimate()
        # a PUBACK comes back before the answer to the same publish: the base RTT is below every round trip
        assert estimate.connected and estimate.samples == 20 and 0 < estimate.rtt_s <= min(latencies)
        assert min(latencies) <= estimate.round_trip_s <= max(latencies)  # an average of the round trips
        assert client.counts["remote"] == 20 and client.counts["sent"] == 20


def test_no_server_means_fallback_by_the_deadline(broker: Broker, session: Session) -> None:
    # The client gives up on the tail `fallback_reserve_s` before the deadline and leaves that time to the
    # fallback: half of a 1 s deadline here, against the millisecond the tiny local tail takes.
    with OffloadClient(broker.url, "tiny_tail", "cam-1", fallback_reserve_s=0.5) as client:
        reply = client.request(activation(0), 1.0, local_tail(session))
        assert reply.source == "fallback" and (reply.output == -1).all()
        # it waited for the tail until deadline - reserve...
        assert reply.detail == "no answer within 500 ms (the 1000 ms deadline less 500 ms kept for the local fallback)"
        assert 0.49 < reply.latency_s <= 1.0  # ...and the fallback's answer still came by the deadline
        reply = client.request(activation(0), 0.5)  # no fallback: the tail gets the whole deadline
        assert (reply.source, reply.output, reply.detail) == ("timeout", None, "no answer within 500 ms (the deadline)")
        assert 0.49 < reply.latency_s < 1.5  # told at the deadline, not left waiting
        assert (client.counts["sent"], client.counts["fallback"], client.counts["timeout"]) == (2, 1, 1)


def test_a_deadline_within_the_fallback_reserve_runs_here_at_once(broker: Broker, session: Session) -> None:
    with OffloadClient(broker.url, "tiny_tail", "cam-1", fallback_reserve_s=0.02) as client:
        reply = client.request(activation(0), 0.001, local_tail(session))  # what `--deadline-ms 1` asks
        assert (reply.source, reply.detail) == ("local", "the 1 ms deadline is not longer than the 20 ms kept for "
                                                         "the local tail, so the server was not asked")
        assert (reply.output == -1).all()
        assert client.request(activation(0), 0.02, local_tail(session)).source == "local"
        assert (client.counts["sent"], client.counts["local"]) == (0, 2)  # nothing was published
        reply = client.request(activation(0), 0.025, local_tail(session))  # 5 ms left for the tail, which is absent
        assert reply.source == "fallback"
        assert reply.detail == "no answer within 5 ms (the 25 ms deadline less 20 ms kept for the local fallback)"
        reply = client.request(activation(0), 0.001)  # no fallback, no reserve: the tail gets the whole 1 ms
        assert (reply.source, reply.detail) == ("timeout", "no answer within 1 ms (the deadline)")


def test_broker_killed_then_restarted(broker: Broker, bundle: Path, session: Session) -> None:
    with OffloadServer(bundle, broker.url), \
            OffloadClient(broker.url, "tiny_tail", "cam-1", reconnect_s=(0.05, 0.2)) as client:
        assert client.request(activation(0), 10.0).source == "remote"
        broker.kill()
        wait_for(lambda: not client.connected, 30, "the client noticing the broker is gone")
        reply = client.request(activation(0), 10.0, local_tail(session))
        assert reply.source == "fallback" and "unreachable" in reply.detail  # known down: answered at once,
        assert reply.latency_s < 5.0  # not after waiting 10 s for the deadline
        broker.start()
        wait_for(lambda: client.request(activation(0), 0.5, local_tail(session)).source == "remote", 60,
                 "remote answers after the broker restarted")
        reply = client.request(activation(1), 10.0, local_tail(session))
        assert reply.source == "remote" and np.array_equal(reply.output, session.run(activation(1).array))
        assert client.counts["reconnects"] >= 1


def test_server_killed_mid_request_then_restarted(broker: Broker, bundle: Path, session: Session) -> None:
    def start_server() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--broker", broker.url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.strip() == "ready":
                return proc
        raise AssertionError(f"server did not start: {proc.wait()}")

    server = start_server()
    try:
        with OffloadClient(broker.url, "tiny_tail", "cam-1", fallback_reserve_s=0.5,
                           answer_key=bundle_key(bundle)) as client:
            assert client.request(activation(0), 10.0).source == "remote"
            for child in _children(server.pid):
                os.kill(child, signal.SIGSTOP)  # the worker holds the request and never answers...
            threading.Timer(0.1, lambda: [os.kill(c, signal.SIGKILL) for c in _children(server.pid)]).start()
            reply = client.request(activation(0), 1.0, local_tail(session))  # ...and is killed meanwhile
            assert reply.source == "fallback" and (reply.output == -1).all()
            assert "no answer within 500 ms" in reply.detail and reply.latency_s <= 1.0  # by the deadline
            server.kill()
            server.wait()
            server = start_server()
            reply = client.request(activation(2), 10.0, local_tail(session))
            assert reply.source == "remote" and np.array_equal(reply.output, session.run(activation(2).array))
    finally:
        server.terminate()  # a graceful stop: the workers go with it
        server.wait(30)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def test_duplicate_late_and_stray_answers_are_never_delivered(broker: Broker) -> None:
    """A rogue tail answers every request twice, a wrong output first for ids it saw before, plus noise."""
    config = broker.client_config()
    seen: list[bytes] = []
    rogue = config.client("rogue")

    def answer(client, userdata, message) -> None:
        request = decode(message.payload)
        value = float(len(seen))
        seen.append(request.request_id)
        reply = Frame(request.request_id, 0, "tiny_tail", "", (Tensor("y", np.full((1, 10), value, np.float32)),),
                      kind="response")
        if value == 0:  # the first request gets no answer in time: its answer comes late, with the second's
            return
        stale = Frame(seen[0], 0, "tiny_tail", "", (Tensor("y", np.full((1, 10), -5, np.float32)),), kind="response")
        stray = Frame(os.urandom(16), 0, "tiny_tail", "", (Tensor("y", np.full((1, 10), -7, np.float32)),),
                      kind="response")
        for frame in (stale, reply, reply, stray):
            client.publish("edgekit/res/cam-1", encode(frame), qos=1)
        client.publish("edgekit/res/cam-1", b"not a frame", qos=1)

    subscribed = threading.Event()
    rogue.on_message = answer
    rogue.on_subscribe = lambda client, userdata, mid, reasons, properties: subscribed.set()
    rogue.connect(config.host, config.port)
    rogue.subscribe("edgekit/req/tiny_tail/+", qos=1)
    rogue.loop_start()
    try:
        assert subscribed.wait(30)
        with OffloadClient(config, "tiny_tail", "cam-1") as client:
            assert client.request(activation(0), 0.2).source == "timeout"
            outputs = [client.request(activation(0), 10.0) for _ in range(3)]
            assert [r.source for r in outputs] == ["remote"] * 3
            assert [float(r.output[0, 0]) for r in outputs] == [1.0, 2.0, 3.0]  # each its own answer, once
            # the rogue sends the unreadable frame last, in order on one connection: once the third is counted,
            # every answer it sent has been
            wait_for(lambda: client.counts["bad_answer"] == 3, 30, "the rogue's last answers")
            assert (client.counts["late"], client.counts["duplicate"], client.counts["unknown"],
                    client.counts["bad_answer"]) == (3, 3, 3, 3)
    finally:
        rogue.disconnect()
        rogue.loop_stop()


def test_frames_that_not_even_chunks_fit_are_refused_before_the_broker_drops_us(bundle: Path) -> None:
    # 400 bytes leave a small frame room to go whole, but a chunk's piece under 256 bytes (chunk.MIN_PIECE_BYTES);
    # frames between that and the overall bound go in chunks (tests/test_chunking.py)
    with Broker(max_packet_size=400) as broker, OffloadServer(bundle, broker.url), \
            OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
        assert client.max_packet_bytes == 400
        with pytest.raises(PayloadTooLargeError, match=r"a frame of 4,1\d\d bytes does not fit the broker's Maximum "
                                                       r"Packet Size of 400 even in chunks"):
            client.request(activation(0, (1, 4096)), 1.0)
        assert client.connected and client.request(activation(0), 10.0).source == "remote"


def test_the_in_flight_window_is_bounded(broker: Broker, session: Session) -> None:
    with OffloadClient(broker.url, "tiny_tail", "cam-1", max_in_flight=1, fallback_reserve_s=0.0) as client:
        first = threading.Thread(target=client.request, args=(activation(0), 60.0))  # no server: it waits
        first.start()
        wait_for(lambda: client.counts["sent"] == 1, 30, "the first request in flight")
        reply = client.request(activation(1), 0.2, local_tail(session))
        client.close()  # the waiting request falls back now
        first.join(30)
        assert not first.is_alive()
        assert reply.source == "fallback" and "in-flight window full" in reply.detail
        assert client.counts["sent"] == 1  # the second never went out


def test_hostile_frames_get_one_answer_each_and_the_server_keeps_serving(broker: Broker, bundle: Path,
                                                                         session: Session) -> None:
    """2,000 mutated and random frames: each answered once (error, or a result for the few that stay valid)
    or dropped as expired, nothing crashes, and a valid request afterwards gets the right answer."""
    rng = random.Random(0)
    frames = [mutated(request_frame(activation(i % 7), 30.0, request_id=i.to_bytes(16, "big")), rng)
              for i in range(2000)]
    last = b"last request ok!"  # 16 bytes: its answer comes after every other answer (one worker, in order)
    frames.append(request_frame(activation(0), 30.0, request_id=last))
    config = broker.client_config(protocol=4)  # no correlation data: only what the frames say
    answers: list[bytes] = []
    subscribed = threading.Event()
    attacker = config.client("attacker")
    attacker.on_message = lambda client, userdata, message: answers.append(message.payload)
    attacker.on_subscribe = lambda client, userdata, mid, reasons, properties: subscribed.set()
    attacker.connect(config.host, config.port)
    attacker.subscribe("edgekit/res/attacker", qos=1)
    attacker.loop_start()
    with OffloadServer(bundle, config) as server:
        assert subscribed.wait(30)
        for i, data in enumerate(frames):
            attacker.publish("edgekit/req/tiny_tail/attacker", data, qos=1)
            while i - server.metrics.snapshot()["requests"] > 500:  # stay under Mosquitto's queue of 1,000
                time.sleep(0.01)
        wait_for(lambda: answers and decode(answers[-1]).request_id == last, 300, "the answer to the last request")
        metrics = wait_for(lambda: (m := server.metrics.snapshot())["requests"] == len(frames) and m, 30,
                           "the server counting the last request")
        assert metrics["dropped"] == 0, metrics
        assert len(answers) == metrics["ok"] + metrics["error"]  # every frame not expired got exactly one answer
        kinds = [decode(a).kind for a in answers]
        assert kinds.count("response") == metrics["ok"] and kinds.count("error") == metrics["error"] > 1500
        with OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
            reply = client.request(activation(5), 2.0)
            assert reply.source == "remote" and np.array_equal(reply.output, session.run(activation(5).array))
    attacker.disconnect()
    attacker.loop_stop()


def test_two_workers_share_one_subscription(broker: Broker, bundle: Path) -> None:
    stop, lines = threading.Event(), []
    runner = threading.Thread(target=lambda: lines.append(serve(bundle, broker.url, workers=2, stop=stop,
                                                                announce=lines.append)))
    runner.start()
    try:
        wait_for(lambda: "ready" in lines or not runner.is_alive(), 180, "two workers starting")
        assert "ready" in lines, lines
        clients = [OffloadClient(broker.url, "tiny_tail", f"cam-{i}", answer_key=bundle_key(bundle)) for i in range(4)]
        replies = [c.request(activation(i), 10.0) for i in range(50) for c in clients]
        assert all(r.source == "remote" for r in replies)
        for c in clients:
            c.close()
    finally:
        stop.set()
        runner.join(30)
    metrics = lines[-1]
    assert metrics["workers"] == 2 and metrics["requests"] == metrics["ok"] == 200
    assert min(metrics["per_worker_requests"]) > 20  # the broker spread the work


def test_serve_without_a_broker_starts_one_and_shuts_down_cleanly(bundle: Path, session: Session) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--listen", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        url = lines[1].split()[2]
        assert lines[0].startswith(f"fleet key: {bundle.parent / 'tail.secrets' / 'fleet.key'}"), lines
        assert lines[1].startswith("embedded broker: mqtt://127.0.0.1:"), lines
        assert "devices publish to edgekit/req/tiny_tail/DEVICE_ID, answers on edgekit/res/DEVICE_ID" in lines[2]
        with OffloadClient(url, "tiny_tail", "cam-1", answer_key=bundle_key(bundle)) as client:
            reply = client.request(activation(4), 10.0)
            assert reply.source == "remote" and np.array_equal(reply.output, session.run(activation(4).array))
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, out
        assert "served 1 requests with 1 worker(s) (per worker [1]): 1 answered" in out
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):  # the embedded broker went with it
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        proc.kill()
        proc.wait()
