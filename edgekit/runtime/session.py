"""Run a verified bundle on the device: numpy in, numpy out, with latency and memory figures. Never imports torch.

`load(bundle)` opens every stage with its backend (or one named backend for all), checks the manifest's
tensors against what each model file declares, and allocates the buffers a frame needs once: the model's
input buffer, the float32 scratch for quantizing, the finiteness mask, each stage's output buffers. `Session.run`
validates a frame before anything runs, quantizes float input with the input tensor's scale and zero point
into the input buffer, runs the stages in order and dequantizes the last stage's outputs into the caller's `out`
(or new arrays it returns); runs allocate nothing that outlives the call.

Every stage takes one input; the last may give several outputs, which the manifest must list all of, in the
model's order. A single-output session's `run` gives an array; a multi-output one gives a dict, output name ->
array, in that order (`Outputs`). A stage with several inputs, or one with several outputs that another stage
follows, is refused at load.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BackendError, BundleError, InputError, TargetMismatchError
from edgekit.formats.bundle import Bundle, Manifest, Stage, TensorInfo, load_bundle
from edgekit.formats.plans import PatchSchedule, SplitSchedule
from edgekit.formats.quant import dequantize, quantization, quantize
from edgekit.runtime.backends import BACKENDS, FORMATS, Adapter, ModelTensor, open_backend
from edgekit.runtime.patched import PatchExecutor
from edgekit.runtime.split_exec import Resplit, SplitRunner
from edgekit.runtime.transport import SOURCES, Outputs, Reply, Transport, as_outputs

LATENCY_WINDOW = 1000  # runs kept for the percentiles in Session.stats()
PARTS = ("device", "server")  # the sides of a split bundle that load(part=...) opens alone


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _tensor_text(info: TensorInfo) -> str:
    text = f"{info.dtype} {_shape_text(info.shape)}" + (f" {info.layout}" if info.layout else "")
    return text + (f" scale {info.scale:g} zero point {info.zero_point}" if info.scale is not None else "")


def _check_against_model(where: str, side: str, info: TensorInfo, declared: ModelTensor) -> None:
    """The manifest's tensor must be the one the model file declares: dtype, static dims, quantization."""
    problems = []
    if info.dtype != declared.dtype:
        problems.append(f"dtype {info.dtype} in the manifest, {declared.dtype} in the model")
    if len(info.shape) != len(declared.shape) or any(d is not None and d != m
                                                     for d, m in zip(declared.shape, info.shape)):
        shown = "(" + ", ".join("?" if d is None else str(d) for d in declared.shape) + ")"
        problems.append(f"shape {_shape_text(info.shape)} in the manifest, {shown} in the model")
    if declared.scale is not None and (info.scale is None or info.zero_point != declared.zero_point
                                       or not math.isclose(info.scale, declared.scale, rel_tol=1e-6)):
        problems.append(f"quantization scale {info.scale} zero point {info.zero_point} in the manifest, "
                        f"scale {declared.scale} zero point {declared.zero_point} in the model")
    if problems:
        raise BundleError(f"{where}: {side} '{info.name}' does not match the model file: " + "; ".join(problems))


def _check_outputs(where: str, outputs: tuple[TensorInfo, ...], declared: tuple[ModelTensor, ...]) -> None:
    """The manifest lists every output the model file declares, in the model's order, and no other."""
    if len(outputs) < len(declared):
        missing = ", ".join(f"'{m.name}'" for m in declared[len(outputs):])
        raise BundleError(f"{where}: the model has {len(declared)} outputs, the manifest lists {len(outputs)}; "
                          f"missing output {missing}")
    if len(outputs) > len(declared):
        extra = ", ".join(f"'{o.name}'" for o in outputs[len(declared):])
        raise BundleError(f"{where}: the manifest lists {len(outputs)} outputs, the model has {len(declared)}; "
                          f"no such output {extra} in the model")
    for info, model in zip(outputs, declared):
        _check_against_model(where, "output", info, model)


def _float_dtype(info: TensorInfo) -> np.dtype:
    """What the session gives for a tensor: float32 when it is quantized, else its own dtype."""
    return np.dtype(np.float32 if info.scale is not None else info.dtype)


def _expects(info: TensorInfo) -> str:
    return f"input '{info.name}' takes {_tensor_text(info)}"


