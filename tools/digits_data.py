"""Write the digits split as .npz files for `edgekit compile --calib/--eval` (inputs 'x', labels 'y'),
and the first held-out digit as an 8x8 greyscale PNG for `edgekit run --input`."""

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
    from PIL import Image

    png = args.out / f"digit_{y_test[0]}.png"
    Image.fromarray(np.round(x_test[0, 0] * 255).astype(np.uint8), mode="L").save(png)
    print(f"wrote {args.out}/digits_calib.npz ({len(x_train)}), digits_eval.npz ({len(x_test)}) and {png}")
