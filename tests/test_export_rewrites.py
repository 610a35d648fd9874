"""Float-exact rewrites of the exported graph before quantization: an average pool wider than its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.convert.compile import compile_int8
from edgekit.convert.config import Int8Config
from edgekit.convert.export_rewrites import covering_pools_as_means
from edgekit.formats.bundle import load_bundle
from edgekit.graph import load_graph
from edgekit.targets import load_target


class WidePoolNet(nn.Module):
    """Hugging Face EfficientNet's head: AvgPool2d(kernel larger than the map, ceil_mode=True), then a classifier."""

    input_shape = (1, 3, 24, 24)

    def __init__(self, kernel: int = 64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=4, padding=1)  # 6x6 map
        self.pool = nn.AvgPool2d(kernel, ceil_mode=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_a_pool_wider_than_its_input_becomes_a_mean_with_the_same_float_results() -> None:
    torch.manual_seed(0)
    model, x = WidePoolNet().eval(), torch.rand(2, 3, 24, 24)
    exported = torch.export.export(model, (x,)).module()
    assert covering_pools_as_means(exported) == 1
    assert not any(n.target is torch.ops.aten.avg_pool2d.default for n in exported.graph.nodes)
    torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-6)


def test_a_pool_that_fits_its_input_is_left_alone() -> None:
    model = WidePoolNet(kernel=6).eval()  # exactly the 6x6 map: a plain global pool, lowered without padding
    exported = torch.export.export(model, (torch.rand(1, 3, 24, 24),)).module()
    assert covering_pools_as_means(exported) == 0


def test_the_int8_tflite_of_a_wide_pool_holds_no_window_sized_tensor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WidePoolNet().eval()
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).uniform(0, 1, (8, 3, 24, 24)).astype(np.float32))
    target = load_target("rpi4")
    compile_int8(model, "wide_pool", target, tmp_path / "b", calib, None, Int8Config.for_target(target))
    layers = load_graph(tmp_path / "b" / load_bundle(tmp_path / "b").manifest.stages[0].file).layers
    biggest = max(int(np.prod(layer.output_shape)) for layer in layers)
    assert biggest <= 3 * 24 * 24  # the image (an NCHW-input transpose) or the conv's 16x6x6 map, not 16x64x64
    assert "pad" not in {layer.op for layer in layers}
