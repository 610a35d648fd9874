"""Generated C on the reference models: its one static arena against TF Lite Micro's measured arena, flash of its
constants against the .tflite, and (when arm-none-eabi-gcc and qemu-system-arm are installed) the Cortex-M7
firmware's arm-none-eabi-size text/data/bss, each build checked bit-exact against the tflite-micro interpreter on
4 random int8 inputs (host build; the firmware under QEMU mps2-an500).

Models are quantized for the target (stm32f746: full integer, NHWC int8 I/O); digits_cnn with its trained
weights, the others with random ones (sizes do not depend on them).

Run: python tools/bench_codegen.py [--models digits_cnn,mobilenet_v2_035_96,mcunet_vww] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.convert.config import Int8Config
from edgekit.convert.quantize import quantize
from edgekit.errors import EdgekitError
from edgekit.mcu.build import build_cortex_m7, build_host, elf_sizes, qemu_command, run_records
from edgekit.mcu.codegen import generate
from edgekit.models import create_model
from edgekit.report.table import table
from edgekit.runtime.backends import TflmAdapter
from edgekit.targets import load_target

MODELS = ("digits_cnn", "mobilenet_v2_035_96", "mcunet_vww")


def measure(name: str, workdir: Path) -> dict:
    """One model's row: arenas, flash, firmware sizes, bit-exactness."""
    sys.stderr.write(f"[bench_codegen] {name}\n")
    model = create_model(name, pretrained=True) if name == "digits_cnn" else create_model(name)
    calibration = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    path = quantize(model, calibration, workdir / f"{name}.tflite", Int8Config.for_target(load_target("stm32f746")))
    data = path.read_bytes()
    try:
        generated = generate(data, workdir / name, name)
    except EdgekitError as exc:
        return {"model": name, "refused": str(exc)}
    x = np.random.default_rng(1).integers(-128, 128, (4, *generated.input_shape), dtype=np.int8)
    tflm = TflmAdapter(data)
    want = []
    for row in x:
        tflm.input_buffer[...] = row
        want.append(tflm.invoke()[0].reshape(-1))
    out_bytes = int(np.prod(generated.output_shape))
    host = run_records([str(build_host(generated, workdir / f"{name}.host"))], x, out_bytes, 120)
    row = {"model": name, "tflite_bytes": len(data), "tflm_arena_bytes": tflm.memory()["bytes"],
           "arena_bytes": generated.arena_bytes, "arena_lower_bound_bytes": generated.arena_lower_bound_bytes,
           "constant_flash_bytes": generated.weight_flash_bytes, "host_bit_exact": bool(np.array_equal(host, want))}
    if all(shutil.which(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")):
        elf = build_cortex_m7(generated, workdir / f"{name}.elf")
        start = time.perf_counter()
        emulated = run_records(qemu_command(elf), x, out_bytes, 600)
        row |= {f"m7_{k}": v for k, v in elf_sizes(elf).items()}
        row |= {"qemu_bit_exact": bool(np.array_equal(emulated, want)), "qemu_s": time.perf_counter() - start}
    return row


def render(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) \
            else str(value)

    keys = ("tflite_bytes", "tflm_arena_bytes", "arena_bytes", "arena_lower_bound_bytes", "constant_flash_bytes",
            "m7_text", "m7_data", "m7_bss", "host_bit_exact", "qemu_bit_exact")
    heads = ("model", ".tflite B", "TFLM arena B", "C arena B", "live lower bound B", "C constants B",
             "M7 text", "M7 data", "M7 bss", "host exact", "QEMU exact")
    done = [r for r in rows if "refused" not in r]
    lines = [table(heads, [[r["model"], *(cell(r, k) for k in keys)] for r in done])]
    lines += [f"{r['model']}: refused: {r['refused']}" for r in rows if "refused" in r]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_codegen_") as folder:
        rows = [measure(name, Path(folder)) for name in args.models.split(",")]
    print(json.dumps(rows, indent=2) if args.json else render(rows))


if __name__ == "__main__":
    main()
