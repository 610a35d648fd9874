"""The op table: consistent with the importers and TF Lite Micro, new ops with hand-checkable MACs, and unknown
ops analysed for memory, named in the report and refused by the patch planner by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import export_onnx, run
from outside_models import McuNetSe, mcunet_se_int8_tflite
from torch import nn

from edgekit.analysis import analyze
from edgekit.errors import PlanError
from edgekit.graph import load_graph
from edgekit.graph.ops import ATEN_OPS, ONNX_OPS, OPS, TFLITE_OPS, Kind
from edgekit.memory import activation_memory
from edgekit.plan.patch import fixed_plan, plan_patches
from edgekit.report.analysis import render_analysis

# Every builtin TF Lite Micro has a kernel for that vision models use (issue 12).
VISION_TFLM_OPS = ("MEAN", "SUM", "AVERAGE_POOL_2D", "MAX_POOL_2D", "HARD_SWISH", "LOGISTIC", "TANH", "RELU", "RELU6",
                   "RELU_N1_TO_1", "LEAKY_RELU", "PRELU", "MUL", "SUB", "DIV", "SQUARED_DIFFERENCE", "MAXIMUM",
                   "MINIMUM", "SOFTMAX", "CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE",
                   "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "PAD", "PADV2",
                   "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL",
                   "QUANTIZE", "DEQUANTIZE", "GATHER", "ARG_MAX", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD")


# --- (a) the table -----------------------------------------------------------------------------------------------


def test_every_importer_mapping_lands_in_the_table_and_every_vision_tflm_op_maps() -> None:
    for mapping in (TFLITE_OPS, ONNX_OPS, ATEN_OPS):
        assert sorted(set(mapping.values()) - set(OPS)) == []
    assert [op for op in VISION_TFLM_OPS if op not in TFLITE_OPS] == []
    assert {OPS[TFLITE_OPS[op]].kind for op in ("SPLIT", "SPLIT_V", "UNPACK")} == {Kind.DATA_MOVEMENT}


def test_tflm_kernels_are_real_builtins_with_the_mcu_flash_estimates() -> None:
    from edgekit.convert.mcu import TFLM_BUILTIN_OPS, TFLM_CORE_FLASH_BYTES, runtime_flash_bytes

    kernels = {op.name: op.tflm_kernel for op in OPS.values() if op.tflm_kernel}
    assert sorted(set(kernels.values()) - TFLM_BUILTIN_OPS) == []
    assert "RELU_N1_TO_1" not in TFLM_BUILTIN_OPS and OPS["relu_n1_to_1"].tflm_kernel is None
    assert all(op.kernel_flash_bytes == 0 for op in OPS.values() if op.tflm_kernel is None)
    # the figures convert.mcu adds to the flash needed: one per distinct kernel, 2 KiB for one no row names
    assert runtime_flash_bytes(["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "SVDF"]) == \
        TFLM_CORE_FLASH_BYTES + (10 + 10 + 4 + 2) * 1024


def test_only_spatial_and_per_pixel_ops_may_sit_in_a_patch_stage() -> None:
    per_pixel = (Kind.SPATIAL, Kind.POINTWISE, Kind.BINARY, Kind.QUANTIZATION)
    assert sorted(op.name for op in OPS.values() if op.patchable and op.kind not in per_pixel) == ["concat"]
    assert not OPS["unknown"].patchable and not OPS["global_avgpool"].patchable and not OPS["mean"].patchable


# --- (b) an MCUNet-style INT8 .tflite ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mcunet_se(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mcunet_se_int8_tflite(tmp_path_factory.mktemp("outside") / "mcunet_se.tflite")


def _torch_conv_and_fc_macs(model: nn.Module) -> int:
    """Conv and linear MACs from the torch module's own shapes (forward hooks): out elements x fan-in."""
    total = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        fan_in = module.in_features if isinstance(module, nn.Linear) else \
            module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total.append(out.numel() * fan_in)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(model.input_shape))
    return sum(total)


