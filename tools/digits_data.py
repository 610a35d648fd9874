"""Write the digits split as .npz files for `edgekit compile --calib/--eval` (inputs 'x', labels 'y')."""

import argparse
from pathlib import Path

import numpy as np

from edgekit.models.digits import load_digits_split

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="folder for digits_calib.npz and digits_eval.npz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez(args.out / "digits_calib.npz", x=x_train, y=y_train)
    np.savez(args.out / "digits_eval.npz", x=x_test, y=y_test)
    print(f"wrote {args.out}/digits_calib.npz ({len(x_train)}) and digits_eval.npz ({len(x_test)})")
