"""Transposed convolution, group norm and instance norm (an encoder-decoder's ops) analysed from torch and ONNX
with MACs and parameters counted by hand; TFLite has no builtin for either norm (converters write MEAN, SUB, MUL,
RSQRT, ADD, which the table knows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import export_onnx, run
from torch import nn

from edgekit.graph import load_graph

CONV_MACS = 8 * 8 * 8 * 3 * 3 * 3  # 8x8x8 outputs, each 3 input channels x 3x3
UP_MACS = 8 * 8 * 8 * 4 * 2 * 2  # each of the 8x8x8 input elements spreads over 4 output channels x 2x2


class UpNorm(nn.Module):
    """3x8x8 -> conv 3x3 (8ch) -> GroupNorm (2 groups) -> ReLU -> transposed conv 8->4, 2x2/2 (16x16) ->
    InstanceNorm (affine)."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(4, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inorm(self.up(torch.relu(self.gn(self.conv(x)))))


def up_norm() -> UpNorm:
    """The factory `edgekit analyze test_norm_ops:up_norm` calls."""
    return UpNorm().eval()


def test_torch_group_norm_instance_norm_and_transposed_conv_by_hand() -> None:
    graph = load_graph(up_norm())
    assert [(l.name, l.op, l.output_shape, l.macs, l.params) for l in graph.layers] == [
        ("conv", "conv2d", (1, 8, 8, 8), CONV_MACS, 8 * 3 * 9 + 8),
        ("gn", "group_norm", (1, 8, 8, 8), 0, 8 + 8),  # weight and bias per channel
        ("relu", "relu", (1, 8, 8, 8), 0, 0),
        ("up", "transpose_conv2d", (1, 4, 16, 16), UP_MACS, 8 * 4 * 2 * 2 + 4),
        ("inorm", "instance_norm", (1, 4, 16, 16), 0, 4 + 4),
    ]
    assert graph.unknown_ops == {} and graph.total_macs == CONV_MACS + UP_MACS == 22_016
    gn = graph.layers[1]
    assert (graph.layers[0].rf, gn.rf) == ((3, 3), (8, 8))  # a norm over H,W reads the whole image


@pytest.mark.slow
def test_onnx_export_of_group_norm_and_transposed_conv_reads_every_op(tmp_path: Path) -> None:
    graph = load_graph(export_onnx(up_norm(), tmp_path / "up_norm.onnx"))
    # torch's exporter writes GroupNorm as Reshape to (1, 2 groups, 256), InstanceNormalization, Reshape, Mul, Add
    assert [l.op for l in graph.layers] == ["conv2d", "reshape", "instance_norm", "reshape", "mul", "add",
                                            "transpose_conv2d", "instance_norm"]
    assert graph.unknown_ops == {} and graph.total_macs == CONV_MACS + UP_MACS
    assert [l.macs for l in graph.layers if l.op == "transpose_conv2d"] == [UP_MACS]


def test_onnx_group_normalization_op_is_a_group_norm(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones(8, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bias")]
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], name="gn", num_groups=2)
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8, 4, 4])  # noqa: E731
    graph = helper.make_graph([node], "gn", [value("x")], [value("y")], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "gn.onnx"))
    (layer,) = load_graph(tmp_path / "gn.onnx").layers
    assert (layer.op, layer.source_op, layer.macs, layer.macs_known, layer.params, layer.rf) == \
        ("group_norm", "GroupNormalization", 0, True, 16, (4, 4))


def test_analyze_cli_knows_every_op_of_the_encoder_decoder(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "analyze", "test_norm_ops:up_norm", "--target", "stm32f746")
    assert code == 0, err
    assert "ops edgekit does not know" not in out
    assert "layers 5   MACs 22.0 k (22,016)   params 380 (380; 1.5 KiB)" in out
