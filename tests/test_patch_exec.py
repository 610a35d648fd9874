"""The patch executor runs a plan exactly: same output as layer by layer, and the peak counted by hand from the
tensors of a tiny model (for the others, the planner's peak: a check of the geometry, not of the accounting)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TwoConvs, trained_like

from edgekit.errors import PlanError
from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.models import create_model
from edgekit.plan.patch import fixed_plan, plan_patches
from edgekit.plan.patch_exec import PatchedRun, run_patched


def check(model: torch.nn.Module, plan) -> PatchedRun:  # type: ignore[no-untyped-def]
    """Run `plan`: the output is the model's, and the bytes held are the planner's; the run, for more checks."""
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    run = run_patched(model, plan, x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(run.output - expected).max() <= 1e-5 * np.abs(expected).max()
    assert (run.peak_bytes, run.patch_stage_bytes, run.rest_bytes) == \
        (plan.chosen.peak_bytes, plan.chosen.patch_stage_bytes, plan.chosen.rest_bytes)
    return run


@pytest.mark.parametrize("name, policy", [("mobilenet_v2_035_96", MemoryPolicy()),
                                          ("mcunet_vww", MemoryPolicy(inplace_residual=True))])
def test_searched_plans_run_exactly(name: str, policy: MemoryPolicy) -> None:
    model = trained_like(create_model(name))
    check(model, plan_patches(load_graph(model), policy=policy))


# TwoConvs (a: 1->4 3x3 on 16x16, b: 4->4 3x3/2 to 8x8), stage = a, b. A patch holds its input window (cut to
# the image) and a's region; b writes its tile straight into the 4x8x8 = 256 B stage buffer. Output rows [t, u)
# need a-rows [2t-1, 2u) and input rows [2t-2, 2u+1), both cut to the 16 rows there are.
#   2x2: the bottom-right tile, rows/cols [4, 8): a [7, 16) = 9, input [6, 16) = 10: 10x10 + 4x9x9 = 424
#   3x3: the centre tile, rows/cols [2, 5): a [3, 10) = 7, input [2, 11) = 9: 9x9 + 4x7x7 = 277
#   5x5: a 2-row interior tile, [1, 3): a [1, 6) = 5, input [0, 7) = 7: 7x7 + 4x5x5 = 149
# After the stage: the pool holds b's 256 B and its own 4 B: 260.
@pytest.mark.parametrize("grid, worst_patch", [(2, 10 * 10 + 4 * 9 * 9), (3, 9 * 9 + 4 * 7 * 7),
                                               (5, 7 * 7 + 4 * 5 * 5)])
def test_border_patches_pad_only_at_the_image_border(grid: int, worst_patch: int) -> None:
    model = trained_like(TwoConvs())
    plan = fixed_plan(load_graph(model), "b", grid)
    run = check(model, plan)
    assert (run.patch_stage_bytes, run.rest_bytes) == (worst_patch + 4 * 8 * 8, 4 * 8 * 8 + 4)
    assert run.peak_bytes == worst_patch + 256


def test_residual_and_pooling_inside_the_stage() -> None:
    model = trained_like(create_model("resnet18", resolution=64))
    graph = load_graph(model)
    end = [l.name for l in graph.layers if l.op == "add"][1]  # stem conv, max pool and two residual blocks
    plan = fixed_plan(graph, end, 4)
    assert {"maxpool2d", "add"} <= {l.op for l in graph.layers[: len(plan.stage_layers)]}
    check(model, plan)


def test_mobilenet_v2_paper_plan_runs_exactly_at_172_kb() -> None:
    model = trained_like(create_model("mobilenet_v2"))
    plan = plan_patches(load_graph(model), policy=MemoryPolicy(inplace_residual=True))
    assert plan.chosen is not None and plan.chosen.peak_bytes == 175_616
    check(model, plan)


def test_a_stage_end_that_is_not_a_cut_is_refused() -> None:
    graph = load_graph(create_model("resnet18", resolution=64))
    inside_block = next(l.name for l in graph.layers if l.name.endswith("body.0.0"))  # the residual input skips it
    with pytest.raises(PlanError, match="cannot end a patch stage"):
        fixed_plan(graph, inside_block, 2)


class ExplicitPads(torch.nn.Module):
    """Zero pads as their own modules (nn.ZeroPad2d), as TFLite graphs carry them: in the stage and after it."""

    input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stage = torch.nn.Sequential(torch.nn.ZeroPad2d((0, 1, 0, 1)), torch.nn.Conv2d(3, 8, 3, 2),
                                         torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 1, 1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.ZeroPad2d(1), torch.nn.Conv2d(8, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x)).mean((2, 3))


@pytest.mark.parametrize("policy", [MemoryPolicy(), MemoryPolicy.tflm()])
def test_explicit_pads_run_exactly_under_both_accountings(policy: MemoryPolicy) -> None:
    model = ExplicitPads().eval()
    graph = load_graph(model)
    assert graph.layers[0].explicit_pad == (0, 0, 1, 1)  # folded into the conv, padding only the true border
    plan = fixed_plan(graph, graph.layers[1].name, 2, policy=policy)
    check(model, plan)
    if policy.materialize_pads:  # the padded copies cost bytes: in the stage (per patch) and after it
        default = fixed_plan(graph, graph.layers[1].name, 2)
        assert plan.chosen.patch_stage_bytes > default.chosen.patch_stage_bytes
        assert plan.chosen.rest_bytes > default.chosen.rest_bytes
