"""`analyze --target` for an MCU: the SRAM verdict uses TF Lite Micro's accounting on the graph with the pads
the TFLite conversion makes explicit, shown beside the default (paper's) figure; numbers checked by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import export_tflite
from torch import nn

from edgekit.analysis import analyze, tflite_pads
from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy, activation_memory
from edgekit.report.analysis import render_analysis
from edgekit.targets import Quantity, load_target


class PadCases(nn.Module):
    """2x8x8 -> a: conv 3x3/2 pad 1 (4x4x4; even input: TFLite's SAME would pad 0/1, so PAD + VALID) -> b: conv
    3x3/1 pad 1 (SAME) -> c: avg pool 3x3/1 pad 1 (PyTorch counts the pad in the mean: PAD) -> d: conv 2x2 (4x3x3)
    -> e: conv 3x3/2 pad 1 (4x2x2; odd input: SAME pads 1/1, no PAD)."""

    input_shape = (1, 2, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 1, 1)
        self.c, self.d, self.e = nn.AvgPool2d(3, 1, 1), nn.Conv2d(4, 4, 2), nn.Conv2d(4, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.e(self.d(self.c(self.b(self.a(x)))))


def pad_cases() -> nn.Module:
    torch.manual_seed(0)
    return PadCases().eval()


# Under TFLM's accounting: a's PAD holds the image (2x8x8 = 128 B) and its padded copy (2x10x10 = 200 B): 328 B.
# c's PAD: b's output (64 B) + its padded copy (4x6x6 = 144 B) = 208 B. The default accounting: image + a = 192 B.
TFLM_PEAK, DEFAULT_PEAK = 128 + 200, 128 + 64


def test_tflite_pads_marks_the_paddings_litert_torch_emits_as_pad_ops() -> None:
    graph = tflite_pads(load_graph(pad_cases()))
    assert [layer.name for layer in graph.layers if any(layer.explicit_pad)] == ["a", "c"]
    assert activation_memory(graph, MemoryPolicy.tflm()).peak_bytes == TFLM_PEAK
    assert activation_memory(graph).peak_bytes == DEFAULT_PEAK  # pads stay folded under the default policy


@pytest.mark.slow
def test_tflite_pads_agrees_with_the_converted_file(tmp_path: Path) -> None:
    converted = load_graph(export_tflite(pad_cases(), tmp_path / "pad_cases.tflite"))
    assert [layer.name.split(":")[0] for layer in converted.layers if any(layer.explicit_pad)] == ["a", "c"]
    assert activation_memory(converted, MemoryPolicy.tflm()).peak_bytes == TFLM_PEAK
    report = render_analysis(analyze(converted, load_target("stm32f746")))
    assert ("peak activations under TF Lite Micro's accounting (every op out of place; 2 explicit pads "
            "materialised, the PAD ops of the tflite file): int8 328 B (328 B) at a:conv_2d") in report


def test_mcu_verdict_uses_the_tflm_figure_beside_the_default_one() -> None:
    analysis = analyze(load_graph(pad_cases()), load_target("stm32f746"))
    lines = render_analysis(analysis).splitlines()
    assert "peak activations, layer by layer: int8 192 B (192 B) at a; fp32 768 B (768 B)" in lines
    assert ("peak activations under TF Lite Micro's accounting (every op out of place; 2 explicit pads "
            "materialised, where litert-torch emits a PAD op: padding that is not TFLite's SAME): int8 328 B "
            "(328 B) at a, 1.71x the layer-by-layer int8 figure") in lines
    assert ("  fits: int8 peak activations under TF Lite Micro's accounting (compile deploys under TFLM) 328 B of "
            "320.0 KiB SRAM") in lines
    assert lines[-1] == ("  SRAM verdict: activations only; compile measures TFLM's whole arena (it adds a "
                         "persistent tail for tensor metadata) and reserves a margin of max(1 KiB, 10%) on top")
    data = json.loads(json.dumps(analysis.to_dict()))
    assert data["peak_activation_bytes"]["int8"] == {"bytes": DEFAULT_PEAK, "layer": "a"}
    assert data["tflm_peak_activation_bytes"]["bytes"] == TFLM_PEAK
    assert data["tflm_peak_activation_bytes"]["explicit_pads"] == ["a", "c"]
    assert [(f["resource"], f["needed_bytes"], f["accounting"]) for f in data["fits"]] == [
        ("SRAM", TFLM_PEAK, "tflm"), ("flash", analysis.graph.total_params, None)]


def test_a_too_small_sram_is_judged_on_the_tflm_figure() -> None:
    target = dataclasses.replace(load_target("stm32f746"), sram=Quantity(300.0, "300 B", source="test"))
    sram = analyze(load_graph(pad_cases()), target).fits[0]
    assert not sram.fits  # the default figure (192 B) would have said "fits"
    assert sram.describe() == ("does not fit: int8 peak activations under TF Lite Micro's accounting (compile "
                               "deploys under TFLM) is short by 28 bytes of SRAM (needs 328 B, has 300 B)")


def test_other_targets_keep_the_default_accounting() -> None:
    analysis = analyze(load_graph(pad_cases()), load_target("rpi4"))
    data = analysis.to_dict()
    assert analysis.tflm is None and data["tflm_peak_activation_bytes"] is None
    assert [(f["resource"], f["accounting"]) for f in data["fits"]] == [("RAM", "default")]
    assert "TF Lite Micro" not in render_analysis(analysis)
