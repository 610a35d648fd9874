"""Patch planner: halos by hand, the MCUNetV2 worked example, infeasible budgets, every importer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TwoConvs, export_onnx, run
from torch import nn

from edgekit.errors import PlanError
from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.plan.patch import PatchPlan, evaluate, patch_regions, plan_patches, split_tiles


def test_tiles_cover_the_output_without_overlap() -> None:
    assert split_tiles(7, 7, 2) == ((0, 0, 3, 3), (0, 3, 3, 7), (3, 0, 7, 3), (3, 3, 7, 7))
    assert sum((b - t) * (r - l) for t, l, b, r in split_tiles(28, 28, 4)) == 28 * 28


def test_halo_by_hand() -> None:
    graph = load_graph(TwoConvs())
    stage = list(graph.layers[:2])
    regions, window = patch_regions(graph, stage, (0, 0, 4, 4))  # top-left 4x4 tile of the 8x8 output
    # b (3x3, stride 2, pad 1): output rows [0, 4) need a-rows [-1, 8); row -1 is b's zero padding, so a
    # computes [0, 8), which needs input rows [-1, 9) (row -1: a's zero padding at the true border).
    assert regions[stage[0].output] == (0, 0, 8, 8)
    assert window == (-1, -1, 9, 9)
    candidate, _, windows = evaluate(graph, 1, 2)
    assert windows[3] == (6, 6, 17, 17)  # bottom-right: b needs a-rows [7, 16), a needs input [6, 17)
    # a computes 8x8, 8x9, 9x8 and 9x9 regions (289 pixels) instead of 16x16 (256): row/col 7 twice
    assert candidate.extra_macs == (289 - 256) * 4 * 9


def test_mobilenet_v2_worked_example_from_the_paper() -> None:
    graph = load_graph("mobilenet_v2")
    plan = plan_patches(graph, budget_bytes=256 * 1024, policy=MemoryPolicy(inplace_residual=True))
    assert plan.layer_by_layer_peak_bytes == 1_404_928  # 1372 kB
    assert plan.feasible and plan.chosen is not None
    assert plan.chosen.peak_bytes <= 172 * 1024  # the paper's 172 kB with 4x4 patches
    assert plan.chosen.grid == 4 and plan.chosen.stage_output_bytes == 28 * 28 * 32
    assert 0 < plan.chosen.extra_macs_ratio(graph.total_macs) < 0.20
    assert plan.layer_by_layer_peak_bytes / plan.chosen.peak_bytes >= 8.0


def test_pareto_frontier_and_round_trip() -> None:
    plan = plan_patches(load_graph("mcunet_vww"))
    peaks = [c.peak_bytes for c in plan.pareto]
    extra = [c.extra_macs for c in plan.pareto]
    assert peaks == sorted(peaks) and extra == sorted(extra, reverse=True) and len(set(extra)) == len(extra)
    assert plan.chosen in plan.pareto
    assert PatchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_infeasible_budget_names_the_smallest_peak() -> None:
    plan = plan_patches(load_graph("mobilenet_v2_035_96"), budget_bytes=8 * 1024)
    assert not plan.feasible and plan.chosen is not None
    assert plan.reason.startswith("infeasible: the smallest peak") and f"{plan.chosen.peak_bytes:,} B" in plan.reason


def test_recompute_budget_by_hand() -> None:
    graph = load_graph(TwoConvs())  # 18,696 MACs; 2x2 patches recompute nothing ending at a, 1,188 MACs at b
    assert graph.total_macs == 18_696
    # a stage ending at a never lowers the peak: its 1,024 B output is the stage buffer, and b then holds it
    # with its own 256 B output, 1,280 B, the layer-by-layer peak. Below 1,188 / 18,696 = 6.35% that is all.
    within_6 = plan_patches(graph, max_extra_macs=0.06, grids=(2,))
    assert within_6.chosen is None and not within_6.feasible
    assert within_6.reason == "patching does not lower the peak below layer-by-layer 1,280 B"
    within_7 = plan_patches(graph, max_extra_macs=0.07, grids=(2,))
    assert within_7.feasible and (within_7.chosen.stage_end, within_7.chosen.grid) == ("b", 2)
    assert within_7.chosen.extra_macs == 1_188 and within_7.chosen.peak_bytes == 680


# mcunet_in's Pareto front (stage end, grid: extra MACs, peak): features.2.block.0.0 2x2: 0.30%, 305,051 B;
# 4x4: 0.91%, 264,227 B; features.2.block.1.0 2x2: 1.99%, 216,832 B; features.4.block.2.0 2x2: 13.3%, 132,616 B;
# 4x4: 46.7%, 85,576 B. Layer by layer: 309,760 B.
@pytest.mark.parametrize("budget, stage_end, grid, peak", [
    (0.005, "features.2.block.0.0", 2, 305_051),
    (0.01, "features.2.block.0.0", 4, 264_227),
    (0.02, "features.2.block.1.0", 2, 216_832),
    (0.10, "features.2.block.1.0", 2, 216_832),  # nothing between 2% and 13%
    (0.20, "features.4.block.2.0", 2, 132_616),
    (0.50, "features.4.block.2.0", 4, 85_576),
])
def test_recompute_budget_is_respected(budget: float, stage_end: str, grid: int, peak: int) -> None:
    graph = load_graph("mcunet_in")
    plan = plan_patches(graph, max_extra_macs=budget)
    assert plan.feasible and plan.chosen is not None
    assert plan.chosen.extra_macs_ratio(graph.total_macs) <= budget
    assert (plan.chosen.stage_end, plan.chosen.grid, plan.chosen.peak_bytes) == (stage_end, grid, peak)
    # the smallest peak the budget allows: every candidate with a smaller peak recomputes more than it
    smaller = [c for c in plan.pareto if c.peak_bytes < plan.chosen.peak_bytes]
    assert smaller and all(c.extra_macs_ratio(graph.total_macs) > budget for c in smaller)


def test_a_recompute_budget_too_tight_for_the_memory_budget_is_infeasible() -> None:
    graph = load_graph("mcunet_in")
    assert plan_patches(graph, max_extra_macs=0.0).chosen is None  # no recompute: no plan beats 309,760 B
    tight = plan_patches(graph, budget_bytes=200_000, max_extra_macs=0.02)
    assert not tight.feasible and tight.chosen is not None and tight.chosen.peak_bytes == 216_832
    assert tight.reason == ("infeasible: the smallest peak within 2% extra MACs is 216,832 B, 16,832 B over the "
                            "200,000 B budget")
    loose = plan_patches(graph, budget_bytes=200_000, max_extra_macs=0.20)
    assert loose.feasible and loose.chosen.peak_bytes == 132_616 <= 200_000


def test_residual_and_pooling_inside_the_stage() -> None:
    graph = load_graph("resnet18")  # stem conv, max pool and residual blocks at 56x56 can all be patched
    plan = plan_patches(graph)
    assert plan.chosen is not None and plan.chosen.peak_bytes < plan.layer_by_layer_peak_bytes
    stage_ops = {l.op for l in graph.layers[: len(plan.stage_layers)]}
    assert {"maxpool2d", "add"} <= stage_ops


@pytest.mark.slow
def test_same_plan_from_onnx_and_int8_tflite(tmp_path: Path, mbv2_int8_tflite: Path) -> None:
    from edgekit.models import create_model

    model = create_model("mobilenet_v2_035_96")
    reference = plan_patches(load_graph(model)).chosen
    from_onnx = plan_patches(load_graph(export_onnx(model, tmp_path / "m.onnx"))).chosen
    from_tflite = plan_patches(load_graph(mbv2_int8_tflite)).chosen
    assert reference is not None and from_onnx is not None and from_tflite is not None
    key = lambda c: (c.grid, c.peak_bytes, c.extra_macs, c.stage_output_bytes)  # noqa: E731
    assert key(from_onnx) == key(reference)
    assert (from_tflite.grid, from_tflite.extra_macs) == (reference.grid, reference.extra_macs)


def test_no_stage_is_a_clear_error() -> None:
    class Flat(nn.Module):
        input_shape = (1, 8)

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(PlanError, match="no layer can end a patch stage"):
        plan_patches(load_graph(Flat()))


def test_a_model_that_fits_layer_by_layer_is_not_patched_unless_forced() -> None:
    graph = load_graph("mobilenet_v2_035_96")  # 129,024 B layer by layer
    plan = plan_patches(graph, budget_bytes=262_144)
    assert plan.chosen is None and plan.already_fits and not plan.force_patch and not plan.feasible
    assert (plan.stage_layers, plan.tiles, plan.input_windows) == ((), (), ())
    assert plan.reason == "already fits layer by layer (peak 129,024 B of a 262,144-byte budget); no patching needed"
    assert plan.pareto == plan_patches(graph).pareto  # what patching would cost, for reference
    forced = plan_patches(graph, budget_bytes=262_144, force_patch=True)
    assert forced.already_fits and forced.force_patch and forced.chosen == plan_patches(graph).chosen is not None
    assert forced.reason.endswith(" (patching was forced: layer by layer, 129,024 B, already fits the budget)")
    for p in (plan, forced):
        data = json.loads(json.dumps(p.to_dict()))
        assert (data["already_fits"], data["force_patch"]) == (True, p is forced)
        assert PatchPlan.from_dict(data) == p
    over = plan_patches(graph, budget_bytes=129_023)  # one byte short: patching is the answer
    assert not over.already_fits and over.feasible and over.chosen == forced.chosen


def test_plan_patch_cli_says_no_patching_is_needed(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = ("plan", "patch", "mobilenet_v2_035_96", "--target", "nrf52840")  # 256 KiB of SRAM
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2:4] == ["already fits layer by layer (peak 129,024 B of a 262,144-byte budget); no patching needed",
                          "the frontier below is what patching would cost; --force-patch picks from it"]
    assert "chosen" not in out
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert code == 0 and data["chosen"] is None and (data["already_fits"], data["force_patch"]) == (True, False)
    code, out, err = run(capsys, *argv, "--emit", str(tmp_path / "pack"))
    assert code == 2 and out == "" and not (tmp_path / "pack").exists()
    assert err == ("edgekit: error: mobilenet_v2_035_96: already fits layer by layer (peak 129,024 B of a "
                   "262,144-byte budget); no patching needed, so --emit has no patch schedule to write; add "
                   "--force-patch to patch it anyway\n")
    code, out, _ = run(capsys, *argv, "--force-patch", "--json")
    data = json.loads(out)
    assert code == 0 and data["chosen"]["grid"] == 3 and data["force_patch"] is True
