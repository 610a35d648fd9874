"""Per-layer latency measured with ONNX Runtime's own profiler, mapped back onto the graph IR's layers.

The model is exported once with torch.export; the IR (the planner's layer names) and the ONNX file both
come from that one program. Each ONNX node carries the FX node it was lowered from
(`pkg.torch.onnx.fx_node` metadata), and each FX node of the exporter's decomposed program records the
original node it came from (`from_node`), so an ONNX value maps to the IR layer that owns its FX node.
Nodes the IR folds (batch norm, relu, identities) belong to the layer upstream of them. ORT then fuses
and re-lays-out nodes (FusedConv, NCHWc Conv with a fused Add, Reorder*); a kernel is charged to every
IR layer whose ONNX nodes it covers, split by the caller's weights when it covers several.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import CalibrationError
from edgekit.graph.ir import Graph

_FX_NODE = re.compile(r"^%(\S+) :")
_PAD_TARGETS = ("aten.pad.default", "aten.constant_pad_nd.default")
_KERNEL_SUFFIX = "_kernel_time"
_NCHWC_SUFFIX = "_nchwc"  # ORT's NCHWc transformer names a converted node after the value it replaces


@dataclass(frozen=True)
class LayerTimings:
    """Median seconds per IR layer (0 where the backend folded the layer away) and end to end."""

    model: str
    backend: str
    dtype: str  # what the measured artifact computes in
    threads: int
    repeats: int
    layers: dict[str, float]  # kernel medians x `scale`: they add up to total - overhead
    total: float  # end-to-end median with profiling off
    overhead: float  # median run of a one-node model on the same input: session call and I/O, no layer
    scale: float  # wall time / profiled kernel time (profiling inflates kernels: usually below 1)
    kernels: dict[str, tuple[str, ...]]  # backend kernel -> the layers its time was charged to
    unmapped: dict[str, float]  # backend kernels that no IR layer owns (empty when the mapping is complete)
    layers_method: str  # how `layers` was obtained: what is measured, what is fitted
    overhead_method: str


def fx_owners(program: Any, graph: Graph) -> dict[str, str]:
    """FX node name -> the IR layer that executes it; folded nodes belong upstream, zero pads downstream."""
    anchors = {layer.output: layer.name for layer in graph.layers}
    owners: dict[str, str] = {}
    pads = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if node.name in anchors:
            owners[node.name] = anchors[node.name]
        elif str(node.target) in _PAD_TARGETS:
            pads.append(node)
        else:
            upstream = [owners[a.name] for a in node.all_input_nodes if a.name in owners]
            if upstream:
                owners[node.name] = upstream[0]
    for node in pads:
        readers = [owners[u.name] for u in node.users if u.name in owners]
        if readers:
            owners[node.name] = readers[0]
    return owners


def onnx_value_owners(onnx_model: Any, decomposed: Any, owners: Mapping[str, str]) -> dict[str, str]:
    """ONNX value name -> IR layer, through each node's fx_node metadata and the FX `from_node` provenance."""
    origin = {node.name: _root_origin(node) for node in decomposed.graph.nodes}
    values: dict[str, str] = {}
    for node in onnx_model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        match = _FX_NODE.match(meta.get("pkg.torch.onnx.fx_node", ""))
        if match is None:
            continue
        layer = owners.get(origin.get(match.group(1), match.group(1)))
        if layer is not None:
            values.update({out: layer for out in node.output})
    return values


def _root_origin(node: Any) -> str:
    """The name of the node in the user's program that a decomposed FX node was made from."""
    sources = node.meta.get("from_node") or []
    if not sources:
        return node.name
    source = sources[0]
    while source.from_node:
        source = source.from_node[0]
    return source.name


def kernel_layers(optimized: Any, source: Any, value_owners: Mapping[str, str]) -> dict[str, set[str]]:
    """ORT node name (after its graph optimizations) -> the IR layers whose ONNX nodes it covers.

    `source` is the model handed to ORT, `optimized` the graph ORT ran. A kernel covers the source nodes
    between its inputs and the source values it writes; a kernel that writes no source value (ReorderInput)
    is charged to the kernels that read its output.
    """
    producer = {out: node for node in source.graph.node for out in node.output}
    claimed = {node.name: _claimed(node, producer) for node in optimized.graph.node}
    stop = {v for values in claimed.values() for v in values}
    covered: dict[str, set[str]] = {}
    for node in optimized.graph.node:
        layers: set[str] = set()
        stack, seen = list(claimed[node.name]), set()
        while stack:
            value = stack.pop()
            if value in seen:
                continue
            seen.add(value)
            if value in value_owners:
                layers.add(value_owners[value])
            stack += [v for v in producer[value].input if v in producer and v not in stop]
        covered[node.name] = layers
    readers: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        for value in node.input:
            readers.setdefault(value, []).append(node.name)
    for node in reversed(optimized.graph.node):  # consumers come later in topological order
        if not covered[node.name]:
            covered[node.name] = {layer for out in node.output for r in readers.get(out, []) for layer in covered[r]}
    return covered