@pytest.mark.slow
def test_mcunet_style_int8_tflite_with_transpose_mean_mean_loads_and_plans(mcunet_se: Path) -> None:
    from edgekit.convert.mcu import model_ops

    ops = model_ops(mcunet_se)
    assert {"TRANSPOSE", "MEAN", "HARD_SWISH", "LOGISTIC", "MUL", "DEPTHWISE_CONV_2D"} <= set(ops)
    graph = load_graph(mcunet_se)
    assert graph.unknown_ops == {} and graph.inputs[0].shape == (1, 3, 80, 80)
    compute = [l for l in graph.layers if l.op in ("conv2d", "depthwise_conv2d", "linear")]
    assert sum(l.macs for l in compute) == _torch_conv_and_fc_macs(McuNetSe().eval())
    assert compute[0].macs == 16 * 40 * 40 * 3 * 3 * 3 and compute[-1].macs == 128 * 2  # stem, classifier
    # the pooling chain: a layout-only TRANSPOSE, MEAN over W (128x5x5 adds), MEAN over H (128x5 adds)
    transpose = next(i for i, l in enumerate(graph.layers) if l.op == "transpose")
    over_w, over_h = graph.layers[transpose + 1: transpose + 3]
    assert (over_w.op, over_w.output_shape, over_w.macs) == ("mean", (1, 128, 5), 128 * 5 * 5)
    assert (over_h.op, over_h.output_shape, over_h.macs) == ("mean", (1, 128), 128 * 5)
    assert min(over_h.rf) >= 80  # global pooling: the whole image
    se_means = [l for l in graph.layers if l.op == "global_avgpool"]  # each SE block's mean over H,W
    assert len(se_means) == 4 and all(min(l.rf) >= 80 and l.output_shape[2:] == (1, 1) for l in se_means)
    plan = plan_patches(graph)
    assert plan.chosen is not None and plan.chosen.peak_bytes < plan.layer_by_layer_peak_bytes
    assert all(l.op not in ("global_avgpool", "mean", "mul") for l in graph.layers[: len(plan.stage_layers)])


# --- (c) new ops in torch and ONNX -----------------------------------------------------------------------------


