"""A fleet of simulated devices against real `edgekit serve` workers, on one Mosquitto or a bridged pair.

    .venv/bin/python tools/fleet_sim.py                      # 1,000 devices at 1 frame/s: one broker, bridged pair
    .venv/bin/python tools/fleet_sim.py capacity             # devices one worker sustains before p99 > deadline
    .venv/bin/python tools/fleet_sim.py --devices 200 --duration 5 --json

What is simulated: each device is one MQTT v5 connection (its own client id, request and answer topics)
publishing real edgekit request frames (formats/frame.py, QoS 1, the v5 properties the real client sends) at
`--rate` frames/s with a random phase, and reading its answers. 1,000 paho clients with a network thread each
would swamp 2 cores, so each device process drives hundreds of connections with paho's external-loop API
(loop_read/loop_write/loop_misc over one selector); devices are not OffloadClient and run no local fallback.
Requests are signed with a fleet key made for the run (serve --fleet-key) and every answer's signature is
checked; every answer is decoded and compared with the local tail's output. A frame is `ok` when the right
answer came within the deadline; lost = sent - ok (late, unanswered, error, forged or wrong answers, each
counted). The tail is the tests' tiny int8 one (tests/helpers.py tiny_tail_bundle) run by
`edgekit serve --broker URL --workers N --fleet-key FILE`.

Bridged pair: the hub broker and a spoke broker bridged by edgekit.offload.bridge (the spoke's bridge joins the
hub's shared-subscription group); devices and workers on both. On loopback here; tests/test_scale_out.py runs
the same code with each broker in its own network namespace (tests/helpers.py NetLab).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

from helpers import activation, tiny_tail_bundle  # noqa: E402

from edgekit.errors import SignatureError  # noqa: E402
from edgekit.formats.frame import Frame, decode, encode, peek_request_id  # noqa: E402
from edgekit.offload.auth import new_key  # noqa: E402
from edgekit.offload.bridge import bridge_config  # noqa: E402
from edgekit.offload.broker import Broker  # noqa: E402
from edgekit.offload.connection import BrokerConfig, packed_properties  # noqa: E402
from edgekit.offload.protocol import CONTENT_TYPE, Topics, publish_properties  # noqa: E402

MODEL_ID = "tiny_tail"
VARIANTS = 16  # distinct input tensors the devices cycle through (their expected outputs are computed once)
Popen = Callable[..., subprocess.Popen]


# --- the devices: many MQTT connections in one process ------------------------------------------------------


class _Device:
    """One simulated device's connection and topics."""

    def __init__(self, config: BrokerConfig, topics: Topics, device_id: str, index: int) -> None:
        self.device_id, self.index = device_id, index
        self.request_topic, self.response_topic = topics.request(MODEL_ID, device_id), topics.response(device_id)
        self.ready, self.seq = False, 0
        self.client = config.client(f"{device_id}-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, u, f, reason, p: c.subscribe(self.response_topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, reasons, p: setattr(self, "ready", True)


def drive_devices(url: str, bundle: str | Path, key_file: str | Path, first: int, count: int, rate_hz: float,
                  duration_s: float, deadline_s: float, start_at: float, records: bool = False,
                  prefix: str = "edgekit") -> dict[str, Any]:
    """`count` devices (ids sim-FIRST...) send frames signed with the fleet key in `key_file` at `rate_hz` each
    from unix time `start_at` for `duration_s`; the counts, every in-time round trip (ms) and, with `records`,
    each answer's output."""
    from edgekit.offload.auth import load_key
    from edgekit.runtime.session import load
    from edgekit.runtime.transport import response_outputs

    session, key = load(bundle), load_key(key_file)
    tensors = [activation(seed, session.input.shape) for seed in range(VARIANTS)]
    expected = [np.asarray(session.run(t.array)) for t in tensors]
    config, topics = BrokerConfig.parse(url), Topics(prefix)
    devices = [_Device(config, topics, f"sim-{first + i}", i) for i in range(count)]
    selector = selectors.DefaultSelector()
    for device in devices:
        device.client.connect(config.host, config.port, keepalive=60)
        selector.register(device.client.socket(), selectors.EVENT_READ, device)
    counts = {"sent": 0, "ok": 0, "late": 0, "errors": 0, "wrong": 0, "forged": 0, "duplicates": 0, "unknown": 0,
              "disconnects": 0}
    pending: dict[bytes, tuple[int, int, int, float]] = {}  # request id -> device, seq, variant, sent (monotonic)
    # an answer is wrong when its output differs from the local tail's or it reached another device
    answered: set[bytes] = set()
    latencies: list[float] = []
    outputs: list[dict[str, Any]] = []
    error_texts: set[str] = set()

    def on_message(client: Any, device: _Device, message: Any) -> None:
        now = time.monotonic()
        request_id = peek_request_id(message.payload) or b""
        sent = pending.pop(request_id, None)
        if sent is None:
            counts["duplicates" if request_id in answered else "unknown"] += 1
            return
        answered.add(request_id)
        try:
            answer = decode(message.payload, key=key)
        except SignatureError:
            counts["forged"] += 1
            return
        if answer.kind != "response":
            counts["errors"] += 1
            error_texts.add(answer.error)
            return
        output = np.asarray(response_outputs(answer))
        ms = (now - sent[3]) * 1000
        if sent[0] != device.index or not np.allclose(output, expected[sent[2]], rtol=1e-5, atol=1e-5):
            counts["wrong"] += 1
        elif ms > deadline_s * 1000:
            counts["late"] += 1
        else:
            counts["ok"] += 1
            latencies.append(ms)
        if records:
            outputs.append({"device": device.device_id, "seq": sent[1], "variant": sent[2], "ms": ms,
                            "output": output.ravel().tolist()})

    for device in devices:
        device.client.user_data_set(device)
        device.client.on_message = on_message
    _pump(selector, devices, counts, lambda: all(d.ready for d in devices), time.monotonic() + 30)
    connected = all(d.ready for d in devices)
    period = 1.0 / rate_hz
    begin = time.monotonic() + max(0.0, start_at - time.time())
    end = begin + duration_s
    rng = np.random.default_rng(first)
    due = [(begin + float(rng.uniform(0, period)), i) for i in range(count)]
    heapq.heapify(due)
    cpu_before = os.times()

    def send_due() -> None:
        now = time.monotonic()
        while due and due[0][0] <= now:
            at, i = heapq.heappop(due)
            if at < end:
                device = devices[i]
                variant = (device.index + device.seq) % VARIANTS
                request_id = uuid.uuid4().bytes
                data = encode(Frame(request_id, int(time.time() * 1000 + deadline_s * 1000), MODEL_ID, "",
                                    (tensors[variant],)), key=key)
                props = packed_properties(publish_properties(request_id, device.response_topic,
                                                             max(1, int(np.ceil(deadline_s))), CONTENT_TYPE))
                pending[request_id] = (i, device.seq, variant, time.monotonic())
                device.client.publish(device.request_topic, data, qos=1, properties=props)
                device.seq += 1
                counts["sent"] += 1
                heapq.heappush(due, (at + period, i))

    _pump(selector, devices, counts, lambda: not due or due[0][0] >= end, end + 5, send_due)
    _pump(selector, devices, counts, lambda: not pending, time.monotonic() + deadline_s + 1.0)
    cpu_after = os.times()
    for device in devices:
        device.client.disconnect()
    cpu_s = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    return {"devices": count, "connected": connected, **counts, "unanswered": len(pending), "latencies_ms": latencies,
            "error_texts": sorted(error_texts)[:5], "cpu_s": cpu_s, **({"records": outputs} if records else {})}


def _pump(selector: selectors.BaseSelector, devices: list[_Device], counts: dict[str, int],
          done: Callable[[], bool], until: float, tick: Callable[[], None] = lambda: None) -> None:
    """Run every connection's network I/O (paho's external loop) until `done()` or monotonic time `until`."""
    last_misc = time.monotonic()
    while not done() and time.monotonic() < until:
        tick()
        for key, _ in selector.select(0.002):
            device = key.data
            if device.client.loop_read() != 0:
                counts["disconnects"] += 1
                selector.unregister(key.fileobj)
        for device in devices:
            if device.client.want_write():
                device.client.loop_write()
        if time.monotonic() - last_misc > 1.0:
            last_misc = time.monotonic()
            for device in devices:
                device.client.loop_misc()


# --- brokers and workers on one or two sites -------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where one broker, its workers and its devices run: an address and a way to start processes there."""

    name: str
    host: str
    popen: Popen = subprocess.Popen


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its live descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            pid_here = int(entry.name)
            parents[pid_here], times[pid_here] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total


class Deployment:
    """A broker per site (every site after the first bridged to the first, the hub) and `edgekit serve` on each."""

    def __init__(self, sites: Sequence[Site], bundle: Path, workers: int, shares: int = 1) -> None:
        self.sites = list(sites)
        self.brokers: list[Broker] = []
        self.serves: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="edgekit-fleet-"))
        self.key_file = self.workdir / "fleet.key"  # serve signs answers and takes only signed requests
        new_key(self.key_file)
        try:
            for index, site in enumerate(self.sites):
                extra = [] if index == 0 else bridge_config(self.sites[0].host, self.brokers[0].port, MODEL_ID,
                                                            name=f"site{index}", shares=shares)
                broker = Broker(host=site.host, extra_config=extra, workdir=self.workdir / f"broker-{site.name}",
                                launcher=functools.partial(site.popen, stdin=subprocess.DEVNULL,
                                                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
                self.brokers.append(broker.start())
            for index in range(1, len(self.sites)):
                self._wait_for_log(self.brokers[0].log, f"as edgekit-bridge-site{index}-{shares - 1}")
            for site, broker in zip(self.sites, self.brokers):
                log = self.workdir / f"serve-{site.name}.log"
                self.logs.append(log)
                self.serves.append(site.popen([sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--broker",
                                               broker.url, "--workers", str(workers), "--fleet-key",
                                               str(self.key_file), "--json"], cwd=ROOT,
                                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=log.open("w"), text=True))
            for log, serve in zip(self.logs, self.serves):
                self._wait_for_log(log, "ready", serve, timeout_s=120)
            time.sleep(0.5)  # the bridges' SUBSCRIBE follows their CONNECT
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _wait_for_log(log: Path, text: str, process: subprocess.Popen | None = None, timeout_s: float = 20) -> None:
        give_up = time.monotonic() + timeout_s
        while not (log.exists() and text in log.read_text(errors="replace")):
            if time.monotonic() > give_up or (process is not None and process.poll() is not None):
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
                raise RuntimeError(f"no '{text}' in {log} within {timeout_s:g} s:\n{tail}")
            time.sleep(0.05)

    @property
    def urls(self) -> list[str]:
        return [broker.url for broker in self.brokers]

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the workers (serve and its processes) and of the brokers."""
        return {"workers": sum(_tree_cpu_s(s.pid) for s in self.serves),
                "brokers": sum(_tree_cpu_s(b.process.pid) for b in self.brokers if b.process is not None)}

    def stop_workers(self) -> list[dict[str, Any]]:
        """SIGTERM every serve; each one's merged metrics (per_worker_requests...)."""
        metrics = []
        for serve in self.serves:
            serve.send_signal(signal.SIGTERM)
        for serve in self.serves:
            out, _ = serve.communicate(timeout=30)
            metrics.append(json.loads(out))
        self.serves = []
        return metrics

    def close(self) -> None:
        for serve in self.serves:
            serve.kill()
            serve.wait()
        for broker in self.brokers:
            broker.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def drive_fleet(deployment: Deployment, devices: int, rate_hz: float, duration_s: float, deadline_s: float,
                bundle: Path, processes: int = 2, records: bool = False) -> dict[str, Any]:
    """`devices` spread evenly over the sites and `processes` device processes; the merged result."""
    sites = deployment.sites
    per_process = [devices // processes + (i < devices % processes) for i in range(processes)]
    start_at = time.time() + 3.0 + devices / 300  # time for every process to connect its devices
    procs, first = [], 0
    for i, count in enumerate(per_process):
        site, url = sites[i % len(sites)], deployment.urls[i % len(sites)]
        argv = [sys.executable, str(Path(__file__).resolve()), "devices", "--broker", url, "--bundle", str(bundle),
                "--fleet-key", str(deployment.key_file),
                "--first", str(first), "--count", str(count), "--rate", str(rate_hz), "--duration", str(duration_s),
                "--deadline", str(deadline_s), "--start-at", str(start_at), *(["--records"] if records else [])]
        procs.append((site.name, site.popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            text=True)))
        first += count
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = deployment.cpu_s()
    time.sleep(duration_s)
    cpu_after = deployment.cpu_s()
    parts = []
    for site_name, proc in procs:
        out, _ = proc.communicate(timeout=duration_s + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"a device process on {site_name} failed (exit {proc.returncode})")
        parts.append({"site": site_name, **json.loads(out)})
    return _merge(parts, rate_hz, duration_s, deadline_s,
                  {k: cpu_after[k] - cpu_before[k] for k in cpu_after}, len(sites))


def _merge(parts: list[dict[str, Any]], rate_hz: float, duration_s: float, deadline_s: float,
           cpu_s: dict[str, float], brokers: int) -> dict[str, Any]:
    """The device processes' results as one row: rates, percentiles, losses and CPU (% of one core)."""
    keys = ("devices", "sent", "ok", "late", "unanswered", "errors", "wrong", "forged", "duplicates", "unknown",
            "disconnects")
    row: dict[str, Any] = {key: sum(p[key] for p in parts) for key in keys}
    latencies = np.array([ms for p in parts for ms in p["latencies_ms"]])
    row.update(brokers=brokers, rate_hz=rate_hz, deadline_ms=deadline_s * 1000, duration_s=duration_s,
               connected=all(p["connected"] for p in parts),
               offered_fps=row["sent"] / duration_s, answered_fps=row["ok"] / duration_s, lost=row["sent"] - row["ok"],
               p50_ms=float(np.percentile(latencies, 50)) if latencies.size else None,
               p99_ms=float(np.percentile(latencies, 99)) if latencies.size else None,
               devices_per_site={p["site"]: 0 for p in parts}, sent_per_site={p["site"]: 0 for p in parts},
               cpu_pct={"devices": 100 * sum(p["cpu_s"] for p in parts) / duration_s,
                        **{k: 100 * v / duration_s for k, v in cpu_s.items()}})
    for p in parts:
        row["devices_per_site"][p["site"]] += p["devices"]
        row["sent_per_site"][p["site"]] += p["sent"]
    row["error_texts"] = sorted({text for p in parts for text in p["error_texts"]})[:5]
    if any("records" in p for p in parts):
        row["records"] = [r for p in parts for r in p.get("records", [])]
    return row


def fleet_run(sites: Sequence[Site], bundle: Path, devices: int, rate_hz: float, duration_s: float,
              deadline_s: float, workers: int, processes: int = 2, shares: int = 1,
              records: bool = False) -> dict[str, Any]:
    """Deploy brokers and workers on `sites`, drive the fleet once, stop: the row with the tail's own counts."""
    deployment = Deployment(sites, bundle, workers, shares)
    try:
        row = drive_fleet(deployment, devices, rate_hz, duration_s, deadline_s, bundle, processes, records)
        served = deployment.stop_workers()
    finally:
        deployment.close()
    row["workers"] = workers * len(sites)
    row["per_worker_requests"] = {site.name: m["per_worker_requests"] for site, m in zip(sites, served)}
    row["tail_requests"] = sum(m["requests"] for m in served)  # > sent would mean duplicate tail work
    return row


def capacity(bundle: Path, rate_hz: float, duration_s: float, deadline_s: float, steps: Sequence[int],
             processes: int) -> list[dict[str, Any]]:
    """One broker, one worker: a row per device count in `steps`, stopping after the first that fails."""
    deployment = Deployment([Site("one", "127.0.0.1")], bundle, workers=1)
    rows = []
    try:
        for devices in steps:
            row = drive_fleet(deployment, devices, rate_hz, duration_s, deadline_s, bundle, processes)
            row["workers"], row["sustained"] = 1, row["lost"] == 0 and (row["p99_ms"] or 1e9) <= deadline_s * 1000
            rows.append(row)
            if not row["sustained"]:
                break
    finally:
        deployment.close()
    return rows


# --- the table -----------------------------------------------------------------------------------------------

COLUMNS = ("setup", "devices", "brokers", "workers", "offered_fps", "answered_fps", "p50_ms", "p99_ms", "lost",
           "tail_requests", "cpu")


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "cpu":
        return " / ".join(f"{k} {v:.0f}%" for k, v in row["cpu_pct"].items())
    value = row.get(column, "")
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="fleet", choices=("fleet", "capacity", "devices"),
                        help="fleet: one broker and the bridged pair; capacity: devices per worker; devices: one "
                             "device process (internal)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1.0, help="frames/s each device sends (default 1)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending (default 20)")
    parser.add_argument("--deadline", type=float, default=0.2, help="seconds a frame may take (default 0.2)")
    parser.add_argument("--workers", type=int, default=1, help="workers per broker (one broker: twice this)")
    parser.add_argument("--processes", type=int, default=2, help="device processes (default 2)")
    parser.add_argument("--channels", type=int, default=8, help="tail input channels: frames of 16*C bytes")
    parser.add_argument("--steps", default="100,200,400,800,1200,1600,2000,2400,3200", help="capacity: device counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    internal = parser.add_argument_group("devices mode")
    for flag in ("--broker", "--bundle", "--fleet-key"):
        internal.add_argument(flag)
    internal.add_argument("--first", type=int, default=0)
    internal.add_argument("--count", type=int, default=1)
    internal.add_argument("--start-at", type=float, default=0.0)
    internal.add_argument("--records", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "devices":
        print(json.dumps(drive_devices(args.broker, args.bundle, args.fleet_key, args.first, args.count, args.rate,
                                       args.duration, args.deadline, args.start_at, args.records)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        bundle = tiny_tail_bundle(Path(tmp), channels=args.channels)
        if args.mode == "capacity":
            rows = capacity(bundle, args.rate, args.duration, args.deadline,
                            [int(s) for s in args.steps.split(",")], args.processes)
            for row in rows:
                row["setup"] = "one worker" + ("" if row["sustained"] else " (past capacity)")
        else:
            one = fleet_run([Site("one", "127.0.0.1")], bundle, args.devices, args.rate, args.duration,
                            args.deadline, 2 * args.workers, args.processes)
            pair = fleet_run([Site("hub", "127.0.0.1"), Site("spoke", "127.0.0.1")], bundle, args.devices, args.rate,
                             args.duration, args.deadline, args.workers, args.processes)
            one["setup"], pair["setup"] = "one broker", "bridged pair (hub + spoke)"
            rows = [one, pair]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.devices if args.mode == 'fleet' else 'N'} simulated devices at {args.rate:g} frame/s each "
          f"({16 * args.channels}-byte int8 tensors, real edgekit frames, QoS 1), "
          f"deadline {args.deadline * 1000:g} ms, "
          f"{args.duration:g} s; MQTT v5 connections driven by paho's external loop in {args.processes} processes; "
          "workers: `edgekit serve` on the tiny int8 tail. lost = sent - answered correctly in time.")
    print(table(rows))
    if args.mode == "capacity":
        passed = [row["devices"] for row in rows if row["sustained"]]
        print(f"capacity: one worker sustains {max(passed) if passed else 0:,} devices at {args.rate:g} frame/s "
              f"(p99 <= {args.deadline * 1000:g} ms, lost 0)")
    else:
        for row in rows:
            print(f"{row['setup']}: requests per worker {row['per_worker_requests']}; "
                  f"devices {row['devices_per_site']}")


if __name__ == "__main__":
    main()
