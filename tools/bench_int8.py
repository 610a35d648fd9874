"""FP32 against INT8 on this CPU, same run: LiteRT (XNNPACK, 1 thread) and ONNX Runtime (CPU EP, 1 thread).

Models: MobileNetV2-0.35 @96 (random weights, calibrated on uniform [0, 1) noise) and the pretrained
digits CNN (calibrated on the digits training split). Each model is converted four ways (TFLite FP32,
TFLite INT8 full-integer with int8 I/O, ONNX FP32, ONNX QDQ S8S8), then timed in rounds: every round runs
all four in a rotating order, `--reps` invokes each, so machine noise lands on every variant alike.
Reported latency is the median over all timed invokes of one call with the input already in the model's
own dtype (float32 or int8): LiteRT set_tensor + invoke + get_tensor, ONNX Runtime session.run.

Run: python tools/bench_int8.py [--rounds 15] [--reps 40] [--json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.config import Int8Config
from edgekit.convert.quantize import quantize
from edgekit.formats import quant
from edgekit.report.table import table
from edgekit.runtime.backends import OrtAdapter, open_model

MODELS = ("mobilenet_v2_035_96", "digits_cnn", "mobilenet_v2", "mcunet_vww")  # --models: any of these
DEFAULT_MODELS = MODELS[:2]  # the two a default run times (MobileNetV2-1.0 @224 adds minutes)
RUNTIMES = {"litert": "tflite", "onnxruntime": "onnx"}  # runtime -> model format it runs
PRECISIONS = ("fp32", "int8")
MOBILENET_CALIB_SAMPLES = 32


def say(message: str) -> None:
    """One progress line on stderr (stdout stays the table or the JSON)."""
    sys.stderr.write(f"[bench_int8] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the SIMD flags that decide int8 speed, and the toolchain versions."""
    cpu_model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu_model:
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for dist in ("ai-edge-litert", "onnxruntime", "torch", "litert-torch", "numpy"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing package is reported as such, not fatal here
            versions[dist] = "not installed"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "vnni": sorted(flags & {"avx512_vnni", "avx_vnni"}),
        "simd": sorted(flags & {"avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_int8"}),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }


# ---------------------------------------------------------------- conversion


