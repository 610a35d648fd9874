"""Offline tensor-arena plan for TF Lite Micro, written into the model as "OfflineMemoryAllocation" metadata.

TFLM reads per-tensor byte offsets from that metadata instead of running its greedy planner. edgekit uses
it for the patch rest model: its input (the stage buffer the patches filled) is pinned at offset 0 of the
arena head, so a firmware can fill the stage buffer in place and start the rest model on it; the other
tensors are placed first-fit, largest first, around it. On the reference models that reaches the
live-bytes lower bound, where TFLM's own greedy order can leave gaps (MobileNetV2-1.0's rest model: 7.7%).
Lifetimes follow TFLM: graph inputs from the first op, outputs to the last, others from the op that
writes them to the last op that reads them; buffers are 16-byte aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.formats.tflite import TENSOR_TYPES, is_constant, schema

METADATA_NAME = "OfflineMemoryAllocation"
FORMAT_VERSION = 0
ALIGNMENT = 16
Lifetime = tuple[int, int, int]  # (bytes, first op, last op)


@dataclass(frozen=True)
class ArenaPlan:
    """Byte offset of every tensor of subgraph 0 in the arena head (-1: a constant, not in the arena)."""

    offsets: tuple[int, ...]
    head_bytes: int
    lower_bound_bytes: int  # the most bytes live at once: no plan needs less


def _lifetimes(model: Any) -> dict[int, Lifetime]:
    sub = model.subgraphs[0]

    def size(t: int) -> int:
        tensor = sub.tensors[t]
        raw = int(np.prod(tensor.shape)) * np.dtype(TENSOR_TYPES.get(tensor.type, "float32")).itemsize
        return -(-raw // ALIGNMENT) * ALIGNMENT

    last_op = len(sub.operators) - 1
    first = {int(t): 0 for t in sub.inputs}
    last: dict[int, int] = {}
    for index, op in enumerate(sub.operators):
        for t in op.outputs:
            first.setdefault(int(t), index)
        for t in op.inputs:
            if t >= 0 and not is_constant(model, int(t)):
                last[int(t)] = index
    for t in sub.outputs:
        last[int(t)] = last_op
    return {t: (size(t), start, last.get(t, start)) for t, start in first.items()}


def first_fit(items: dict[int, Lifetime], order: list[int], pinned: dict[int, int]) -> dict[int, int]:
    """Place tensors in `order` at the lowest offset free of every placed tensor that is alive with them."""
    placed = dict(pinned)
    for t in order:
        if t in placed:
            continue
        size, start, end = items[t]
        busy = sorted((placed[u], placed[u] + items[u][0]) for u in placed
                      if items[u][1] <= end and start <= items[u][2])
        offset = 0
        for low, high in busy:
            if offset + size <= low:
                break
            offset = max(offset, high)
        placed[t] = offset
    return placed


def plan_arena(model: Any, pinned: dict[int, int]) -> ArenaPlan:
    """The smaller of two first-fit orders (largest first; largest bytes x lifetime first), `pinned`
    tensors (index -> offset) fixed."""
    items = _lifetimes(model)
    steps = max((end for _, _, end in items.values()), default=0) + 1
    lower = max((sum(s for s, a, b in items.values() if a <= step <= b) for step in range(steps)), default=0)
    orders = (sorted(items, key=lambda t: (-items[t][0], items[t][1])),
              sorted(items, key=lambda t: (-items[t][0] * (items[t][2] - items[t][1] + 1), items[t][1])))
    best = min((first_fit(items, order, pinned) for order in orders),
               key=lambda placed: max((placed[t] + items[t][0] for t in placed), default=0))
    head = max((best[t] + items[t][0] for t in best), default=0)
    count = len(model.subgraphs[0].tensors)
    return ArenaPlan(tuple(best.get(t, -1) for t in range(count)), head, lower)


def attach_arena_plan(model: Any, plan: ArenaPlan) -> None:
    """Add `plan` to `model` (a ModelT) as OfflineMemoryAllocation metadata, replacing any earlier one."""
    words = np.array([FORMAT_VERSION, 0, len(plan.offsets), *plan.offsets], np.int32)
    buffer = schema().BufferT()
    buffer.data = words.view(np.uint8)
    model.buffers.append(buffer)
    entry = schema().MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if _name(m) != METADATA_NAME] + [entry]


def _name(entry: Any) -> str:
    return entry.name.decode() if isinstance(entry.name, bytes) else entry.name
