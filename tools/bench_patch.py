"""Patch-based planning on the reference models: layer-by-layer peak against the planner's choice.

Planner figures (int8 accounting of edgekit.memory), each checked by running the float patch
executor on a random input: its output against layer-by-layer execution (max relative error) and
the peak it measured from the tensors it held.

With --int8: each INT8 model (NHWC int8 I/O, the MCU preset) is planned on its own .tflite graph
under the target's SRAM, cut into patch artifacts, run patch by patch under the real tflite-micro
interpreter and LiteRT (bit-exact check against the full model) and its arenas measured, against the
planner's promise under the default accounting and under MemoryPolicy.tflm() (TF Lite Micro's own:
materialised pads, out-of-place depthwise) for the same stage end and grid; latency of
the patched schedule against the full model, 1 thread, interleaved: LiteRT median of 200 calls,
tflite-micro (reference kernels: time tracks MACs, as on an MCU) median of 3. Host measurements, not a
board.

With --speed: patched p50 against the full model's p50 per backend, 1 thread, min / median / max over
--repeats repeats, each timing every runner interleaved; under LiteRT both executors (the unrolled model, the
default, and the masked stage model patch by patch) with how XNNPACK partitioned each.

Run: python tools/bench_patch.py [--json] [--max-extra-macs 0.2]
     python tools/bench_patch.py --int8 [--target stm32f746] [--models mobilenet_v2_035_96,mobilenet_v2]
     python tools/bench_patch.py --speed [--repeats 5] [--models mobilenet_v2_035_96,mcunet_vww]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.models import create_model
from edgekit.plan.patch import PatchPlan, fixed_plan, plan_patches
from edgekit.plan.patch_exec import run_patched
from edgekit.report.table import table

MODELS = ("mobilenet_v2", "mobilenet_v2_035_96", "mcunet_in", "mcunet_vww", "resnet18")
POLICIES = {"default": MemoryPolicy(), "inplace-residual": MemoryPolicy(inplace_residual=True)}


def measure(max_extra_macs: float) -> list[dict]:
    """One row per model and accounting policy."""
    rows = []
    for name in MODELS:
        sys.stderr.write(f"[bench_patch] {name}\n")
        model = create_model(name)
        graph = load_graph(model, name=name)
        x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        for label, policy in POLICIES.items():
            start = time.perf_counter()
            plan = plan_patches(graph, max_extra_macs=max_extra_macs, policy=policy)
            seconds = time.perf_counter() - start
            chosen = plan.chosen
            run = run_patched(model, plan, x) if chosen else None
            rows.append({
                "model": name, "accounting": label, "layer_by_layer_bytes": plan.layer_by_layer_peak_bytes,
                "patched_bytes": chosen.peak_bytes if chosen else None, "grid": chosen.grid if chosen else None,
                "stage_end": chosen.stage_end if chosen else None,
                "extra_macs_ratio": chosen.extra_macs_ratio(graph.total_macs) if chosen else None,
                "reduction": plan.layer_by_layer_peak_bytes / chosen.peak_bytes if chosen else None,
                "plan_seconds": seconds, "reason": plan.reason,
                "executor_peak_bytes": run.peak_bytes if run else None,
                "executor_max_rel_error": float(np.abs(run.output - expected).max() / np.abs(expected).max())
                if run else None,
            })
    return rows


def _median_ms(runs: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """Median latency of each callable, rounds interleaved so machine noise lands on all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(reps):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def _int8_plan(name: str, target: str, max_extra_macs: float, workdir: Path) -> tuple[Path, PatchPlan]:
    """The model's INT8 .tflite (MCU preset, 8 noise calibration samples) and its patch plan on its own graph
    under the target's SRAM (forced: patching is what is measured)."""
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize
    from edgekit.graph.from_tflite import from_tflite
    from edgekit.targets import load_target

    sys.stderr.write(f"[bench_patch] int8 {name}\n")
    device = load_target(target)
    model = create_model(name)
    calibration = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    path = quantize(model, calibration, workdir / f"{name}_int8.tflite", Int8Config.for_target(device))
    return path, plan_patches(from_tflite(path), device.activation_budget_bytes, max_extra_macs, force_patch=True)


