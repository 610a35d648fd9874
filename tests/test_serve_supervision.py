"""`edgekit serve` supervises its children: a killed worker is restarted, announced and loses no frame; the
embedded broker is restarted on its port; SIGTERM stops serve within 5 s in every state; a crash loop ends in
a clear error; and after `kill -9` of serve no worker or broker lives on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import activation, needs_mosquitto, tiny_tail_bundle, wait_for

from edgekit.errors import OffloadError
from edgekit.offload.auth import load_key
from edgekit.offload.client import OffloadClient
from edgekit.offload.connection import BrokerConfig
from edgekit.offload.protocol import Topics
from edgekit.offload.server import RestartPolicy, _client_stem, _Lives, serve
from edgekit.runtime import load

pytestmark = needs_mosquitto()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("supervised"))


class Served:
    """`edgekit serve BUNDLE --json` as a subprocess: its status lines (stderr) collected as they come."""

    def __init__(self, bundle: Path, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--json", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(line.strip() for line in self.proc.stderr),  # type: ignore[union-attr]
                                       daemon=True)
        self.reader.start()

    def wait_line(self, text: str, timeout_s: float = 60) -> str:
        return wait_for(lambda: next((line for line in self.lines if text in line), None) or
                        (not self.reader.is_alive() and pytest.fail(f"serve exited: {self.lines}")), timeout_s,
                        f"serve announcing {text!r} ({self.lines})")

    @property
    def url(self) -> str:
        return self.wait_line("embedded broker: ").split()[2]

    @property
    def key(self) -> bytes:
        """The fleet key serve announced (its devices sign requests with it)."""
        return load_key(self.wait_line("fleet key: ").split()[2].rstrip(";"))

    def children(self) -> dict[str, int]:
        """The worker, the embedded broker and multiprocessing's resource tracker, by kind."""
        found = {}
        for pid in descendants(self.proc.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            kind = "worker" if b"spawn_main" in cmdline else "broker" if b"mosquitto" in cmdline else "tracker"
            found[kind] = pid
        return found

    def terminate_within(self, seconds: float) -> tuple[float, str]:
        """SIGTERM; how long serve took to exit (it must within `seconds`) and what it printed on stdout."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=seconds)
        took = time.monotonic() - start
        self.reader.join(5)  # stderr is the reader's: communicate() would take lines from it
        return took, self.proc.stdout.read()  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def served(bundle: Path) -> Iterator[Served]:
    running = Served(bundle)
    yield running
    running.close()


def descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in map(int, children) for p in (child, *descendants(child))]


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped is dead: PID 1 of a container may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_restart_delays_double_reset_after_a_healthy_life_and_give_up_on_a_crash_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    lives = _Lives("worker 0", RestartPolicy(first_s=0.5, max_s=3.0, healthy_s=60.0, max_restarts=4))
    delays = []
    for _ in range(4):
        clock[0] += 1.0  # dies a second after each start
        line = lives.schedule("killed by SIGKILL")
        delays.append(float(line.split(" in ")[1].split(" s ")[0]))
        lives.started_now()
    assert delays == [0.5, 1.0, 2.0, 3.0]  # doubling, capped at max_s
    assert line == "worker 0 died (killed by SIGKILL) after 1.0 s; restarting it in 3 s (restart 4)"
    clock[0] += 61.0  # a healthy life: back to the first delay
    assert lives.schedule("exit code 1").endswith("restarting it in 0.5 s (restart 5)")
    lives.started_now()
    for _ in range(3):
        clock[0] += 1.0
        lives.schedule("exit code 1")
        lives.started_now()
    clock[0] += 1.0
    with pytest.raises(OffloadError, match=r"worker 0 died \(exit code 1\) 5 times in a row, each within 60 s of "
                                           r"starting; gave up instead of restarting it again"):
        lives.schedule("exit code 1")


def test_a_killed_worker_is_restarted_and_no_frame_is_lost(served: Served) -> None:
    url = served.url
    served.wait_line("ready")
    session = load(served.proc.args[4])
    replies, done = [], threading.Event()

    def device() -> None:  # frames throughout, each with a deadline that outlasts a restart
        with OffloadClient(url, "tiny_tail", "cam-1", answer_key=served.key) as client:
            i = 0
            while not done.is_set():
                replies.append((i, client.request(activation(i), 30.0)))
                i += 1
                time.sleep(0.02)

    sender = threading.Thread(target=device)
    sender.start()
    try:
        wait_for(lambda: len(replies) >= 20, 30, "answers before the kill")
        worker = served.children()["worker"]
        os.kill(worker, signal.SIGKILL)
        line = served.wait_line("died")
        assert line.startswith(f"worker 0 (pid {worker}) died (killed by SIGKILL) after ")
        assert line.endswith("restarting it in 0.5 s (restart 1)")
        restarted = wait_for(lambda: (pid := served.children().get("worker")) != worker and pid, 30, "a new worker")
        count = len(replies)
        wait_for(lambda: len(replies) >= count + 20, 60, "answers from the restarted worker")
    finally:
        done.set()
        sender.join(60)
    assert alive(restarted)
    assert [r.source for _, r in replies] == ["remote"] * len(replies)  # 0 lost, none from a fallback
    for i, reply in replies[::7]:
        assert np.array_equal(reply.output, session.run(activation(i).array))
    took, out = served.terminate_within(5)
    summary = json.loads(out)  # stdout is JSON only; the status lines went to stderr
    assert (summary["restarts"], summary["unreported_runs"], summary["workers"]) == (1, 1, 1)
    assert 0 < summary["requests"] < len(replies)  # the dead run's counts are lost...
    assert served.wait_line("warning: ", 5).startswith("warning: 1 worker run(s) ended without reporting")  # ...said


def test_the_embedded_broker_is_restarted_on_its_port(served: Served) -> None:
    url = served.url
    served.wait_line("ready")
    broker = served.children()["broker"]
    os.kill(broker, signal.SIGKILL)
    line = served.wait_line("embedded broker on port")
    assert line.startswith(f"embedded broker on port {url.rsplit(':', 1)[1]} died (pid {broker}, killed by SIGKILL)")
    with OffloadClient(url, "tiny_tail", "cam-2", connect_timeout_s=10, answer_key=served.key) as client:
        assert wait_for(lambda: client.request(activation(1), 5.0).source == "remote", 60, "answers again")
    assert served.children()["broker"] != broker


@pytest.mark.parametrize("state", ["starting", "running", "restarting", "worker hung"])
def test_sigterm_stops_serve_within_5_s(served: Served, state: str) -> None:
    if state != "starting":
        served.wait_line("ready")
        worker = served.children()["worker"]
        if state == "restarting":
            os.kill(worker, signal.SIGKILL)
            served.wait_line("restarting it in")
        elif state == "worker hung":
            os.kill(worker, signal.SIGSTOP)
    else:
        served.wait_line("embedded broker: ")  # the worker is still loading
    children = served.children()
    took, out = served.terminate_within(5)
    assert served.proc.returncode == 0 and took < 5, (took, served.lines)
    reported = json.loads(out)["workers"]  # a worker killed or not yet loaded reports nothing
    if state == "starting":
        assert "ready" not in served.lines and reported in (0, 1)  # stopped before it announced readiness
    else:
        assert reported == (1 if state == "running" else 0)
    wait_for(lambda: not any(alive(pid) for pid in children.values()), 5, "children gone")


def test_serve_killed_outright_leaves_no_orphans(served: Served) -> None:
    served.wait_line("ready")
    children = served.children()
    assert set(children) == {"worker", "broker", "tracker"}
    served.proc.kill()
    served.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in children.values()), 5,
             f"worker, broker and tracker dying with serve ({children})")


def test_a_crash_loop_ends_serve_with_a_clear_error(bundle: Path) -> None:
    lines: list[object] = []
    stop = threading.Event()

    def run() -> None:
        try:
            serve(bundle, policy=RestartPolicy(first_s=0.05, max_restarts=1), announce=lines.append, stop=stop)
        except OffloadError as exc:
            lines.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        for kill in range(2):
            wait_for(lambda: "ready" in lines or (kill and any("restarting" in str(x) for x in lines)), 60, "a worker")
            worker = wait_for(lambda: [p for p in descendants(os.getpid())
                                       if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes() and alive(p)
                                       and not any(f"pid {p})" in str(x) for x in lines)], 60, "its pid")[0]
            time.sleep(0.5 if kill else 0)
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: sum("died" in str(x) for x in lines) > kill or isinstance(lines[-1], Exception), 30,
                     "serve noticing")
        runner.join(10)
    finally:
        stop.set()
        runner.join(30)
    assert isinstance(lines[-1], OffloadError), lines
    assert str(lines[-1]).startswith("worker 0 died (killed by SIGKILL) 2 times in a row, each within 60 s of starting")


def test_a_restarted_serve_resumes_its_worker_sessions_but_a_second_one_does_not_share_them() -> None:
    config = BrokerConfig.parse(f"mqtt://127.0.0.1:{os.getpid() % 50000 + 10000}")
    first, lock = _client_stem(config, Topics(), "tiny_tail", "tail")
    try:
        second, no_lock = _client_stem(config, Topics(), "tiny_tail", "tail")  # the same fleet, serve still running
        assert no_lock is None and second == f"{first}-{os.getpid()}"
        assert _client_stem(config, Topics(), "other_model", "tail")[0] != first
    finally:
        lock.close()
    again, lock = _client_stem(config, Topics(), "tiny_tail", "tail")  # the first one gone (as after a crash)
    lock.close()
    assert again == first and first.startswith(f"tail-{socket.gethostname()}-")
