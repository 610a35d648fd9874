"""Decompression bombs: a request is refused on its header before anything inflates, inflation never passes the
bytes the tail input needs, and one bomb a second beside an honest device leaves the server answering it with
flat memory. The device drops an answer it is not waiting for on its request id, without decoding it."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import SCALE, SHAPE, ZERO_POINT, activation, needs_mosquitto, tiny_tail_bundle, wait_for

from edgekit.errors import FrameError
from edgekit.formats import frame as wire
from edgekit.formats.frame import MAX_TENSOR_BYTES, MAX_TENSORS, decode, read_header
from edgekit.offload.broker import Broker
from edgekit.offload.client import OffloadClient
from edgekit.offload.handler import TailHandler
from edgekit.runtime import load
from edgekit.runtime.session import Session

pytestmark = needs_mosquitto()

ZEROS_64M = zlib.compress(bytes(MAX_TENSOR_BYTES), 9)  # ~65 KB that inflate to 64 MiB


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def session(bundle: Path) -> Session:
    return load(bundle)


def bomb(shape: tuple[int, ...], payload: bytes, count: int = 1, model_id: str = "tiny_tail") -> bytes:
    """A well-sealed v3 request whose `count` int8 tensors declare `shape` and carry `payload` as zlib."""
    deadline_ms = int(time.time() * 1000) + 60_000
    body = bytearray(b"EKF\x03\x00" + os.urandom(16) + struct.pack("<QB", deadline_ms, 0))
    body += bytes([len(model_id)]) + model_id.encode() + b"\x00" + bytes([count])
    for _ in range(count):
        body += b"\x01x" + bytes([1, 1, len(shape)]) + struct.pack(f"<{len(shape)}I", *shape)
        body += struct.pack("<fiI", SCALE, ZERO_POINT, len(payload)) + payload
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def test_the_header_phase_inflates_nothing_and_inflation_stops_at_the_declared_size() -> None:
    header = read_header(bomb((MAX_TENSOR_BYTES,), ZEROS_64M, count=MAX_TENSORS))  # 1 GiB declared in all
    assert [t.nbytes for t in header.tensors] == [MAX_TENSOR_BYTES] * MAX_TENSORS
    assert all(t.payload == ZEROS_64M for t in header.tensors)  # still compressed
    with pytest.raises(FrameError, match="compressed payload does not inflate to 128 bytes"):
        read_header(bomb(SHAPE, ZEROS_64M)).frame()  # the tail's shape: the bomb stops after 129 bytes


@pytest.mark.parametrize("data, message", [
    (lambda: bomb((MAX_TENSOR_BYTES,), ZEROS_64M, count=MAX_TENSORS), "the tail takes 1 tensor, the request has 16"),
    (lambda: bomb((1, 8, 4096, 2048), ZEROS_64M), r"input 'x' takes int8 \(1, 8, 4, 4\); the request's tensor 'x' "
                                                  r"is int8 \(1, 8, 4096, 2048\)"),
    (lambda: bomb(SHAPE, ZEROS_64M, model_id="resnet"), "runs model 'tiny_tail', the request is for 'resnet'"),
    (lambda: bomb(SHAPE, ZEROS_64M), "does not inflate to 128 bytes"),
])
def test_bombs_are_refused_in_milliseconds(session: Session, data, message: str) -> None:  # type: ignore[no-untyped-def]
    payload = data()
    handler = TailHandler(session)
    start = time.perf_counter()
    status, answer = handler.handle(payload)
    took = time.perf_counter() - start
    assert status == "error" and decode(answer).kind == "error"
    assert re.search(message, decode(answer).error)
    assert took < 0.05, f"{took * 1000:.0f} ms to refuse a bomb"  # inflating 1 GiB takes seconds


def test_an_answer_nobody_waits_for_is_dropped_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    real = wire.decode
    monkeypatch.setattr("edgekit.offload.client.decode", lambda data, **kw: decoded.append(data) or real(data, **kw))
    with Broker() as broker, OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
        sender = broker.client_config().client("stray-sender")
        sender.connect(broker.client_config().host, broker.port)
        sender.loop_start()
        stray = bomb(SHAPE, ZEROS_64M)
        for _ in range(20):
            sender.publish("edgekit/res/cam-1", stray, qos=1).wait_for_publish(10)
        wait_for(lambda: client.counts["unknown"] == 20, 30, "the client counting 20 stray answers")
        sender.disconnect()
        sender.loop_stop()
    assert decoded == []  # told apart by the request id alone


SERVER = """
import sys, time
from edgekit.offload.server import OffloadServer
OffloadServer(sys.argv[1], sys.argv[2]).start()
print("ready", flush=True)
time.sleep(3600)
"""


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture
def server(bundle: Path) -> Iterator[tuple[Broker, subprocess.Popen]]:
    with Broker() as broker:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(bundle), broker.url], stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield broker, proc
        finally:
            proc.kill()
            proc.wait()


def test_a_bomb_a_second_neither_stops_service_nor_grows_memory(server: tuple[Broker, subprocess.Popen],
                                                                  session: Session) -> None:
    broker, proc = server
    payload = bomb((MAX_TENSOR_BYTES,), ZEROS_64M, count=MAX_TENSORS)  # 1 MB that inflated to 1 GiB before
    assert len(payload) > 1_000_000
    with OffloadClient(broker.url, "tiny_tail", "cam-1") as device:
        assert device.request(activation(0), 10.0).source == "remote"  # warm: the baseline includes the session
        baseline = _peak_rss_bytes(proc.pid)
        attacker = broker.client_config().client("attacker")
        attacker.connect(broker.client_config().host, broker.port)
        attacker.loop_start()
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                attacker.publish("edgekit/req/tiny_tail/attacker", payload, qos=1)
                stop.wait(1.0)

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            replies = []
            for i in range(120):  # ~8 s: eight bombs
                tensor = activation(i)
                replies.append((device.request(tensor, 1.0), tensor))
                time.sleep(0.05)
        finally:
            stop.set()
            flooder.join()
            attacker.disconnect()
            attacker.loop_stop()
        remote = [r for r, t in replies if r.source == "remote" and np.array_equal(r.output, session.run(t.array))]
        assert len(remote) >= 0.99 * len(replies), [r.detail for r, _ in replies if r.source != "remote"][:5]
        growth = _peak_rss_bytes(proc.pid) - baseline
        assert growth < 300 * 2**20, f"server peak RSS grew {growth / 2**20:.0f} MiB"
