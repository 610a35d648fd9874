"""Graph import: hand-checkable numbers, agreement across torch / ONNX / TFLite, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import export_onnx, tiny_net

from edgekit.errors import ModelLoadError
from edgekit.graph import Graph, load_graph
from edgekit.models import create_model


def table(graph: Graph, skip: tuple[str, ...] = ()) -> list[tuple]:
    """The layer table without source-specific names: what must agree across importers."""
    return [(l.op, l.input_shapes, l.output_shape, l.macs, l.params, l.activation, l.kernel, l.stride,
             l.padding, l.dilation, l.groups, l.rf, l.jump) for l in graph.layers if l.op not in skip]


def test_tiny_net_layer_table_by_hand() -> None:
    graph = load_graph(tiny_net())
    ops = [(l.name, l.op, l.activation) for l in graph.layers]
    assert ops == [("stem.0", "conv2d", "relu"), ("block.dw.0", "depthwise_conv2d", "relu6"),
                   ("block.pw", "conv2d", None), ("block.add", "add", None), ("pool", "maxpool2d", None),
                   ("gap", "global_avgpool", None), ("flatten", "reshape", None), ("fc", "linear", None)]
    stem, dw, pw, add, pool, *_ , fc = graph.layers
    assert stem.macs == 8 * 16 * 16 * 3 * 3 * 3 and stem.params == 8 * 27 + 8  # batch norm folded into a bias
    assert dw.macs == 8 * 16 * 16 * 9 and dw.params == 8 * 9 + 8
    assert pw.macs == 8 * 16 * 16 * 8 and fc.macs == 80 and fc.params == 90
    assert add.inputs == (stem.output, pw.output)  # the residual edge
    assert (stem.rf, dw.rf, pool.rf) == ((3, 3), (7, 7), (9, 9))
    assert (stem.jump, pool.jump) == ((2, 2), (4, 4))
    assert stem.padding == (1, 1, 1, 1) and stem.stride == (2, 2)
    assert graph.layers[4].macs == 8 * 8 * 8 * 2 * 2 and graph.layers[5].macs == 8 * 8 * 8  # pools: window, adds
    assert graph.total_macs == 55296 + 18432 + 16384 + 2048 + 512 + 80
    assert {l.source_op for l in graph.layers[:3]} == {"aten.conv2d.default"} and graph.unknown_ops == {}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2_035_96", "mcunet_vww", "digits_cnn", "resnet18"])
def test_torch_and_onnx_export_give_the_same_layer_table(name: str, tmp_path: Path) -> None:
    model = tiny_net() if name == "tiny" else create_model(name)
    with torch.no_grad():  # non-zero BN statistics and biases, as trained; the exporter drops all-zero biases
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
            elif isinstance(module, torch.nn.Linear):
                module.bias.uniform_(-1, 1)
    from_torch = load_graph(model)
    from_onnx = load_graph(export_onnx(model, tmp_path / f"{name}.onnx"))
    assert from_onnx.source == "onnx" and len(from_onnx.layers) == len(from_torch.layers)
    assert table(from_onnx) == table(from_torch)
    assert from_onnx.total_macs == from_torch.total_macs


def test_mobilenet_v2_sanity_figures() -> None:
    graph = load_graph("mobilenet_v2")
    assert graph.inputs[0].shape == (1, 3, 224, 224)
    assert graph.total_macs == 300_774_272 + 1280 * 7 * 7  # ~300 M MACs of conv + linear, and the global pool
    assert 3.4e6 < graph.total_params < 3.6e6  # 3.5 M (3,487,816 after batch-norm folding)
    depthwise = [l for l in graph.layers if l.op == "depthwise_conv2d"]
    assert len(depthwise) == 17 and all(l.kernel == (3, 3) for l in depthwise)


def test_resnet18_sanity_figures() -> None:
    graph = load_graph("resnet18")
    assert graph.total_macs == 1_814_073_344 + 64 * 56 * 56 * 9 + 512 * 7 * 7  # ~1.8 G MACs; max and global pool
    assert 11.6e6 < graph.total_params < 11.8e6  # ~11.7 M
    adds = [l for l in graph.layers if l.op == "add"]
    assert len(adds) == 8 and all(len(l.inputs) == 2 for l in adds)


@pytest.mark.slow
def test_float_tflite_matches_torch(tiny_tflite: Path) -> None:
    graph = load_graph(tiny_tflite)
    assert graph.source == "tflite" and graph.layout == "NHWC"
    assert graph.inputs[0].shape == (1, 3, 32, 32)
    # litert-torch adds a boundary TRANSPOSE to NHWC, writes the stem's padding as an explicit PAD (which
    # the importer folds back into the conv) and fuses global pool + flatten into one MEAN.
    layout_ops = ("transpose", "reshape", "global_avgpool")
    assert table(graph, skip=layout_ops) == table(load_graph(tiny_net()), skip=layout_ops)


@pytest.mark.slow
def test_int8_tflite_is_read_with_int8_weights(mbv2_int8_tflite: Path) -> None:
    graph = load_graph(mbv2_int8_tflite)
    reference = load_graph("mobilenet_v2_035_96")
    convs = [l for l in graph.layers if l.op in ("conv2d", "depthwise_conv2d")]
    assert [l.dtype for l in convs] == ["int8"] * len(convs)
    assert [(l.output_shape, l.macs, l.kernel, l.stride, l.rf) for l in convs] == \
        [(l.output_shape, l.macs, l.kernel, l.stride, l.rf) for l in reference.layers
         if l.op in ("conv2d", "depthwise_conv2d")]
    from edgekit.convert.islands import float_islands

    assert float_islands(mbv2_int8_tflite) == []  # residual adds are int8 too, not float islands
    weights = sum(l.params for l in convs)
    weight_bytes = sum(l.param_bytes for l in convs)
    assert weights < weight_bytes < 1.2 * weights  # int8 weights plus int32 biases, not 4 bytes each


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match=r"input shape \(1, 1, 32, 32\)"):
        load_graph(tiny_net(), (1, 1, 32, 32))


def test_an_operator_outside_the_op_table_is_analysed_as_unknown() -> None:
    class Cumulative(torch.nn.Module):
        input_shape = (1, 4, 8, 8)

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.cumsum(x, 3))

    graph = load_graph(Cumulative())
    unknown, conv = graph.layers
    assert (unknown.op, unknown.source_op, unknown.macs_known) == ("unknown", "aten.cumsum.default", False)
    assert unknown.output_shape == (1, 4, 8, 8) and unknown.rf == (8, 8)  # unknown semantics: the whole image
    assert graph.unknown_ops == {"aten.cumsum.default": 1} and graph.total_macs == conv.macs == 4 * 8 * 8 * 4


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 50])
def test_corrupt_model_files_are_refused(tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="broken"):
        load_graph(path)


@pytest.mark.slow
def test_truncated_tflite_is_refused(tiny_tflite: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.tflite"
    path.write_bytes(tiny_tflite.read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="cut.tflite"):
        load_graph(path)


def test_missing_files_and_modules() -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_graph("nowhere/model.onnx")
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_pkg.models'"):
        load_graph("no_such_pkg.models:net")
    with pytest.raises(ModelLoadError, match="has no attribute 'nope'"):
        load_graph("edgekit.models:nope")
    with pytest.raises(ModelLoadError, match="mobilenet_v2"):
        load_graph("no_such_model")


def test_layer_names_are_unique() -> None:
    graph = load_graph("mcunet_in")
    names = [l.name for l in graph.layers]
    assert len(names) == len(set(names))


@pytest.mark.slow
def test_int8_tflite_with_a_padded_max_pool_is_read(tmp_path: Path) -> None:
    """litert pads a padded max pool with PADV2, whose pad value is a shapeless scalar constant."""
    import numpy as np
    from torch import nn

    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize

    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1)).eval()
    calibration = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    graph = load_graph(quantize(model, calibration, tmp_path / "pool.tflite", Int8Config(format="tflite")))
    ops = [layer.op for layer in graph.layers]
    pool = graph.layers[ops.index("maxpool2d")]
    assert ops[ops.index("maxpool2d") - 1] == "pad" and pool.output_shape == (1, 8, 8, 8)
