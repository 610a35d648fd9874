"""What edgekit.runtime costs on top of calling the backend interpreter directly, same model, same run.

Models: the pretrained digits CNN (calibrated on 100 digits of the training split, timed on a held-out digit)
and MobileNetV2-0.35 @96 (random weights, calibrated on 32 uniform [0, 1) frames, timed on one such frame),
each quantized to INT8 TFLite (full integer, int8 I/O, LiteRT) and ONNX QDQ (float I/O, ONNX Runtime CPU),
then put in a bundle. Three calls per model file, all doing one float frame -> float scores:

- invoke only: the interpreter alone with the input already in the model's dtype (LiteRT set_tensor + invoke +
  get_tensor on int8; ORT session.run on float32). The floor.
- hand-written: what a user writes without edgekit's runtime: float -> int8 and back with numpy
  (`edgekit.formats.quant`, a new array each), the calls above. For ONNX (float I/O) it is the same as invoke
  only.
- session: `edgekit.runtime.load(bundle).run(frame)`, which also validates shape, dtype and finiteness, times
  itself and returns a fresh array.

All three run with one thread, each on its own interpreter, interleaved call by call (each step runs the three
once, in a rotating order; `--rounds` x `--reps` steps). A decoy pair of interpreters is made first and never
timed: the first ONNX Runtime session of a process runs 4-6% slower than later ones, which once showed up as
edgekit's overhead because its session was always made first; the session is now made last.
Reported: median per call and the session's overhead against each. Goal: <= 5% over hand-written.

`--venv PATH` also reports a runtime-only install there (its site-packages size, the biggest packages, and the
import time of edgekit.runtime). To make one:

    python -m venv /tmp/rt && /tmp/rt/bin/pip install numpy onnxruntime ai-edge-litert && \\
        /tmp/rt/bin/pip install --no-deps .

Run: python tools/bench_runtime.py [--rounds 15] [--reps 40] [--json] [--venv PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_int8 import load_model, machine_info, stdout_to_stderr, time_interleaved  # same folder: tools/

from edgekit.convert.compile import tensor_infos
from edgekit.formats import quant
from edgekit.formats.bundle import Manifest, Stage, write_bundle
from edgekit.report.table import table
from edgekit.runtime import load

MODELS = ("digits_cnn", "mobilenet_v2_035_96")
FORMATS = {"tflite": "litert", "onnx": "onnxruntime"}
CALLS = ("invoke_only", "hand_written", "session")


def say(message: str) -> None:
    sys.stderr.write(f"[bench_runtime] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- bundles


def make_bundle(name: str, model_file: Path, out: Path) -> Path:
    fmt = model_file.suffix[1:]
    source = out.with_name(out.name + ".src")
    source.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, source / model_file.name)
    (inputs,), (outputs,) = tensor_infos(model_file)
    stage = Stage("main", FORMATS[fmt], model_file.name, (inputs,), (outputs,))
    return write_bundle(source, Manifest(name, "x86-server", (stage,)), out)


def convert(name: str, model: Any, calib: np.ndarray, out: Path) -> dict[str, Path]:
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize

    files = {}
    for fmt in FORMATS:
        say(f"quantizing {name} -> {fmt}")
        with stdout_to_stderr():
            files[fmt] = quantize(model, calib, out / f"{name}.{fmt}", Int8Config(format=fmt))
    return files


# ---------------------------------------------------------------- the three calls


def direct_calls(path: Path, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    """invoke_only and hand_written over the backend interpreter itself (one thread, as the session).

    Each gets its own interpreter, as the session has its own: when calls are interleaved, every call then
    follows another interpreter's call, so no variant finds its weights warmer in cache than another.
    """
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        def interpreter() -> Any:
            it = Interpreter(model_content=path.read_bytes(), num_threads=1)
            it.allocate_tensors()
            return it

        a, b = interpreter(), interpreter()
        inp, out = a.get_input_details()[0], a.get_output_details()[0]
        (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
        q = quant.quantize(x, in_scale, in_zero, inp["dtype"])

        def invoke_only() -> Any:
            a.set_tensor(inp["index"], q)
            a.invoke()
            return a.get_tensor(out["index"])

        def hand_written() -> Any:
            b.set_tensor(inp["index"], quant.quantize(x, in_scale, in_zero, inp["dtype"]))
            b.invoke()
            return quant.dequantize(b.get_tensor(out["index"]), out_scale, out_zero)

        return {"invoke_only": invoke_only, "hand_written": hand_written}
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
                for _ in range(2)]
    feed = {sessions[0].get_inputs()[0].name: x}
    return {"invoke_only": lambda: sessions[0].run(None, feed)[0],  # float I/O: the same call as hand-written
            "hand_written": lambda: sessions[1].run(None, feed)[0]}


def run(models: Sequence[str], rounds: int, reps: int, warmup: int, out: Path, seed: int = 0) -> list[dict]:
    rows = []
    for name in models:
        model, calib, x, _ = load_model(name, seed)
        if name == "digits_cnn":
            calib = calib[:100]
        files = convert(name, model, calib, out)
        for fmt, path in files.items():
            bundle = make_bundle(name, path, out / f"{name}_{fmt}.ekb")
            with stdout_to_stderr():  # LiteRT announces its XNNPACK delegate on load
                _decoy = direct_calls(path, x)  # kept, never timed: a process's first ORT session runs 4-6% slower
                direct = direct_calls(path, x)
                session = load(bundle, threads=1)  # created last, after the direct calls' interpreters
                calls = dict(direct, session=lambda s=session, x=x: s.run(x))
            np.testing.assert_array_equal(calls["session"](), calls["hand_written"]())  # same job, same numbers
            times = time_interleaved(calls, rounds, reps, warmup, f"{name} {fmt}", call_by_call=True, scale=1e6,
                                     tool="bench_runtime")
            medians = {key: statistics.median(times[key]) for key in CALLS}
            rows.append({"model": name, "format": fmt, "backend": FORMATS[fmt],
                         **{f"{key}_us": medians[key] for key in CALLS},
                         "overhead_vs_hand_written": medians["session"] / medians["hand_written"] - 1,
                         "overhead_vs_invoke_only": medians["session"] / medians["invoke_only"] - 1,
                         "extra_us_vs_hand_written": medians["session"] - medians["hand_written"],
                         "samples_per_call": len(times["session"])})
    return rows


# ---------------------------------------------------------------- runtime-only install


def venv_report(venv: Path) -> dict[str, Any]:
    """Site-packages size of `venv`, its five biggest top-level entries and `import edgekit.runtime` time there."""
    sites = sorted(venv.glob("lib/python*/site-packages")) or sorted(venv.glob("Lib/site-packages"))
    if not sites:
        raise SystemExit(f"{venv}: no site-packages folder (expected a virtual environment)")
    site = sites[0]

    def size(p: Path) -> int:
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())

    entries = {p.name: size(p) for p in site.iterdir() if not p.name.endswith(".dist-info")}
    python = venv / "bin" / "python"
    lines = subprocess.run([str(python), "-X", "importtime", "-c", "import edgekit.runtime, sys; "
                            "assert 'torch' not in sys.modules"], capture_output=True, text=True,
                           check=True, cwd=tempfile.gettempdir()).stderr.splitlines()
    cumulative = int(lines[-1].split("|")[1])
    torch_there = subprocess.run([str(python), "-c", "import torch"], capture_output=True,
                                 cwd=tempfile.gettempdir()).returncode == 0
    return {"venv": str(venv), "site_packages_bytes": size(site), "torch_installed": torch_there,
            "biggest": sorted(entries.items(), key=lambda kv: -kv[1])[:5],
            "import_edgekit_runtime_s": cumulative / 1e6}


# ---------------------------------------------------------------- output


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [f"cpu: {m['cpu_model']} ({m['arch']}), {m['cores']} cores; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k != "torch"),
             f"timing: {s['rounds'] * s['reps']} calls per variant, interleaved call by call; {s['warmup']} warm-up, "
             "1 thread; median per call, float frame in, float scores out", ""]
    rows = [(r["model"], f"{r['format']} ({r['backend']})", f"{r['invoke_only_us']:.1f}",
             f"{r['hand_written_us']:.1f}", f"{r['session_us']:.1f}",
             f"{r['overhead_vs_hand_written']:+.1%} ({r['extra_us_vs_hand_written']:+.1f} us)",
             f"{r['overhead_vs_invoke_only']:+.1%}") for r in report["results"]]
    lines.append(table(("model", "format", "invoke only us", "hand-written us", "session us",
                        "overhead vs hand-written", "vs invoke only"), rows))
    v = report.get("venv")
    if v:
        lines += ["", f"runtime-only venv {v['venv']}: site-packages {v['site_packages_bytes'] / 2**20:.1f} MiB; "
                      f"torch installed: {'yes' if v['torch_installed'] else 'no'}; import edgekit.runtime "
                      f"{v['import_edgekit_runtime_s']:.3f} s (-X importtime, cumulative)",
                  "  biggest: " + ", ".join(f"{name} {b / 2**20:.1f} MiB" for name, b in v["biggest"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--reps", type=int, default=40, help="interleaved steps per round (default 40)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per variant first (default 20)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, help="a runtime-only virtual environment to size and time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if min(args.rounds, args.reps) < 1 or args.warmup < 0:
        parser.error("--rounds and --reps must be >= 1, --warmup >= 0")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_runtime.") as tmp:
        rows = run(args.models, args.rounds, args.reps, args.warmup, Path(tmp), args.seed)
    report: dict[str, Any] = {"machine": machine_info(),
                              "settings": {"rounds": args.rounds, "reps": args.reps, "warmup": args.warmup,
                                           "seed": args.seed, "threads": 1},
                              "results": rows}
    if args.venv:
        report["venv"] = venv_report(args.venv)
    report["wall_s"] = round(time.monotonic() - start, 1)
    say(f"total {report['wall_s']}s")
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