class NewOps(nn.Module):
    """4x8x8 -> transposed conv 4->6, 2x2/2 (16x16) -> chunk into two 3x16x16 -> batch matmul of the halves
    (3 x 16x16 @ 16x16) -> mean over W -> linear."""

    input_shape = (1, 4, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 2, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.up(x).chunk(2, dim=1)
        return self.fc(torch.matmul(left, right).mean(3))


def new_ops() -> NewOps:
    """The factory `edgekit analyze test_ops:new_ops` calls."""
    return NewOps().eval()


def _check_new_ops(graph) -> None:  # noqa: ANN001 - a Graph
    ops = [l.op for l in graph.layers]
    assert ops[:2] == ["transpose_conv2d", "split"] and "batch_matmul" in ops and "mean" in ops
    up = graph.layers[0]
    assert up.output_shape == (1, 6, 16, 16) and up.macs == 4 * 8 * 8 * 6 * 2 * 2 and up.params == 4 * 6 * 4 + 6
    halves = [l for l in graph.layers if l.op == "split"]
    assert [l.output_shape for l in halves] == [(1, 3, 16, 16)] * 2 and {l.inputs for l in halves} == {(up.output,)}
    matmul = graph.layers[ops.index("batch_matmul")]
    assert matmul.output_shape == (1, 3, 16, 16) and matmul.macs == 3 * 16 * 16 * 16
    mean = graph.layers[ops.index("mean")]
    assert mean.output_shape == (1, 3, 16) and mean.macs == 3 * 16 * 16
    assert graph.unknown_ops == {} and graph.total_macs == up.macs + matmul.macs + mean.macs + 3 * 5 * 16


def test_torch_transpose_conv_split_batch_matmul_and_mean_by_hand() -> None:
    graph = load_graph(NewOps())
    _check_new_ops(graph)
    # both halves stay alive until the matmul: at the second split layer, the whole input and both halves
    split_at = [i for i, l in enumerate(graph.layers) if l.op == "split"][1]
    assert activation_memory(graph).layers[split_at].live_bytes == 6 * 256 + 2 * 3 * 256


@pytest.mark.slow
def test_onnx_export_of_the_new_ops_reads_the_same(tmp_path: Path) -> None:
    _check_new_ops(load_graph(export_onnx(NewOps().eval(), tmp_path / "new_ops.onnx")))


class DictOutputs(nn.Module):
    """Two outputs in a dict, as Hugging Face models return them: both become graph outputs."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding="same")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        return {"features": y, "pooled": y.mean((2, 3))}


def test_dict_outputs_and_string_padding() -> None:
    graph = load_graph(DictOutputs())
    conv, pool = graph.layers
    assert graph.outputs == (conv.output, pool.output) and pool.op == "global_avgpool"
    assert conv.padding == (1, 1, 1, 1) and conv.macs == 4 * 8 * 8 * 27


# --- (d) unknown ops ---------------------------------------------------------------------------------------------


def _custom_op_onnx(path: Path) -> Path:
    """x 1x4x16x16 -> Conv 3x3 (8ch) -> com.example.Frobnicate (shape given as value_info) -> Conv 1x1 (8ch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 4, 3, 3)), ("w2", (8, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Frobnicate", ["a"], ["b"], name="frob", domain="com.example"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2")]
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "custom", [value("x", [1, 4, 16, 16])], [value("y", [1, 8, 16, 16])],
                              initializer=weights, value_info=[value("b", [1, 8, 16, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def test_an_unknown_onnx_op_is_analysed_for_memory_and_named(tmp_path: Path) -> None:
    graph = load_graph(_custom_op_onnx(tmp_path / "custom.onnx"))
    conv1, frob, conv2 = graph.layers
    assert (frob.op, frob.source_op, frob.macs_known, frob.output_shape) == \
        ("unknown", "com.example.Frobnicate", False, (1, 8, 16, 16))
    assert graph.total_macs == conv1.macs + conv2.macs == 8 * 256 * 36 + 8 * 256 * 8
    live = [m.live_bytes for m in activation_memory(graph).layers]
    assert live == [4 * 256 + 8 * 256, 8 * 256 * 2, 8 * 256 * 2]  # int8: its input and its own output buffer
    analysis = analyze(graph)
    assert "ops edgekit does not know: com.example.Frobnicate (1 layer); MACs exclude them" in \
        render_analysis(analysis)
    data = json.loads(json.dumps(analysis.to_dict()))
    assert data["unknown_ops"] == {"com.example.Frobnicate": 1} and data["layers"][1]["macs_known"] is False
    with pytest.raises(PlanError, match="'conv2' cannot end a patch stage .*'frob' is com.example.Frobnicate, "
                                        "an op edgekit does not know"):
        fixed_plan(graph, "conv2", 2)
    assert fixed_plan(graph, "conv1", 2).stage_layers == ("conv1",)  # before it, patches still plan


def test_latency_estimates_say_they_exclude_unknown_ops(tmp_path: Path) -> None:
    from edgekit.cost.model import excluded_compute

    graph = load_graph(_custom_op_onnx(tmp_path / "custom.onnx"))
    assert excluded_compute(graph.layers) == \
        "latency excludes the compute of ops edgekit does not know: com.example.Frobnicate (1 layer)"
    assert excluded_compute(graph.layers[:1]) == ""


def test_an_aten_op_outside_the_table_is_unknown_with_a_layer_per_output() -> None:
    class TopK(nn.Module):
        input_shape = (1, 4, 8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.topk(x, 3, dim=3).values

    graph = load_graph(TopK())  # values (returned) and indices (written, never read)
    assert [(l.op, l.source_op, l.output_shape) for l in graph.layers] == \
        [("unknown", "aten.topk.default", (1, 4, 8, 3))] * 2
    assert graph.outputs == (graph.layers[0].output,) and graph.unknown_ops == {"aten.topk.default": 2}


# --- (e) the CLI -------------------------------------------------------------------------------------------------


def test_analyze_cli_on_the_unknown_op_and_new_ops(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = run(capsys, "analyze", str(_custom_op_onnx(tmp_path / "custom.onnx")))
    assert code == 0 and "com.example.Frobnicate (1 layer)" in out, err
    code, out, err = run(capsys, "analyze", "test_ops:new_ops", "--json")
    assert code == 0 and json.loads(out)["unknown_ops"] == {}, err
    code, _, err = run(capsys, "plan", "patch", str(tmp_path / "custom.onnx"), "--stage-end", "conv2", "--grid", "2")
    assert code == 2 and "com.example.Frobnicate, an op edgekit does not know" in err


@pytest.mark.slow
def test_analyze_cli_on_the_mcunet_style_tflite(capsys: pytest.CaptureFixture, mcunet_se: Path) -> None:
    code, out, err = run(capsys, "analyze", str(mcunet_se), "--target", "stm32f746")
    assert code == 0 and "ops edgekit does not know" not in out, err
    code, _, err = run(capsys, "plan", "patch", str(mcunet_se), "--target", "stm32f746")
    assert code == 0, err


@pytest.mark.parametrize("name, layers", [("face_detection_short_range", 73),
                                          ("face_detection_full_range_sparse", 117)])
def test_mediapipe_files_with_float16_and_sparse_weights_analyse(name: str, layers: int) -> None:
    """BlazeFace stores weights as float16 behind DEQUANTIZE (and sparse behind DENSIFY): they are weights."""
    import blazeface  # tools/, on the path through conftest

    graph = load_graph(blazeface.model_path(name))
    assert len(graph.layers) == layers and graph.unknown_ops == {}
    assert {layer.op for layer in graph.layers}.isdisjoint({"dequantize", "unknown"})
    convs = [layer for layer in graph.layers if layer.op in ("conv2d", "depthwise_conv2d")]
    assert all(layer.params > 0 and layer.macs > 0 for layer in convs)
    if name == "face_detection_short_range":  # float16 weights: 2 bytes per parameter
        assert graph.total_param_bytes == 2 * graph.total_params


def test_weights_stored_past_the_flatbuffer_are_read_in_and_bounded(tiny_tflite: Path, tmp_path: Path) -> None:
    """Large files (ai-edge-quantizer's) keep buffers after the flatbuffer, by offset: read like inline ones."""
    from edgekit.errors import ModelLoadError

    outside, index = _largest_buffer_outside(tiny_tflite)
    (tmp_path / "outside.tflite").write_bytes(outside)
    assert _layer_table(tmp_path / "outside.tflite") == _layer_table(tiny_tflite)
    (tmp_path / "short.tflite").write_bytes(outside[:-1])
    with pytest.raises(ModelLoadError, match=rf"buffer {index} lies past the end of the file"):
        load_graph(tmp_path / "short.tflite")


def _layer_table(path: Path) -> list[tuple]:
    return [(layer.op, layer.output_shape, layer.macs, layer.params) for layer in load_graph(path).layers]


def _largest_buffer_outside(path: Path) -> tuple[bytes, int]:
    """The model with its largest buffer stored after the flatbuffer, by offset (as large files keep weights)."""
    from edgekit.formats.tflite import pack_model, parse_model

    model = parse_model(path.read_bytes(), path.name)
    index = max(range(len(model.buffers)), key=lambda i: len(model.buffers[i].data if model.buffers[i].data
                                                              is not None else ()))
    payload = bytes(model.buffers[index].data)
    model.buffers[index].data, model.buffers[index].offset, model.buffers[index].size = None, 2, len(payload)
    model.buffers[index].offset = len(pack_model(model))  # a fixed-size field: packing again keeps the length
    return pack_model(model) + payload, index


@pytest.mark.slow
def test_a_qdq_onnx_reads_its_int8_weights_as_weights(tmp_path: Path) -> None:
    """edgekit's own ONNX QDQ output: conv weights behind DequantizeLinear are weights, stored one byte each."""
    from helpers import TwoConvs

    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize

    model = TwoConvs().eval()
    calibration = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
    qdq = load_graph(quantize(model, calibration, tmp_path / "two_int8.onnx", Int8Config(format="onnx")))
    float_graph = load_graph(model)
    assert qdq.unknown_ops == {} and qdq.total_macs == float_graph.total_macs
    weighted = [layer for layer in qdq.layers if layer.op in ("conv2d", "linear")]
    assert [layer.params for layer in weighted] == [layer.params for layer in float_graph.layers
                                                   if layer.op in ("conv2d", "linear")]
    weights = sum(layer.params - layer.output_shape[1] for layer in weighted)  # int8 weights, int32 biases
    assert sum(layer.param_bytes for layer in weighted) == weights + 4 * sum(l.output_shape[1] for l in weighted)


def test_tflite_micro_refuses_buffers_past_the_flatbuffer_and_inlining_fixes_it(tiny_tflite: Path,
                                                                                tmp_path: Path) -> None:
    """TFLM reads weights stored by offset as garbage, silently: the adapter refuses them; inline_buffers repacks."""
    from edgekit.errors import BackendError
    from edgekit.formats.tflite import external_buffers, inline_buffers
    from edgekit.runtime.backends import TflmAdapter

    outside, _ = _largest_buffer_outside(tiny_tflite)
    assert external_buffers(outside) == 1 and external_buffers(tiny_tflite.read_bytes()) == 0
    with pytest.raises(BackendError, match="TF Lite Micro does not read the 1 buffers this model keeps past"):
        TflmAdapter(outside)
    inline = inline_buffers(outside, "outside")
    assert external_buffers(inline) == 0
    x = np.random.default_rng(0).random(TflmAdapter(inline).input_buffer.shape).astype(np.float32)
    results = []
    for data in (inline, tiny_tflite.read_bytes()):
        adapter = TflmAdapter(data)
        adapter.input_buffer[...] = x
        results.append([o.copy() for o in adapter.invoke()])
    assert all(np.array_equal(a, b) for a, b in zip(*results))
