"""A short synthetic video from scikit-image's astronaut, for streaming demos and tests without a camera: 512 x 512
MJPEG at 30 frames/s, the astronaut sliding right, every `blank_every`-th frame (the first included) plain grey, so
BlazeFace finds one face or none.

    python tools/synthetic_clip.py OUT.avi [--frames 60] [--blank-every 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import blazeface
import cv2  # edgekit[video]
import numpy as np


def astronaut_clip(path: str | Path, frames: int = 60, blank_every: int = 5) -> Path:
    """The clip written to `path` (see the module docstring)."""
    bgr = np.ascontiguousarray(blazeface.test_image("astronaut")[:, :, ::-1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (512, 512))
    for i in range(frames):
        writer.write(np.full_like(bgr, 128) if i % blank_every == 0 else np.ascontiguousarray(np.roll(bgr, 4 * i, 1)))
    writer.release()
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the .avi file to write")
    parser.add_argument("--frames", type=int, default=60, help="frames (default 60: two seconds)")
    parser.add_argument("--blank-every", type=int, default=5, help="every n-th frame grey (default 5)")
    args = parser.parse_args()
    print(f"{args.frames} frames written to {astronaut_clip(args.out, args.frames, args.blank_every)}")


if __name__ == "__main__":
    main()
