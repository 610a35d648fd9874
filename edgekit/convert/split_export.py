"""Cut a torch model into a device head and a server tail at one tensor of its graph (split computing).

The cut is taken on the torch.export program, the same trace the graph IR and the split planner read,
so a boundary named by the planner (`SplitCandidate.tensors[0]`) means exactly that tensor. Head and
tail are plain `torch.fx.GraphModule`s holding their own weights: litert-torch and torch.onnx export
them like any module. Only a cut crossed by a single tensor can be deployed, since every bundle stage
takes one input; the tail gives every output of the model, in its order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.errors import SplitError
from edgekit.graph.from_torch import export_program, graph_from_program
from edgekit.graph.ir import Graph
from edgekit.plan.split import crossing_tensors

if TYPE_CHECKING:
    import torch


def split_model(model: torch.nn.Module, example: torch.Tensor,
                boundary: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Head (input -> `boundary`) and tail (`boundary` -> every output) with `tail(head(x)) == model(x)`.

    `boundary` is a tensor of the graph IR (a layer's output name). A cut that more than one tensor
    crosses (inside a residual block) is a SplitError naming the nearest single-tensor cuts around it.
    """
    name = type(model).__name__
    program = export_program(model, tuple(example.shape), name)
    graph = graph_from_program(program, name)
    cut = _cut_index(graph, boundary)
    crossing = crossing_tensors(graph, cut)
    if crossing != (boundary,):
        raise SplitError(f"{name}: cutting at '{boundary}' (after layer '{graph.layers[cut - 1].name}') leaves "
                         f"{len(crossing)} tensors crossing to the server ({', '.join(crossing)}); a deployable "
                         f"cut has exactly one. {_neighbours(graph, cut)}")
    import torch

    module = program.module()
    head, tail = _partition(module, _fx_boundary(module, graph, cut, boundary))
    head.input_shape = tuple(example.shape)
    with torch.no_grad():
        tail.input_shape = tuple(head(example).shape)
    return head, tail


def _cut_index(graph: Graph, boundary: str) -> int:
    """Number of layers on the device when `boundary` is the last tensor they produce."""
    index = graph.producer_index(boundary)
    if index is not None and index < len(graph.layers) - 1:
        return index + 1
    named = next((layer for layer in graph.layers if layer.name == boundary), None)
    found = f"'{boundary}' is a layer name; its output tensor is '{named.output}'" if named else \
        f"'{boundary}' is the model's output (nothing would run on the server)" if index is not None else \
        f"{graph.name} has no layer output '{boundary}'"
    cuts = [graph.layers[k - 1].output for k in range(1, len(graph.layers)) if len(crossing_tensors(graph, k)) == 1]
    shown = ", ".join(cuts[:12]) + (f" and {len(cuts) - 12} more" if len(cuts) > 12 else "")
    raise SplitError(f"{found}; expected a tensor that a cut sends alone, one of: {shown or 'none'}")


def _neighbours(graph: Graph, cut: int) -> str:
    """The nearest single-tensor cuts before and after `cut`, as a sentence."""
    def single(k: int) -> bool:
        return len(crossing_tensors(graph, k)) == 1

    before = next((k for k in range(cut - 1, 0, -1) if single(k)), None)
    after = next((k for k in range(cut + 1, len(graph.layers)) if single(k)), None)
    options = [f"{side} '{graph.layers[k - 1].output}' (after layer '{graph.layers[k - 1].name}')"
               for side, k in (("before:", before), ("after:", after)) if k is not None]
    return "Nearest single-tensor cuts: " + ("; ".join(options) if options else "none") + "."


def _fx_boundary(module: Any, graph: Graph, cut: int, boundary: str) -> Any:
    """The FX node holding `boundary` as the tail reads it.

    The IR folds batch norm and activations into the layer before them and keeps that layer's FX
    name, so the tensor the tail reads is the matching input of the FX node of each tail layer.
    """
    nodes = {node.name: node for node in module.graph.nodes}
    order = {node: i for i, node in enumerate(module.graph.nodes)}
    found = []
    for layer in graph.layers[cut:]:
        if boundary in layer.inputs:
            activations = [n for n in nodes[layer.output].all_input_nodes if n.op != "get_attr"]
            found.append(activations[layer.inputs.index(boundary)])
    return min(found, key=order.__getitem__)


def _partition(module: Any, boundary: Any) -> tuple[Any, Any]:
    """Two GraphModules: the calls up to `boundary`, and the rest reading `boundary` as their input."""
    import torch

    order = list(module.graph.nodes)
    cut = order.index(boundary)
    head_calls = {n for n in order[:cut + 1] if n.op == "call_function"}
    tail_calls = {n for n in order[cut + 1:] if n.op == "call_function"}
    output = next(n for n in order if n.op == "output")
    reads = {arg for n in (*tail_calls, output) for arg in n.all_input_nodes}
    leaked = sorted(n.name for n in reads if (n in head_calls and n is not boundary) or n.op == "placeholder")
    if leaked:
        raise SplitError(f"cutting at '{boundary.name}' also needs {', '.join(leaked)} on the server; "
                         "a deployable cut has exactly one crossing tensor")

    def build(calls: set, source: Any, result: Any) -> Any:
        graph = torch.fx.Graph()
        env = {source: graph.placeholder("x" if source.op == "placeholder" else "boundary")}
        for node in order:  # weights (get_attr) go with the calls that read them
            if node in calls or (node.op == "get_attr" and any(user in calls for user in node.users)):
                env[node] = graph.node_copy(node, env.__getitem__)
        graph.output(torch.fx.map_arg(result, env.__getitem__))
        graph.eliminate_dead_code()  # head calls the boundary does not depend on
        graph.lint()
        return torch.fx.GraphModule(module, graph)

    placeholder = next(n for n in order if n.op == "placeholder")
    outputs = output.args[0]
    result = outputs[0] if isinstance(outputs, (tuple, list)) and len(outputs) == 1 else outputs
    return build(head_calls, placeholder, boundary), build(tail_calls, boundary, result)
