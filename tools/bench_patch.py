"""Patch-based planning on the reference models: layer-by-layer peak against the planner's choice.

These are planner figures (int8 accounting of edgekit.memory), not measurements on a board; the
executor and the tflite-micro check that confirm them are not built yet.

Run: python tools/bench_patch.py [--json] [--max-extra-macs 0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.plan.patch import plan_patches
from edgekit.report import table

MODELS = ("mobilenet_v2", "mobilenet_v2_035_96", "mcunet_in", "mcunet_vww", "resnet18")
POLICIES = {"default": MemoryPolicy(), "inplace-residual": MemoryPolicy(inplace_residual=True)}


def measure(max_extra_macs: float) -> list[dict]:
    """One row per model and accounting policy."""
    rows = []
    for name in MODELS:
        sys.stderr.write(f"[bench_patch] {name}\n")
        graph = load_graph(name)
        for label, policy in POLICIES.items():
            start = time.perf_counter()
            plan = plan_patches(graph, max_extra_macs=max_extra_macs, policy=policy)
            seconds = time.perf_counter() - start
            chosen = plan.chosen
            rows.append({
                "model": name, "accounting": label, "layer_by_layer_bytes": plan.layer_by_layer_peak_bytes,
                "patched_bytes": chosen.peak_bytes if chosen else None, "grid": chosen.grid if chosen else None,
                "stage_end": chosen.stage_end if chosen else None,
                "extra_macs_ratio": chosen.extra_macs_ratio(graph.total_macs) if chosen else None,
                "reduction": plan.layer_by_layer_peak_bytes / chosen.peak_bytes if chosen else None,
                "plan_seconds": seconds, "reason": plan.reason,
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
    print(table(("model", "accounting", "layer-by-layer B", "patched B", "reduction", "grid", "extra MACs",
                 "stage end", "plan s"),
                [(r["model"], r["accounting"], f"{r['layer_by_layer_bytes']:,}",
                  f"{r['patched_bytes']:,}" if r["patched_bytes"] else "-",
                  f"{r['reduction']:.1f}x" if r["reduction"] else "-", f"{r['grid']}x{r['grid']}" if r["grid"] else "-",
                  f"{r['extra_macs_ratio']:.1%}" if r["grid"] else "-", r["stage_end"] or r["reason"],
                  f"{r['plan_seconds']:.2f}") for r in rows]))


if __name__ == "__main__":
    main()
