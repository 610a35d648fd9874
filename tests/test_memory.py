"""Layer-by-layer activation memory: figures a person can check by hand and the MCUNetV2 number."""

from __future__ import annotations

from helpers import tiny_net

from edgekit.graph import load_graph
from edgekit.memory import MemoryPolicy, activation_memory


def test_tiny_net_live_bytes_by_hand() -> None:
    profile = activation_memory(load_graph(tiny_net()))
    image, feature, pooled = 3 * 32 * 32, 8 * 16 * 16, 8 * 8 * 8
    live = [m.live_bytes for m in profile.layers]
    # stem: image + its output. The depthwise input is also the residual input, so it is not in place.
    # pw and add: the residual input stays alive until the add has run; after it, only pooled data.
    assert live[:5] == [image + feature, 2 * feature, 3 * feature, 3 * feature, feature + pooled]
    assert profile.peak_bytes == 3 * feature and profile.peak_layer == "block.pw"
    assert activation_memory(load_graph(tiny_net()), MemoryPolicy("fp32")).peak_bytes == 4 * 3 * feature


def test_mobilenet_v2_peak_matches_mcunetv2_paper() -> None:
    graph = load_graph("mobilenet_v2")
    inplace = activation_memory(graph)
    # 112x112x16 block input + 112x112x96 expansion output; the depthwise conv runs in place.
    assert inplace.peak_bytes == 112 * 112 * (16 + 96) == 1_404_928
    assert inplace.peak_layer == "features.2.block.0.0"
    separate = activation_memory(graph, MemoryPolicy(inplace_depthwise=False))
    # without in-place depthwise the stride-2 depthwise holds 112x112x96 in and 56x56x96 out
    assert separate.peak_bytes == 112 * 112 * 96 + 56 * 56 * 96
    assert activation_memory(graph, MemoryPolicy("fp32")).peak_bytes == 4 * 1_404_928


def test_materialized_pads_count_the_padded_copy() -> None:
    import torch
    from torch import nn

    class PadConv(nn.Module):
        input_shape = (1, 3, 8, 8)

        def __init__(self) -> None:
            super().__init__()
            self.pad, self.conv = nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.pad(x))

    graph = load_graph(PadConv().eval())
    assert [layer.op for layer in graph.layers] == ["conv2d"] and graph.layers[0].explicit_pad == (0, 0, 1, 1)
    image, padded, out = 3 * 8 * 8, 3 * 9 * 9, 4 * 4 * 4
    assert activation_memory(graph).peak_bytes == image + out  # the pad folded into the conv
    # the PAD op holds the image and its padded copy; then the conv the copy and its output
    assert activation_memory(graph, MemoryPolicy(materialize_pads=True)).peak_bytes == max(image + padded,
                                                                                          padded + out)
    assert MemoryPolicy.tflm() == MemoryPolicy("int8", inplace_depthwise=False, materialize_pads=True)
