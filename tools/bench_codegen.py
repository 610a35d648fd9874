"""Generated C on the reference models for an MCU board (default stm32f746), through `edgekit.mcu.deploy.codegen`
(what `edgekit codegen` runs): its one static arena against TF Lite Micro's measured arena, the board firmware's
arm-none-eabi-size text/data/bss, the stack high-water mark measured under QEMU (painted stack), the deployable
flash (text + data) and SRAM (data + bss, which holds the arena and the measured stack), the linker's verdict on
the board, and bit-exactness against the tflite-micro interpreter on 4 random int8 inputs (host build; the
firmware under QEMU's MPS2 board for the core).

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
from edgekit.mcu.deploy import codegen
from edgekit.models import create_model
from edgekit.report.table import table
from edgekit.targets import load_target

MODELS = ("digits_cnn", "mobilenet_v2_035_96", "mcunet_vww")
CHECK_INPUTS = 4


def measure(name: str, target_name: str, workdir: Path) -> dict:
    """One model's row: TFLM arena, the C arena, firmware sizes, stack, deployable bytes, fit, bit-exactness."""
    sys.stderr.write(f"[bench_codegen] {name}\n")
    target = load_target(target_name)
    model = create_model(name, pretrained=True) if name == "digits_cnn" else create_model(name)
    calibration = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    path = quantize(model, calibration, workdir / f"{name}.tflite", Int8Config.for_target(target))
    start = time.perf_counter()
    try:
        report = codegen(path, workdir / name, target, check=CHECK_INPUTS)
    except EdgekitError as exc:
        return {"model": name, "refused": str(exc)}
    row = {**report.to_dict(), "model": name, "tflite_bytes": path.stat().st_size,
           "tflm_arena_bytes": measure_arena(path), "seconds": time.perf_counter() - start}
    row |= {f"exact_{c['build'].split()[0]}": c["exact"] for c in row.pop("checks")}
    return row


def render(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        value = row.get(key, (row.get("firmware") or {}).get(key))
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    keys = ("tflite_bytes", "tflm_arena_bytes", "arena_bytes", "stack_bytes", "text", "data", "bss",
            "deployable_flash_bytes", "deployable_sram_bytes", "verdict", "exact_host", "exact_qemu")
    heads = ("model", ".tflite B", "TFLM arena B", "C arena B", "stack B (QEMU)", "text", "data", "bss",
             "deployable flash B", "deployable SRAM B", "board (linker)", "host exact", "QEMU exact")
    done = [r for r in rows if "refused" not in r]
    lines = [table(heads, [[r["model"], *(cell(r, k) for k in keys)] for r in done])]
    lines += [f"{r['model']}: refused: {r['refused']}" for r in rows if "refused" in r]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--target", default="stm32f746")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_codegen_") as folder:
        rows = [measure(name, args.target, Path(folder)) for name in args.models.split(",")]
    print(json.dumps(rows, indent=2, default=str) if args.json else render(rows))


if __name__ == "__main__":
    main()