def measure_int8(name: str, target: str, max_extra_macs: float, workdir: Path) -> dict:
    """INT8 artifacts of one model: planner vs tflite-micro peaks, MACs, flash, bit-exactness, latency."""
    from edgekit.convert.mcu import arena_parts
    from edgekit.convert.patch_artifacts import REST_MODEL, STAGE_MODEL, build_patch_artifacts
    from edgekit.convert.patch_pack import write_patch_pack
    from edgekit.graph.from_tflite import from_tflite
    from edgekit.runtime.backends import open_backend
    from edgekit.runtime.patched import PatchExecutor
    from edgekit.targets import load_target

    path, plan = _int8_plan(name, target, max_extra_macs, workdir)
    if plan.chosen is None:
        return {"model": name, "reason": plan.reason}
    device = load_target(target)
    tflm_plan = fixed_plan(from_tflite(path), plan.chosen.stage_end, plan.chosen.grid, policy=MemoryPolicy.tflm())
    artifacts = build_patch_artifacts(path, plan)
    arenas = write_patch_pack(artifacts, workdir / name)
    schedule = artifacts.schedule.to_dict()
    stage_buffer = int(np.prod(schedule["stage"]["shape"]))
    stage, rest, full_arena = arenas[STAGE_MODEL], arenas[REST_MODEL], arena_parts(path)
    patched_head = max(stage["head"] + stage_buffer, rest["head"])  # stage buffer placed as the rest model's input
    x = np.random.default_rng(0).integers(-128, 128, schedule["input"]["shape"], dtype=np.int8)
    exact, latency = {}, {}
    for backend, rounds, reps in (("tflite-micro", 3, 1), ("litert", 10, 20)):
        full = open_backend(backend, path.read_bytes(), tuple(schedule["input"]["shape"]), threads=1)
        full.input_buffer[...] = x
        patched = PatchExecutor(artifacts.files, artifacts.schedule, backend, threads=1)
        exact[backend] = all(np.array_equal(p, f) for p, f in zip(patched.run_raw(x), full.invoke(), strict=True))
        latency[backend] = _median_ms({"full": full.invoke, "patched": lambda: patched.run_raw(x)}, rounds, reps)
    planner_reduction = plan.layer_by_layer_peak_bytes / plan.chosen.peak_bytes
    macs = schedule["macs"]
    return {"model": name, "target": device.name, "stage_end": plan.chosen.stage_end, "grid": plan.chosen.grid,
            "masks": len(schedule["masks"]), "extra_macs_ratio": plan.chosen.extra_macs_ratio(plan.total_macs),
            "artifact_extra_macs_ratio": (macs["stage_patched"] - macs["stage_full"]) / plan.total_macs,
            "stage_model_extra_macs_ratio": plan.chosen.stage_model_extra_macs / plan.total_macs,
            "planner_layer_by_layer_bytes": plan.layer_by_layer_peak_bytes,
            "planner_patched_bytes": plan.chosen.peak_bytes, "planner_reduction": planner_reduction,
            "tflm_full_head_bytes": full_arena["head"], "tflm_stage_head_bytes": stage["head"],
            "tflm_rest_head_bytes": rest["head"], "stage_bytes": stage_buffer, "tflm_patched_head_bytes": patched_head,
            "tflm_patched_head_separate_stage_bytes": max(stage["head"], rest["head"]) + stage_buffer,
            "tflm_reduction": full_arena["head"] / patched_head,
            "reduction_ratio": full_arena["head"] / patched_head / planner_reduction,
            "planner_tflm_layer_by_layer_bytes": tflm_plan.layer_by_layer_peak_bytes,
            "planner_tflm_patched_bytes": tflm_plan.chosen.peak_bytes,
            "tflm_accounting_ratio": full_arena["head"] / patched_head
            / (tflm_plan.layer_by_layer_peak_bytes / tflm_plan.chosen.peak_bytes),
            "tflm_full_tail_bytes": full_arena["tail"], "tflm_patched_tails_bytes": stage["tail"] + rest["tail"],
            "tflm_full_total_bytes": full_arena["total"],
            "tflm_patched_total_bytes": patched_head + stage["tail"] + rest["tail"],
            "bit_exact": exact, "flash_full_bytes": schedule["flash_bytes"]["full"],
            "flash_patched_bytes": schedule["flash_bytes"]["patched"],
            **{f"{b}_{k}_ms": v for b, times in latency.items() for k, v in times.items()}}


