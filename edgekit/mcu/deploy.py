"""`edgekit codegen`: a full-integer INT8 .tflite as generated C and a firmware for an MCU profile's board, with
its real sizes against the board, its measured stack and, on request, a bit-exact check against tflite-micro.

The check runs random int8 inputs through the host build and (when qemu-system-arm is installed) the firmware under
QEMU's MPS2 board for the core; the QEMU run also measures the stack high-water mark that the board's linker script
then reserves, so the linker's verdict covers arena, .data, .bss and stack together, and counts the instructions of
one inference. With a patch plan (`patch_plan`: edgekit's planner under the board's budget) the stage is compiled
in patch by patch (`edgekit.mcu.patched`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.mcu import generous_arena_bytes
from edgekit.errors import BackendError, ModelLoadError, ProfileError
from edgekit.graph.from_tflite import from_tflite
from edgekit.mcu.board import core_of
from edgekit.mcu.build import TooLargeForQemu, build_host, build_qemu, qemu_command, run_records
from edgekit.mcu.codegen import GeneratedC, generate
from edgekit.mcu.firmware import DEFAULT_STACK_BYTES, Firmware, build_firmware, write_board
from edgekit.mcu.patched import generate_patched
from edgekit.memory import MemoryPolicy
from edgekit.plan.patch import PatchPlan, plan_patches
from edgekit.targets import Device

BUILDS = ("cortex-m", "host")
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Check:
    """Whether one build's outputs equal tflite-micro's, byte for byte, on `inputs` random int8 inputs."""

    build: str  # "host" or "qemu mps2-an500"
    inputs: int
    exact: bool


@dataclass(frozen=True)
class CodegenReport:
    """What `codegen` wrote and measured: the C's arena and constants, the board firmware and the checks."""

    model: str
    target: str
    out_dir: str
    core: str
    generated: GeneratedC
    board_flash_bytes: int
    board_sram_bytes: int
    stack_bytes: int | None  # measured under QEMU (the harness's painted stack); None when not run
    firmware: Firmware | None  # None for --build host
    checks: tuple[Check, ...]
    instructions: int | None = None  # per inference under QEMU (-icount shift=0); None when not run
    patch: PatchPlan | None = None  # the schedule compiled in; None: layer by layer
    qemu_skipped: str | None = None  # why the firmware did not run under QEMU though it was asked to

    @property
    def fits(self) -> bool:
        return self.firmware is None or self.firmware.fits

    def to_dict(self) -> dict[str, Any]:
        fw = self.firmware
        return {"model": self.model, "target": self.target, "out_dir": self.out_dir, "core": self.core,
                "arena_bytes": self.generated.arena_bytes,
                "arena_lower_bound_bytes": self.generated.arena_lower_bound_bytes,
                "constant_flash_bytes": self.generated.weight_flash_bytes, "stack_bytes": self.stack_bytes,
                "board_flash_bytes": self.board_flash_bytes, "board_sram_bytes": self.board_sram_bytes,
                "firmware": None if fw is None else {
                    "elf": None if fw.elf is None else str(fw.elf), "text": fw.text, "data": fw.data, "bss": fw.bss,
                    "stack_reserved_bytes": fw.stack_bytes, "short_bytes": fw.short_bytes, "verdict": fw.verdict},
                "deployable_flash_bytes": None if fw is None else fw.deployable_flash_bytes,
                "deployable_sram_bytes": None if fw is None else fw.deployable_sram_bytes,
                "fits": self.fits, "checks": [vars(c) for c in self.checks],
                "instructions_per_inference": self.instructions, "qemu_skipped": self.qemu_skipped,
                "patch": None if self.patch is None else _patch(self.patch)}

    def rows(self) -> list[tuple[str, str]]:
        """(what, value) lines of the text report."""
        fw, stack = self.firmware, self.stack_bytes
        lines = [("model", self.model), ("target", f"{self.target} ({self.core})"),
                 ("C arena (static, SRAM)", f"{self.generated.arena_bytes:,} B (live-tensor lower bound "
                                            f"{self.generated.arena_lower_bound_bytes:,} B)"),
                 ("C constants (flash)", f"{self.generated.weight_flash_bytes:,} B"),
                 ("stack high-water (QEMU)", f"{stack:,} B" if stack is not None else
                  "not measured (--build host)" if fw is None else
                  f"not measured ({self.qemu_skipped}; {DEFAULT_STACK_BYTES:,} B reserved)" if self.qemu_skipped
                  else "not measured (no QEMU board for the core)")]
        if fw is not None:
            lines += [("firmware text / data / bss", f"{fw.text:,} / {fw.data:,} / {fw.bss:,} B (bss holds the arena "
                                                     f"and {fw.stack_bytes:,} B of stack)"),
                      ("deployable flash", f"{fw.deployable_flash_bytes:,} B of {self.board_flash_bytes:,} B"),
                      ("deployable SRAM", f"{fw.deployable_sram_bytes:,} B of {self.board_sram_bytes:,} B"),
                      ("board (linker)", fw.verdict)]
        if self.patch is not None and self.patch.chosen is not None:
            chosen = self.patch.chosen
            image = "resident" if self.patch.input_resident else "streamed"
            lines.insert(2, ("patch schedule", f"{len(self.patch.tiles)} patches ({chosen.grid}x{chosen.grid}) up to "
                                               f"{chosen.stage_end}, image {image}; planner peak "
                                               f"{chosen.peak_bytes:,} B"))
        if self.instructions is not None:
            lines.append(("instructions per inference (QEMU)", f"{self.instructions:,}"))
        lines += [(f"bit-exact, {c.build}", f"{'yes' if c.exact else 'NO'} ({c.inputs} random inputs)")
                  for c in self.checks]
        if self.qemu_skipped:
            lines.append(("under QEMU", f"not run: {self.qemu_skipped}"))
        return lines + [("written to", f"{self.out_dir}/")]


