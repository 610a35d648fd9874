"""Retrain the bundled digits CNN at 8x8 and write models/digits_cnn.npz (run: python tools/train_digits.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.models.digits import PRETRAINED_RESOLUTION, WEIGHTS_PATH, save_digits_weights, train_digits_cnn


def main() -> None:
    """Train deterministically, save the state_dict as npz and print the held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffling")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="where to write the .npz")
    args = parser.parse_args()
    model, accuracy = train_digits_cnn(PRETRAINED_RESOLUTION, args.seed)
    save_digits_weights(model, args.out)
    print(f"test accuracy {accuracy:.4f}; wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
