"""Offload across a real link between two network namespaces (helpers.NetLab): the cable pulled mid-stream,
and the bandwidth collapsing under a token bucket. Every frame is answered by its deadline, remote or by
the local fallback, and remote answers resume when the link does. Needs root and iproute2.

The device gives up on the tail half-way to each deadline, so the fallback has the other half for its
millisecond of work: a frame answered late is a broken deadline, not a busy machine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import NetLab, netlab_unavailable, tiny_tail_bundle

from edgekit.errors import BrokerError
from edgekit.offload.broker import Broker, find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers.py"

pytestmark = pytest.mark.slow
if netlab_unavailable():
    pytestmark = [pytestmark, pytest.mark.skip(reason=netlab_unavailable())]
else:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytestmark = [pytest.mark.slow, pytest.mark.skip(reason=str(exc))]


class Lab:
    """A broker and a tail server in the server namespace; devices started in the device namespace."""

    def __init__(self, lab: NetLab, bundle: Path) -> None:
        self.lab, self.bundle, self.procs = lab, bundle, []
        self.broker = Broker(host=lab.server_ip, launcher=lambda argv: self._start("srv", argv))
        self.broker.start()
        self.url = self.broker.url
        server = self._start("srv", [sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--broker", self.url],
                             stdout=subprocess.PIPE, text=True)
        for line in server.stdout:
            if line.strip() == "ready":
                break

    def _start(self, side: str, argv: list[str], **kwargs: object) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        proc = self.lab.popen(side, argv, stderr=subprocess.DEVNULL, cwd=ROOT, **kwargs)
        self.procs.append(proc)
        return proc

    def device(self, *args: str) -> subprocess.Popen:
        return self._start("dev", [sys.executable, str(HELPERS), "device", "--broker", self.url, "--bundle",
                                   str(self.bundle), *args], stdout=subprocess.PIPE, text=True)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()  # `edgekit serve` stops its workers on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.broker.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with NetLab("ekoff") as netlab:
        running = Lab(netlab, tiny_tail_bundle(tmp_path, channels=1024))  # 16 KiB frames
        try:
            yield running
        finally:
            running.close()


def answers(device: subprocess.Popen, on_line: Callable[[int], None] = lambda i: None) -> list[dict]:
    lines = []
    for line in device.stdout:
        record = json.loads(line)
        if "i" in record:
            lines.append(record)
            on_line(record["i"])
    return lines


def test_cable_pulled_mid_stream_every_frame_answered_then_remote_resumes(lab: Lab) -> None:
    deadline = 0.4
    device = lab.device("--count", "120", "--interval", "0.05", "--deadline", str(deadline), "--reserve", "0.2")
    pulled = {}

    def fault(i: int) -> None:
        if i == 20:
            lab.lab.down()
            pulled["at"] = time.monotonic()
        if "at" in pulled and "back" not in pulled and time.monotonic() - pulled["at"] > 2.0:
            lab.lab.up()
            pulled["back"] = i

    got = answers(device, fault)
    assert [r["i"] for r in got] == list(range(120))  # none lost
    assert all(r["source"] in ("remote", "fallback") for r in got)
    assert max(r["latency_s"] for r in got) <= deadline  # the deadline held, outage or not
    assert all(r["source"] == "remote" for r in got[:20])
    outage = got[21:pulled["back"]]
    assert outage and all(r["source"] == "fallback" for r in outage)
    assert all("no answer within 200 ms" in r["detail"] for r in outage)  # gave up half-way, as configured
    assert all(r["source"] == "remote" for r in got[-20:])  # remote answers resumed


def test_bandwidth_collapse_falls_back_and_is_measured(lab: Lab) -> None:
    deadline = 0.3
    device = lab.device("--count", "40", "--interval", "0.05", "--deadline", str(deadline), "--reserve", "0.15")

    def collapse(i: int) -> None:
        if i == 15:
            lab.lab.shape(0.5)  # 16 KiB now takes 262 ms, past the 150 ms the tail is given

    got = answers(device, collapse)
    assert [r["i"] for r in got] == list(range(40))
    assert max(r["latency_s"] for r in got) <= deadline
    assert all(r["source"] == "remote" for r in got[2:15])
    fast = got[14]["uplink_bps"]
    assert fast > 4e6  # a veth carries Gbit/s; well above the 0.5 Mbit/s to come, even on a busy machine
    assert sum(r["source"] == "fallback" for r in got[18:]) >= 20
    assert 0.2e6 < got[-1]["uplink_bps"] < 2e6  # the estimate followed the collapse to ~0.5 Mbit/s
