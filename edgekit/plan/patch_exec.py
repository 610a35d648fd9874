"""Execute a PatchPlan exactly, in float, on the host (torch reference): patch stage patch by patch,
then the rest layer by layer. It checks the plan: outputs must equal layer-by-layer execution, and
the memory it measures from the tensors it really held must equal the planner's figure.

Each patch starts from its window cut from the input. A convolution or pool runs on exactly the
region its output tile needs; zero padding (-inf for max pool) is added only where that region
crosses the true border of the tensor, never at patch borders, so halos are recomputed, not padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import PlanError
from edgekit.graph.from_torch import export_program, graph_from_program
from edgekit.graph.ir import Graph, Layer
from edgekit.memory import live_bytes
from edgekit.plan.patch import PatchPlan, Region, clip_region, input_region, patch_regions

_CONV = {"aten.conv2d.default", "aten.convolution.default"}
_POOL = {"aten.max_pool2d.default", "aten.avg_pool2d.default"}
_PAD = {"aten.pad.default", "aten.constant_pad_nd.default"}


@dataclass(frozen=True)
class PatchedRun:
    """Output of a patched execution and the peak int8 bytes measured from the tensors it held."""

    output: np.ndarray
    peak_bytes: int
    patch_stage_bytes: int
    rest_bytes: int


def _parameters(program: Any) -> dict[str, Any]:
    """Placeholder name -> tensor for every parameter, buffer and lifted constant of the program."""
    signature, values = program.graph_signature, {}
    for table, source in ((signature.inputs_to_parameters, program.state_dict),
                          (signature.inputs_to_buffers, {**program.state_dict, **program.constants}),
                          (signature.inputs_to_lifted_tensor_constants, program.constants)):
        values.update({placeholder: source[key] for placeholder, key in table.items()})
    return values


def _heads(program: Any, graph: Graph) -> dict[str, str]:
    """FX node name -> the graph tensor it belongs to (batch norm and activations fold into their conv)."""
    tensors = {layer.output for layer in graph.layers} | {spec.name for spec in graph.inputs}
    head: dict[str, str] = {}
    for node in program.graph.nodes:
        if node.name in tensors:
            head[node.name] = node.name
        elif node.op == "call_function":
            sources = [a.name for a in node.all_input_nodes if a.name in head]
            if sources:
                head[node.name] = head[sources[0]]
    return head


def _crop(value: Any, have: Region, want: Region) -> Any:
    """The `want` region of a tensor that holds region `have`."""
    top, left = want[0] - have[0], want[1] - have[1]
    return value[..., top: top + want[2] - want[0], left: left + want[3] - want[1]]


def _windowed(node: Any, layer: Layer, args: list, value: Any, have: Region, out: Region,
              full: tuple) -> tuple[Any, int]:
    """Run a conv/pool on exactly the input region `out` needs, padding only at the true border; also the
    elements of the padded window it ran on."""
    import torch.nn.functional as F

    want = input_region(layer, out)
    clipped = clip_region(want, full)
    pad = (clipped[1] - want[1], want[3] - clipped[3], clipped[0] - want[0], want[2] - clipped[2])
    target = str(node.target)
    fill = float("-inf") if "max_pool" in target else 0.0
    window = F.pad(_crop(value, have, clipped), pad, value=fill)
    if target in _CONV:
        weight, bias = args[1], args[2] if len(args) > 2 else None
        return F.conv2d(window, weight, bias, layer.stride, 0, layer.dilation, layer.groups), window.numel()
    if "max_pool" in target:
        return F.max_pool2d(window, layer.kernel, layer.stride, 0, layer.dilation), window.numel()
    count_include_pad = args[5] if len(args) > 5 else True
    if not count_include_pad and any(layer.padding):
        raise PlanError(f"layer '{layer.name}': average pooling without count_include_pad cannot be patched exactly")
    return F.avg_pool2d(window, layer.kernel, layer.stride, 0), window.numel()


def run_patched(model: Any, plan: PatchPlan, x: np.ndarray) -> PatchedRun:
    """Run `model` on one input (1,C,H,W float32) under `plan`; the same trace the planner's graph came from."""
    import torch
    from torch.fx.node import map_arg

    if plan.chosen is None:
        raise PlanError(f"{plan.model}: the plan has no patch schedule ({plan.reason})")
    program = export_program(model, x.shape)
    graph = graph_from_program(program, plan.model)
    stage = list(graph.layers[: len(plan.stage_layers)])
    if tuple(layer.name for layer in stage) != plan.stage_layers:
        raise PlanError(f"{plan.model}: the plan's stage layers do not match this model's graph")
    layer_of = {layer.output: layer for layer in graph.layers}
    head, params = _heads(program, graph), _parameters(program)
    input_name = graph.inputs[0].name
    stage_tensors = {layer.output for layer in stage}
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    # a zero pad the graph folded into its conv/pool is that layer's padding: in the stage, the conv reads the
    # pad's input and pads only at the true border; in the rest, the pad runs as traced
    pads = [n for n in nodes if str(n.target) in _PAD and n.name not in layer_of]
    stage_nodes = [n for n in nodes if n not in pads and head.get(n.name) in stage_tensors]
    folded = {n.name: n.all_input_nodes[0].name for n in pads if all(user in stage_nodes for user in n.users)}
    rest_nodes = [n for n in nodes if n not in stage_nodes and n.name not in folded]
    stage_end = stage_nodes[-1]
    full_input = torch.from_numpy(x)
    shape_of = {n.name: tuple(n.meta["val"].shape) for n in nodes} | {input_name: tuple(x.shape)}
    buffer = torch.zeros(shape_of[stage_end.name])
    working = 0
    with torch.no_grad():
        for tile, window in zip(plan.tiles, plan.input_windows):
            regions, _ = patch_regions(graph, stage, tile)
            first = clip_region(window, x.shape)
            env = {input_name: (_crop(full_input, (0, 0, x.shape[2], x.shape[3]), first), first)}
            padded: dict[str, int] = {}
            for node in stage_nodes:
                out = regions.get(head[node.name])
                if out is None:
                    continue
                sources = [a for a in node.all_input_nodes if a.name in env]
                if str(node.target) in _CONV | _POOL:
                    args = list(map_arg(node.args, lambda n: params.get(n.name, env.get(n.name, (None,))[0])))
                    source = folded.get(node.all_input_nodes[0].name, node.all_input_nodes[0].name)
                    value, have = env[source]
                    result, padded[node.name] = _windowed(node, layer_of[node.name], args, value, have, out,
                                                          shape_of[source])
                else:
                    cropped = {a.name: _crop(*env[a.name], out) for a in sources}
                    args = map_arg(node.args, lambda n: cropped.get(n.name, params.get(n.name)))
                    result = node.target(*args, **node.kwargs)
                env[node.name] = (result, out)
            held = {head[name]: value.numel() for name, (value, _) in env.items() if head.get(name) == name}
            held[stage[-1].output] = 0  # the stage's last layer writes straight into the stage buffer
            working = max(working, *live_bytes(stage, [input_name], [], lambda t: held.get(t, 0), plan.policy,
                                               lambda layer: padded.get(layer.output, 0)))
            buffer[..., tile[0]:tile[2], tile[1]:tile[3]] = env[stage_end.name][0]
        env_full: dict[str, Any] = {stage_end.name: buffer}
        for node in rest_nodes:
            args = map_arg(node.args, lambda n: params.get(n.name, env_full.get(n.name)))
            env_full[node.name] = node.target(*args, **node.kwargs)
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        output = env_full[output_node.args[0][0].name]
    sizes = {stage[-1].output: buffer.numel()}
    sizes |= {head[name]: value.numel() for name, value in env_full.items() if head.get(name) == name}
    rest_layers = graph.layers[len(stage):]
    padded_rest = {user.name: env_full[pad.name].numel()
                   for pad in pads if pad.name not in folded for user in pad.users}
    rest = max(live_bytes(rest_layers, [stage[-1].output], graph.outputs, sizes.__getitem__, plan.policy,
                          lambda layer: padded_rest.get(layer.output, 0)), default=0)
    patch_stage = working + buffer.numel()
    return PatchedRun(output.numpy(), max(patch_stage, rest), patch_stage, rest)