def _delegation(adapter: Any) -> str:
    """How LiteRT ran a model: its XNNPACK partitions and the ops left outside them. From the interpreter's op
    details (a private API), which list every op of the file and then one DELEGATE node per partition: the ops a
    partition took are those its outputs are computed from, back to its inputs."""
    details = adapter.interpreter._get_ops_details()
    ops = [d for d in details if d["op_name"] != "DELEGATE"]
    producer = {int(t): i for i, d in enumerate(ops) for t in d["outputs"]}
    taken: set[int] = set()
    partitions = [d for d in details if d["op_name"] == "DELEGATE"]
    for partition in partitions:
        boundary = {int(t) for t in partition["inputs"]}
        todo = [int(t) for t in partition["outputs"]]
        while todo:
            op = producer.get(todo.pop())
            if op is not None and op not in taken:
                taken.add(op)
                todo += [int(t) for t in ops[op]["inputs"] if int(t) not in boundary]
    outside = sorted({ops[i]["op_name"] for i in range(len(ops)) if i not in taken})
    return (f"{len(partitions)} XNNPACK partition(s) of {len(taken)}/{len(ops)} ops"
            + (f"; outside: {', '.join(outside)}" if outside else ""))


def measure_speed(name: str, target: str, max_extra_macs: float, workdir: Path, repeats: int) -> list[dict]:
    """Patched p50 against the full model's, per backend and executor, 1 thread: `repeats` repeats, each timing
    every runner in interleaved rounds (LiteRT 10 rounds of 20 calls, tflite-micro 5 of 1), so the ratio of
    each repeat compares p50s measured side by side. Also checks each runner bit-exact. Under LiteRT the bare
    interpreter invokes are timed too, no Python around them: the unrolled and the rest model each on its own
    (apart: each stays in the cache) and one after the other (in turn, as a frame runs them), against the full
    model. Apart is the floor the MACs the patches recompute set; in turn adds the two models taking turns."""
    from edgekit.convert.patch_artifacts import build_patch_artifacts
    from edgekit.runtime.backends import open_backend
    from edgekit.runtime.patched import PatchExecutor

    path, plan = _int8_plan(name, target, max_extra_macs, workdir)
    artifacts = build_patch_artifacts(path, plan)
    schedule = artifacts.schedule
    macs = schedule.macs
    x = np.random.default_rng(0).integers(-128, 128, schedule.input.shape, dtype=np.int8)
    rows = []
    for backend, rounds, reps, executors in (("litert", 10, 20, ("unrolled", "masked")),
                                             ("tflite-micro", 5, 1, ("masked",))):
        full = open_backend(backend, path.read_bytes(), schedule.input.shape, threads=1)
        full.input_buffer[...] = x
        expected = full.invoke()
        runners: dict[str, Callable[[], object]] = {"full": full.invoke}
        patched = {}
        for how in executors:
            patched[how] = PatchExecutor(artifacts.files, schedule, backend, threads=1, masked=how == "masked")
            patched[how].input_buffer[...] = x
            runners[how] = patched[how].invoke
        if backend == "litert":
            unrolled = patched["unrolled"]
            stage_call, rest_call = unrolled._whole.interpreter.invoke, unrolled._rest.interpreter.invoke
            runners.update({"bare full": full.interpreter.invoke, "bare unrolled": stage_call, "bare rest": rest_call,
                            "bare pair": lambda: (stage_call(), rest_call())})
        p50s = [_median_ms(runners, rounds, reps) for _ in range(repeats)]
        for how, executor in patched.items():
            full_ms, ms = [p["full"] for p in p50s], [p[how] for p in p50s]
            stage = executor._whole if executor.unrolled else executor._stage
            stage_macs = macs.stage_unrolled if executor.unrolled else macs.stage_patched
            rows.append({"model": name, "backend": backend, "executor": how, "grid": schedule.grid,
                         "unrolled_model_bytes": len(artifacts.files[schedule.unrolled_model]),
                         "bit_exact": all(np.array_equal(a, b) for a, b in zip(executor.invoke(), expected)),
                         "full_p50_ms": full_ms, "patched_p50_ms": ms,
                         "ratios": [p / f for p, f in zip(ms, full_ms)],
                         "macs_ratio": (plan.total_macs + stage_macs - macs.stage_full) / plan.total_macs,
                         "bare_ratios": [(p["bare unrolled"] + p["bare rest"]) / p["bare full"] for p in p50s]
                         if executor.unrolled else None,
                         "bare_pair_ratios": [p["bare pair"] / p["bare full"] for p in p50s]
                         if executor.unrolled else None,
                         "stage_delegation": _delegation(stage) if backend == "litert" else None,
                         "full_delegation": _delegation(full) if backend == "litert" else None})
    return rows


