"""Patch-based planning on the reference models: layer-by-layer peak against the planner's choice.

Planner figures (int8 accounting of edgekit.memory), each checked by running the float patch
executor on a random input: its output against layer-by-layer execution (max relative error) and
the peak it measured from the tensors it held. Not measurements on a board: the INT8 / tflite-micro
check is not built yet.

Run: python tools/bench_patch.py [--json] [--max-extra-macs 0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.models import create_model
from edgekit.plan.patch import plan_patches
from edgekit.plan.patch_exec import run_patched
from edgekit.report import table

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-extra-macs", type=float, default=0.20)
    args = parser.parse_args()
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
