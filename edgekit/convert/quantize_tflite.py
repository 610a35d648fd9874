"""A float .tflite file to full integer with Google's ai-edge-quantizer: static int8 activations (min/max over the
calibration samples), int8 weights per channel, int8 input and output tensors.

The quantizer takes models as today's converters write them; files from older converters (MediaPipe's, Model
Zoo's) are first brought to that form, which changes no number the model computes: operator codes only in the
deprecated field are copied to the current one (else the quantizer reads every op as ADD), float16 weights
behind DEQUANTIZE ops become float32 constants (else it quantizes them as activations), and a model without a
signature gets one over its inputs and outputs (the quantizer calibrates through signatures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.config import Int8Config
from edgekit.errors import ConversionError
from edgekit.formats.tflite import TENSOR_TYPES, inline_buffers, is_constant, op_name, pack_model, read_model, schema

SIGNATURE = "serving_default"  # the key a signature added here gets
FLOAT_INPUTS = ("float32",)


def quantize_tflite_file(path: Path, calibration: np.ndarray, out_path: Path, config: Int8Config) -> None:
    """Quantize the float model at `path` on `calibration` (samples as its input takes them) into `out_path`."""
    from ai_edge_quantizer import calibrator, quantizer, recipe_manager
    from ai_edge_quantizer.qtyping import QuantGranularity, TFLOperationName

    if not config.int8_io:
        raise ConversionError(f"{path}: ai-edge-quantizer gives full-integer models with int8 input and output; "
                              "float I/O (int8_io=False) is not available for a .tflite file")
    prepared = prepared_model(path)
    model = pack_model(prepared)
    recipe = recipe_manager.RecipeManager()
    recipe.add_static_config(".*", TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8,
                             weight_granularity=QuantGranularity.CHANNELWISE if config.per_channel
                             else QuantGranularity.TENSORWISE)
    signature = prepared.signatureDefs[0]
    feeds = [{signature.inputs[0].name.decode(): x[None]} for x in calibration]
    ranges = calibrator.Calibrator(model, num_threads=1, qsv_update_func=_widen)
    ranges.calibrate({signature.signatureKey.decode(): feeds}, recipe)
    result = quantizer.Quantizer(bytearray(model), recipe.get_quantization_recipe()).quantize(
        ranges.get_model_qsvs(), enable_progress_report=False)
    out_path.write_bytes(inline_buffers(bytes(result.quantized_model), str(out_path)))  # TFLM reads inline only


def _widen(seen: dict, new: dict) -> dict:
    """Min/max over every calibration sample (the quantizer's default is a moving average, which forgets)."""
    if not seen:
        return new
    return {"min": np.minimum(seen["min"], new["min"]), "max": np.maximum(seen["max"], new["max"])}


def prepared_model(path: Path) -> Any:
    """The float model at `path` as a ModelT ai-edge-quantizer takes (see the module docstring)."""
    model, _ = read_model(path)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        raise ConversionError(f"{path}: the model has {len(graph.inputs)} inputs; compile takes single-input models")
    dtype = TENSOR_TYPES.get(graph.tensors[graph.inputs[0]].type, "unknown")
    if dtype not in FLOAT_INPUTS:
        raise ConversionError(f"{path}: the model's input is {dtype}, expected float32; the model is quantized "
                              "already (analyze and plan take it as it is)")
    for code in model.operatorCodes:
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)
    _fold_float16_weights(model)
    if not model.signatureDefs:
        model.signatureDefs = [_signature(graph)]
    return model


def _fold_float16_weights(model: Any) -> None:
    """Replace every DEQUANTIZE of a float16 constant by the float32 constant it computes, and drop the float16
    tensors (the float32 data takes their buffers)."""
    graph = model.subgraphs[0]
    kept = []
    for op in graph.operators:
        source = graph.tensors[op.inputs[0]] if op_name(model, op) == "DEQUANTIZE" else None
        if source is None or TENSOR_TYPES.get(source.type) != "float16" or not is_constant(model, op.inputs[0]):
            kept.append(op)
            continue
        buffer = model.buffers[source.buffer]
        buffer.data = np.frombuffer(bytes(buffer.data), np.float16).astype(np.float32).view(np.uint8)
        graph.tensors[op.outputs[0]].buffer, source.buffer = source.buffer, 0
    if len(kept) == len(graph.operators):
        return
    graph.operators = kept
    used = sorted({i for op in kept for i in (*op.inputs, *op.outputs) if i >= 0} | {*graph.inputs, *graph.outputs})
    index = {old: new for new, old in enumerate(used)}
    graph.tensors = [graph.tensors[i] for i in used]
    for op in kept:
        op.inputs = [index[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [index[i] for i in op.outputs]
    graph.inputs, graph.outputs = [index[i] for i in graph.inputs], [index[i] for i in graph.outputs]
    for signature in model.signatureDefs or ():
        for entry in (*signature.inputs, *signature.outputs):
            entry.tensorIndex = index[entry.tensorIndex]


def _signature(graph: Any) -> Any:
    """A signature over the subgraph's inputs and outputs, named as its tensors are."""
    tflite = schema()

    def entry(tensor: int) -> Any:
        mapped = tflite.TensorMapT()
        mapped.name, mapped.tensorIndex = graph.tensors[tensor].name, tensor
        return mapped

    signature = tflite.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = SIGNATURE.encode(), 0
    signature.inputs, signature.outputs = [entry(i) for i in graph.inputs], [entry(i) for i in graph.outputs]
    return signature