def _not_finite(info: TensorInfo, x: np.ndarray) -> InputError:
    """The error for a float frame holding NaN or infinity (or values the model's float type cannot hold)."""
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    found = f"{nan} NaN and {inf} infinite values (of {x.size})" if nan or inf else \
        f"values too large for {'float32 after dividing by the scale' if info.scale else info.dtype}"
    return InputError(f"{_expects(info)}; got {found}")


class _StageRunner:
    """One stage: its backend adapter, the float scratch for quantizing, the output buffers for chaining."""

    def __init__(self, bundle: Bundle, stage: Stage, backend: str, threads: int | None) -> None:
        where = f"{bundle.path}: stage '{stage.name}' ({stage.file})"
        if len(stage.inputs) != 1:
            raise BundleError(f"{where}: takes {len(stage.inputs)} inputs ("
                              f"{', '.join(t.name for t in stage.inputs)}); the runtime runs stages with one input")
        self.stage, self.backend = stage, backend
        self.input, self.outputs = stage.inputs[0], stage.outputs
        plan = bundle.manifest.plan
        self.adapter: Adapter
        try:
            if isinstance(plan, PatchSchedule):  # the stage's model runs patch by patch under the plan's schedule
                files = {name: bundle.read(name) for name in plan.model_files}
                self.adapter = PatchExecutor(files, plan, backend, threads)
            else:
                self.adapter = open_backend(backend, bundle.read(stage.file), self.input.shape,
                                            tuple(o.shape for o in self.outputs), threads)
        except BackendError as exc:
            raise BackendError(f"{where}: {exc}") from None
        model_in, model_outs = self.adapter.model_tensors()
        _check_against_model(where, "input", self.input, model_in)
        _check_outputs(where, self.outputs, model_outs)
        self._in = self.adapter.input_buffer
        self._float_in = self._in.dtype.kind == "f"
        self._finite = np.zeros(self.input.shape, bool)  # the finiteness mask for float inputs, reused
        self._quant = quantization(self.input)
        self._dequant = tuple(quantization(o) for o in self.outputs)
        self._scratch = np.zeros(self.input.shape, np.float32) if self._quant is not None else None
        self.outs = tuple(np.zeros(o.shape, _float_dtype(o)) for o in self.outputs)  # when another stage follows
        self.memory: dict[str, Any] | None = None

    def accepted(self, dtype: np.dtype) -> str | None:
        """None when frames of `dtype` are accepted, else what to pass instead."""
        if dtype.kind == "f":
            return None if self._scratch is not None or self._float_in else str(self._in.dtype)
        if dtype == self._in.dtype:
            return None
        return ("float" + (f" or {self._in.dtype}" if self._scratch is not None else "")
                if self._scratch is not None or self._float_in else str(self._in.dtype))

    def run(self, x: np.ndarray, targets: tuple[np.ndarray, ...] | None, check: bool) -> tuple[np.ndarray, ...]:
        """Fill the input buffer from `x` (shape and dtype checked), invoke, write the outputs into `targets`.

        With `check`, a float frame holding NaN or infinity is an InputError raised before the backend runs;
        the test rides on the float32 copy the frame needs anyway, while it is still in cache.
        """
        return self.dequantize(self.run_raw(x, check), targets)

    def run_raw(self, x: np.ndarray, check: bool) -> tuple[np.ndarray, ...]:
        """Fill the input buffer from `x` and invoke: the model's own outputs (int8 when quantized), not copies."""
        if self._quant is not None and x.dtype.kind == "f":
            try:  # NaN and infinity are refused on the float32 values quantizing makes anyway, checked or not
                quantize(x, *self._quant, out=self._in, scratch=self._scratch)
            except InputError:
                raise _not_finite(self.input, x) from None
        else:
            np.copyto(self._in, x, casting="same_kind")
            if check and self._float_in:
                flat = self._in.reshape(-1)  # NaN or infinity anywhere makes the sum of squares non-finite;
                if not np.isfinite(np.dot(flat, flat)):  # one BLAS pass, half the cost of isfinite + all
                    np.isfinite(self._in, out=self._finite)  # exact only then (huge finite values overflow)
                    if not self._finite.all():
                        raise _not_finite(self.input, x)
        return self.adapter.invoke()

    def dequantize(self, raws: tuple[np.ndarray, ...],
                   targets: tuple[np.ndarray, ...] | None) -> tuple[np.ndarray, ...]:
        """The model's raw outputs as float32 (or as they are when not quantized), into `targets` or this stage's
        buffers."""
        targets = targets or self.outs
        for raw, target, params in zip(raws, targets, self._dequant):
            if params is not None:
                dequantize(raw, *params, out=target)
            else:
                np.copyto(target, raw)
        return targets


