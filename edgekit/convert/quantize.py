"""INT8 post-training quantization of torch modules with the real tools: litert-torch PT2E and onnxruntime.quantization
(which also quantizes a user's own float .onnx file)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.config import Int8Config
from edgekit.convert.export_rewrites import covering_pools_as_means
from edgekit.convert.fidelity import ArrayReader
from edgekit.convert.tflite_layout import fold_layout_round_trips
from edgekit.convert.threads import bounded_threads
from edgekit.convert.torch_model import TorchModel, model_label
from edgekit.errors import ConversionError, EdgekitError
from edgekit.graph.ops import ATEN_OPS
from edgekit.progress import progress

_TFLITE_INT8 = 9  # TensorType.INT8 in the TFLite schema
CALIBRATION_BATCH = 32  # PT2E calibration samples per forward pass, for a model that exports with a free batch


def quantize(model: Any, calibration: np.ndarray, out_path: str | Path, config: Int8Config,
             float_copy: str | Path | None = None) -> Path:
    """Quantize a torch module with `calibration` samples (N,C,H,W float32) and write one INT8 model file.

    For ONNX, `float_copy` also keeps the pre-processed FP32 model (the SQNR reference).
    """
    out_path = Path(out_path)
    model = model.eval()
    with converter_errors(f"{model_label(model)}: INT8 {config.format} conversion"):
        if config.format == "tflite":
            _tflite(model, calibration, out_path, config)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                torch_onnx_export(model, calibration[:1], fp32)
                quantize_onnx_file(fp32, calibration, out_path, config, float_copy)
    return out_path


@contextlib.contextmanager
def converter_errors(step: str) -> Iterator[None]:
    """Run a converter quietly: its progress on stderr (stdout stays clean for --json), torch's deprecation
    notices hidden, and any exception it raises as one ConversionError naming `step` and the cause."""
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except EdgekitError:
        raise
    except Exception as exc:  # exporters and converters raise many types; name the step and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{step} failed: {first}") from exc


# How an op the litert-torch annotators leave alone is annotated for int8, keyed by edgekit op (graph/ops.py's
# ATEN_OPS names the aten targets). The rules follow TFLite's integer kernels: "own" has int8 inputs and an
# output with its own observed range (ADD, SUB, MUL, HARD_SWISH, LEAKY_RELU, SUM); "shared" keeps the producer's
# scale and zero point on input and output, so no requantization appears (TRANSPOSE, RESHAPE, MEAN, pools,
# clamps, slices, pads, resizes); "joint" gives every input of a CONCATENATION the first one's; "logistic",
# "softmax" (scale 1/256, zero point -128) and "tanh" (1/128, 0) are the output parameters those kernels fix.
INT8_RULES: dict[str, str] = {
    "add": "own", "sub": "own", "mul": "own", "hardswish": "own", "leaky_relu": "own", "sum": "own",
    "sigmoid": "logistic", "softmax": "softmax", "tanh": "tanh",
    "mean": "shared", "global_avgpool": "shared", "reduce_max": "shared", "transpose": "shared",
    "reshape": "shared", "identity": "shared", "relu": "shared", "relu6": "shared", "clip": "shared",
    "maxpool2d": "shared", "avgpool2d": "shared", "slice": "shared", "pad": "shared",
    "resize_nearest": "shared", "resize_bilinear": "shared", "concat": "joint",
}
_FIXED_QPARAMS = {"logistic": (1 / 256, -128), "softmax": (1 / 256, -128), "tanh": (1 / 128, 0)}


def _decompositions() -> dict[str, Callable[[Callable[..., Any], Any, Any], Any]]:
    """Ops litert-torch would lower to several TFLite ops with float intermediates, rewritten (edgekit op ->
    `rewrite(emit, node, x)`, None to keep the node) into aten ops the table annotates, as TFLite's integer
    kernels compute them: SiLU as LOGISTIC x MUL, hard-sigmoid as ADD 3, RELU6, MUL 1/6, tanh-GELU as
    x * sigmoid(2 z), which equals 0.5 x (1 + tanh z); string-padded convs get numeric pads. GELU with erf is
    kept: LiteRT's GELU kernel takes int8 between quantized neighbours, TF Lite Micro has none (the pre-flight
    refuses it for an MCU)."""
    import torch

    aten = torch.ops.aten

    def silu(emit: Callable[..., Any], node: Any, x: Any) -> Any:
        return emit(aten.mul.Tensor, x, emit(aten.sigmoid.default, x))

    def hardsigmoid(emit: Callable[..., Any], node: Any, x: Any) -> Any:
        return emit(aten.mul.Tensor, emit(aten.hardtanh.default, emit(aten.add.Tensor, x, 3.0), 0.0, 6.0), 1 / 6)

    def gelu_tanh(emit: Callable[..., Any], node: Any, x: Any) -> Any:
        if node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") != "tanh":
            return None
        cube = emit(aten.mul.Tensor, emit(aten.mul.Tensor, x, x), x)
        z = emit(aten.add.Tensor, x, emit(aten.mul.Tensor, cube, 0.044715))
        return emit(aten.mul.Tensor, x, emit(aten.sigmoid.default, emit(aten.mul.Tensor, z, math.sqrt(8 / math.pi))))

    def conv_string_padding(emit: Callable[..., Any], node: Any, x: Any) -> Any:
        """conv2d(padding="same"/"valid") as conv2d with numeric pads, which litert-torch's annotator matches
        (transformers' EfficientNet writes its convs so); an odd total "same" pad (asymmetric) is kept."""
        if node.target != aten.conv2d.padding:
            return None
        args = list(node.args) + [None] * (7 - len(node.args))
        weight, bias, stride, padding, dilation, groups = args[1:7]
        dilation = list(dilation or (1, 1))
        if padding == "valid":
            pads = [0, 0]
        else:
            totals = [d * (k - 1) for d, k in zip(dilation, weight.meta["val"].shape[2:])]
            if any(t % 2 for t in totals):
                return None
            pads = [t // 2 for t in totals]
        return emit(aten.conv2d.default, x, weight, bias, list(stride or (1, 1)), pads, dilation, groups or 1)

    return {"silu": silu, "hardsigmoid": hardsigmoid, "gelu": gelu_tanh, "conv2d": conv_string_padding}


def _residual_aware_quantizer_class() -> type:
    """litert-torch's PT2EQuantizer, plus int8 annotation of the ops its annotators miss (`INT8_RULES`).

    Its add annotator finds adds through `source_fn_stack` metadata, which torch.export (non-strict, as used
    here) does not record for `x + y`, and it has no rule at all for hard-swish, tanh, a mean written as
    `x.mean(...)` after an unannotated op, or permutes; those would stay float islands between Dequantize and
    Quantize. SiLU, hard-sigmoid and tanh-GELU are first rewritten into ops with int8 kernels (`_decompositions`).
    """
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    decompositions = _decompositions()

    def fixed(scale: float, zero_point: int) -> Any:
        return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128,
                                            quant_max=127, qscheme=torch.per_tensor_affine)

    def annotated_output(node: Any) -> bool:
        annotation = node.meta.get("quantization_annotation")
        return annotation is not None and annotation._annotated and annotation.output_qspec is not None

    def float_tensor(node: Any) -> bool:
        value = node.meta.get("val")
        return isinstance(value, torch.Tensor) and value.is_floating_point()

    class ResidualAwareQuantizer(PT2EQuantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            graph = model.graph
            for node in list(graph.nodes):
                rewrite = decompositions.get(ATEN_OPS.get(str(node.target), ""))
                if node.op != "call_function" or rewrite is None:
                    continue

                def emit(target: Any, *args: Any, node: Any = node) -> Any:
                    new = graph.call_function(target, args)
                    new.meta.update({k: node.meta[k] for k in ("val", "nn_module_stack", "stack_trace")
                                     if k in node.meta})
                    return new

                with graph.inserting_before(node):
                    replacement = rewrite(emit, node, node.args[0])
                if replacement is not None:
                    node.replace_all_uses_with(replacement)
                    graph.erase_node(node)
            graph.eliminate_dead_code()
            model.recompile()
            return super().transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            act_in, act_out = get_input_act_qspec(self.global_config), get_output_act_qspec(self.global_config)
            for node in model.graph.nodes:
                rule = INT8_RULES.get(ATEN_OPS.get(str(node.target), ""))
                if node.op != "call_function" or rule is None or "quantization_annotation" in node.meta \
                        or not float_tensor(node):
                    continue
                if rule == "joint":  # like litert-torch's cat rule, which finds cats by source metadata too
                    first, *rest = node.args[0]
                    output = SharedQuantizationSpec((first, node))
                    inputs = {first: act_in, **{a: output for a in rest if a is not first}}
                elif not isinstance(node.args[0], torch.fx.Node):
                    continue
                elif rule == "shared":  # like litert-torch's adaptive_avg_pool2d rule
                    source = node.args[0]
                    qspec_in = SharedQuantizationSpec(source) if annotated_output(source) else act_in
                    inputs, output = {source: qspec_in}, SharedQuantizationSpec((source, node))
                else:
                    operands = node.args[:2] if rule == "own" else node.args[:1]
                    inputs = {a: act_in for a in operands if isinstance(a, torch.fx.Node)}
                    output = act_out if rule == "own" else fixed(*_FIXED_QPARAMS[rule])
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=output, _annotated=True)
            return model

    return ResidualAwareQuantizer


def int8_quantizer(config: Int8Config) -> Any:
    """The PT2E quantizer a TFLite INT8 conversion with `config` uses (symmetric, per-channel weights by default)."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    global_config = get_symmetric_quantization_config(is_per_channel=config.per_channel)
    if config.method == "minmax":  # litert-torch's config observes activations with a histogram
        global_config = _minmax_activations(global_config)
    return _residual_aware_quantizer_class()().set_global(global_config)


def _minmax_activations(global_config: Any) -> Any:
    """`global_config` with its activation observers replaced by MinMaxObserver, same arguments otherwise."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    spec = global_config.input_activation
    observer = MinMaxObserver.with_args(**spec.observer_or_fake_quant_ctr.p.keywords)
    minmax = dataclasses.replace(spec, observer_or_fake_quant_ctr=observer)
    return dataclasses.replace(global_config, input_activation=minmax, output_activation=minmax)


def _tflite(model: Any, calibration: np.ndarray, out_path: Path, config: Int8Config) -> None:
    """PT2E static quantization (per-channel symmetric weights, per-tensor activations), then litert-torch."""
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if config.channels_last_io:
        with torch.no_grad():
            out = model(torch.from_numpy(calibration[:1]))
        four_d = [i for i, t in enumerate(out if isinstance(out, tuple) else (out,)) if t.dim() == 4]
        model = litert_torch.to_channel_last_io(model, args=[0], outputs=four_d or None)
        calibration = np.ascontiguousarray(calibration.transpose(0, 2, 3, 1))
    sample = (torch.from_numpy(calibration[:1]),)
    quantizer = int8_quantizer(config)
    prepared, batch = _prepared(model, calibration, quantizer)
    batches = np.array_split(calibration, -(-len(calibration) // batch))  # sizes differ by at most one
    with torch.no_grad(), bounded_threads():
        for x in progress(batches, f"calibrating ({len(calibration)} samples)", len(batches)):
            prepared(torch.from_numpy(x))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    for module in quantized.modules():  # the ops were traced in eval mode; only the flag says otherwise
        module.training = False
    edge = litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    if not config.int8_io:
        edge.export(str(out_path))
        fold_layout_round_trips(out_path)
        return
    from ai_edge_litert._pywrap_modify_model_interface import modify_model_interface

    with tempfile.TemporaryDirectory() as tmp:
        float_io = Path(tmp) / "float_io.tflite"
        edge.export(str(float_io))
        status = modify_model_interface(str(float_io), str(out_path), _TFLITE_INT8, _TFLITE_INT8)
    if status != 0:
        raise ConversionError(f"{out_path}: LiteRT could not switch the model interface to int8 (status {status})")
    fold_layout_round_trips(out_path)


def _prepared(model: Any, calibration: np.ndarray, quantizer: Any) -> tuple[Any, int]:
    """The model exported and prepared with PT2E observers, and how many samples it calibrates on per pass:
    CALIBRATION_BATCH when it keeps samples apart (`_batch_independent`) and exports with a free batch dimension
    (traced on two samples, since torch fixes a dimension of size 1, so every batch passed holds two or more),
    else one at a time."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    pair = torch.from_numpy(calibration[:2])
    if len(pair) == 2 and _batch_independent(model, pair):
        shapes = torch.export.ShapesCollection()  # by tensor: also a forward(*args), as the NHWC wrapper's
        shapes[pair] = {0: torch.export.Dim("batch")}
        try:
            exported = torch.export.export(model, (pair,), dynamic_shapes=shapes.dynamic_shapes(model, (pair,)))
            return prepare_pt2e(_rewritten(exported.module()), quantizer), CALIBRATION_BATCH
        except Exception:  # a model that fixes its batch (a view to (1, -1), say) exports at batch 1 only
            pass
    exported = torch.export.export(model, (torch.from_numpy(calibration[:1]),))
    return prepare_pt2e(_rewritten(exported.module()), quantizer), 1


def _rewritten(module: Any) -> Any:
    """The exported module with the float-exact rewrites of `export_rewrites` applied."""
    covering_pools_as_means(module)
    return module


def _batch_independent(model: Any, pair: Any) -> bool:
    """Whether `model` computes each sample of a batch on its own: its outputs for the two samples of `pair`
    together are its outputs for each alone, stacked (a model that writes its batch into a view does not)."""
    import torch

    def outputs(x: Any) -> list[Any]:
        return torch.utils._pytree.tree_leaves(model(x))  # a tensor, tuple, list or dict of them

    with torch.no_grad():
        together, first, second = outputs(pair), outputs(pair[:1]), outputs(pair[1:])
    return all(t.shape[:1] == (2,) and torch.allclose(t, torch.cat([a, b]), rtol=1e-4, atol=1e-5)
               for t, a, b in zip(together, first, second))


def torch_onnx_export(model: Any, sample: np.ndarray, path: Path) -> None:
    """torch.onnx export (dynamo) of `model` on one sample, its outputs named as the model names them."""
    import torch

    names = model.output_names if isinstance(model, TorchModel) else None  # others keep the exporter's names
    torch.onnx.export(model, (torch.from_numpy(sample),), str(path), dynamo=True, verbose=False,
                      output_names=list(names) if names else None)


def quantize_onnx_file(fp32: Path, calibration: np.ndarray, out_path: Path, config: Int8Config,
                       float_copy: str | Path | None = None) -> None:
    """A float .onnx file to S8S8 QDQ: quant_pre_process, then quantize_static calibrated on `calibration`
    (samples as the model's input takes them); `float_copy` keeps the pre-processed FP32 model."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        name = onnx.load(str(prepared)).graph.input[0].name
        reader = ArrayReader(name, calibration, progress_label="calibrating")
        quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=config.per_channel, calibrate_method=method)
        if float_copy is not None:
            shutil.copyfile(prepared, float_copy)
