"""Microcontroller deployment: which ops TF Lite Micro can run, the tensor arena it really needs, and
whether a full-integer `.tflite` fits a board's SRAM and flash; then the C/C++ pack to build it with.

The arena is measured, not estimated: the model runs once under the real tflite-micro Python interpreter
(reference kernels) and its RecordingMicroAllocator reports the bytes it took.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.analysis import Fit
from edgekit.errors import ConversionError, ProfileError
from edgekit.formats.tflite import op_name, read_model
from edgekit.graph.ops import tflm_kernel_flash_bytes
from edgekit.runtime.backends import TFLM_ARENA_TOTAL, CapturedStderr, generous_arena_bytes
from edgekit.targets import Device, load_target

# Builtin operator -> the MicroMutableOpResolver method that registers it. Transcribed from the Add*
# methods of tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro, 2025; AddReduceAll and
# AddDynamicUpdateSlice are later additions), keeping only builtins (AddCustom-based ops such as
# AddCircularBuffer or the Signal* ops are left out). The set is checked against the installed runtime:
# tflite_micro's `_runtime.so` holds a `Register_<NAME>` kernel for exactly these builtin names
# (tests/test_mcu.py).
TFLM_ADD_METHODS: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "ELU": "AddElu", "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "EQUAL": "AddEqual", "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv", "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather", "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual", "HARD_SWISH": "AddHardSwish", "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization", "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul", "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable", "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2", "ROUND": "AddRound",
    "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze", "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack", "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}
TFLM_BUILTIN_OPS: frozenset[str] = frozenset(TFLM_ADD_METHODS)

# Arena margin on top of the measured arena: max(1 KiB, 10 %), rounded up to 16 bytes. An estimate, not a
# measurement: the measurement uses reference kernels, while an MCU build usually links optimised ones
# (CMSIS-NN) that request scratch buffers of other sizes, and the arena's start may need re-aligning.
ARENA_MARGIN_FRACTION = 0.10
ARENA_MARGIN_MIN_BYTES = 1024
ARENA_ALIGNMENT = 16

# Flash taken by TF Lite Micro's code besides the model bytes. Core: 16 KB, the figure TFLM's overview
# documentation gives for the core runtime on an Arm Cortex-M3. Per-kernel figures are ESTIMATES (order of
# magnitude for -Os Thumb-2 builds of the int8 kernels, larger for the convolutions), not measured; they live
# in the op table (edgekit.graph.ops).
TFLM_CORE_FLASH_BYTES = 16 * 1024


def model_ops(tflite_path: str | Path) -> list[str]:
    """Builtin op names the model uses, in order of first use over all subgraphs ('CUSTOM:name' for custom ops)."""
    model, _ = read_model(Path(tflite_path))
    names = [op_name(model, op) for sub in model.subgraphs for op in sub.operators or []]
    return list(dict.fromkeys(names))


def unsupported_tflm_ops(tflite_path: str | Path) -> list[str]:
    """The model's ops that TF Lite Micro's builtin resolver cannot register (custom ops included)."""
    return _unsupported(model_ops(tflite_path))


def _unsupported(ops: list[str]) -> list[str]:
    """The ops in `ops` outside TFLM_BUILTIN_OPS."""
    return [op for op in ops if op not in TFLM_BUILTIN_OPS]


def _tflm_ops(path: Path) -> list[str]:
    """The model's ops, all of which TFLM must be able to register, or a ConversionError naming the rest."""
    ops = model_ops(path)
    missing = _unsupported(ops)
    if missing:
        raise ConversionError(f"{path}: TF Lite Micro has no builtin kernel for {', '.join(missing)}")
    return ops


