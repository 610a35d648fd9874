"""A fake MAVLink vehicle on pymavlink, for demos and tests without an autopilot: it listens on UDP, sends
HEARTBEAT (a quadrotor running ArduPilot) and GLOBAL_POSITION_INT once per period to whoever talks to it, and
records every message it receives as a JSON line (NaN as null).

    python tools/fake_vehicle.py --listen udpin:127.0.0.1:14550 --record received.jsonl [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

os.environ["MAVLINK20"] = "1"  # before pymavlink is imported: message ids above 255

from pymavlink import mavutil  # noqa: E402

HOME = (47.397742, 8.545594, 488.0)  # lat, lon (degrees), altitude (m): PX4's SITL home, Zurich


def _plain(value: Any) -> Any:
    """A message field as JSON: NaN as None, bytes as text, lists element by element."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class FakeVehicle:
    """The vehicle on `listen` (udpin:HOST:PORT) until `close()`; `received` holds what came, as dicts."""

    def __init__(self, listen: str, record: Path | None = None, period_s: float = 0.2, system_id: int = 1,
                 position: tuple[float, float, float] = HOME, relative_alt_m: float = 25.0) -> None:
        self.conn = mavutil.mavlink_connection(listen, source_system=system_id, source_component=1)
        self.period_s, self.position, self.relative_alt_m = period_s, position, relative_alt_m
        self.received: list[dict[str, Any]] = []
        self._record = open(record, "w") if record else None  # noqa: SIM115 - closed in close()
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fake-vehicle", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        m = mavutil.mavlink
        next_send = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_send:
                boot_ms = int((time.monotonic() - self._start) * 1000)
                lat, lon, alt = self.position
                self.conn.mav.heartbeat_send(m.MAV_TYPE_QUADROTOR, m.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                             m.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, 0, m.MAV_STATE_ACTIVE)
                self.conn.mav.global_position_int_send(boot_ms, int(lat * 1e7), int(lon * 1e7), int(alt * 1e3),
                                                       int(self.relative_alt_m * 1e3), 0, 0, 0, 9000)
                next_send += self.period_s
            msg = self.conn.recv_match(blocking=True, timeout=0.02)
            if msg is None or msg.get_type() == "BAD_DATA":
                continue
            entry = {"t": time.monotonic() - self._start, "src": [msg.get_srcSystem(), msg.get_srcComponent()],
                     **{k: _plain(v) for k, v in msg.to_dict().items()}}
            with self._lock:
                self.received.append(entry)
            if self._record:
                self._record.write(json.dumps(entry) + "\n")
                self._record.flush()

    def messages(self, kind: str) -> list[dict[str, Any]]:
        """What was received of one type (e.g. 'HEARTBEAT'), in order."""
        with self._lock:
            return [e for e in self.received if e["mavpackettype"] == kind]

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.conn.close()
        if self._record:
            self._record.close()

    def __enter__(self) -> FakeVehicle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="udpin:127.0.0.1:14550", help="udpin:HOST:PORT (default %(default)s)")
    parser.add_argument("--record", type=Path, help="write received messages here as JSON lines")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    args = parser.parse_args()
    with FakeVehicle(args.listen, args.record) as vehicle:
        try:
            deadline = time.monotonic() + (args.seconds if args.seconds is not None else math.inf)
            while time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        counts: dict[str, int] = {}
        for entry in vehicle.received:
            counts[entry["mavpackettype"]] = counts.get(entry["mavpackettype"], 0) + 1
    print(" ".join(f"{kind}={count}" for kind, count in sorted(counts.items())) or "received nothing")


if __name__ == "__main__":
    main()
