"""Generated C on the reference models for an MCU board (default stm32f746), through `edgekit.mcu.deploy.codegen`
(what `edgekit codegen` runs): its one static arena against TF Lite Micro's measured arena, the board firmware's
arm-none-eabi-size text/data/bss, the stack high-water mark measured under QEMU (painted stack), the deployable
flash (text + data) and SRAM (data + bss, which holds the arena and the measured stack), the linker's verdict on
the board, and bit-exactness against the tflite-micro interpreter on 4 random int8 inputs (host build; the
firmware under QEMU's MPS2 board for the core), and the instructions one inference takes under QEMU
(`-icount shift=0`, read from the board's timer). Each model three times: (c) layer by layer, and (d) with
edgekit's patch schedule compiled in (`edgekit.mcu.deploy.patch_plan`: the planner under the board's budget,
patched even when layer by layer fits), the image streamed window by window (the planner's default accounting,
the paper's) or held resident in the arena. Beside each, the planner's predicted peak: layer by layer for (c),
the plan's for (d) (a resident image counted live through the whole stage, as every patch reads it again).

Models are quantized for the target (full integer, NHWC int8 I/O); digits_cnn with its trained weights, the others
with random ones (sizes do not depend on them).

Run: python tools/bench_codegen.py [--models digits_cnn,mobilenet_v2_035_96,mcunet_vww] [--target stm32f746] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.convert.config import Int8Config
from edgekit.convert.mcu import measure_arena
from edgekit.convert.quantize import quantize
from edgekit.errors import EdgekitError
from edgekit.mcu.deploy import codegen, patch_plan
from edgekit.models import create_model
from edgekit.report.table import table
from edgekit.targets import load_target

MODELS = ("digits_cnn", "mobilenet_v2_035_96", "mcunet_vww")
CHECK_INPUTS = 4


def measure(name: str, target_name: str, workdir: Path) -> list[dict]:
    """One model's rows, (c) layer by layer then (d) patched: TFLM arena, the C arena, firmware sizes, stack,
    deployable bytes, fit, instructions per inference, bit-exactness."""
    sys.stderr.write(f"[bench_codegen] {name}\n")
    target = load_target(target_name)
    model = create_model(name, pretrained=True) if name == "digits_cnn" else create_model(name)
    calibration = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    path = quantize(model, calibration, workdir / f"{name}.tflite", Int8Config.for_target(target))
    tflm = measure_arena(path)
    rows = []
    streamed = patch_plan(path, target)
    plans = {"C": None, "C patched": streamed, "C patched, image resident": patch_plan(path, target, resident=True)}
    for kind, patch in plans.items():
        start = time.perf_counter()
        try:
            report = codegen(path, workdir / f"{name}_{len(rows)}", target, check=CHECK_INPUTS, patch=patch)
        except EdgekitError as exc:
            rows.append({"model": name, "build": kind, "refused": str(exc)})
            continue
        row = {**report.to_dict(), "model": name, "build": kind, "tflite_bytes": path.stat().st_size,
               "tflm_arena_bytes": tflm, "seconds": time.perf_counter() - start}
        row |= {f"exact_{c['build'].split()[0]}": c["exact"] for c in row.pop("checks")}
        row["planner_bytes"] = streamed.layer_by_layer_peak_bytes
        if patch is not None and patch.chosen is not None:
            row |= {"build": f"{kind} {patch.chosen.grid}x{patch.chosen.grid}",
                    "planner_bytes": patch.chosen.peak_bytes}
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        value = row.get(key, (row.get("firmware") or {}).get(key))
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    keys = ("tflite_bytes", "tflm_arena_bytes", "arena_bytes", "planner_bytes", "stack_bytes", "text", "data", "bss",
            "deployable_flash_bytes", "deployable_sram_bytes", "instructions_per_inference", "verdict", "exact_host",
            "exact_qemu")
    heads = ("model", "build", ".tflite B", "TFLM arena B", "C arena B", "planner peak B", "stack B (QEMU)", "text",
             "data", "bss", "deployable flash B", "deployable SRAM B", "instructions (QEMU)", "board (linker)",
             "host exact", "QEMU exact")
    done = [r for r in rows if "refused" not in r]
    lines = [table(heads, [[r["model"], r["build"], *(cell(r, k) for k in keys)] for r in done])]
    lines += [f"{r['model']} ({r['build']}): refused: {r['refused']}" for r in rows if "refused" in r]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--target", default="stm32f746")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_codegen_") as folder:
        rows = [row for name in args.models.split(",") for row in measure(name, args.target, Path(folder))]
    print(json.dumps(rows, indent=2, default=str) if args.json else render(rows))


if __name__ == "__main__":
    main()
