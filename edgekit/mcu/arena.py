"""One static arena for the generated C: every activation at a fixed byte offset, proven non-overlapping.

A buffer lives from the operator that writes it (graph inputs: from the first) to the last one that reads it
(graph outputs: to the end); an operator's inputs and outputs are all live during it, so no kernel writes over
what it reads. A RESHAPE output is its input's buffer under another shape (one buffer, the union of both
lifetimes). Offsets are edgekit's first-fit (`edgekit.convert.arena_plan`) in the best of several orders.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from edgekit.convert.arena_plan import first_fit
from edgekit.errors import ConversionError

SHUFFLES = 200
ALIGNMENT = 4  # int8 kernels need none; word alignment keeps a later 32-bit SIMD path possible
Lifetime = tuple[int, int, int]  # (bytes, first op, last op)


@dataclass(frozen=True)
class Arena:
    """Byte offset of every activation tensor (by tensor index) in the one static arena."""

    offsets: dict[int, int]
    size_bytes: int
    lower_bound_bytes: int  # the most bytes live at once: no plan needs less


def plan_buffers(lifetimes: dict[int, Lifetime]) -> dict[int, int]:
    """First-fit offsets of buffers (id -> (bytes, first op, last op)): the smallest arena of two orders, largest
    first and largest bytes x lifetime first (as `arena_plan.plan_arena`), then of up to SHUFFLES seeded random
    orders until one reaches the live-bytes lower bound (the fixed orders leave a patched stage's arena up to 17%
    above it)."""
    aligned = {b: (-(-size // ALIGNMENT) * ALIGNMENT, first, last) for b, (size, first, last) in lifetimes.items()}

    def top(placed: dict[int, int]) -> int:
        return max((placed[b] + aligned[b][0] for b in placed), default=0)

    steps = {s for _, first, last in aligned.values() for s in range(first, last + 1)}
    lower = max((sum(n for n, a, z in aligned.values() if a <= s <= z) for s in steps), default=0)
    orders = [sorted(aligned, key=lambda b: (-aligned[b][0], aligned[b][1])),
              sorted(aligned, key=lambda b: (-aligned[b][0] * (aligned[b][2] - aligned[b][1] + 1), aligned[b][1]))]
    best = min((first_fit(aligned, order, {}) for order in orders), key=top)
    shuffled, rng = list(orders[0]), random.Random(0)
    for _ in range(SHUFFLES):
        if top(best) <= lower:
            break
        rng.shuffle(shuffled)
        best = min(best, first_fit(aligned, shuffled, {}), key=top)
    return best


def overlapping(lifetimes: dict[int, Lifetime], offsets: dict[int, int]) -> list[tuple[int, int]]:
    """Pairs of buffers alive at the same time whose byte ranges intersect (empty for a valid plan)."""
    items = sorted(lifetimes)
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1:]
            if lifetimes[a][1] <= lifetimes[b][2] and lifetimes[b][1] <= lifetimes[a][2]
            and offsets[a] < offsets[b] + lifetimes[b][0] and offsets[b] < offsets[a] + lifetimes[a][0]]


def plan_arena(sizes: dict[int, int], reads: list[list[int]], writes: list[list[int]], inputs: list[int],
               outputs: list[int], aliases: dict[int, int]) -> Arena:
    """The arena of a graph: activation tensor -> bytes; per operator the activations it reads and writes;
    graph inputs and outputs; alias tensor -> the tensor whose buffer it shares (RESHAPE)."""
    def root(t: int) -> int:
        while t in aliases:
            t = aliases[t]
        return t

    end = len(reads) - 1
    first: dict[int, int] = {root(t): 0 for t in inputs}
    last: dict[int, int] = {root(t): end for t in outputs}
    for index, (ins, outs) in enumerate(zip(reads, writes)):
        for t in outs:
            first.setdefault(root(t), index)
        for t in ins:
            last[root(t)] = max(last.get(root(t), index), index)
    lifetimes = {b: (sizes[b], start, last.get(b, start)) for b, start in first.items()}
    buffers = plan_buffers(lifetimes)
    clashes = overlapping(lifetimes, buffers)
    if clashes:
        raise ConversionError(f"arena plan overlaps live tensors {clashes[:3]}: a planner bug, please report it")
    size = max((buffers[b] + lifetimes[b][0] for b in buffers), default=0)
    lower = max((sum(s for s, a, z in lifetimes.values() if a <= step <= z) for step in range(end + 1)), default=0)
    return Arena({t: buffers[root(t)] for t in sizes}, size, lower)
