"""The firmware for a board: generated C, startup and a main written beside a Makefile and the board's linker
script, built with `make` for the profile's Cortex-M core, sized with arm-none-eabi-size and set against the
board by the linker itself ("region `FLASH' overflowed by N bytes"), not by an estimate.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import BackendError
from edgekit.mcu.board import board_script, core_of, makefile
from edgekit.mcu.build import elf_sizes, harness_file
from edgekit.mcu.codegen import GeneratedC
from edgekit.targets import Device

BOARD_FILES = ("startup.c", "ek_startup.h", "board_main.c")
DEFAULT_STACK_BYTES = 4096  # reserved when the stack was not measured under QEMU
_OVERFLOW = re.compile(r"region `(\w+)' overflowed by (\d+) bytes")


@dataclass(frozen=True)
class Firmware:
    """A board firmware as the linker placed it: arm-none-eabi-size's text/data/bss (bss holds the arena and the
    reserved stack) and the bytes each memory is short by (empty: it fits)."""

    elf: Path | None  # None when it does not fit (the ELF is removed, so `make` refuses it again)
    text: int
    data: int
    bss: int
    stack_bytes: int  # reserved at the top of SRAM: the measured high-water mark, or DEFAULT_STACK_BYTES
    short_bytes: dict[str, int]  # "flash" / "SRAM" -> bytes over, from the linker

    @property
    def fits(self) -> bool:
        return not self.short_bytes

    @property
    def verdict(self) -> str:
        """'fits', or 'short by N bytes of flash; short by M bytes of SRAM' from the linker."""
        return "fits" if self.fits else "; ".join(f"short by {n:,} bytes of {memory}"
                                                  for memory, n in self.short_bytes.items())

    @property
    def deployable_flash_bytes(self) -> int:
        """Flash the board must hold: code and constants, plus the initial values of .data."""
        return self.text + self.data

    @property
    def deployable_sram_bytes(self) -> int:
        """SRAM the firmware holds at once: .data, .bss (the static arena included) and the stack."""
        return self.data + self.bss


def write_board(generated: GeneratedC, target: Device, stack_bytes: int) -> Path:
    """Write the board's linker script, Makefile, startup and main beside the generated C; the folder."""
    folder = generated.files[0].parent
    for name in BOARD_FILES:
        shutil.copyfile(harness_file(name), folder / name)
    (folder / "board.ld").write_text(board_script(target, stack_bytes))
    sources = (*(p.name for p in generated.files if p.suffix == ".c"), "startup.c", "board_main.c")
    (folder / "Makefile").write_text(makefile(core_of(target), sources))
    return folder


def build_firmware(generated: GeneratedC, target: Device, stack_bytes: int | None) -> Firmware:
    """Write the board files and run `make`; the firmware's sizes and whether the linker fit it on the board."""
    for tool in ("make", "arm-none-eabi-gcc", "arm-none-eabi-size"):
        if shutil.which(tool) is None:
            raise BackendError(f"{tool} is not installed (tools/setup.sh installs the Arm toolchain)")
    stack = DEFAULT_STACK_BYTES if stack_bytes is None else -(-stack_bytes // 8) * 8
    folder = write_board(generated, target, stack)
    elf = folder / "firmware.elf"
    elf.unlink(missing_ok=True)
    done = subprocess.run(["make", "-s", "-C", str(folder), "LDEXTRA=-Wl,--noinhibit-exec"], capture_output=True,
                          text=True)
    if done.returncode != 0 or not elf.exists():
        raise BackendError(f"make failed on the firmware in {folder}:\n{done.stderr[-4000:]}")
    names = {"FLASH": "flash", "RAM": "SRAM"}
    short = {names.get(region, region): int(n) for region, n in _OVERFLOW.findall(done.stderr)}
    sizes = elf_sizes(elf)
    if short:
        elf.unlink()
    return Firmware(None if short else elf, sizes["text"], sizes["data"], sizes["bss"], stack, short)
