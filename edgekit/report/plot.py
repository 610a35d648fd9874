"""PNG plots of activation memory per layer (the MCUNetV2 figure-1 view). Needs matplotlib (host side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.analysis import Analysis
from edgekit.graph.ir import Graph
from edgekit.plan.patch import PatchPlan
from edgekit.targets import Device, Link


def _axes(layers: int) -> tuple[Any, Any]:
    """A figure wide enough for one bar per layer, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(max(8.0, layers * 0.12), 4.5), dpi=120)


def _save(fig: Any, ax: Any, title: str, layers: int, path: str | Path,
          ylabel: str = "live activations, int8 (KiB)", xlabel: str = "layer (execution order)") -> Path:
    """Common labels, grid and layout; write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlim(-1, layers)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_memory(analysis: Analysis, path: str | Path) -> Path:
    """Bars of int8 live activation bytes per layer, the peak marked, the target's memory as a line."""
    profile = analysis.memory["int8"]
    kib = [m.live_bytes / 1024 for m in profile.layers]
    peak_index = max(range(len(kib)), key=kib.__getitem__)
    fig, ax = _axes(len(kib))
    colors = ["#d62728" if i == peak_index else "#1f77b4" for i in range(len(kib))]
    ax.bar(range(len(kib)), kib, color=colors, width=0.85)
    ax.annotate(f"peak {kib[peak_index]:.0f} KiB: {profile.peak_layer}", (peak_index, kib[peak_index]),
                xytext=(-4, 4), textcoords="offset points", fontsize=8, va="bottom")
    top = max(kib)
    target = analysis.target
    if target is not None:
        budget = target.activation_budget_bytes / 1024
        label = f"{target.name} {'SRAM' if target.device_class == 'mcu' else 'RAM'} {budget:.0f} KiB"
        if budget < 4 * max(kib):
            ax.axhline(budget, color="#2ca02c", linestyle="--", linewidth=1.2, label=label)
            ax.legend(loc="upper right", fontsize=8)
            top = max(top, budget)
        else:
            ax.set_title(label, fontsize=8, loc="right")
    ax.set_ylim(0, top * 1.12)
    accounting = "depthwise in place" if profile.policy.inplace_depthwise else "no in-place depthwise"
    return _save(fig, ax, f"{analysis.graph.name}: activation memory per layer ({accounting})", len(kib), path)


def plot_patch_plan(graph: Graph, plan: PatchPlan, patched: list[int], path: str | Path) -> Path:
    """Per-layer int8 live bytes layer by layer against the patch plan, with the budget line."""
    from edgekit.memory import activation_memory

    before = [m.live_bytes / 1024 for m in activation_memory(graph, plan.policy).layers]
    after = [b / 1024 for b in patched]
    fig, ax = _axes(len(before))
    ax.bar(range(len(before)), before, width=0.85, color="#c7c7c7",
           label=f"layer by layer (peak {max(before):.0f} KiB)")
    ax.bar(range(len(after)), after, width=0.5, color="#1f77b4", label=f"patched (peak {max(after):.0f} KiB)")
    if plan.chosen is not None:
        ax.axvspan(-0.5, len(plan.stage_layers) - 0.5, color="#ff7f0e", alpha=0.08,
                   label=f"patch stage, {plan.chosen.grid}x{plan.chosen.grid} patches")
    if plan.budget_bytes:
        ax.axhline(plan.budget_bytes / 1024, color="#2ca02c", linestyle="--", linewidth=1.2,
                   label=f"budget {plan.budget_bytes / 1024:.0f} KiB")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, ax, f"{graph.name}: memory per layer, layer by layer vs patch-based", len(before), path)


def plot_split(graph: Graph, device: Device, server: Device, link: Link, objective: str, path: str | Path,
               bandwidths: tuple[float, ...] = (1e6, 5e6, 20e6, 100e6)) -> Path:
    """Estimated end-to-end latency of every cut, one line per uplink bandwidth, best cut marked."""
    from edgekit.plan.split import plan_split

    fig, ax = _axes(len(graph.layers) + 1)
    for bps in bandwidths:
        plan = plan_split(graph, device, server, link, bps, objective)
        xs = [c.device_layers for c in plan.candidates if c.valid]
        ys = [1000 * c.total_seconds for c in plan.candidates if c.valid]
        line = ax.plot(xs, ys, marker=".", markersize=3, linewidth=1, label=f"{bps / 1e6:g} Mbit/s")[0]
        ax.plot([plan.chosen.device_layers], [1000 * plan.chosen.total_seconds], "o", color=line.get_color())
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=8, title="uplink (o = best cut)", title_fontsize=8)
    return _save(fig, ax, f"{graph.name}: {device.name} -> {link.name} -> {server.name}, estimated latency per cut",
                 len(graph.layers) + 1, path, ylabel="end-to-end latency (ms, log)",
                 xlabel="layers on the device (0 = send the raw input, right end = all on the device)")
