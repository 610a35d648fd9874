"""Data-free calibration a user can trust: it stops when the batch-norm gap stops closing, says when it did not
converge, honours --max-samples, and without --eval checks INT8 on fresh synthetic inputs, warning when the
quantized model does not respond to its input. Torch runs on bounded threads and the caller's count comes back.

`collapsing` is what `edgekit compile test_data_free:collapsing` imports (tests/ is on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run
from torch import nn

from edgekit.convert.config import Int8Config
from edgekit.convert.int8_steps import calibration_samples
from edgekit.convert.quantize import CALIBRATION_BATCH, _prepared, int8_quantizer
from edgekit.convert.synthetic import plateaued, synthesize_calibration
from edgekit.convert.threads import bounded_threads
from edgekit.formats.bundle import load_bundle


class Collapsing(nn.Module):
    """1x8x8 -> ReLU -> 1x1 conv (weight 1) -> a batch norm whose running mean (-1) no ReLU output can reach ->
    mean -> linear 3 whose bias (+100, 0, -100) dwarfs its input's share (weights 0.001): the gap cannot close,
    and INT8 keeps only the bias, so its output is the same whatever the input while the float output moves."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (1, 1, 8, 8)
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.norm = nn.BatchNorm2d(1)
        self.fc = nn.Linear(1, 3)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.norm.running_mean.fill_(-1.0)
            self.fc.weight.fill_(0.001)
            self.fc.bias.copy_(torch.tensor([100.0, 0.0, -100.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.conv(torch.relu(x))).mean((2, 3)))


def collapsing() -> Collapsing:
    return Collapsing()


class FixedBatch(nn.Module):
    """A model that writes its batch of 1 into a view, so it cannot export with a free batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).view(1, -1)


def test_plateau_is_a_relative_gain_over_a_window() -> None:
    assert plateaued([10.0, 9.0, 8.95], window=1, gain=0.01)  # 8.95 > 0.99 * 9 = 8.91: less than 1% better
    assert not plateaued([10.0, 9.0, 8.9], window=1, gain=0.01)  # 8.9 < 8.91
    assert not plateaued([10.0, 1.0], window=2, gain=0.01)  # fewer steps than the window and one more


def test_synthesis_stops_early_and_says_it_did_not_converge() -> None:
    model = Collapsing()
    synthesis = synthesize_calibration(model, model.input_shape, samples=8).synthesis
    assert (synthesis.samples, synthesis.max_steps, synthesis.stopped, synthesis.converged) == \
        (8, 500, "plateau", False)
    assert 20 < synthesis.steps < 500 and synthesis.final_gap > 0.25 * synthesis.initial_gap
    initial, final, share = synthesis.initial_gap, synthesis.final_gap, synthesis.final_gap / synthesis.initial_gap
    assert synthesis.warning() == (
        f"data-free calibration did not converge: the batch-norm statistics gap went {initial:.2f} -> {final:.2f}, "
        f"{100 * share:.0f}% of the start (converged means at most 25%); the synthetic inputs do not look like data "
        "to this model, so its INT8 ranges are guesses: calibrate with real samples (--calib)")
    assert synthesis.describe().endswith(f"in {synthesis.steps} of 500 steps, {synthesis.seconds:.1f} s; "
                                         "stopped: the gap stopped improving")


def test_synthesis_stops_at_the_step_cap_and_the_time_limit() -> None:
    model = Collapsing()
    capped = synthesize_calibration(model, model.input_shape, samples=4, max_steps=5).synthesis
    assert (capped.steps, capped.stopped) == (5, "step cap")
    timed = synthesize_calibration(model, model.input_shape, samples=4, time_limit_s=0.0).synthesis
    assert (timed.steps, timed.stopped) == (0, "time limit")


def test_max_samples_is_honoured_and_the_default_is_stated() -> None:
    model = Collapsing()
    samples, described, synthesis = calibration_samples(model, None, Int8Config(max_samples=40), None,
                                                        model.input_shape)
    assert samples.shape == (40, 1, 8, 8) and synthesis is not None and synthesis.samples == 40
    assert described.startswith("data-free: synthetic ZeroQ-style inputs, batch-norm statistics gap ")
    samples, described, _ = calibration_samples(model, None, Int8Config(), None, model.input_shape)
    assert samples.shape == (32, 1, 8, 8)
    assert described.startswith("data-free: synthetic ZeroQ-style inputs (the data-free default count; "
                                "--max-samples sets another), batch-norm statistics gap ")
    assert described.endswith("; not real data")
    assert Int8Config().recipe(32, data_free=True).max_samples == 32
    assert Int8Config().recipe(100, data_free=False).max_samples == 200


def test_bounded_threads_restores_the_callers_setting() -> None:
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with bounded_threads() as threads:
            assert threads == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), bounded_threads():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        model = Collapsing()
        synthesize_calibration(model, model.input_shape, samples=2, max_steps=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_calibration_is_batched_unless_the_model_fixes_its_batch() -> None:
    quantizer = int8_quantizer(Int8Config())
    samples = np.zeros((5, 1, 8, 8), np.float32)
    assert _prepared(Collapsing().eval(), samples, quantizer)[1] == CALIBRATION_BATCH == 32
    assert _prepared(FixedBatch().eval(), samples, quantizer)[1] == 1


@pytest.mark.slow
def test_data_free_compile_checks_on_synthetic_inputs_and_warns(capsys: pytest.CaptureFixture,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    code, stdout, err = run(capsys, "compile", "test_data_free:collapsing", "--target", "rpi4", "--int8",
                            "--data-free", "--max-samples", "8", "--max-drop", "-1", "-o", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["calibration_samples"] == 8 and report["synthesis"]["samples"] == 8
    assert report["synthesis"]["stopped"] == "plateau" and report["synthesis"]["converged"] is False
    assert report["fidelity_inputs"] == "synthetic inputs, not real data" and report["fidelity"]["samples"] == 16
    assert report["fidelity"]["outputs"][0]["quantized_constant"] is True
    recipe = load_bundle(out).manifest.recipe
    assert recipe is not None and (recipe["main"].max_samples, recipe["main"].samples) == (8, 8)
    text = (out / "report.txt").read_text().splitlines()
    fidelity = next(line for line in text if line.startswith("fidelity"))
    assert fidelity.startswith("fidelity on 16 synthetic inputs, not real data: top-1 agreement 100.00%; ")
    warnings = [line for line in text if line.startswith("warning: ")]
    assert warnings == [f"warning: {w}" for w in report["warnings"]] and len(warnings) == 3
    assert warnings[0].startswith("warning: data-free calibration did not converge: the batch-norm statistics gap ")
    assert warnings[1] == ("warning: the quantized model's output 'output' is the same for every one of the 16 "
                           "inputs checked while the float model's varies: it does not respond to its input; "
                           "calibrate with real samples (--calib)")
    sqnr = report["fidelity"]["outputs"][0]["sqnr_db"]
    assert warnings[2] == ("warning: the quantized model's top-1 differs from the float model's on 0.00% of 16 "
                           f"synthetic inputs (the limit on held-out data is -1.0 points); its output SQNR is "
                           f"{sqnr:.1f} dB, so a high SQNR with many flips means the float model's top classes are "
                           "near-ties on these inputs; check it on real data with --eval")
