"""The patch executor runs a plan exactly: same output as layer by layer, and the planner's peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_plan_patch import TwoConvs

from edgekit.errors import PlanError
from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy
from edgekit.models import create_model
from edgekit.plan.patch import fixed_plan, plan_patches
from edgekit.plan.patch_exec import run_patched


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics, so a wrong halo or padding shows in the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


def check(model: torch.nn.Module, plan) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    run = run_patched(model, plan, x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(run.output - expected).max() <= 1e-5 * np.abs(expected).max()
    assert (run.peak_bytes, run.patch_stage_bytes, run.rest_bytes) == \
        (plan.chosen.peak_bytes, plan.chosen.patch_stage_bytes, plan.chosen.rest_bytes)


@pytest.mark.parametrize("name, policy", [("mobilenet_v2_035_96", MemoryPolicy()),
                                          ("mcunet_vww", MemoryPolicy(inplace_residual=True))])
def test_searched_plans_run_exactly(name: str, policy: MemoryPolicy) -> None:
    model = trained_like(create_model(name))
    check(model, plan_patches(load_graph(model), policy=policy))


@pytest.mark.parametrize("grid", [2, 3, 5])
def test_border_patches_pad_only_at_the_image_border(grid: int) -> None:
    model = trained_like(TwoConvs())
    check(model, fixed_plan(load_graph(model), load_graph(model).layers[1].name, grid))


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
