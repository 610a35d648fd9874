"""What reporting detections over MAVLink costs per frame, against the frame's own inference time.

BlazeFace short-range as an FP32 bundle (tools/blazeface_bundle.py) runs on `--frames` frames (the astronaut,
every fifth one blank, so both the ACTIVE and the IDLE path are timed); each frame's detections go to
`MavlinkReporter.report` talking to tools/fake_vehicle.py (its own process) over UDP loopback, which sends
heartbeats and position back meanwhile and records what arrives. Timed per frame: inference (Session.run +
decoding) and reporting (CAMERA_TRACKING_IMAGE_STATUS, plus LANDING_TARGET when `face` is a landing class, plus
the occasional STATUSTEXT). Goal (issue 13): reporting under 1 ms and under 5% of the frame time.

Run: python tools/bench_mavlink.py [--frames 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blazeface  # noqa: E402
import blazeface_bundle  # noqa: E402

from edgekit.integrations.mavlink import Camera, MavlinkReporter  # noqa: E402
from edgekit.report.table import table  # noqa: E402
from edgekit.runtime import load  # noqa: E402
from edgekit.runtime.detections import Decoder  # noqa: E402


def _ms(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(values) * 1e3, [50, 99])
    return float(p50), float(p99)


def measure(frames: int, landing: bool) -> dict:
    """Inference and reporting percentiles over `frames` frames, one reporter on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        session = load(blazeface_bundle.bundle(Path(tmp) / "bf"))
    decode = Decoder(session.manifest.detection, session.labels)
    inference, reporting = [], []
    tools = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "received.jsonl"
        fake = subprocess.Popen([sys.executable, str(tools / "fake_vehicle.py"), "--listen",
                                 f"udpin:127.0.0.1:{port}", "--record", str(record)], stdout=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # the vehicle up
            inference, reporting = _run(session, decode, port, frames, landing)
            time.sleep(0.3)
        finally:
            fake.terminate()
            fake.wait()
        received = record.read_text().count('"CAMERA_TRACKING_IMAGE_STATUS"')
    (i50, i99), (r50, r99) = _ms(inference), _ms(reporting)
    return {"landing_target": landing, "frames": frames, "received": received, "inference_p50_ms": i50,
            "inference_p99_ms": i99, "report_p50_ms": r50, "report_p99_ms": r99,
            "report_share_p50": r50 / (i50 + r50)}


def _run(session: Any, decode: Decoder, port: int, frames: int, landing: bool) -> tuple[list[float], list[float]]:
    """Per frame: seconds of inference and of reporting."""
    face = blazeface.frame(blazeface.test_image("astronaut"))
    blank = np.zeros_like(face)
    inference, reporting = [], []
    with MavlinkReporter(f"udpout:127.0.0.1:{port}", Camera(62.2, 48.8), ("face",) if landing else ()) as reporter:
        time.sleep(0.3)  # the vehicle's first heartbeat and position
        for i in range(frames):
            start = time.perf_counter()
            found = decode(session.run(blank if i % 5 == 0 else face))
            decoded = time.perf_counter()
            reporter.report(found)
            reporting.append(time.perf_counter() - decoded)
            inference.append(decoded - start)
    return inference, reporting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(args.frames, landing) for landing in (False, True)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [("tracking status" + (" + landing target" if r["landing_target"] else ""),
             f"{r['received']}/{r['frames']}", f"{r['inference_p50_ms']:.3f} / {r['inference_p99_ms']:.3f}",
             f"{r['report_p50_ms'] * 1e3:.0f} / {r['report_p99_ms'] * 1e3:.0f}", f"{100 * r['report_share_p50']:.1f}%")
            for r in results]
    print("BlazeFace FP32 (LiteRT) per frame, MAVLink to the fake vehicle on UDP loopback")
    print(table(("messages per frame", "received", "inference p50/p99 ms", "reporting p50/p99 us",
                 "reporting share (p50)"), rows))


if __name__ == "__main__":
    main()
