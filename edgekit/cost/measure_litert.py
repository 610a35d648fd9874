"""Per-layer latency on LiteRT, which has no per-operator profiler in Python: prefixes are timed, the rest fitted.

The .tflite file is cut after each compute layer (conv, linear) by truncating its operator list and
making that layer's output the model output; no re-conversion. The empty prefix (no operators) gives the
per-inference overhead. All prefixes are timed round-robin (load from other processes hits them alike),
their medians made non-decreasing (isotonic least squares), and each increment is one segment's measured
time: the compute layer and the layers between it and the previous one (adds, pools, reshapes). Within a
segment, time is split by the caller's weights (the profile's roofline estimate): that split is fitted,
the segment totals are measured.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.cost.measure_ort import LayerTimings
from edgekit.errors import CalibrationError
from edgekit.formats.tflite import pack_model, read_model
from edgekit.graph.ir import Graph

if TYPE_CHECKING:
    from edgekit.runtime.backends import LiteRTAdapter


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                          blocks[-1][1] + count]
    return [mean for mean, count in blocks for _ in range(int(count))]


def compute_cuts(graph: Graph, tflite_graph: Graph) -> list[tuple[int, int]]:
    """(index in `graph`, .tflite tensor index) of each compute layer, matched in order and checked by MACs."""
    ours = [(i, layer) for i, layer in enumerate(graph.layers) if layer.macs > 0]
    theirs = [layer for layer in tflite_graph.layers if layer.macs > 0]
    if [layer.macs for _, layer in ours] != [layer.macs for layer in theirs]:
        raise CalibrationError(f"{tflite_graph.name}: expected the compute layers of {graph.name} "
                               f"({len(ours)} with MACs {[layer.macs for _, layer in ours][:4]}...), found "
                               f"{len(theirs)} with MACs {[layer.macs for layer in theirs][:4]}...")
    return [(index, int(layer.output.lstrip("t"))) for (index, _), layer in zip(ours, theirs)]


def prefix_bytes(model: Any, operators: int, outputs: list[int]) -> bytes:
    """The flatbuffer of `model` (schema object API) keeping its first `operators` operators, with `outputs`."""
    prefix = copy.copy(model)
    subgraph = copy.copy(model.subgraphs[0])
    subgraph.operators = list(model.subgraphs[0].operators or [])[:operators]
    subgraph.outputs = list(outputs)
    prefix.subgraphs = [subgraph, *model.subgraphs[1:]]
    return pack_model(prefix)


def _adapter(content: bytes, threads: int) -> LiteRTAdapter:
    """LiteRT over `content`, its input set to zeros; what is timed is its interpreter's invoke() alone."""
    from edgekit.runtime.backends import LiteRTAdapter

    adapter = LiteRTAdapter(content, threads=threads)
    adapter.invoke()  # sets the zero input buffer
    return adapter


def measure_litert(graph: Graph, tflite_path: str | Path, weights: Mapping[str, float], threads: int = 1,
                   repeats: int = 20, warmup: int = 5) -> LayerTimings:
    """Time every compute-layer prefix of the .tflite model of `graph` and return per-layer seconds."""
    from edgekit.graph.from_tflite import from_tflite

    path = Path(tflite_path)
    model, _ = read_model(path)
    subgraph = model.subgraphs[0]
    producer = {out: index for index, op in enumerate(subgraph.operators or []) for out in op.outputs}
    tflite_graph = from_tflite(path)
    cuts = compute_cuts(graph, tflite_graph)
    ends = [producer[tensor] + 1 for _, tensor in cuts]
    if ends != sorted(ends):
        raise CalibrationError(f"{path}: compute layers are not in execution order in the .tflite operator list")
    prefixes = [prefix_bytes(model, 0, list(subgraph.inputs))]
    prefixes += [prefix_bytes(model, end, [tensor]) for end, (_, tensor) in zip(ends, cuts)]
    prefixes.append(path.read_bytes())
    adapters = [_adapter(content, threads) for content in prefixes]
    times: list[list[float]] = [[] for _ in adapters]
    for _ in range(warmup + repeats):
        for adapter, series in zip(adapters, times):
            start = time.perf_counter()
            adapter.interpreter.invoke()
            series.append(time.perf_counter() - start)
    cumulative = isotonic([statistics.median(series[warmup:]) for series in times])
    bounds = [-1, *(index for index, _ in cuts), len(graph.layers) - 1]  # last graph layer of each segment
    layers = dict.fromkeys((layer.name for layer in graph.layers), 0.0)
    segments: dict[str, tuple[str, ...]] = {}
    for k in range(len(bounds) - 1):
        names = [layer.name for layer in graph.layers[bounds[k] + 1: bounds[k + 1] + 1]] or \
            [graph.layers[bounds[k]].name]  # operators after the last layer (output dequantize): charged to it
        seconds = cumulative[k + 1] - cumulative[k]
        total = sum(weights.get(name, 0.0) for name in names)
        for name in names:
            layers[name] += seconds * (weights.get(name, 0.0) / total if total > 0 else 1.0 / len(names))
        segments[f"operators {ends[k - 1] if k else 0}..{ends[k] if k < len(ends) else len(subgraph.operators)}"] = \
            tuple(names)
    return LayerTimings(graph.name, f"litert {_litert_version()}", _dtype(tflite_graph), threads, repeats, layers,
                        cumulative[-1], cumulative[0], 1.0, segments, {},
                        f"median latencies of {len(prefixes)} prefixes cut after each compute layer, made "
                        "non-decreasing; each increment split over its layers by the profile's estimate",
                        "median run of the empty prefix (no operators)")


def _dtype(tflite_graph: Graph) -> str:
    """'int8' when the compute layers store about one byte per parameter (int8 weights, int32 biases), else 'fp32'."""
    compute = [layer for layer in tflite_graph.layers if layer.macs > 0]
    return "int8" if sum(layer.param_bytes for layer in compute) < 2 * sum(layer.params for layer in compute) \
        else "fp32"


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return version("tflite-runtime")
