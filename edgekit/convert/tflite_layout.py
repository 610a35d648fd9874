"""Fold the layout round trips converters leave in a .tflite: TRANSPOSE, per-element ops or PAD, TRANSPOSE back.

litert-torch lowers an NCHW `F.pad` (Hugging Face's "same" padding in MobileNetV2, EfficientNet) of a channels-last
model as TRANSPOSE to NCHW, PAD, TRANSPOSE back to NHWC. The two transposes copy the tensor twice for nothing, and
they stop the patch planner and the C generator at the model's first layer. Between a transpose and its inverse,
a PAD only needs its paddings permuted and a per-element op nothing at all, so the chain is rewritten to work in
the outer layout and both transposes are dropped. Every rewritten model is run against the original on one input:
a difference keeps the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.formats import tflite
from edgekit.graph.ops import OPS, TFLITE_OPS, Kind

_PADS = ("PAD", "PADV2")
_PER_ELEMENT = (Kind.POINTWISE, Kind.QUANTIZATION)  # one activation in, one out, the layout is irrelevant


@dataclass(frozen=True)
class Folded:
    """What `fold_layout_round_trips` did to a file: transposes dropped, and whether the file was rewritten."""

    transposes_removed: int
    rewritten: bool


def fold_layout_round_trips(path: Path) -> Folded:
    """Rewrite the .tflite at `path` in place without its TRANSPOSE ... inverse TRANSPOSE round trips (see the
    module docstring); the file is left as it was when there are none or the rewrite changes an output."""
    model, original = tflite.read_model(path)
    chains = _chains(model)
    if not chains:
        return Folded(0, False)
    for chain in chains:
        _fold(model, chain)
    graph = model.subgraphs[0]
    dropped = {index for chain in chains for index in (chain[0], chain[-1])}
    graph.operators = [op for i, op in enumerate(graph.operators) if i not in dropped]
    data = tflite.pack_model(model)
    if not _same_outputs(original, data):
        return Folded(0, False)
    path.write_bytes(data)
    return Folded(len(dropped), True)


def _kind(model: Any, op: Any) -> tuple[str, Kind]:
    name = tflite.op_name(model, op)
    info = OPS.get(TFLITE_OPS.get(name, "unknown"), OPS["unknown"])
    return name, info.kind


def _perm(model: Any, op: Any) -> tuple[int, ...] | None:
    """The constant permutation of a TRANSPOSE, None when it is not constant."""
    if not tflite.is_constant(model, op.inputs[1]):
        return None
    tensor = model.subgraphs[0].tensors[op.inputs[1]]
    return tuple(int(v) for v in np.asarray(model.buffers[tensor.buffer].data).view(np.int32))


def _chains(model: Any) -> list[list[int]]:
    """Operator index chains [transpose, op, ..., inverse transpose] that `_fold` can rewrite: every tensor
    inside read by the next op only and not a graph output, PADs with constant paddings, per-tensor
    quantization (a per-channel axis would move)."""
    graph = model.subgraphs[0]
    readers: dict[int, list[int]] = {}
    for i, op in enumerate(graph.operators):
        for t in op.inputs:
            readers.setdefault(int(t), []).append(i)
    outputs = {int(t) for t in graph.outputs}

    def only_reader(tensor: int) -> int | None:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    chains = []
    for start, op in enumerate(graph.operators):
        if _kind(model, op)[0] != "TRANSPOSE" or (perm := _perm(model, op)) is None:
            continue
        chain, at = [start], only_reader(int(op.outputs[0]))
        while at is not None:
            name, kind = _kind(model, graph.operators[at])
            chain.append(at)
            current = graph.operators[at]
            if name == "TRANSPOSE":
                back = _perm(model, current)
                if back is not None and len(chain) > 2 and all(perm[back[i]] == i for i in range(len(perm))):
                    chains.append(chain)
                break
            if not _movable(model, current, name, kind):
                break
            at = only_reader(int(current.outputs[0]))
    return chains


def _movable(model: Any, op: Any, name: str, kind: Kind) -> bool:
    graph = model.subgraphs[0]
    activations = [t for t in op.inputs if t >= 0 and not tflite.is_constant(model, t)]
    if len(activations) != 1 or activations[0] != op.inputs[0] or len(op.outputs) != 1:
        return False
    if any(len(getattr(graph.tensors[t].quantization, "scale", None) or []) > 1 for t in (op.inputs[0], op.outputs[0])):
        return False
    if name in _PADS:
        return tflite.is_constant(model, op.inputs[1])
    return kind in _PER_ELEMENT and len(op.inputs) == 1


def _fold(model: Any, chain: list[int]) -> None:
    """Rewire chain[1:-1] to read the first transpose's input and write the last one's output, in that layout."""
    graph = model.subgraphs[0]
    first, last = graph.operators[chain[0]], graph.operators[chain[-1]]
    perm = _perm(model, first)
    assert perm is not None
    inner = [graph.operators[i] for i in chain[1:-1]]
    inner[0].inputs = np.array(inner[0].inputs, np.int32)
    inner[0].inputs[0] = first.inputs[0]
    inner[-1].outputs = np.array(last.outputs, np.int32)
    inverse = np.argsort(perm)
    for op in inner[:-1]:  # the tensors between them now hold the outer layout
        tensor = graph.tensors[op.outputs[0]]
        tensor.shape = np.asarray(tensor.shape)[inverse].astype(np.int32)
        if tensor.shapeSignature is not None and len(tensor.shapeSignature):
            tensor.shapeSignature = np.asarray(tensor.shapeSignature)[inverse].astype(np.int32)
    for op in inner:
        if tflite.op_name(model, op) in _PADS:
            _permute_paddings(model, op, inverse)


def _permute_paddings(model: Any, op: Any, inverse: np.ndarray) -> None:
    """Give the PAD its own paddings constant, rows in the outer layout (the original may be shared)."""
    graph = model.subgraphs[0]
    source = graph.tensors[op.inputs[1]]
    old = np.asarray(model.buffers[source.buffer].data).view(np.int32 if source.type == 2 else np.int64)
    rows = old.reshape(-1, 2)[inverse]
    buffer = tflite.schema().BufferT()
    buffer.data = np.ascontiguousarray(rows).view(np.uint8).ravel()
    model.buffers.append(buffer)
    tensor = tflite.schema().TensorT()
    tensor.shape, tensor.type, tensor.buffer = np.asarray(rows.shape, np.int32), source.type, len(model.buffers) - 1
    tensor.name = (tflite.tensor_name(source) + "/outer_layout").encode()
    graph.tensors.append(tensor)
    op.inputs = np.array(op.inputs, np.int32)
    op.inputs[1] = len(graph.tensors) - 1


def _same_outputs(original: bytes, rewritten: bytes) -> bool:
    """Whether both models give bit-identical outputs on one seeded random input (LiteRT, one thread)."""
    from edgekit.runtime.backends import litert_interpreter_class

    results = []
    for data in (original, rewritten):
        interpreter = litert_interpreter_class()(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for detail in interpreter.get_input_details():
            dtype = np.dtype(detail["dtype"])
            shape = detail["shape"]
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
            else:
                value = rng.uniform(-1, 1, shape).astype(dtype)
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        results.append([interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()])
    return all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(*results, strict=True))
