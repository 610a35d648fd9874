"""Build generated C with the harness (edgekit/mcu/harness/main.c) and run it on input records.

The host build (gcc, C99, every warning an error) checks the C against the tflite-micro interpreter on x86; the
Cortex-M build (arm-none-eabi-gcc, newlib with semihosting) runs the same C under QEMU's MPS2 board for its core
(`mps2-an500` for a Cortex-M7, `mps2-an386` for a Cortex-M4), where the harness's fopen/fread/fwrite reach the
host's files through semihosting and it reports the stack bytes the run touched (painted at reset) and, QEMU
counting instructions (`-icount shift=0`: its virtual clock advances 1 ns per instruction), the instructions spent
in ek_model_invoke, read from the board's 25 MHz timer (40 instructions a tick).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgekit.errors import BackendError
from edgekit.mcu.board import C_FLAGS, QEMU_MEMORY_BYTES, Core, qemu_script
from edgekit.mcu.codegen import GeneratedC

CORTEX_M7 = Core("cortex-m7", "fpv5-d16")  # QEMU's mps2-an500
QEMU_FLAGS = ("-DEK_SEMIHOSTING", "-ffunction-sections", "-fdata-sections", "-nostartfiles", "--specs=rdimon.specs",
              "-Wl,--gc-sections")
QEMU_ARGS = ("-nographic", "-monitor", "none", "-serial", "none", "-semihosting-config", "enable=on,target=native",
             "-icount", "shift=0")
INSTRUCTIONS_PER_TICK = 1_000_000_000 // 25_000_000  # 1 ns per instruction at shift=0; MPS2's timer clock 25 MHz


def harness_file(name: str) -> Path:
    """A file of the harness folder (main.c; startup.c, ek_startup.h and board_main.c of the Cortex-M builds)."""
    path = resources.files("edgekit.mcu") / "harness" / name
    return Path(str(path))


def compile_c(compiler: str, flags: tuple[str, ...], generated: GeneratedC, exe: Path, *extra: Path) -> Path:
    """Compile the generated sources, the harness main.c and `extra` files into `exe`; BackendError with the
    compiler's message when it fails."""
    if shutil.which(compiler) is None:
        raise BackendError(f"{compiler} is not installed (tools/setup.sh installs it)")
    sources = [p for p in generated.files if p.suffix == ".c"] + [harness_file("main.c"), *extra]
    folder = generated.files[0].parent
    done = subprocess.run([compiler, *flags, f"-I{folder}", f"-I{harness_file('.')}", *map(str, sources),
                           "-o", str(exe)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BackendError(f"{compiler} failed on the generated C in {folder}:\n{done.stderr[-4000:]}")
    return exe


def build_host(generated: GeneratedC, exe: Path) -> Path:
    """The generated model and harness as a host executable (gcc -std=c99 -O2 -Wall -Wextra -Werror)."""
    return compile_c("gcc", C_FLAGS, generated, exe)


class TooLargeForQemu(BackendError):
    """The model's firmware does not fit the memory of QEMU's MPS2 board, so it cannot be run there."""


def build_qemu(generated: GeneratedC, elf: Path, core: Core = CORTEX_M7) -> Path:
    """The generated model and harness as a firmware for QEMU's MPS2 board of `core` (semihosting, painted stack);
    TooLargeForQemu when the linker finds it larger than the board's memory."""
    script = elf.with_suffix(".ld")
    script.write_text(qemu_script())
    try:
        return compile_c("arm-none-eabi-gcc", (*C_FLAGS, *core.flags, *QEMU_FLAGS, "-T", str(script)), generated,
                         elf, harness_file("startup.c"))
    except BackendError as exc:
        overflow = re.search(r"region `(\w+)' overflowed by (\d+) bytes", str(exc))
        if overflow is None:
            raise
        raise TooLargeForQemu(f"the firmware is {int(overflow[2]):,} bytes larger than the {QEMU_MEMORY_BYTES:,}-byte "
                              f"{overflow[1]} of QEMU's {core.qemu_machine} board") from None


def elf_sizes(elf: Path) -> dict[str, int]:
    """text, data and bss bytes of a firmware, as arm-none-eabi-size reports them (bss includes the stack)."""
    done = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
    header, values = (line.split() for line in done.stdout.splitlines()[:2])
    return {name: int(value) for name, value in zip(header[:3], values[:3])}


def qemu_command(elf: Path, core: Core = CORTEX_M7) -> list[str]:
    """The command that runs a harness firmware under QEMU's MPS2 board for `core`, with semihosting."""
    if shutil.which("qemu-system-arm") is None:
        raise BackendError("qemu-system-arm is not installed (tools/setup.sh installs it)")
    if core.qemu_machine is None:
        raise BackendError(f"QEMU has no MPS2 board with a {core.cpu}")
    return ["qemu-system-arm", "-M", core.qemu_machine, *QEMU_ARGS, "-kernel", str(elf)]


@dataclass(frozen=True)
class Run:
    """What a harness run gave: one output row per input (int8, or float32 for a float output), and (under QEMU)
    the stack bytes it touched and the instructions one inference took (the mean over the inputs, to the timer's
    40-instruction tick)."""

    outputs: np.ndarray
    stack_bytes: int | None
    instructions: int | None = None


def run_records(command: list[str], inputs: np.ndarray, output_bytes: int, timeout_s: float,
                output_dtype: str = "int8") -> Run:
    """Run a harness build on `inputs` (int8, or float32 for a float input; one record per row) in a fresh temporary
    working directory, where it reads input.bin and writes output.bin (and under semihosting stack.txt and
    ticks.txt); each output record is `output_bytes` bytes of `output_dtype`."""
    records = np.ascontiguousarray(inputs).reshape(len(inputs), -1)
    with tempfile.TemporaryDirectory(prefix="ek_run_") as folder:
        (Path(folder) / "input.bin").write_bytes(records.tobytes())
        try:
            done = subprocess.run(command, cwd=folder, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BackendError(f"{command[0]} ran past {timeout_s:.0f} s") from None
        out, stack = Path(folder) / "output.bin", Path(folder) / "stack.txt"
        data = out.read_bytes() if out.exists() else b""
        stack_text = stack.read_text().strip() if stack.exists() else ""
        ticks = Path(folder) / "ticks.txt"
        ticks_text = ticks.read_text().strip() if ticks.exists() else ""
    if done.returncode != 0 or len(data) != len(records) * output_bytes:
        message = done.stderr.decode(errors="replace")[-2000:]
        raise BackendError(f"{command[0]} exited {done.returncode} with {len(data)} of "
                           f"{len(records) * output_bytes} output bytes: {message}")
    outputs = np.frombuffer(data, output_dtype).reshape(len(records), -1)
    instructions = int(ticks_text) * INSTRUCTIONS_PER_TICK // len(records) if ticks_text.isdigit() else None
    return Run(outputs, int(stack_text) if stack_text.isdigit() else None, instructions)
