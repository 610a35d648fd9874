"""What the generated C saves over running the operators as the model lists them, in SRAM (the MCUNetV2 paper's
accounting, as TinyEngine runs it):

- a PAD whose only reader is a convolution and which pads H and W with the zero point is folded into it: the
  kernel reads the PAD's input, and the padded pixels, beyond its border, add nothing to the sum (no padded copy);
- a depthwise convolution (one output channel per input channel) whose input no other operator reads is computed
  in place: each channel is copied out to a scratch plane (one input channel) and its output computed from the
  copy straight over the channel, which only that channel's outputs touch in NHWC;
- a residual ADD (no broadcasting) of a CONV_2D's output, which nothing else reads, and a skip tensor, which nothing
  reads after that convolution but the ADD, is fused into the convolution (TinyEngine's fused add): each output
  value, requantized as the convolution's own, is added to the skip's value at the same place with the ADD's
  arithmetic and written over it, so neither the convolution's output nor the ADD's takes a buffer. The planner's
  `MemoryPolicy.generated_c()` (`inplace_residual`) counts the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.mcu.arena import Arena, plan_arena
from edgekit.mcu.layers import Layer
from edgekit.mcu.operators import Operators

_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")


@dataclass(frozen=True)
class Fold:
    """A PAD folded into the convolution that reads it."""

    pad: int  # the PAD's operator index
    source: int  # the PAD's input tensor, which the convolution reads instead
    rows: int  # rows padded ahead
    cols: int  # cols padded ahead


def pad_folds(ops: Operators) -> dict[int, Fold]:
    """Reader operator -> the PAD folded into it, for every PAD that pads only H and W, with the zero point (its
    input's and output's), for one CONV_2D or DEPTHWISE_CONV_2D."""
    folds = {}
    for index, name in enumerate(ops.names):
        out = ops.writes[index][0]
        readers = [i for i, r in enumerate(ops.reads) if out in r]
        if name != "PAD" or out == ops.output or len(readers) != 1 or ops.names[readers[0]] not in _CONVS:
            continue
        pads = Layer(ops.model, index, str).constant(1).reshape(-1, 2)
        q_in, q_out = (ops.tensor(t).quantization for t in (ops.reads[index][0], out))
        if len(pads) == 4 and not pads[0].any() and not pads[3].any() and \
                list(q_in.zeroPoint) == list(q_out.zeroPoint):
            folds[readers[0]] = Fold(index, ops.reads[index][0], int(pads[1][0]), int(pads[2][0]))
    return folds


def inplace_depthwise(ops: Operators, reads: dict[int, list[int]], keep: set[int]) -> set[int]:
    """The depthwise convolutions (operator index; `reads`: what each operator that runs reads) to compute in place:
    one channel out per channel in, batch 1, an input that no other operator reads and that is not in `keep` (nor
    is its output), neither side a RESHAPE's buffer."""
    shared = set(ops.aliases) | set(ops.aliases.values())
    chosen = set()
    for index, ins in reads.items():
        if ops.names[index] != "DEPTHWISE_CONV_2D":
            continue
        source, out = ins[0], ops.writes[index][0]
        shape_in, shape_out = ops.shape(source), ops.shape(out)
        readers = [i for i, r in reads.items() if source in r]
        if (readers == [index] and shape_in[0] == 1 and shape_in[3] == shape_out[3] and not {source, out} & keep
                and not {source, out} & shared):
            chosen.add(index)
    return chosen


@dataclass(frozen=True)
class FusedAdd:
    """A residual ADD fused into the CONV_2D that makes one of its inputs (the ADD itself does not run)."""

    add: int  # the ADD's operator index
    skip: int  # its other input, whose buffer receives the sum
    out: int  # its output tensor: the skip's buffer under another name
    conv_first: bool  # the convolution's output is the ADD's first input (the order of ADD's arithmetic)


