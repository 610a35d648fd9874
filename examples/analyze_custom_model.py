"""Analyse your own torch model against a board profile of your own, from Python.

Run: .venv/bin/python examples/analyze_custom_model.py
"""

from pathlib import Path

from torch import nn

from edgekit.analysis import analyze
from edgekit.graph import load_graph
from edgekit.report.analysis import render_analysis
from edgekit.targets import load_target

BOARD = """
kind = "device"
name = "my-m4-board"
description = "A Cortex-M4 board with 128 KiB SRAM (example profile)"
class = "mcu"
runtimes = ["tflite-micro"]

[cpu]
model = "Arm Cortex-M4F"
cores = 1
clock = { value = "80 MHz", source = "my board's datasheet" }

[memory]
sram = { value = "128 KiB", source = "my board's datasheet" }
flash = { value = "512 KiB", source = "my board's datasheet" }

[throughput]
int8 = { value = "27 MMAC/s", estimate = "80 MHz / ~3 cycles per MAC (CMSIS-NN class kernels)" }
fp32 = { value = "8 MMAC/s", estimate = "80 MHz / ~10 cycles per MAC" }
"""


def keyword_spotter() -> nn.Module:
    """A small CNN over a 1x49x10 MFCC patch, as in keyword-spotting demos."""
    return nn.Sequential(
        nn.Conv2d(1, 32, (10, 4), stride=(2, 2), padding=(5, 1)), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12),
    )


if __name__ == "__main__":
    profile = Path("out/my-m4-board.toml")
    profile.parent.mkdir(exist_ok=True)
    profile.write_text(BOARD)
    graph = load_graph(keyword_spotter(), (1, 1, 49, 10), name="keyword_spotter")
    print(render_analysis(analyze(graph, load_target(profile))))