class Session:
    """A loaded bundle ready to run frames; see `load()`."""

    def __init__(self, bundle: Bundle, runners: list[_StageRunner], window: int = LATENCY_WINDOW,
                 split: SplitRunner | None = None, outputs: tuple[TensorInfo, ...] | None = None) -> None:
        self.bundle, self._runners, self._split = bundle, runners, split
        self.manifest: Manifest = bundle.manifest
        self.input: TensorInfo = runners[0].input
        self.outputs: tuple[TensorInfo, ...] = outputs or runners[-1].outputs  # in the model's order
        self.last_reply: Reply | None = None  # how the last split frame was answered
        self._sources = dict.fromkeys(SOURCES, 0)
        self._first, self._rest, self._last = runners[0], runners[1:], runners[-1]
        self._shape = self.input.shape
        self._unbatched = self._shape[1:] if len(self._shape) > 1 and self._shape[0] == 1 else None
        self._names = tuple(o.name for o in self.outputs)
        self._name_set = frozenset(self._names)
        self._out_specs = tuple((o.shape, _float_dtype(o)) for o in self.outputs)
        self._latency_ns = np.zeros(max(1, window), np.int64)
        self._count = 0

    @property
    def output(self) -> TensorInfo:
        """The output of a single-output session; a multi-output one has `outputs` instead."""
        if len(self.outputs) != 1:
            raise BundleError(f"{self.bundle.path}: the model has {len(self.outputs)} outputs ("
                              f"{', '.join(self._names)}); Session.output is for single-output models, use "
                              "Session.outputs")
        return self.outputs[0]

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.manifest.labels

    @property
    def backends(self) -> tuple[str, ...]:
        """The backend each stage runs under, in stage order."""
        return tuple(r.backend for r in self._runners)

    def run(self, x: np.ndarray, out: Outputs | None = None) -> Outputs:
        """One frame through every stage: the output (float32 when quantized), new or written to `out`.

        A single-output model gives an array; a multi-output one a dict, output name -> array, in the model's
        order. `x` has the input's shape (a leading batch of 1 may be left off) and either a float dtype
        (quantized here when the model takes integers) or exactly the model's integer dtype (passed as is).
        Anything else, NaN or infinity included, is an InputError before the backend runs. With `out` (what
        `empty_output()` gives: an array, or a dict of arrays, of the outputs' shapes and dtypes) a run
        allocates nothing.
        """
        start = time.perf_counter_ns()
        x = self._validate(x)
        if out is None:
            out = self.empty_output()
        targets = self._targets(out)
        if self._split is not None:
            self.last_reply = self._split.run(x, targets)
            self._sources[self.last_reply.source] += 1
        elif self._rest:
            values = self._first.run(x, None, True)
            for runner in self._rest:  # every stage but the last has one output (checked at load)
                values = runner.run(values[0], targets if runner is self._last else None, False)
        else:
            self._first.run(x, targets, True)
        self._latency_ns[self._count % len(self._latency_ns)] = time.perf_counter_ns() - start
        self._count += 1
        return out

    def empty_output(self) -> Outputs:
        """New buffers for `run(x, out=...)`: an array, or a dict name -> array for a multi-output model."""
        return as_outputs([np.empty(shape, dtype) for shape, dtype in self._out_specs], self._names)

    def _targets(self, out: Any) -> tuple[np.ndarray, ...]:
        """The arrays of `out` in output order, or an InputError saying what `out=` must be."""
        arrays: tuple[Any, ...] | None = None
        if len(self._names) == 1:
            arrays = (out,)
        elif isinstance(out, dict) and out.keys() == self._name_set:
            arrays = tuple([out[name] for name in self._names])
        if arrays is None or any(not isinstance(a, np.ndarray) or (a.shape, a.dtype) != spec
                                 for a, spec in zip(arrays, self._out_specs)):
            wanted = " and ".join(f"{dtype} {_shape_text(shape)}" for shape, dtype in self._out_specs)
            form = "an array" if len(self._names) == 1 else f"a dict {{{', '.join(map(repr, self._names))}}} of arrays"
            raise InputError(f"out= must be {form} ({wanted}), got {_describe(out)}")
        return arrays

    def _validate(self, x: Any) -> np.ndarray:
        """`x` in the input's shape, or an InputError naming the input, what it expects and what it got."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"{_expects(self.input)}; got a {type(x).__name__}, not a numpy array")
        if x.shape != self._shape:
            if x.shape != self._unbatched:
                raise InputError(f"{_expects(self.input)}; got shape {_shape_text(x.shape)}")
            x = x.reshape(self._shape)
        instead = self._first.accepted(x.dtype)
        if instead is not None:
            raise InputError(f"{_expects(self.input)}; got dtype {x.dtype} (pass {instead})")
        return x

    def preprocess_image(self, path: str | Path) -> np.ndarray:
        """An image file as the first stage's float input, by the manifest's preprocessing.

        Resized to height x width (Pillow's default filter, as calibration from an image folder does), grey
        or RGB by the channel count, raw 0..255 pixels times `scale`, then (x - mean) / std per channel,
        laid out NCHW or NHWC, with a batch of 1.
        """
        p = self.manifest.preprocessing
        if p is None:
            raise InputError(f"{self.bundle.path}: the bundle has no image preprocessing in its manifest, so an "
                             "image cannot become its input; pass the frames as an array instead "
                             "(edgekit run --input frames.npy or .npz; Session.run(array))")
        if p.channels not in (1, 3):
            raise InputError(f"{self.bundle.path}: preprocessing has {p.channels} channels; images give 1 (grey) "
                             "or 3 (RGB)")
        from edgekit.runtime.images import open_image

        image = open_image(path, "L" if p.channels == 1 else "RGB").resize((p.width, p.height))
        return self.preprocess_pixels(np.asarray(image, np.float32).reshape(p.height, p.width, p.channels))

    def preprocess_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Raw 0..255 pixels (height x width x channels, already at the input's size: a decoded video frame, say)
        as the first stage's float input: times `scale`, (x - mean) / std, laid out, with a batch of 1."""
        p = self.manifest.preprocessing
        if p is None or pixels.shape != (p.height, p.width, p.channels):
            wanted = "no image preprocessing in its manifest" if p is None else f"{p.height}x{p.width}x{p.channels}"
            raise InputError(f"{self.bundle.path}: pixels of shape {pixels.shape}; the bundle takes {wanted}")
        x = (pixels.astype(np.float32) * np.float32(p.scale) - np.array(p.mean, np.float32)) / \
            np.array(p.std, np.float32)
        if p.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], np.float32)

    def run_image(self, path: str | Path) -> Outputs:
        """`run(preprocess_image(path))`: Pillow is imported only here (it is optional on the device)."""
        return self.run(self.preprocess_image(path))

    def reset_stats(self) -> None:
        """Forget the latencies and answer counts recorded so far (after warm-up, say)."""
        self._count = 0
        self._sources = dict.fromkeys(SOURCES, 0)

    def latency(self) -> dict[str, Any]:
        """Run count and latency percentiles (ms) over the last `window` runs; cheap (no memory walk)."""
        kept = self._latency_ns[:min(self._count, len(self._latency_ns))] / 1e6
        figures: dict[str, Any] = {"count": self._count, "window": int(kept.size)}
        ordered = np.sort(kept)  # one sort for the three (np.percentile's first call also costs ~7 ms of imports)
        for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            figures[name] = _quantile(ordered, q) if kept.size else None
        figures["mean_ms"] = float(kept.mean()) if kept.size else None
        return figures

    def stats(self) -> dict[str, Any]:
        """`latency()`, peak RSS and backend memory (each stage's, read once from its model and backend)."""
        figures = self.latency()
        figures["peak_rss_bytes"] = peak_rss_bytes()
        memory = []
        for r in self._runners:
            if r.memory is None:
                r.memory = r.adapter.memory()
            memory.append({"stage": r.stage.name, "backend": r.backend, **r.memory})
        figures["backend_memory"] = memory
        if self._split is not None:
            figures["answers"] = dict(self._sources)  # split frames by who answered: remote, fallback, ...
        return figures

    def info(self) -> dict[str, Any]:
        """What is loaded: bundle, model, target, and per stage its backend, engine and tensors."""
        return {"bundle": str(self.bundle.path), "model": self.manifest.model, "target": self.manifest.target,
                "stages": [{"name": r.stage.name, "file": r.stage.file, "backend": r.backend,
                            "engine": r.adapter.describe(), "input": r.input.to_dict(),
                            "outputs": [o.to_dict() for o in r.outputs]} for r in self._runners]}

    def __repr__(self) -> str:
        return (f"Session({str(self.bundle.path)!r}, model={self.manifest.model!r}, "
                f"backends={list(self.backends)})")