def _claimed(node: Any, producer: Mapping[str, Any]) -> list[str]:
    names = list(node.output)
    if node.name.endswith(_NCHWC_SUFFIX):
        names.append(node.name[: -len(_NCHWC_SUFFIX)])
    return [v for v in names if v in producer]


def kernel_medians(trace_path: str | Path, warmup: int) -> dict[str, float]:
    """Median kernel seconds per node from an ORT profiler trace, skipping each node's first `warmup` runs."""
    try:
        events = json.loads(Path(trace_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{trace_path}: cannot read the ONNX Runtime profile ({exc})") from None
    if not isinstance(events, list):
        raise CalibrationError(f"{trace_path}: expected a JSON list of trace events, found {type(events).__name__}")
    runs: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "") if isinstance(event, dict) else ""
        if event.get("cat") == "Node" and name.endswith(_KERNEL_SUFFIX):
            runs.setdefault(name[: -len(_KERNEL_SUFFIX)], []).append(float(event["dur"]) * 1e-6)
    return {node: statistics.median(d[warmup:] or d) for node, d in runs.items()}


def attribute(medians: Mapping[str, float], covered: Mapping[str, set[str]], weights: Mapping[str, float],
              layer_names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer seconds from per-kernel medians; a kernel covering several layers is split by `weights`."""
    layers = dict.fromkeys(layer_names, 0.0)
    unmapped: dict[str, float] = {}
    for node, seconds in medians.items():
        owners = sorted(covered.get(node, ()))
        if not owners:
            unmapped[node] = seconds
            continue
        total = sum(weights.get(o, 0.0) for o in owners)
        for owner in owners:
            share = weights.get(owner, 0.0) / total if total > 0 else 1.0 / len(owners)
            layers[owner] += seconds * share
    return layers, unmapped


def _session(path: Path | bytes, threads: int, profile_prefix: str | None = None,
             optimized_path: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the NCHWc note on saving the optimized graph is expected here
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _empty_session(shape: tuple[int, ...], threads: int) -> Any:
    """An ORT session of a one-node model that takes an fp32 input of `shape` and only reads its shape: its run
    time is the per-inference cost that belongs to no layer (the call, binding feeds and fetches)."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["y"])], "overhead",
                              [value("x", TensorProto.FLOAT, shape)], [value("y", TensorProto.INT64, [len(shape)])])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])  # any ORT reads it
    return _session(model.SerializeToString(), threads)


def _seconds(session: Any, feed: dict) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - start


def measure_onnxruntime(program: Any, graph: Graph, weights: Mapping[str, float], threads: int = 1,
                        repeats: int = 20, warmup: int = 5) -> LayerTimings:
    """Export `program` to ONNX, profile it on ORT's CPU provider and return per-layer medians.

    Each round runs the profiled session, then times the same model unprofiled (end to end) and the
    empty model (overhead), so that load from other processes hits all three alike. The profiler
    inflates kernel times, so the kernel medians are scaled to add up to end to end less overhead.
    """
    import onnx
    import torch

    owners = fx_owners(program, graph)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
        if onnx_program is None:
            raise CalibrationError(f"{graph.name}: torch.onnx.export gave no program to profile")
        path, optimized_path = Path(tmp) / "model.onnx", Path(tmp) / "optimized.onnx"
        onnx_program.save(str(path))
        source = onnx.load(str(path))
        values = onnx_value_owners(source, onnx_program.exported_program, owners)
        profiled = _session(path, threads, str(Path(tmp) / "profile"), optimized_path)
        plain, empty = _session(path, threads), _empty_session(graph.inputs[0].shape, threads)
        x = np.random.default_rng(0).random(graph.inputs[0].shape, dtype=np.float32)
        feed = {profiled.get_inputs()[0].name: x}
        totals, overheads = [], []
        for _ in range(warmup + repeats):
            profiled.run(None, feed)
            totals.append(_seconds(plain, feed))
            overheads.append(_seconds(empty, {"x": x}))
        medians = kernel_medians(profiled.end_profiling(), warmup)
        covered = kernel_layers(onnx.load(str(optimized_path)), source, values)
    total = statistics.median(totals[warmup:])
    overhead = min(statistics.median(overheads[warmup:]), total)
    kernels = sum(medians.values())
    scale = (total - overhead) / kernels if kernels > 0 else 1.0
    layers, unmapped = attribute({n: s * scale for n, s in medians.items()}, covered, weights,
                                 [layer.name for layer in graph.layers])
    charged = {node: tuple(sorted(covered[node])) for node in medians if covered.get(node)}
    return LayerTimings(graph.name, f"onnxruntime {_ort_version()}", "fp32", threads, repeats, layers, total, overhead,
                        scale, charged, unmapped,
                        f"profiler kernel medians x {scale:.3f} so that they add up to the end-to-end median less "
                        "the overhead; a kernel covering several layers is split by the profile's estimate",
                        "median run of a one-node Shape model on the same input")


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
