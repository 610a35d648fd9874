"""Float islands: operators an INT8 model still runs in float, each with the reason.

An island costs a Dequantize/Quantize pair and float compute; on an MCU it is fatal (no FPU kernels
in the int8 build, or no kernel at all), so the compile step refuses MCU models that have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.graph import load_graph

_QDQ = ("QuantizeLinear", "DequantizeLinear")
# Operators whose float inputs are shape or index data, not activations.
_SHAPE_INPUTS = {"Reshape": 1, "Resize": 1, "Pad": 1, "ReduceMean": 1, "Squeeze": 1, "Unsqueeze": 1}


@dataclass(frozen=True)
class FloatIsland:
    """One operator left in float."""

    layer: str
    op: str
    reason: str


def float_islands(path: str | Path) -> list[FloatIsland]:
    """Float operators of an INT8 .tflite or QDQ .onnx model."""
    path = Path(path)
    return _onnx_islands(path) if path.suffix == ".onnx" else _tflite_islands(path)


def _tflite_islands(path: Path) -> list[FloatIsland]:
    islands = []
    for layer in load_graph(path).layers:
        if layer.dtype in ("int8", "int32"):
            continue
        if layer.op in ("quantize", "dequantize"):
            reason = f"converts between float and int8 ({layer.op}): the model has float I/O or a float op next to it"
        else:
            reason = f"{layer.op} produces {layer.dtype}: the PT2E quantizer did not annotate this op for int8"
        islands.append(FloatIsland(layer.name, layer.op, reason))
    return islands


def _onnx_islands(path: Path) -> list[FloatIsland]:
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    islands = []
    for index, node in enumerate(graph.node):
        if node.op_type in _QDQ or node.op_type in ("Constant", "Shape"):
            continue
        inputs = [t for i, t in enumerate(node.input)
                  if t and t not in constants and i < _SHAPE_INPUTS.get(node.op_type, len(node.input))]
        float_inputs = [t for t in inputs if t in producer and producer[t].op_type != "DequantizeLinear"]
        float_outputs = [t for t in node.output if any(r.op_type != "QuantizeLinear" for r in readers.get(t, []))]
        name = node.name or f"{node.op_type}_{index}"
        if float_inputs:
            islands.append(FloatIsland(name, node.op_type, f"input '{float_inputs[0]}' is float: "
                                       f"onnxruntime.quantization put no Q/DQ pair around {node.op_type}"))
        elif float_outputs:
            islands.append(FloatIsland(name, node.op_type, f"output '{float_outputs[0]}' goes on in float: "
                                       f"onnxruntime.quantization has no quantized output for {node.op_type}"))
    return islands