def _quantile(ordered: np.ndarray, q: float) -> float:
    """The q-quantile of sorted values, interpolated between neighbours as np.quantile's default ('linear')."""
    at = q * (ordered.size - 1)
    low = int(at)
    high = min(low + 1, ordered.size - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (at - low))


def _describe(value: Any) -> str:
    """What was passed, in words: an array's dtype and shape, a dict's keys, else its type."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {_shape_text(value.shape)}"
    if isinstance(value, dict):
        return "a dict of " + (", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) or "nothing")
    return type(value).__name__


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (getrusage), or None where the platform has no `resource`."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


def load(bundle_path: str | Path | Bundle, backend: str | None = None, expected_target: str | None = None, *,
         threads: int | None = None, window: int = LATENCY_WINDOW, transport: Transport | None = None,
         deadline_s: float = 1.0, local_tail: bool = True, part: str | None = None, resplit: bool = True) -> Session:
    """Verify a bundle and open its stages for running.

    `backend` overrides the manifest's backend of every stage (it must run the stage's model format:
    litert or tflite-micro for .tflite, onnxruntime for .onnx). `expected_target` refuses a bundle built
    for another target. `threads` goes to the backend (None: its default). `window` is how many recent runs
    the latency percentiles cover.

    A split bundle runs every stage here unless a `transport` is given; then the device stages run here, the
    boundary tensor goes to the server through the transport, and each frame is answered within `deadline_s`
    seconds by the server or, when `local_tail` (the server stages loaded here too), by the local fallback.
    With `resplit` and a transport that measures the link (`link_estimate()`), frames run all here while
    the plan's figures say the measured uplink makes offloading slower (see `split_exec.Resplit`).
    `part` "server" (or "device") opens only that side's stages of a split bundle: what a tail server runs.
    """
    if backend is not None and backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    manifest = bundle.manifest
    if expected_target is not None and manifest.target != expected_target:
        raise TargetMismatchError(f"{bundle.path}: built for target '{manifest.target}', but this device expects "
                                  f"'{expected_target}'; compile the model for '{expected_target}'")
    for stage in manifest.stages:
        if backend is not None and FORMATS[backend] != FORMATS[stage.backend]:
            raise BackendError(f"{bundle.path}: stage '{stage.name}' is a {FORMATS[stage.backend]} model "
                               f"({stage.file}); backend '{backend}' runs {FORMATS[backend]} models only")
    for before, after in zip(manifest.stages, manifest.stages[1:]):
        if len(before.outputs) != 1:
            raise BundleError(f"{bundle.path}: stage '{before.name}' gives {len(before.outputs)} outputs ("
                              f"{', '.join(t.name for t in before.outputs)}) but stage '{after.name}' follows it; "
                              "only the last stage may give several")
        if before.outputs[0].shape != after.inputs[0].shape:
            raise BundleError(f"{bundle.path}: stage '{after.name}' takes {_shape_text(after.inputs[0].shape)} but "
                              f"stage '{before.name}' gives {_shape_text(before.outputs[0].shape)}")
    layout = SplitSchedule.of(manifest)
    if transport is not None and layout is None:
        raise BundleError(f"{bundle.path}: a transport was given but the bundle is not split (its plan has no "
                          "device and server stages); load it without one")
    if part is not None:
        if part not in PARTS or layout is None or transport is not None:
            raise BundleError(f"{bundle.path}: part={part!r} needs a split bundle, no transport, and one of "
                              f"{', '.join(PARTS)}" + ("" if layout else "; this bundle is not split"))
        chosen = set(layout.device_stages if part == "device" else layout.server_stages)
    else:
        offloaded = set(layout.server_stages) if transport is not None and layout and not local_tail else set()
        chosen = {stage.name for stage in manifest.stages} - offloaded
    runners = [_StageRunner(bundle, stage, backend or stage.backend, threads)
               for stage in manifest.stages if stage.name in chosen]
    if transport is None or layout is None:
        return Session(bundle, runners, window)
    head = [r for r in runners if r.stage.name in layout.device_stages]
    tail = [r for r in runners if r.stage.name in layout.server_stages]
    outputs = manifest.stages[-1].outputs
    split = SplitRunner(head, tail, transport, deadline_s, outputs, Resplit.of(layout.figures) if resplit else None)
    return Session(bundle, head + tail, window, split, outputs)
