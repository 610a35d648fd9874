"""Compile time for many models: `edgekit compile-batch` (one process, imports paid once) against one `edgekit
compile` process per model, and the batch's wall time for the 20 reference-size compiles the goal names.

The set: the reference models for the targets that run them (TFLite for rpi4 and stm32f746, ONNX QDQ for
jetson-orin-nano), the digits CNN with its bundled weights and calibration digits, the others with their
seeded random weights and 32 uniform random calibration frames (weights do not change compile time). Each
model's calibration uses `--calibration-method` (default minmax on the TFLite path, the fast one).
Goal (issue 18): the 20 in under 5 minutes on this 2-core machine.

    python tools/bench_compile.py [--compare 4] [--calibration-method histogram] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SET = [("digits_cnn", "rpi4"), ("digits_cnn", "stm32f746"), ("digits_cnn", "jetson-orin-nano"),
       ("mobilenet_v2_035_96", "rpi4"), ("mobilenet_v2_035_96", "stm32f746"),
       ("mobilenet_v2_035_96", "jetson-orin-nano"), ("mcunet_vww", "rpi4"), ("mcunet_vww", "stm32f746"),
       ("mcunet_vww", "jetson-orin-nano"), ("mcunet_in", "rpi4"), ("mcunet_in", "stm32f746"),
       ("mcunet_in", "jetson-orin-nano"), ("mobilenet_v2", "rpi4"), ("mobilenet_v2", "jetson-orin-nano"),
       ("resnet18", "rpi4"), ("resnet18", "jetson-orin-nano"), ("tiny_detector", "rpi4"),
       ("tiny_detector", "jetson-orin-nano"), ("digits_cnn", "rpi5"), ("mobilenet_v2_035_96", "rpi5")]


def calibration(model: str, out: Path) -> Path:
    """The calibration file for `model`: the digits for the digits CNN, else 32 uniform frames of its input."""
    from edgekit.models import create_model

    path = out / f"{model}_calib.npz"
    if not path.exists():
        if model == "digits_cnn":
            from edgekit.models.digits import load_digits_split

            frames = load_digits_split()[0][:200]
        else:
            shape = tuple(create_model(model).input_shape)
            frames = np.random.default_rng(0).random((32, *shape[1:]), dtype=np.float32)
        np.savez(path, x=frames)
    return path


def entry(model: str, target: str, out: Path, method: str) -> dict[str, object]:
    """One compile's options, as `compile-batch` reads them from a [[model]] table."""
    options: dict[str, object] = {"model": model, "target": target, "int8": True,
                                  "calib": str(calibration(model, out)), "output": str(out / f"{model}_{target}")}
    if model == "digits_cnn":
        options["pretrained"] = True
    if target != "jetson-orin-nano":  # the ONNX path calibrates with minmax already
        options["calibration_method"] = method
    return options


def toml(entries: list[dict[str, object]]) -> str:
    """The batch file for `entries` (strings quoted, booleans and numbers as they are)."""
    lines = []
    for options in entries:
        lines.append("[[model]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        lines.append("")
    return "\n".join(lines)


def argv(options: dict[str, object]) -> list[str]:
    """The `edgekit compile` command line of one entry."""
    args = ["compile", str(options["model"])]
    for key, value in options.items():
        if key != "model":
            args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=int, default=4, help="models also compiled one process each (default 4)")
    parser.add_argument("--calibration-method", default="minmax", choices=("minmax", "histogram"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    edgekit = [sys.executable, "-m", "edgekit.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "batch").mkdir()
        entries = [entry(m, t, out / "batch", args.calibration_method) for m, t in SET]
        few = [dict(e, output=str(out / "one" / Path(str(e["output"])).name)) for e in entries[:args.compare]]
        (out / "one").mkdir()
        separate_s = few_batch_s = 0.0
        if few:
            start = time.perf_counter()
            for options in few:
                subprocess.run([*edgekit, *argv(options)], check=True, capture_output=True)
            separate_s = time.perf_counter() - start
            (out / "few.toml").write_text(toml([dict(e, output=str(e["output"]) + "_b") for e in few]))
            start = time.perf_counter()
            subprocess.run([*edgekit, "compile-batch", str(out / "few.toml")], check=True, capture_output=True)
            few_batch_s = time.perf_counter() - start
        (out / "all.toml").write_text(toml(entries))
        start = time.perf_counter()
        done = subprocess.run([*edgekit, "compile-batch", str(out / "all.toml"), "--json"], capture_output=True,
                              text=True)
        all_s = time.perf_counter() - start
        report = json.loads(done.stdout)
    result = {"compare_models": len(few), "separate_processes_s": separate_s, "batch_s": few_batch_s,
              "ratio": separate_s / few_batch_s if few else None, "all_models": len(entries), "all_batch_s": all_s,
              "failed": report["failed"], "per_model_s": {m["model"]: round(m["seconds"], 1) for m in report["models"]},
              "calibration_method": args.calibration_method}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    if few:
        print(f"first {len(few)} models: one process each {separate_s:.1f} s, one compile-batch {few_batch_s:.1f} s "
              f"({result['ratio']:.2f}x)")
    print(f"all {len(entries)} models in one compile-batch: {all_s:.1f} s (goal: under 300 s); failed: "
          f"{', '.join(report['failed']) or 'none'}; TFLite calibration: {args.calibration_method}")
    for name, seconds in result["per_model_s"].items():
        print(f"  {name:<40} {seconds:>6.1f} s")


if __name__ == "__main__":
    main()