def render_speed(rows: list[dict]) -> str:
    def spread(values: list[float], digits: int = 3) -> str:
        low, mid, high = min(values), float(np.median(values)), max(values)
        return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"

    return table(
        ("model", "backend", "patched executor", "unrolled model B", "repeats", "full p50 ms (min / median / max)",
         "patched p50 ms (min / median / max)", "patched / full (min / median / max)", "bare calls / full: apart",
         "in turn",
         "MACs / full", "bit-exact", "stage under LiteRT", "full under LiteRT"),
        [(r["model"], r["backend"], r["executor"], f"{r['unrolled_model_bytes']:,}", str(len(r["ratios"])),
          spread(r["full_p50_ms"]),
          spread(r["patched_p50_ms"]), spread(r["ratios"], 2), spread(r["bare_ratios"], 2) if r["bare_ratios"] else "-",
          spread(r["bare_pair_ratios"], 2) if r["bare_pair_ratios"] else "-",
          f"{r['macs_ratio']:.2f}", "yes" if r["bit_exact"] else "NO", r["stage_delegation"] or "-",
          r["full_delegation"] or "-") for r in rows])


def render_int8(rows: list[dict]) -> str:
    done = [r for r in rows if "grid" in r]
    lines = [f"{r['model']}: no plan ({r['reason']})" for r in rows if "grid" not in r]
    activations = table(
        ("model", "grid", "planner LbL B", "planner patched B", "planner x", "TFLM head full B",
         "TFLM head patched B (stage+buffer | rest)", "TFLM x", "ratio", "bit-exact"),
        [(r["model"], f"{r['grid']}x{r['grid']} ({r['masks']} masks)", f"{r['planner_layer_by_layer_bytes']:,}",
          f"{r['planner_patched_bytes']:,}", f"{r['planner_reduction']:.2f}x", f"{r['tflm_full_head_bytes']:,}",
          f"{r['tflm_patched_head_bytes']:,} ({r['tflm_stage_head_bytes']:,}+{r['stage_bytes']:,} | "
          f"{r['tflm_rest_head_bytes']:,})", f"{r['tflm_reduction']:.2f}x", f"{r['reduction_ratio']:.2f}",
          "/".join(k for k, v in r["bit_exact"].items() if v) or "NO") for r in done])
    tflm_accounting = table(
        ("model", "planner LbL B (TFLM acct)", "planner patched B (TFLM acct)", "planner x (TFLM acct)", "TFLM x",
         "ratio (TFLM acct)"),
        [(r["model"], f"{r['planner_tflm_layer_by_layer_bytes']:,}", f"{r['planner_tflm_patched_bytes']:,}",
          f"{r['planner_tflm_layer_by_layer_bytes'] / r['planner_tflm_patched_bytes']:.2f}x",
          f"{r['tflm_reduction']:.2f}x", f"{r['tflm_accounting_ratio']:.2f}") for r in done])

    def ms(r: dict, backend: str) -> str:
        full, patched = r[f"{backend}_full_ms"], r[f"{backend}_patched_ms"]
        return f"{full:.2f} / {patched:.2f} ({patched / full:.2f}x)"

    totals = table(
        ("model", "TFLM total full B (head+tail)", "TFLM total patched B (head+tails)", "flash full / patched B",
         "extra MACs planner (per patch | one model) / artifact", "TFLM ms full / patched",
         "LiteRT ms full / patched"),
        [(r["model"], f"{r['tflm_full_total_bytes']:,} ({r['tflm_full_head_bytes']:,}+{r['tflm_full_tail_bytes']:,})",
          f"{r['tflm_patched_total_bytes']:,} ({r['tflm_patched_head_bytes']:,}+{r['tflm_patched_tails_bytes']:,})",
          f"{r['flash_full_bytes']:,} / {r['flash_patched_bytes']:,}",
          f"+{r['extra_macs_ratio']:.1%} | +{r['stage_model_extra_macs_ratio']:.1%} / "
          f"+{r['artifact_extra_macs_ratio']:.1%}", ms(r, "tflite-micro"),
          ms(r, "litert")) for r in done])
    return "\n\n".join([activations, tflm_accounting, totals, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-extra-macs", type=float, default=0.20)
    parser.add_argument("--int8", action="store_true", help="INT8 artifacts under tflite-micro and LiteRT")
    parser.add_argument("--target", default="stm32f746")
    parser.add_argument("--speed", action="store_true",
                        help="patched p50 / full p50 per backend and executor, over --repeats interleaved repeats")
    parser.add_argument("--repeats", type=int, default=5, help="for --speed")
    parser.add_argument("--models", default="mobilenet_v2_035_96", help="comma-separated, for --int8 and --speed")
    args = parser.parse_args()
    if args.speed:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [row for name in args.models.split(",")
                    for row in measure_speed(name, args.target, args.max_extra_macs, Path(tmp), args.repeats)]
        print(json.dumps(rows, indent=2) if args.json else render_speed(rows))
        return
    if args.int8:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [measure_int8(name, args.target, args.max_extra_macs, Path(tmp))
                    for name in args.models.split(",")]
        print(json.dumps(rows, indent=2) if args.json else render_int8(rows))
        return
    rows = measure(args.max_extra_macs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(table(("model", "accounting", "layer-by-layer B", "patched B", "executor B", "max rel err", "reduction",
                 "grid", "extra MACs", "stage end", "plan s"),
                [(r["model"], r["accounting"], f"{r['layer_by_layer_bytes']:,}",
                  f"{r['patched_bytes']:,}" if r["patched_bytes"] else "-",
                  f"{r['executor_peak_bytes']:,}" if r["executor_peak_bytes"] else "-",
                  f"{r['executor_max_rel_error']:.1e}" if r["executor_peak_bytes"] else "-",
                  f"{r['reduction']:.1f}x" if r["reduction"] else "-", f"{r['grid']}x{r['grid']}" if r["grid"] else "-",
                  f"{r['extra_macs_ratio']:.1%}" if r["grid"] else "-", r["stage_end"] or r["reason"],
                  f"{r['plan_seconds']:.2f}") for r in rows]))


if __name__ == "__main__":
    main()
