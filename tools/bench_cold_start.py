"""Cold start of `edgekit run` against a bare LiteRT script doing the same job, side by side in one run.

Each round starts both as fresh processes, in alternating order, and times them from spawn to exit: the
digits CNN bundle for rpi4 (built here from the bundled weights unless --bundle is given), one PNG, the
top-5 classes printed. Also `import edgekit.runtime` against importing numpy + the LiteRT interpreter.
The goal (issue 18) is `edgekit run` <= 1.3x the bare script; the table gives min/median/max of the
per-round ratios. Bytecode is written and one warm-up round runs first, as on a device after install.

    python tools/bench_cold_start.py [--rounds 10] [--bundle DIR --image PNG] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = '''import sys
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
i, o = it.get_input_details()[0], it.get_output_details()[0]
h, w = i["shape"][2:4] if i["shape"][1] in (1, 3) else i["shape"][1:3]  # NCHW or NHWC
x = np.asarray(Image.open(sys.argv[2]).convert("L").resize((w, h)), np.float32) / 255
s, z = i["quantization"]
it.set_tensor(i["index"], np.clip(np.round(x / s + z), -128, 127).astype(np.int8).reshape(i["shape"]))
it.invoke()
print(np.argsort(-it.get_tensor(o["index"]).ravel())[:5])
'''


def build(out: Path) -> tuple[Path, Path]:
    """The digits CNN bundle for rpi4 and a digit PNG, made with the project's own tools."""
    edgekit = [sys.executable, "-m", "edgekit.cli"]
    subprocess.run([sys.executable, str(ROOT / "tools" / "digits_data.py"), str(out)], check=True,
                   capture_output=True)
    subprocess.run([*edgekit, "compile", "digits_cnn", "--pretrained", "--target", "rpi4", "--int8", "--calib",
                    str(out / "digits_calib.npz"), "-o", str(out / "digits_rpi4"), "--quiet"], check=True,
                   capture_output=True)
    return out / "digits_rpi4", out / "digit_7.png"


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to exit of `argv` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(bundle: Path, image: Path, rounds: int, work: Path) -> dict[str, list[float]]:
    """Per-round seconds of each command, the two of a pair run in alternating order."""
    model = next(bundle.glob("*.tflite"))
    (work / "bare.py").write_text(BARE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    commands = {
        "edgekit run": [sys.executable, "-m", "edgekit.cli", "run", str(bundle), "--input", str(image),
                        "--threads", "1"],
        "bare LiteRT script": [sys.executable, str(work / "bare.py"), str(model), str(image)],
        "import edgekit.runtime": [sys.executable, "-c", "import edgekit.runtime"],
        "import numpy + LiteRT": [sys.executable, "-c", "import numpy, ai_edge_litert.interpreter"],
    }
    for argv in commands.values():
        timed(argv, env)  # warm-up: bytecode written, files in the page cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    pairs = [("edgekit run", "bare LiteRT script"), ("import edgekit.runtime", "import numpy + LiteRT")]
    for r in range(rounds):
        for pair in pairs:
            for name in pair if r % 2 == 0 else pair[::-1]:
                times[name].append(timed(commands[name], env))
    return times


def summary(times: dict[str, list[float]]) -> list[dict[str, object]]:
    """One row per comparison: each side's median ms and the min/median/max of the per-round ratios."""
    rows = []
    for ours, base in (("edgekit run", "bare LiteRT script"), ("import edgekit.runtime", "import numpy + LiteRT")):
        ratios = [a / b for a, b in zip(times[ours], times[base])]
        rows.append({"ours": ours, "baseline": base, "ours_ms": statistics.median(times[ours]) * 1e3,
                     "baseline_ms": statistics.median(times[base]) * 1e3, "ratio_min": min(ratios),
                     "ratio_median": statistics.median(ratios), "ratio_max": max(ratios), "rounds": len(ratios)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bundle", type=Path, help="a bundle with one LiteRT stage taking a grey image")
    parser.add_argument("--image", type=Path, help="the PNG to run (with --bundle)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle, image = (args.bundle, args.image) if args.bundle else build(work)
        rows = summary(measure(bundle, image, args.rounds, work))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'command':<24} {'median ms':>9}   {'baseline':<22} {'median ms':>9}   ratio min / median / max")
    for row in rows:
        print(f"{row['ours']:<24} {row['ours_ms']:>9.1f}   {row['baseline']:<22} {row['baseline_ms']:>9.1f}   "
              f"{row['ratio_min']:.2f} / {row['ratio_median']:.2f} / {row['ratio_max']:.2f}  "
              f"({row['rounds']} interleaved rounds)")


if __name__ == "__main__":
    main()
