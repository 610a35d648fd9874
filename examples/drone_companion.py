"""A drone companion computer in one command: BlazeFace (FP32 bundle) on a short synthetic clip, its detections sent
over MAVLink to a fake vehicle (tools/fake_vehicle.py) on UDP loopback, then what the vehicle received.

Run: .venv/bin/python examples/drone_companion.py [--out out/drone]

It builds the bundle and the clip under --out, starts the fake vehicle as its own process, runs
`edgekit stream BUNDLE --source CLIP --mavlink udpout:127.0.0.1:PORT`, stops the vehicle and prints its message
counts and the first tracking rectangles. Put a real autopilot's endpoint (udpout:, tcp:, /dev/ttyAMA0,57600) in
place of the fake one to fly it.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import blazeface_bundle  # noqa: E402  (tools/)
from synthetic_clip import astronaut_clip  # noqa: E402  (tools/)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "drone", help="working folder (default out/drone)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.out / "blazeface"
    if not bundle.exists():
        blazeface_bundle.bundle(bundle)
    clip = astronaut_clip(args.out / "clip.avi", frames=60, blank_every=10)
    port = _free_udp_port()
    received = args.out / "vehicle_received.jsonl"
    vehicle = subprocess.Popen([sys.executable, str(ROOT / "tools" / "fake_vehicle.py"), "--listen",
                                f"udpin:127.0.0.1:{port}", "--record", str(received)], stdout=subprocess.PIPE,
                               text=True)
    try:
        time.sleep(1.0)  # the vehicle's socket is bound before the companion's first heartbeat
        subprocess.run([sys.executable, "-m", "edgekit.cli", "stream", str(bundle), "--source", str(clip),
                        "--mavlink", f"udpout:127.0.0.1:{port}", "--landing-label", "face"], check=True)
        time.sleep(0.5)  # the last messages land
    finally:
        vehicle.send_signal(signal.SIGINT)
        counts, _ = vehicle.communicate(timeout=10)
    print(f"\nThe fake vehicle received: {counts.strip()}")
    statuses = [m for m in map(json.loads, received.read_text().splitlines())
                if m["mavpackettype"] == "CAMERA_TRACKING_IMAGE_STATUS"]
    for status in statuses[:5]:
        box = [status[k] for k in ("rec_top_x", "rec_top_y", "rec_bottom_x", "rec_bottom_y")]
        print("  CAMERA_TRACKING_IMAGE_STATUS", "IDLE" if status["tracking_status"] == 0 else
              "ACTIVE rectangle " + ", ".join(f"{v:.3f}" for v in box))
    print(f"  ... {len(statuses)} in all; every message is in {received}")


if __name__ == "__main__":
    main()