def _patch(plan: PatchPlan) -> dict[str, Any]:
    chosen = plan.chosen
    assert chosen is not None  # generate_patched refuses a plan without a schedule
    return {"stage_end": chosen.stage_end, "grid": chosen.grid, "patches": len(plan.tiles),
            "planner_peak_bytes": chosen.peak_bytes, "planner_extra_macs": chosen.extra_macs,
            "input_resident": plan.input_resident}


def patch_plan(tflite_path: Path, target: Device, resident: bool = False) -> PatchPlan:
    """edgekit's patch plan for the generated C on `target`: the smallest peak within the planner's recompute
    budget, patched even when layer by layer fits, in the C's accounting (`MemoryPolicy.generated_c()`: residual
    adds fused); the image streamed window by window (the planner's default), or `resident`, held whole."""
    return plan_patches(from_tflite(tflite_path), target.activation_budget_bytes, input_resident=resident,
                        policy=MemoryPolicy.generated_c(), force_patch=True)


def tflm_outputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """The tflite-micro interpreter's int8 output for each input, one row each."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise BackendError("the check needs tflite-micro (pip install 'edgekit[convert]')") from None
    interpreter = runtime.Interpreter.from_bytes(tflite, arena_size=generous_arena_bytes(len(tflite)))
    rows = []
    for x in inputs:
        interpreter.set_input(x, 0)
        interpreter.invoke()
        rows.append(np.asarray(interpreter.get_output(0)).reshape(-1))
    return np.array(rows)


def random_inputs(generated: GeneratedC, count: int, seed: int) -> np.ndarray:
    """`count` random inputs of the model: int8 values, or for a float32 input values spread over what its
    quantization covers and a quarter beyond each end (clamped there), off the int8 grid."""
    rng = np.random.default_rng(seed)
    shape = (count, *generated.input_shape)
    if generated.input_quantization is None:
        return rng.integers(-128, 128, shape, dtype=np.int8)
    scale, zero_point = generated.input_quantization
    return ((rng.uniform(-192, 191, shape) - zero_point) * scale).astype(np.float32)


def codegen(tflite_path: Path, out_dir: Path, target: Device, build: str = "cortex-m", check: int = 0,
            seed: int = 0, patch: PatchPlan | None = None) -> CodegenReport:
    """Generate the C of `tflite_path` into `out_dir` (with `patch`'s stage patch by patch) with the board's
    Makefile and linker script, build it (`build` "cortex-m": the board firmware; "host": gcc only) and check
    `check` random inputs bit-exact."""
    if build not in BUILDS:
        raise BackendError(f"build must be one of {', '.join(BUILDS)}, found {build!r}")
    core = core_of(target)
    if target.flash is None or target.sram is None:
        raise ProfileError(f"{target.path or target.name}: an MCU profile needs memory.flash and memory.sram")
    if not tflite_path.is_file():
        raise ModelLoadError(f"{tflite_path}: no such model file (a full-integer INT8 .tflite)")
    data = tflite_path.read_bytes()
    generated = generate(data, out_dir, tflite_path.name) if patch is None else generate_patched(tflite_path, patch,
                                                                                                 out_dir)
    x = random_inputs(generated, max(check, 1), seed)
    want = tflm_outputs(data, x) if check else x[:0]
    out_bytes, out_dtype = generated.output_bytes, generated.output_dtype
    checks, stack, instructions = [], None, None
    with tempfile.TemporaryDirectory(prefix="ek_codegen_") as folder:
        if check:
            host = run_records([str(build_host(generated, Path(folder) / "host"))], x, out_bytes, RUN_TIMEOUT_S,
                               out_dtype)
            checks.append(Check("host", check, bool(np.array_equal(host.outputs, want))))
        qemu_skipped = None
        if build == "cortex-m" and shutil.which("qemu-system-arm") and core.qemu_machine:
            try:
                elf = build_qemu(generated, Path(folder) / "qemu.elf", core)
            except TooLargeForQemu as exc:  # the board's own firmware is still built and judged below
                qemu_skipped = str(exc)
            else:
                emulated = run_records(qemu_command(elf, core), x, out_bytes, RUN_TIMEOUT_S, out_dtype)
                stack, instructions = emulated.stack_bytes, emulated.instructions
                if check:
                    checks.append(Check(f"qemu {core.qemu_machine}", check,
                                        bool(np.array_equal(emulated.outputs, want))))
    if build == "host":  # the board files still, for a later `make` where the Arm toolchain is
        write_board(generated, target, DEFAULT_STACK_BYTES)
    firmware = build_firmware(generated, target, stack) if build == "cortex-m" else None
    return CodegenReport(tflite_path.name, target.name, str(out_dir), core.cpu, generated, int(target.flash.value),
                         int(target.sram.value), stack, firmware, tuple(checks), instructions, patch, qemu_skipped)
