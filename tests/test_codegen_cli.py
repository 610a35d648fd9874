"""`edgekit codegen`: the C, a Makefile and the board's linker script written, the firmware built for the profile's
core, its real sizes against the board from the linker (refused with exit 2 when short, unless --force), the stack
measured under QEMU, and the check against tflite-micro."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run

from edgekit.convert.config import Int8Config
from edgekit.convert.quantize import quantize
from edgekit.errors import ProfileError
from edgekit.mcu.board import core_of
from edgekit.models import create_model
from edgekit.models.digits import load_digits_split
from edgekit.targets import load_target

TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "make", "qemu-system-arm")
needs_arm = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                               reason=f"needs {', '.join(TOOLS)} (tools/setup.sh)")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x_train, *_ = load_digits_split()
    path = tmp_path_factory.mktemp("codegen_cli") / "digits_int8.tflite"
    return quantize(create_model("digits_cnn", pretrained=True), x_train[:100], path, Int8Config())


def _board(tmp_path: Path, flash: str, sram: str) -> Path:
    """A copy of the stm32f746 profile with other flash and SRAM sizes."""
    text = Path(str(load_target("stm32f746").path)).read_text()
    text = text.replace('value = "1 MiB"', f'value = "{flash}"').replace('value = "320 KiB"', f'value = "{sram}"')
    path = tmp_path / "board.toml"
    path.write_text(text.replace('name = "stm32f746"', 'name = "small-board"'))
    return path


def test_cores_and_fpus_come_from_the_profiles() -> None:
    assert core_of(load_target("stm32f746")).flags == ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard",
                                                       "-mfpu=fpv5-sp-d16")
    assert core_of(load_target("stm32h743")).flags[-1] == "-mfpu=fpv5-d16"  # double-precision FPU
    m4 = core_of(load_target("stm32f412"))
    assert (m4.cpu, m4.fpu, m4.qemu_machine) == ("cortex-m4", "fpv4-sp-d16", "mps2-an386")
    with pytest.raises(ProfileError, match="names no Arm Cortex-M core"):
        core_of(load_target("rpi4"))


@needs_arm
def test_codegen_builds_a_firmware_that_fits_and_is_bit_exact(digits: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "codegen", str(digits), "-o", str(out), "--target", "stm32f746", "--check", "3",
                          "--json")
    assert code == 0
    report = json.loads(stdout)
    fw = report["firmware"]
    assert fw["verdict"] == "fits" and report["fits"]
    assert [(c["build"], c["exact"]) for c in report["checks"]] == [("host", True), ("qemu mps2-an500", True)]
    assert 64 < report["stack_bytes"] <= fw["stack_reserved_bytes"] < report["stack_bytes"] + 8
    assert report["deployable_sram_bytes"] == fw["data"] + fw["bss"]
    assert fw["bss"] >= report["arena_bytes"] + fw["stack_reserved_bytes"]
    assert report["deployable_flash_bytes"] == fw["text"] + fw["data"] > report["constant_flash_bytes"]
    assert "-mfpu=fpv5-sp-d16" in (out / "Makefile").read_text()
    assert "LENGTH = 327680" in (out / "board.ld").read_text()  # the board's 320 KiB
    (out / "firmware.elf").unlink()  # the Makefile alone rebuilds the same firmware
    made = subprocess.run(["make", "-s", "-C", str(out)], capture_output=True, text=True, check=True)
    assert made.stdout.split()[6:9] == [str(fw["text"]), str(fw["data"]), str(fw["bss"])]


@needs_arm
def test_a_firmware_short_of_flash_and_sram_is_refused_with_the_linkers_numbers(
        digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    board = _board(tmp_path, "16 KiB", "1 KiB")
    argv = ("codegen", str(digits), "-o", str(tmp_path / "out"), "--target", str(board))
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and "does not fit small-board" in err and "--force" in err
    code, stdout, _ = run(capsys, *argv, "--force", "--json")
    report = json.loads(stdout)
    assert code == 0 and not report["fits"]
    assert report["firmware"]["short_bytes"] == {"flash": report["deployable_flash_bytes"] - 16384,
                                                 "SRAM": report["deployable_sram_bytes"] - 1024}
    assert not (tmp_path / "out" / "firmware.elf").exists()  # `make` must not find a firmware that does not fit


@needs_arm
def test_a_firmware_too_large_for_qemus_board_is_checked_on_the_host_and_built_for_the_board(
        digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.mcu.board
    import edgekit.mcu.build

    for module in (edgekit.mcu.board, edgekit.mcu.build):  # an MPS2 board with 8 KiB: the digits CNN is larger
        monkeypatch.setattr(module, "QEMU_MEMORY_BYTES", 8 << 10)
    code, stdout, err = run(capsys, "codegen", str(digits), "-o", str(tmp_path / "out"), "--target", "stm32f746",
                            "--check", "2", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert [(c["build"], c["exact"]) for c in report["checks"]] == [("host", True)]
    assert "bytes larger than the 8,192-byte FLASH of QEMU's mps2-an500 board" in report["qemu_skipped"]
    assert report["stack_bytes"] is None and report["firmware"]["verdict"] == "fits"


def test_a_target_that_is_not_a_cortex_m_is_refused(digits: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "codegen", str(digits), "-o", str(tmp_path), "--target", "rpi4", "--build", "host")
    assert code == 2 and "names no Arm Cortex-M core" in err


def test_a_missing_model_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "codegen", str(tmp_path / "none.tflite"), "-o", str(tmp_path), "--target", "stm32f746")
    assert code == 2 and "no such model file" in err


def test_host_build_checks_without_a_board(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, stdout, _ = run(capsys, "codegen", str(digits), "-o", str(tmp_path), "--target", "stm32f412",
                          "--build", "host", "--check", "2")
    assert code == 0
    assert "bit-exact, host" in stdout and "yes (2 random inputs)" in stdout and "not measured (--build host)" in stdout
    assert "-mcpu=cortex-m4" in (tmp_path / "Makefile").read_text()  # written for a later `make`


@pytest.fixture(scope="module")
def digits_nhwc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN quantized for the board (NHWC int8 I/O), so a patch stage can start at the image."""
    x_train, *_ = load_digits_split()
    path = tmp_path_factory.mktemp("codegen_cli") / "digits_nhwc_int8.tflite"
    return quantize(create_model("digits_cnn", pretrained=True), x_train[:100], path,
                    Int8Config.for_target(load_target("stm32f746")))


def test_patch_compiles_the_planners_schedule_in(digits_nhwc: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    reports = {}
    for flags in ((), ("--patch",)):
        code, stdout, err = run(capsys, "codegen", str(digits_nhwc), "-o", str(tmp_path / str(len(flags))),
                                "--target", "stm32f746", "--build", "host", "--check", "2", "--json", *flags)
        assert code == 0, err
        reports[flags] = json.loads(stdout)
    layered, patched = reports[()], reports[("--patch",)]
    assert layered["patch"] is None and patched["patch"]["patches"] == patched["patch"]["grid"] ** 2 > 1
    assert [c["exact"] for c in patched["checks"]] == [True]
    assert patched["arena_bytes"] < layered["arena_bytes"]
    assert "/* patch 1:" in (tmp_path / "1" / "ek_model.c").read_text()


def test_patch_on_a_model_no_stage_can_start_is_refused(digits: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "codegen", str(digits), "-o", str(tmp_path), "--target", "stm32f746", "--build",
                       "host", "--patch")
    assert code == 2 and "no layer can end a patch stage" in err  # NCHW input: a RESHAPE comes first
