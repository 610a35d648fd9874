"""INT8 post-training quantization with the real tools: litert-torch PT2E and onnxruntime.quantization."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import ArrayReader
from edgekit.errors import ConversionError
from edgekit.progress import progress

_TFLITE_INT8 = 9  # TensorType.INT8 in the TFLite schema


def quantize(model: Any, calibration: np.ndarray, out_path: str | Path, config: Int8Config,
             float_copy: str | Path | None = None) -> Path:
    """Quantize a torch module with `calibration` samples (N,C,H,W float32) and write one INT8 model file.

    For ONNX, `float_copy` also keeps the pre-processed FP32 model (the SQNR reference).
    """
    out_path = Path(out_path)
    model = model.eval()
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            # converters print progress (kept, on stderr: stdout stays clean for --json) and torch's
            # internal deprecation notices (hidden: nothing a user can act on)
            warnings.simplefilter("ignore", FutureWarning)
            if config.format == "tflite":
                _tflite(model, calibration, out_path, config)
            else:
                _onnx_qdq(model, calibration, out_path, config, float_copy)
    except ConversionError:
        raise
    except Exception as exc:  # exporters and converters raise many types; name the step and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{type(model).__name__}: INT8 {config.format} conversion failed: {first}") from exc
    return out_path


def _residual_aware_quantizer_class() -> type:
    """litert-torch's PT2EQuantizer, plus int8 annotation of elementwise add/mul it misses.

    Its add annotator finds adds through `source_fn_stack` metadata, which torch.export (non-strict,
    as used here) does not record for `x + y`; residual adds then stay float islands between
    Dequantize and Quantize. Annotating the remaining aten add/mul nodes the same way fixes that.
    """
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    elementwise = {torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor}

    class ResidualAwareQuantizer(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            config = self.global_config
            for node in model.graph.nodes:
                if node.target not in elementwise or "quantization_annotation" in node.meta:
                    continue
                inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                if len(inputs) != 2:
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: get_input_act_qspec(config) for a in inputs},
                    output_qspec=get_output_act_qspec(config), _annotated=True)
            return model

    return ResidualAwareQuantizer


def _tflite(model: Any, calibration: np.ndarray, out_path: Path, config: Int8Config) -> None:
    """PT2E static quantization (per-channel symmetric weights, per-tensor activations), then litert-torch."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if config.channels_last_io:
        with torch.no_grad():
            four_d_output = model(torch.from_numpy(calibration[:1])).dim() == 4
        model = litert_torch.to_channel_last_io(model, args=[0], outputs=[0] if four_d_output else None)
        calibration = np.ascontiguousarray(calibration.transpose(0, 2, 3, 1))
    sample = (torch.from_numpy(calibration[:1]),)
    quantizer = _residual_aware_quantizer_class()().set_global(
        get_symmetric_quantization_config(is_per_channel=config.per_channel))
    prepared = prepare_pt2e(torch.export.export(model, sample).module(), quantizer)
    with torch.no_grad():
        for x in progress(calibration, "calibrating", len(calibration)):
            prepared(torch.from_numpy(x[None]))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    for module in quantized.modules():  # the ops were traced in eval mode; only the flag says otherwise
        module.training = False
    edge = litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    if not config.int8_io:
        edge.export(str(out_path))
        return
    from ai_edge_litert._pywrap_modify_model_interface import modify_model_interface

    with tempfile.TemporaryDirectory() as tmp:
        float_io = Path(tmp) / "float_io.tflite"
        edge.export(str(float_io))
        status = modify_model_interface(str(float_io), str(out_path), _TFLITE_INT8, _TFLITE_INT8)
    if status != 0:
        raise ConversionError(f"{out_path}: LiteRT could not switch the model interface to int8 (status {status})")


def _onnx_qdq(model: Any, calibration: np.ndarray, out_path: Path, config: Int8Config,
              float_copy: str | Path | None) -> None:
    """torch.onnx export, quant_pre_process, then quantize_static to S8S8 QDQ."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        torch.onnx.export(model, (torch.from_numpy(calibration[:1]),), str(fp32), dynamo=True, verbose=False)
        quant_pre_process(str(fp32), str(prepared))
        name = onnx.load(str(prepared)).graph.input[0].name
        reader = ArrayReader(name, calibration, progress_label="calibrating")
        quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=config.per_channel, calibrate_method=method)
        if float_copy is not None:
            shutil.copyfile(prepared, float_copy)
