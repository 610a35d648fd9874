"""Build generated C with the harness (edgekit/mcu/harness/main.c) and run it on input records.

The host build (gcc, C99, every warning an error) checks the C against the tflite-micro interpreter on x86; the
Cortex-M7 build (arm-none-eabi-gcc, newlib with semihosting) runs the same C under `qemu-system-arm -M mps2-an500`,
where the harness's fopen/fread/fwrite reach the host's files through semihosting.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from edgekit.errors import BackendError
from edgekit.mcu.codegen import GeneratedC

HOST_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")
CORTEX_M7_FLAGS = (*HOST_FLAGS, "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16",
                   "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", "--specs=rdimon.specs")
QEMU_M7 = ("qemu-system-arm", "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-kernel")


def harness_file(name: str) -> Path:
    """A file of the harness folder (main.c, startup and linker script of the Cortex-M build)."""
    path = resources.files("edgekit.mcu") / "harness" / name
    return Path(str(path))


def compile_c(compiler: str, flags: tuple[str, ...], generated: GeneratedC, exe: Path, *extra: Path) -> Path:
    """Compile the generated sources, the harness main.c and `extra` files into `exe`; BackendError with the
    compiler's message when it fails."""
    if shutil.which(compiler) is None:
        raise BackendError(f"{compiler} is not installed (tools/setup.sh installs it)")
    sources = [p for p in generated.files if p.suffix == ".c"] + [harness_file("main.c"), *extra]
    folder = generated.files[0].parent
    done = subprocess.run([compiler, *flags, f"-I{folder}", *map(str, sources), "-o", str(exe)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BackendError(f"{compiler} failed on the generated C in {folder}:\n{done.stderr[-4000:]}")
    return exe


def build_host(generated: GeneratedC, exe: Path) -> Path:
    """The generated model and harness as a host executable (gcc -std=c99 -O2 -Wall -Wextra -Werror)."""
    return compile_c("gcc", HOST_FLAGS, generated, exe)


def build_cortex_m7(generated: GeneratedC, elf: Path) -> Path:
    """The generated model and harness as a Cortex-M7 firmware for QEMU's mps2-an500 (startup.c, mps2.ld)."""
    flags = (*CORTEX_M7_FLAGS, "-T", str(harness_file("mps2.ld")))
    return compile_c("arm-none-eabi-gcc", flags, generated, elf, harness_file("startup.c"))


def elf_sizes(elf: Path) -> dict[str, int]:
    """text, data and bss bytes of a firmware, as arm-none-eabi-size reports them."""
    done = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
    header, values = (line.split() for line in done.stdout.splitlines()[:2])
    return {name: int(value) for name, value in zip(header[:3], values[:3])}


def qemu_command(elf: Path) -> list[str]:
    """The command that runs a Cortex-M7 harness firmware under QEMU with semihosting."""
    if shutil.which(QEMU_M7[0]) is None:
        raise BackendError(f"{QEMU_M7[0]} is not installed (tools/setup.sh installs it)")
    return [*QEMU_M7, str(elf)]


def run_records(command: list[str], inputs: np.ndarray, output_bytes: int, timeout_s: float) -> np.ndarray:
    """Run a harness build on int8 `inputs` (one record per row): its outputs as int8 rows.

    The harness reads input.bin and writes output.bin in its working directory (a fresh temporary one)."""
    records = np.ascontiguousarray(inputs, np.int8).reshape(len(inputs), -1)
    with tempfile.TemporaryDirectory(prefix="ek_run_") as folder:
        (Path(folder) / "input.bin").write_bytes(records.tobytes())
        try:
            done = subprocess.run(command, cwd=folder, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BackendError(f"{command[0]} ran past {timeout_s:.0f} s") from None
        out = Path(folder) / "output.bin"
        data = out.read_bytes() if out.exists() else b""
    if done.returncode != 0 or len(data) != len(records) * output_bytes:
        message = done.stderr.decode(errors="replace")[-2000:]
        raise BackendError(f"{command[0]} exited {done.returncode} with {len(data)} of "
                           f"{len(records) * output_bytes} output bytes: {message}")
    return np.frombuffer(data, np.int8).reshape(len(records), output_bytes)
