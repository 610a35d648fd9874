"""Patch planner: halos by hand, the MCUNetV2 worked example, infeasible budgets, every importer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import export_onnx
from torch import nn

from edgekit.errors import PlanError
from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.plan.patch import PatchPlan, evaluate, patch_regions, plan_patches, split_tiles


class TwoConvs(nn.Module):
    """1x16x16 -> conv3x3 (4ch) -> conv3x3 stride 2 (4ch) -> global pool -> linear."""

    input_shape = (1, 1, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


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


def test_recompute_budget_is_respected() -> None:
    graph = load_graph("mcunet_in")
    tight = plan_patches(graph, max_extra_macs=0.02)
    loose = plan_patches(graph, max_extra_macs=0.50)
    assert tight.chosen is None or tight.chosen.extra_macs_ratio(graph.total_macs) <= 0.02
    assert loose.chosen is not None and loose.chosen.peak_bytes <= (tight.chosen or loose.chosen).peak_bytes


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
