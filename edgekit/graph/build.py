"""Shared lowering from importer nodes to a `Graph`: canonicalise, then compute cost and receptive field.

Importers (torch, ONNX, TFLite) only translate their operators into `RawNode`s in the vocabulary of
`edgekit.graph.ops`. Everything that must agree across sources is done here once, from that table:
identity removal, batch-norm and zero-pad folding, relu/relu6 fusion (as TFLite and MCU runtimes execute
them), recognising a mean over H,W as global pooling, MACs, parameters and receptive fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgekit.errors import ModelLoadError
from edgekit.graph.ir import DTYPE_BYTES, Graph, Layer, TensorSpec, numel
from edgekit.graph.ops import FUSABLE_ACTIVATIONS, Kind, Macs, op_info

Labels = tuple[str | None, ...]  # which logical axis ('N', 'C', 'H', 'W') each dimension of a tensor is


@dataclass
class RawNode:
    """One source operator in edgekit's op vocabulary, before canonicalisation.

    attrs may hold: kernel, stride, padding (top, left, bottom, right), dilation, groups,
    weight_shape (conv and transposed conv: O,I/g,kh,kw; linear: out,in), bias (bool), channels (batchnorm),
    param_bytes (when the source stores weights in a known size, e.g. int8 TFLite), act, perm (transpose) and
    axes / keep_dims (reductions, softmax) in the N,C,H,W axis order of the graph's shapes, inner (matmul:
    the contracted size), params (other ops with weights).
    """

    name: str
    op: str
    inputs: list[str]
    output: str
    output_shape: tuple[int, ...]
    dtype: str
    attrs: dict = field(default_factory=dict)
    source_op: str = ""


def same_padding(in_hw: tuple, out_hw: tuple, kernel: tuple, stride: tuple, dilation: tuple,
                 extra_at_end: bool = True) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads of 'SAME' padding; TF and ONNX SAME_UPPER put the odd pixel last."""
    total = [max((out_hw[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - in_hw[i], 0) for i in range(2)]
    small = [t // 2 for t in total]
    big = [t - s for t, s in zip(total, small)]
    begin, end = (small, big) if extra_at_end else (big, small)
    return (begin[0], begin[1], end[0], end[1])


def build_graph(name: str, source: str, layout: str, inputs: list[TensorSpec], outputs: list[str],
                nodes: list[RawNode]) -> Graph:
    """Canonicalise `nodes` and compute per-layer MACs, parameters and receptive fields."""
    outputs = list(outputs)
    nodes = _drop_identities(nodes, outputs)
    nodes = _fold_into_producer(nodes, outputs)
    nodes = _fold_pads(nodes)
    shapes = {spec.name: spec.shape for spec in inputs}
    fields = {spec.name: ((1, 1), (1, 1)) for spec in inputs}
    labels: dict[str, Labels] = {spec.name: ("N", "C", "H", "W") if len(spec.shape) == 4 else (None,) * len(spec.shape)
                                 for spec in inputs}
    image_hw = max((spec.shape[-2:] for spec in inputs if len(spec.shape) == 4), default=(1, 1))
    layers: list[Layer] = []
    for node in nodes:
        missing = [t for t in node.inputs if t not in shapes]
        if missing:
            raise ModelLoadError(f"{source} graph: layer '{node.name}' reads tensor '{missing[0]}' "
                                 "that no earlier layer produces (graph not in execution order?)")
        in_shapes = tuple(shapes[t] for t in node.inputs)
        in_labels = labels[node.inputs[0]] if node.inputs else ()
        if node.op == "mean" and len(in_labels) == 4 and \
                sorted(str(in_labels[a]) for a in node.attrs.get("axes", ())) == ["H", "W"]:
            node.op = "global_avgpool"  # a mean over exactly H,W, in whatever axis order the tensor has
        rf, jump = _receptive_field(node, [fields[t] for t in node.inputs], in_shapes, in_labels, image_hw)
        layer = _to_layer(node, in_shapes, rf, jump)
        shapes[node.output], fields[node.output] = layer.output_shape, (rf, jump)
        labels[node.output] = _output_labels(node, in_shapes, in_labels)
        layers.append(layer)
    return Graph(name=name, source=source, layout=layout, inputs=tuple(inputs), outputs=tuple(outputs),
                 layers=_unique_names(layers))


def _rename(nodes: list[RawNode], outputs: list[str], old: str, new: str) -> None:
    for node in nodes:
        node.inputs = [new if t == old else t for t in node.inputs]
    outputs[:] = [new if t == old else t for t in outputs]


def _drop_identities(nodes: list[RawNode], outputs: list[str]) -> list[RawNode]:
    kept = []
    for node in nodes:
        if node.op == "identity":
            _rename(nodes, outputs, node.output, node.inputs[0])
        else:
            kept.append(node)
    return kept


def _consumer_count(nodes: list[RawNode], outputs: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {t: 1 for t in outputs}
    for node in nodes:
        for t in set(node.inputs):
            counts[t] = counts.get(t, 0) + 1
    return counts


def _fold_into_producer(nodes: list[RawNode], outputs: list[str]) -> list[RawNode]:
    """Fold batch norm into the conv/linear before it and relu/relu6 into the op before it."""
    by_output = {node.output: node for node in nodes}
    counts = _consumer_count(nodes, outputs)
    kept = []
    for node in nodes:
        producer = by_output.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if producer is None or counts.get(producer.output) != 1:  # fold only into a sole-read producer
            kept.append(node)
            continue
        if node.op == "batchnorm" and producer.op in ("conv2d", "linear") and "act" not in producer.attrs:
            producer.attrs["bias"] = True
        elif node.op in FUSABLE_ACTIVATIONS and op_info(producer.op).takes_activation \
                and "act" not in producer.attrs:
            producer.attrs["act"] = node.op
        else:
            kept.append(node)
            continue
        by_output[node.output] = producer
        counts[producer.output] = counts.get(node.output, 0)
        _rename(nodes, outputs, node.output, producer.output)
    return kept


def _fold_pads(nodes: list[RawNode]) -> list[RawNode]:
    """Fold an explicit zero spatial pad into the conv/pool that alone reads it."""
    readers: dict[str, list[RawNode]] = {}
    for node in nodes:
        for t in node.inputs:
            readers.setdefault(t, []).append(node)
    kept = []
    for node in nodes:
        users = readers.get(node.output, [])
        if node.op == "pad" and node.attrs.get("zero", False) and len(users) == 1 \
                and users[0].op in ("conv2d", "avgpool2d") and len(node.inputs) == 1:
            user = users[0]
            for attr in ("padding", "explicit_pad"):
                user.attrs[attr] = tuple(a + b for a, b in zip(user.attrs.get(attr, (0, 0, 0, 0)),
                                                               node.attrs["padding"]))
            user.inputs = [node.inputs[0] if t == node.output else t for t in user.inputs]
        else:
            kept.append(node)
    return kept


def _output_labels(node: RawNode, in_shapes: tuple, in_labels: Labels) -> Labels:
    """Logical axes of the node's output: permuted by a transpose, dropped by a reduction, kept through
    reshapes that only add or remove unit dimensions and through rank-preserving ops; unknown otherwise."""
    rank, attrs, kind = len(node.output_shape), node.attrs, op_info(node.op).kind
    if "perm" in attrs and len(attrs["perm"]) == len(in_labels):
        return tuple(in_labels[p] for p in attrs["perm"])
    if kind in (Kind.REDUCTION, Kind.GLOBAL) and "axes" in attrs and not attrs.get("keep_dims", False):
        kept = tuple(label for i, label in enumerate(in_labels) if i not in attrs["axes"])
        return kept if len(kept) == rank else (None,) * rank
    if kind is Kind.ALIAS and in_shapes:
        if [d for d in in_shapes[0] if d != 1] != [d for d in node.output_shape if d != 1]:
            return (None,) * rank
        big = iter(label for d, label in zip(in_shapes[0], in_labels) if d != 1)
        return tuple(next(big) if d != 1 else None for d in node.output_shape)
    return in_labels if len(in_labels) == rank else (None,) * rank


def _receptive_field(node: RawNode, in_fields: list, in_shapes: tuple, in_labels: Labels, image_hw: tuple) -> tuple:
    """Receptive field and jump of the node's output pixels on the model input (the whole image when a
    global op, a reduction over H or W, a matmul or an unknown op mixes positions)."""
    if not in_fields:
        return (1, 1), (1, 1)
    rf = tuple(max(f[0][i] for f in in_fields) for i in range(2))
    jump = tuple(max(f[1][i] for f in in_fields) for i in range(2))
    kind = op_info(node.op).kind
    whole = (max(rf[0], image_hw[0]), max(rf[1], image_hw[1]))
    if kind is Kind.SPATIAL:
        kernel, stride = node.attrs.get("kernel", (1, 1)), node.attrs.get("stride", (1, 1))
        dilation = node.attrs.get("dilation", (1, 1))
        rf = tuple(rf[i] + (dilation[i] * (kernel[i] - 1)) * jump[i] for i in range(2))
        jump = tuple(jump[i] * stride[i] for i in range(2))
    elif kind is Kind.GLOBAL:
        hw = in_shapes[0][-2:] if len(in_shapes[0]) == 4 else (1, 1)
        rf = tuple(max(rf[i] + (hw[i] - 1) * jump[i], image_hw[i]) for i in range(2))
    elif kind in (Kind.MATMUL, Kind.UNKNOWN):
        rf = whole
    elif kind in (Kind.REDUCTION, Kind.NORMALIZATION):
        axes = node.attrs.get("axes", ())
        reduced = {in_labels[a] if a < len(in_labels) else None for a in axes}
        rf = tuple(whole[i] if {("H", "W")[i], None} & reduced else rf[i] for i in range(2))
    elif kind is Kind.UPSAMPLING and len(node.output_shape) == 4 and len(in_shapes[0]) == 4:
        jump = tuple(max(1, jump[i] * in_shapes[0][2 + i] // node.output_shape[2 + i]) for i in range(2))
        kernel = node.attrs.get("kernel", (1, 1))
        rf = tuple(rf[i] + (kernel[i] - 1) * jump[i] for i in range(2))
    return rf, jump


def _to_layer(node: RawNode, in_shapes: tuple, rf: tuple, jump: tuple) -> Layer:
    a = node.attrs
    op, params = node.op, int(a.get("params", 0))
    if op == "conv2d" and a.get("groups", 1) > 1 and a["groups"] == in_shapes[0][1]:
        op = "depthwise_conv2d"
    info = op_info(op)
    if "weight_shape" in a:
        out_c = a["weight_shape"][0]
        params = numel(tuple(a["weight_shape"])) + (out_c if a.get("bias") else 0)
    elif op == "batchnorm":
        params = 2 * a["channels"]
    macs = info.macs.count(in_shapes, node.output_shape, a)
    param_bytes = a.get("param_bytes", params * DTYPE_BYTES["fp32"])
    return Layer(
        name=node.name, op=info.name, inputs=tuple(node.inputs), output=node.output, input_shapes=in_shapes,
        output_shape=tuple(int(d) for d in node.output_shape), dtype=node.dtype, macs=int(macs),
        params=int(params), param_bytes=int(param_bytes), kernel=tuple(a.get("kernel", (1, 1))),
        stride=tuple(a.get("stride", (1, 1))), padding=tuple(a.get("padding", (0, 0, 0, 0))),
        explicit_pad=tuple(a.get("explicit_pad", (0, 0, 0, 0))),
        dilation=tuple(a.get("dilation", (1, 1))), groups=int(a.get("groups", 1)), activation=a.get("act"),
        rf=rf, jump=jump, source_op=node.source_op or node.op, macs_known=info.macs is not Macs.UNKNOWN,
    )


def _unique_names(layers: list[Layer]) -> tuple[Layer, ...]:
    seen: dict[str, int] = {}
    out = []
    for layer in layers:
        count = seen.get(layer.name, 0)
        seen[layer.name] = count + 1
        out.append(layer if count == 0 else replace(layer, name=f"{layer.name}_{count}"))
    return tuple(out)