def fused_adds(ops: Operators, reads: dict[int, list[int]], keep: set[int], first: int = 0) -> dict[int, FusedAdd]:
    """Convolution (operator index, at `first` or after) -> the residual ADD fused into it (see the module docstring),
    none over a tensor of `keep` or a RESHAPE's buffer."""
    shared = set(ops.aliases) | set(ops.aliases.values())
    producer = {t: i for i in reads for t in ops.writes[i]}
    fused: dict[int, FusedAdd] = {}
    for index, ins in reads.items():
        out = ops.writes[index][0]
        if ops.names[index] != "ADD" or index < first or len(ins) != 2 or \
                any(ops.shape(t) != ops.shape(out) for t in ins):
            continue
        for position in (0, 1):
            made, skip = ins[position], ins[1 - position]
            conv = producer.get(made)
            if conv is None or conv < first or ops.names[conv] != "CONV_2D" or made == skip or skip in reads[conv]:
                continue
            skip_readers = [i for i, r in reads.items() if skip in r and i != index]
            if [i for i, r in reads.items() if made in r] == [index] and all(i < conv for i in skip_readers) \
                    and producer.get(skip, -1) < conv and not {made, skip, out} & (keep | shared):
                fused[conv] = FusedAdd(index, skip, out, position == 0)
                break
    return fused


@dataclass(frozen=True)
class Steps:
    """The operators the C runs, in order (folded PADs left out), what each reads, and the rewrites."""

    reads: dict[int, list[int]]  # operator index -> the activations it reads (a folded PAD's input for its output)
    folds: dict[int, Fold]
    inplace: set[int]
    fused: dict[int, FusedAdd]  # convolution -> the residual ADD fused into it (that ADD is no step of its own)

    def layer(self, ops: Operators, index: int, **where: object) -> Layer:
        """The Layer that emits operator `index` with its fold, in place its scratch (tensor id -1 - index), and
        the residual ADD fused into it."""
        fold, add = self.folds.get(index), self.fused.get(index)
        return Layer(ops.model, index, pad_in=None if fold is None else (fold.source, fold.rows, fold.cols),
                     scratch=-1 - index if index in self.inplace else None,
                     fused_add=None if add is None else (add.add, add.out, add.conv_first),
                     **where)  # type: ignore[arg-type]

    def writes(self, ops: Operators, index: int) -> list[int]:
        """What step `index` writes: a fused convolution the ADD's output (over the skip), not its own."""
        add = self.fused.get(index)
        return [add.out] if add is not None else ops.writes[index]

    def arena(self, ops: Operators, sizes: dict[int, int], scratch: dict[int, int], inputs: list[int],
              live_through: dict[int, int] | None = None) -> Arena:
        """The one arena of these steps: `sizes` of the activations, `scratch` bytes per in-place operator,
        `inputs` live from the first step (the image; a patched stage's buffer), `live_through` tensor -> the
        operator it must live through (a patched stage's image: every patch reads it again)."""
        order = list(self.reads)
        reads = [self.reads[i] for i in order]
        for tensor, index in (live_through or {}).items():
            reads[order.index(index)] = [*reads[order.index(index)], tensor]
        writes = [self.writes(ops, i) + ([-1 - i] if i in self.inplace else []) for i in order]
        used = {t for ts in (*reads, *writes) for t in ts} | set(inputs)
        aliases = {a: b for a, b in ops.aliases.items() if a in used}
        aliases |= {ops.writes[i][0]: self.reads[i][0] for i in self.inplace}
        aliases |= {add.out: add.skip for add in self.fused.values()}
        held = {t: n for t, n in sizes.items() if t in used} | {-1 - i: scratch[i] for i in self.inplace}
        for i in self.inplace:  # the output shares its input's buffer: as large as both
            held[self.reads[i][0]] = max(held[self.reads[i][0]], held[ops.writes[i][0]])
        return plan_arena(held, reads, writes, inputs, [ops.output], aliases)


def steps(ops: Operators, keep: frozenset[int] = frozenset(), fuse_from: int = 0) -> Steps:
    """The steps of the model with PADs folded, depthwise convolutions in place (none over the graph input or output
    or a tensor of `keep`) and residual ADDs fused into their convolutions from operator `fuse_from` on (a patched
    stage runs per patch, unfused; after it the stage buffer is a tensor like any other)."""
    folds = pad_folds(ops)
    pads = {fold.pad for fold in folds.values()}
    reads = {i: ([folds[i].source, *ops.reads[i][1:]] if i in folds else ops.reads[i])
             for i in range(len(ops.names)) if i not in pads}
    kept = {ops.input, ops.output, *keep}
    fused = fused_adds(ops, reads, {ops.input, ops.output}, fuse_from)  # over a patched stage's buffer too
    for conv, add in fused.items():
        reads[conv] = [*reads[conv], add.skip]  # the skip is read (and overwritten) by the convolution
        del reads[add.add]
    return Steps(reads, folds, inplace_depthwise(ops, reads, kept), fused)