@contextlib.contextmanager
def stdout_to_stderr():  # type: ignore[no-untyped-def]
    """Converters print their own progress on stdout; send it to stderr so --json output stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def load_model(name: str, seed: int) -> tuple[Any, np.ndarray, np.ndarray, str]:
    """(torch model, calibration samples, one timing input, how the calibration was made)."""
    import torch

    from edgekit.models import create_model

    torch.manual_seed(seed)
    if name == "digits_cnn":
        from edgekit.models.digits import load_digits_split

        model = create_model("digits_cnn", pretrained=True)
        x_train, _, x_test, _ = load_digits_split()
        return model.eval(), x_train[:200], x_test[:1], f"digits training split, {min(200, len(x_train))} samples"
    model = create_model(name).eval()
    rng = np.random.default_rng(seed)
    shape = tuple(model.input_shape)
    calib = rng.random((MOBILENET_CALIB_SAMPLES, *shape[1:]), dtype=np.float32)
    sample = rng.random(shape, dtype=np.float32)
    return model, calib, sample, f"random uniform [0, 1), {MOBILENET_CALIB_SAMPLES} samples (random weights)"


def file_bytes(path: Path) -> int:
    """The model file plus any external-data sidecar written next to it."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def convert_all(name: str, model: Any, calib: np.ndarray, out: Path) -> dict[tuple[str, str], Path]:
    """The four files for one model: {(runtime, precision): path}."""
    import litert_torch
    import torch

    sample = (torch.from_numpy(calib[:1]),)
    paths = {}
    steps = [("litert", "fp32"), ("litert", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    for i, (runtime, precision) in enumerate(steps, 1):
        fmt = RUNTIMES[runtime]
        path = out / f"{name}_{precision}.{fmt}"
        say(f"converting {name} {i}/{len(steps)}: {fmt} {precision} -> {path.name}")
        start = time.monotonic()
        with stdout_to_stderr():
            if precision == "int8":
                quantize(model, calib, path, Int8Config(format=fmt))
            elif fmt == "tflite":
                litert_torch.convert(model, sample).export(str(path))
            else:
                torch.onnx.export(model, sample, str(path), dynamo=True, external_data=False, verbose=False)
        say(f"  done in {time.monotonic() - start:.1f}s, {file_bytes(path):,} bytes")
        paths[(runtime, precision)] = path
    return paths


# ---------------------------------------------------------------- timing


def make_call(path: Path, x: np.ndarray) -> Callable[[], Any]:
    """A no-argument call of one inference with the input already in the model's dtype.

    The library's adapters load the model (`open_model`: one thread, ONNX Runtime on its CPU provider); the
    float->int8 input scaling edgekit does per call is done once here, so only the runtime is timed.
    """
    adapter = open_model(path)
    if isinstance(adapter, OrtAdapter):
        session, feed = adapter.session, {adapter.session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)}
        return lambda: session.run(None, feed)
    params = quant.quantization(adapter.model_tensors()[0])
    np.copyto(adapter.input_buffer, x if params is None else quant.quantize(x, *params))
    return adapter.invoke  # LiteRT: set_tensor + invoke + get_tensor


def time_interleaved(calls: dict[Any, Callable[[], Any]], rounds: int, reps: int, warmup: int, label: str,
                     call_by_call: bool = False, scale: float = 1e3,
                     tool: str = "bench_int8") -> dict[Any, list[float]]:
    """Per-call times (ms by default; scale=1e6 for us) for every call, interleaved so that drift in machine
    speed lands on every variant alike: each round runs all calls in a rotating order, `reps` in a row each,
    or with `call_by_call` one call of each variant per step."""
    keys = list(calls)
    for key in keys:
        for _ in range(warmup):
            calls[key]()
    times: dict[Any, list[float]] = {key: [] for key in keys}
    clock = time.perf_counter
    start = time.monotonic()
    for r in range(rounds):
        if call_by_call:
            steps = [keys[(r * reps + i) % len(keys):] + keys[:(r * reps + i) % len(keys)] for i in range(reps)]
        else:
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            steps = [[key] * reps for key in (order[::-1] if r % 2 else order)]
        for step in steps:
            for key in step:
                t0 = clock()
                calls[key]()
                times[key].append((clock() - t0) * scale)
        sys.stderr.write(f"\r[{tool}] timing {label}: round {r + 1}/{rounds} {time.monotonic() - start:.1f}s")
        sys.stderr.flush()
    sys.stderr.write("\n")
    return times


def summarise(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=10)
    return {"median_ms": statistics.median(samples), "p10_ms": q[0], "p90_ms": q[-1], "n": len(samples)}


# ---------------------------------------------------------------- results


def fastest(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, the quickest (runtime, format, precision) by median latency: what a bundle should ship.

    `results` are the rows of `run()` (keys model, runtime, format, fp32, int8 with median_ms); the answer
    maps model -> {runtime, format, precision, median_ms, file, runner_up_ms}.
    """
    best: dict[str, list[dict[str, Any]]] = {}
    for row in results:
        for precision in PRECISIONS:
            best.setdefault(row["model"], []).append({
                "runtime": row["runtime"], "format": row["format"], "precision": precision,
                "median_ms": row[precision]["median_ms"], "file": row[precision].get("file")})
    answer = {}
    for model, options in best.items():
        options.sort(key=lambda o: o["median_ms"])
        answer[model] = dict(options[0], runner_up_ms=options[1]["median_ms"] if len(options) > 1 else None)
    return answer


def run(models: Sequence[str], rounds: int, reps: int, warmup: int, out: Path, seed: int = 0) -> dict[str, Any]:
    """Convert, time and tabulate; returns {"machine", "settings", "results", "fastest"}."""
    rows = []
    for name in models:
        model, calib, x, calib_note = load_model(name, seed)
        paths = convert_all(name, model, calib, out)
        with stdout_to_stderr():  # LiteRT announces its XNNPACK delegate on load
            calls = {key: make_call(path, x) for key, path in paths.items()}
        times = time_interleaved(calls, rounds, reps, warmup, name)
        for runtime, fmt in RUNTIMES.items():
            row: dict[str, Any] = {"model": name, "runtime": runtime, "format": fmt, "calibration": calib_note}
            for precision in PRECISIONS:
                path = paths[(runtime, precision)]
                row[precision] = dict(summarise(times[(runtime, precision)]), bytes=file_bytes(path), file=path.name)
            row["speedup"] = row["fp32"]["median_ms"] / row["int8"]["median_ms"]
            row["size_ratio"] = row["fp32"]["bytes"] / row["int8"]["bytes"]
            rows.append(row)
    settings = {"rounds": rounds, "reps": reps, "warmup": warmup, "seed": seed, "threads": 1,
                "litert": "ai_edge_litert Interpreter, default delegates (XNNPACK), num_threads=1",
                "onnxruntime": "CPUExecutionProvider, intra_op_num_threads=1, default graph optimizations",
                "latency": "median per call, input pre-cast to the model's dtype"}
    return {"machine": machine_info(), "settings": settings, "results": rows, "fastest": fastest(rows)}


def _ms(value: float) -> str:
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4f}"


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    vnni = ("yes (" + ", ".join(m["vnni"]) + ")") if m["vnni"] else "no"
    header = [f"cpu: {m['cpu_model']} ({m['arch']}), {m['cores']} cores ({m['cores_usable']} usable), "
              f"VNNI {vnni}; simd {' '.join(m['simd']) or '-'}",
              "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              f"timing: {s['rounds']} rounds x {s['reps']} invokes per variant (interleaved), {s['warmup']} warm-up, "
              f"1 thread; median per call"]
    rows = []
    for r in report["results"]:
        f, q = r["fp32"], r["int8"]
        rows.append((r["model"], r["runtime"], _ms(f["median_ms"]), _ms(q["median_ms"]),
                     f"{r['speedup']:.2f}x", f"{f['bytes']:,}", f"{q['bytes']:,}", f"{r['size_ratio']:.2f}x"))
    table_text = table(("model", "runtime", "fp32 ms", "int8 ms", "speedup", "fp32 bytes", "int8 bytes", "size ratio"),
                       rows)
    calib = sorted({f"{r['model']}: {r['calibration']}" for r in report["results"]})
    best = [f"fastest {model}: {b['runtime']} {b['precision']} ({b['format']}) {_ms(b['median_ms'])} ms"
            + (f" (next {_ms(b['runner_up_ms'])} ms)" if b["runner_up_ms"] is not None else "")
            for model, b in report["fastest"].items()]
    return "\n".join(header + [""] + [table_text] + [""] + ["calibration " + c for c in calib] + best)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--reps", type=int, default=40, help="timed invokes per variant per round (default 40)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed invokes per variant first (default 20)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS))
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights/calibration/input")
    parser.add_argument("--keep", type=Path, help="write the converted models here instead of a temp folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if min(args.rounds, args.reps) < 1 or args.warmup < 0:
        parser.error("--rounds and --reps must be >= 1, --warmup >= 0")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_int8.") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        report = run(args.models, args.rounds, args.reps, args.warmup, out, args.seed)
    report["wall_s"] = round(time.monotonic() - start, 1)
    say(f"total {report['wall_s']}s")
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
