"""Deadlines from measurement: the time kept for the fallback is the local tail's measured p99 plus a margin, so a
slow local tail still answers by the deadline; a deadline shorter than that runs here at once; a circuit breaker
stops paying the whole deadline for a server that stopped answering, and closes when it is back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SHAPE, activation, needs_mosquitto, tiny_tail_bundle, wait_for

from edgekit.formats.bundle import TensorInfo
from edgekit.formats.frame import Tensor
from edgekit.offload.broker import Broker
from edgekit.offload.client import CircuitBreaker, OffloadClient, TailTimer
from edgekit.offload.server import OffloadServer
from edgekit.runtime import load
from edgekit.runtime.session import Session
from edgekit.runtime.split_exec import SplitRunner

pytestmark = needs_mosquitto()

SLACK_S = 0.03  # scheduling on a busy 2-core machine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("deadline"))


@pytest.fixture(scope="module")
def session(bundle: Path) -> Session:
    return load(bundle)


def slow_tail(tensor: Tensor) -> np.ndarray:
    """A local tail that takes 100 ms and answers all -1."""
    time.sleep(0.1)
    return np.full((1, 10), -1, np.float32)


def test_the_reserve_is_the_p99_of_recent_runs_plus_20_percent_and_5_ms() -> None:
    timer = TailTimer(window=100)
    assert timer.reserve_s() is None
    for ms in range(1, 101):  # 1..100 ms: p99 99.01 ms (linear interpolation)
        timer.record(ms / 1000)
    assert timer.reserve_s() == pytest.approx(0.09901 * 1.2 + 0.005)  # 123.8 ms
    for _ in range(100):  # only recent runs count: a tail that got faster lowers the reserve
        timer.record(0.010)
    assert timer.reserve_s() == pytest.approx(0.010 * 1.2 + 0.005)


def test_the_breaker_opens_after_three_misses_probes_with_backoff_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, (1.0, 30.0), clock=lambda: now[0])
    for _ in range(2):
        assert breaker.refusal() is None
        breaker.record(False)
    assert breaker.state == "closed"
    breaker.record(False)
    assert (breaker.state, breaker.opens) == ("open", 1)
    assert breaker.refusal() == "circuit open after 3 missed answers in a row; next probe in 1000 ms"
    now[0] = 1.0
    assert breaker.refusal() is None and breaker.state == "half-open"  # the one probe
    assert breaker.refusal() == "circuit open after 3 missed answers in a row; a probe request is out"
    breaker.record(False)  # the probe failed: twice the cool-down
    now[0] = 2.9
    assert breaker.refusal() == "circuit open after 4 missed answers in a row; next probe in 100 ms"
    now[0] = 3.0
    assert breaker.refusal() is None
    breaker.record(True)
    assert (breaker.state, breaker.misses, breaker.refusal()) == ("closed", 0, None)


def test_a_100_ms_local_tail_still_answers_by_a_200_ms_deadline(broker: Broker) -> None:
    # no server: every frame waits for the tail, then falls back; the wait leaves the fallback its measured time
    with OffloadClient(broker.url, "tiny_tail", "cam-1", breaker_after=100) as client:
        reserve = client.calibrate(slow_tail, activation(0), runs=3)
        assert reserve is not None and 0.125 <= reserve < 0.125 + SLACK_S  # 100 ms x 1.2 + 5 ms
        replies = [client.request(activation(i), 0.2, slow_tail) for i in range(5)]
        assert all(r.source == "fallback" and "no answer within" in r.detail for r in replies)
        assert max(r.latency_s for r in replies) <= 0.2 + SLACK_S, [r.latency_s for r in replies]
        # a deadline within the reserve is not worth a publish: the local tail at once
        sent = client.counts["sent"]
        reply = client.request(activation(0), 0.1, slow_tail)
        assert reply.source == "local" and reply.detail.startswith("the 100 ms deadline is not longer than the 12")
        assert client.counts["sent"] == sent and reply.latency_s < 0.1 + SLACK_S


def test_the_first_frame_times_the_tail_when_nobody_calibrated(broker: Broker) -> None:
    with OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
        reply = client.request(activation(0), 0.2, slow_tail)
        assert reply.source == "local" and "not been timed yet" in reply.detail and client.counts["sent"] == 0
        assert client.stats()["fallback_reserve_ms"] == pytest.approx(125, abs=SLACK_S * 1000)


def test_the_breaker_opens_after_three_missed_answers_and_closes_when_the_server_is_back(
        broker: Broker, bundle: Path, session: Session) -> None:
    with OffloadClient(broker.url, "tiny_tail", "cam-1", breaker_cooldown_s=(0.5, 2.0)) as client:
        client.calibrate(slow_tail, activation(0), runs=3)
        missed = [client.request(activation(i), 0.3, slow_tail) for i in range(3)]
        assert [r.source for r in missed] == ["fallback"] * 3 and client.stats()["circuit"] == "open"
        reply = client.request(activation(3), 0.3, slow_tail)  # no more waiting: the local tail at once
        assert reply.detail.startswith("circuit open after 3 missed answers in a row; next probe in ")
        assert reply.source == "fallback" and reply.latency_s < 0.1 + SLACK_S and client.counts["sent"] == 3
        with OffloadServer(bundle, broker.url):
            tensor = activation(7)
            reply = wait_for(lambda: (r := client.request(tensor, 1.0, slow_tail)).source == "remote" and r, 10,
                             "a probe answered by the restarted server")
            assert np.array_equal(reply.output, session.run(tensor.array))
            assert client.stats()["circuit"] == "closed" and client.stats()["circuit_opens"] >= 1
            assert client.request(activation(8), 1.0, slow_tail).source == "remote"


class _Stage:
    """A stand-in runner: a head whose raw output is the int8 boundary, or a tail that takes 20 ms."""

    def __init__(self, output: TensorInfo) -> None:
        self.outputs = (output,)

    def run_raw(self, x: np.ndarray, check: bool) -> tuple[np.ndarray, ...]:
        return (np.zeros(SHAPE, np.int8),)

    def run(self, x: np.ndarray, targets: object, check: bool) -> tuple[np.ndarray, ...]:
        time.sleep(0.02)
        return (np.ones((1, 10), np.float32),)


def test_a_split_session_times_its_local_tail_at_start(broker: Broker) -> None:
    boundary = TensorInfo("x", SHAPE, "int8", None, 0.05, -3)
    output = TensorInfo("y", (1, 10), "float32")
    with OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
        assert client.stats()["fallback_reserve_ms"] is None
        SplitRunner([_Stage(boundary)], [_Stage(output)], client, 0.2, (output,))
        assert client.stats()["fallback_reserve_ms"] == pytest.approx(0.02 * 1.2 * 1000 + 5, abs=SLACK_S * 1000)
