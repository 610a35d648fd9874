"""PNG plot of activation memory per layer (the MCUNetV2 figure-1 view). Needs matplotlib (host side)."""

from __future__ import annotations

from pathlib import Path

from edgekit.analysis import Analysis
from edgekit.graph.ir import Graph
from edgekit.plan.patch import PatchPlan


def plot_memory(analysis: Analysis, path: str | Path) -> Path:
    """Bars of int8 live activation bytes per layer, the peak marked, the target's memory as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = analysis.memory["int8"]
    kib = [m.live_bytes / 1024 for m in profile.layers]
    peak_index = max(range(len(kib)), key=kib.__getitem__)
    fig, ax = plt.subplots(figsize=(max(8.0, len(kib) * 0.12), 4.5), dpi=120)
    colors = ["#d62728" if i == peak_index else "#1f77b4" for i in range(len(kib))]
    ax.bar(range(len(kib)), kib, color=colors, width=0.85)
    ax.annotate(f"peak {kib[peak_index]:.0f} KiB\n{profile.peak_layer}", (peak_index, kib[peak_index]),
                xytext=(8, -4), textcoords="offset points", fontsize=8, va="top")
    target = analysis.target
    if target is not None:
        budget = target.activation_budget_bytes / 1024
        label = f"{target.name} {'SRAM' if target.device_class == 'mcu' else 'RAM'} {budget:.0f} KiB"
        if budget < 4 * max(kib):
            ax.axhline(budget, color="#2ca02c", linestyle="--", linewidth=1.2, label=label)
            ax.legend(loc="upper right", fontsize=8)
        else:
            ax.set_title(label, fontsize=8, loc="right")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("live activations, int8 (KiB)")
    accounting = "depthwise in place" if profile.policy.inplace_depthwise else "no in-place depthwise"
    ax.set_title(f"{analysis.graph.name}: activation memory per layer ({accounting})", fontsize=10, loc="left")
    ax.set_xlim(-1, len(kib))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_patch_plan(graph: Graph, plan: PatchPlan, patched: list[int], path: str | Path) -> Path:
    """Per-layer int8 live bytes layer by layer against the patch plan, with the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.memory import activation_memory

    before = [m.live_bytes / 1024 for m in activation_memory(graph, plan.policy).layers]
    after = [b / 1024 for b in patched]
    x = range(len(before))
    fig, ax = plt.subplots(figsize=(max(8.0, len(before) * 0.12), 4.5), dpi=120)
    ax.bar(x, before, width=0.85, color="#c7c7c7", label=f"layer by layer (peak {max(before):.0f} KiB)")
    ax.bar(x, after, width=0.5, color="#1f77b4", label=f"patched (peak {max(after):.0f} KiB)")
    if plan.chosen is not None:
        ax.axvspan(-0.5, len(plan.stage_layers) - 0.5, color="#ff7f0e", alpha=0.08,
                   label=f"patch stage, {plan.chosen.grid}x{plan.chosen.grid} patches")
    if plan.budget_bytes:
        ax.axhline(plan.budget_bytes / 1024, color="#2ca02c", linestyle="--", linewidth=1.2,
                   label=f"budget {plan.budget_bytes / 1024:.0f} KiB")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("live activations, int8 (KiB)")
    ax.set_title(f"{graph.name}: memory per layer, layer by layer vs patch-based", fontsize=10, loc="left")
    ax.set_xlim(-1, len(before))
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
