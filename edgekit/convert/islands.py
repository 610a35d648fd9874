"""Float islands: operators an INT8 model still runs in float, each with the reason.

An island costs a Dequantize/Quantize pair and float compute; on an MCU it is fatal (no FPU kernels
in the int8 build, or no kernel at all), so the compile step refuses MCU models that have one.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def float_islands(path: str | Path, modules: Mapping[str, str] | None = None) -> list[FloatIsland]:
    """Float operators of an INT8 .tflite or QDQ .onnx model.

    `modules` (torch module path -> type, e.g. "features.3.act" -> "torch.nn.GELU") says the .tflite was converted
    from that torch model by edgekit's PT2E quantizer, and names the module of each float op; without it the
    .tflite was a float file that ai-edge-quantizer quantized.
    """
    path = Path(path)
    return _onnx_islands(path) if path.suffix == ".onnx" else _tflite_islands(path, modules)


def _tflite_islands(path: Path, modules: Mapping[str, str] | None) -> list[FloatIsland]:
    islands = []
    for layer in load_graph(path).layers:
        if layer.dtype in ("int8", "int32"):
            continue
        if layer.op in ("quantize", "dequantize"):
            reason = f"converts between float and int8 ({layer.op}): the model has float I/O or a float op next to it"
        elif modules is None:
            reason = f"{layer.op} produces {layer.dtype}: ai-edge-quantizer left it float"
        else:
            module = _torch_module(layer.name, modules)
            reason = (f"{layer.op} produces {layer.dtype}: the PT2E quantizer did not annotate "
                      f"{module or 'this op'} for int8")
        islands.append(FloatIsland(layer.name, layer.op, reason))
    return islands


def _torch_module(layer: str, modules: Mapping[str, str]) -> str | None:
    """The torch module a converted op came from, as "features.3.act (torch.nn.GELU)": litert-torch names ops
    "<module path>:<op>", the path under "wrapped." when it added NHWC I/O; None when the name holds no module."""
    if ":" not in layer:
        return None
    path = layer.split(":", 1)[0].removeprefix("wrapped").removeprefix(".")
    while path not in modules and "." in path:
        path = path.rsplit(".", 1)[0]
    return f"{path} ({modules[path]})" if path in modules and path else None


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