def _run_tflm(data: bytes, input_count: int, arena_size: int) -> Any:
    """Build a TFLM interpreter over `data` with an `arena_size` arena, invoke it once on zeros, return it."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise ConversionError("measuring the MCU arena needs tflite-micro (pip install 'edgekit[convert]')") from None
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
    for index in range(input_count):
        details = interpreter.get_input_details(index)
        interpreter.set_input(np.zeros(details["shape"], details["dtype"]), index)
    interpreter.invoke()
    return interpreter


def measure_arena(tflite_path: str | Path, arena_size: int | None = None) -> int:
    """Tensor-arena bytes the model really uses under TF Lite Micro, from its allocation report."""
    return arena_parts(tflite_path, arena_size)["total"]


def arena_parts(tflite_path: str | Path, arena_size: int | None = None) -> dict[str, int]:
    """TF Lite Micro's arena split: "head" (activations and scratch, reused op to op, what the memory
    planners model), "tail" (persistent: tensor structs, per-channel quantization data) and "total"."""
    path = Path(tflite_path)
    model, data = read_model(path)
    arena_size = arena_size or generous_arena_bytes(len(data))
    captured = CapturedStderr()
    try:
        with captured:
            inputs = model.subgraphs[0].inputs
            _run_tflm(data, 0 if inputs is None else len(inputs), arena_size).print_allocations()
    except (RuntimeError, ValueError) as exc:
        reason = "; ".join(" ".join(text.split()) for text in (str(exc), captured.text) if text.strip())
        raise ConversionError(f"{path}: TF Lite Micro could not run the model in a {arena_size:,}-byte arena "
                              f"({reason[:300] or type(exc).__name__})") from None
    found = TFLM_ARENA_TOTAL.search(captured.text)
    parts = dict(re.findall(r"Arena allocation (head|tail) (\d+) bytes", captured.text))
    if not found or len(parts) != 2:
        raise ConversionError(f"{path}: TF Lite Micro's allocation report lacks 'Arena allocation total/head/tail' "
                              f"lines (got: {captured.text.strip()[:200]!r})")
    return {"total": int(found.group(1)), "head": int(parts["head"]), "tail": int(parts["tail"])}


def arena_with_margin(measured_bytes: int) -> int:
    """Arena to reserve on the device: measured + max(1 KiB, 10 %), rounded up to 16 bytes."""
    margin = max(ARENA_MARGIN_MIN_BYTES, math.ceil(measured_bytes * ARENA_MARGIN_FRACTION))
    return -(-(measured_bytes + margin) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def runtime_flash_bytes(ops: list[str]) -> int:
    """Estimated TFLM code size for a model: the core interpreter plus one kernel per distinct op."""
    return TFLM_CORE_FLASH_BYTES + sum(tflm_kernel_flash_bytes(op) for op in set(ops))


@dataclass(frozen=True)
class McuFit:
    """Whether a TFLite model fits an MCU under TF Lite Micro: measured arena vs SRAM, model + code vs flash."""

    model: str
    target: str
    arena_bytes: int  # measured under the TFLM reference interpreter, before the margin
    sram: Fit  # arena + margin
    flash: Fit  # model bytes + estimated TFLM code

    @property
    def fits(self) -> bool:
        return self.sram.fits and self.flash.fits

    @property
    def verdict(self) -> str:
        """'fits', or how many bytes of which memory are missing."""
        if self.fits:
            return "fits"
        return "; ".join(f"short by {f.needed_bytes - f.available_bytes:,} bytes of {f.resource}"
                         for f in (self.sram, self.flash) if not f.fits)


def _mcu(device: Device | str | Path) -> Device:
    """The device profile, which must be an MCU with SRAM and flash figures."""
    target = device if isinstance(device, Device) else load_target(device)
    if target.device_class != "mcu" or target.sram is None or target.flash is None:
        raise ProfileError(f"{target.path or target.name}: '{target.name}' is a {target.device_class} target; "
                           "MCU fit needs class \"mcu\" with memory.sram and memory.flash")
    return target


def check_mcu_fit(tflite_path: str | Path, device: Device | str | Path) -> McuFit:
    """Measure the model's TFLM arena and set it, and its flash footprint, against an MCU's memories."""
    path, target = Path(tflite_path), _mcu(device)
    code = runtime_flash_bytes(_tflm_ops(path))
    assert target.sram is not None and target.flash is not None  # checked by _mcu
    arena = measure_arena(path)
    model_bytes = path.stat().st_size
    sram = Fit("SRAM", f"TFLM tensor arena (measured {arena:,} B + margin)", arena_with_margin(arena),
               int(target.sram.value))
    flash = Fit("flash", f"model {model_bytes:,} B + TFLM code (estimate {code:,} B)", model_bytes + code,
                int(target.flash.value))
    return McuFit(path.name, target.name, arena, sram, flash)


def _c_bytes(data: bytes, per_line: int = 12) -> str:
    """Bytes as the lines of a C initialiser: '  0x1c, 0x00, ...'."""
    return "\n".join("  " + " ".join(f"0x{b:02x}," for b in data[i:i + per_line])
                     for i in range(0, len(data), per_line))


def _model_files(name: str, data: bytes, stem: str = "model_data") -> dict[str, str]:
    """<stem>.h / <stem>.cc: the flatbuffer as a 16-byte aligned array g_<stem> (TFLM reads it in place)."""
    header = (f"// Generated by edgekit from {name}: the model flatbuffer, {len(data):,} bytes.\n"
              "#pragma once\n\n"
              f"constexpr unsigned int g_{stem}_len = {len(data)};\n"
              f"extern const unsigned char g_{stem}[g_{stem}_len];\n")
    source = (f"// Generated by edgekit from {name}. Aligned to 16 bytes so TF Lite Micro can use it in place.\n"
              f'#include "{stem}.h"\n\n'
              f"alignas(16) const unsigned char g_{stem}[g_{stem}_len] = {{\n"
              f"{_c_bytes(data)}\n}};\n")
    return {f"{stem}.h": header, f"{stem}.cc": source}


def _resolver_file(name: str, ops: list[str]) -> str:
    """op_resolver.h: a MicroMutableOpResolver sized for, and filled with, exactly the model's ops."""
    adds = "".join(f"  if (resolver.{TFLM_ADD_METHODS[op]}() != kTfLiteOk) return kTfLiteError;\n" for op in ops)
    return (f"// Generated by edgekit from {name}: registers exactly the {len(ops)} builtin ops the model uses.\n"
            "#pragma once\n\n"
            '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
            f"using ModelOpResolver = tflite::MicroMutableOpResolver<{len(ops)}>;\n\n"
            "inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {\n"
            f"{adds}  return kTfLiteOk;\n}}\n")


def _arena_file(name: str, measured: int) -> str:
    """arena.h: kTensorArenaSize = measured arena + margin, saying so."""
    size = arena_with_margin(measured)
    return (f"// Generated by edgekit from {name}: tensor arena for TF Lite Micro.\n"
            f"// {measured:,} bytes measured under the tflite-micro reference interpreter, plus a\n"
            f"// {size - measured:,}-byte margin (max(1 KiB, 10 %), rounded up to 16) for optimised-kernel\n"
            "// scratch buffers and alignment. Declare it as:\n"
            "//   alignas(16) static uint8_t tensor_arena[kTensorArenaSize];\n"
            "#pragma once\n\n"
            "#include <cstddef>\n\n"
            f"constexpr size_t kTensorArenaSize = {size};\n")


def write_mcu_pack(tflite_path: str | Path, out_dir: str | Path, arena_bytes: int) -> list[Path]:
    """Write model_data.h/.cc, op_resolver.h and arena.h (`arena_bytes` measured, margin added) to out_dir."""
    path, out = Path(tflite_path), Path(out_dir)
    ops = _tflm_ops(path)
    _, data = read_model(path)
    files = {**_model_files(path.name, data), "op_resolver.h": _resolver_file(path.name, ops),
             "arena.h": _arena_file(path.name, arena_bytes)}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in files.items():
        (out / filename).write_text(text)
        written.append(out / filename)
    return written
