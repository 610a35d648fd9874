"""What `edgekit run` and `edgekit bench` do, as library calls: predict on a file, benchmark a bundle, render both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError
from edgekit.formats.bundle import Bundle
from edgekit.runtime.session import Session, load
from edgekit.runtime.transport import Transport

if TYPE_CHECKING:
    from edgekit.runtime.detections import Decoder

ARRAY_SUFFIXES = (".npy", ".npz")


def read_frames(session: Session, path: str | Path) -> np.ndarray:
    """Frames from a file: an image (by the manifest's preprocessing), or a .npy/.npz array ('x' or its only key).

    An array of the input's shape (or one sample without the batch of 1) is one frame; (N, *sample) is N.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected an image, or a .npy/.npz array of frames)")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        return session.preprocess_image(path)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            array = data
        else:
            with data:
                array = _npz_array(data, path)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable numpy file ({exc})") from None
    shape = session.input.shape
    if array.shape == shape:
        return array
    if len(shape) > 1 and shape[0] == 1 and array.shape[1:] == shape[1:]:
        return array  # N frames, run one by one
    if len(shape) > 1 and shape[0] == 1 and array.shape == shape[1:]:
        return array[None]
    raise InputError(f"{path}: array of shape {array.shape}; input '{session.input.name}' takes {shape} "
                     f"(or N frames of {shape[1:]})")


def _npz_array(data: Any, path: Path) -> np.ndarray:
    if "x" in data.files:
        return data["x"]
    if len(data.files) == 1:
        return data[data.files[0]]
    raise InputError(f"{path}: .npz holds {', '.join(data.files)}; expected key 'x' or a single array")


def top_k(scores: np.ndarray, k: int, labels: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """The k highest entries of a class-score vector: index, label (or None) and score."""
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:max(1, k)]
    names = labels if labels is not None and len(labels) == flat.size else None
    return [{"index": int(i), "label": names[i] if names else None, "score": float(flat[i])} for i in order]


def summarise_output(name: str, output: np.ndarray, k: int, labels: tuple[str, ...] | None) -> dict[str, Any]:
    """One output of a frame: name, shape and dtype, then its top-k when it is a class-score vector (one
    non-singleton axis), else its range and mean."""
    summary: dict[str, Any] = {"name": name, "shape": list(output.shape), "dtype": str(output.dtype)}
    if sum(d > 1 for d in output.shape) <= 1:
        return {**summary, "top": top_k(output, k, labels)}
    return {**summary, "min": float(output.min()), "max": float(output.max()), "mean": float(output.mean())}


def predict(bundle: str | Path | Bundle, input_path: str | Path, backend: str | None = None, top: int = 5,
            threads: int | None = None, expected_target: str | None = None, transport: Transport | None = None,
            deadline_s: float = 1.0, annotate_to: str | Path | None = None) -> dict[str, Any]:
    """Load `bundle`, run every frame of `input_path`, and give per frame every output: its top-k classes, or
    a summary (see `summarise_output`).

    Class-score outputs are those with one non-singleton axis; labels come from the manifest when it has one
    per score. With a `transport` (a split bundle), the tail runs behind it (the MQTT `OffloadClient`: on the edge
    server), each frame answered within `deadline_s` by the server or by the local tail; each result says which.
    A detector bundle (a manifest with `detection`) also gives each frame's detections; with `annotate_to`, the
    input image is written there with its boxes drawn.
    """
    session = load(bundle, backend, expected_target, threads=threads, transport=transport, deadline_s=deadline_s)
    decoder = detection_decoder(session)
    if annotate_to is not None and decoder is None:
        raise InputError(f"{session.bundle.path}: annotating needs a detector bundle (a manifest with "
                         "'detection'); this one has none")
    if annotate_to is not None and Path(input_path).suffix.lower() in ARRAY_SUFFIXES:
        raise InputError(f"{input_path}: annotating draws on an image input, not a .npy/.npz array")
    frames = read_frames(session, input_path)
    batched = frames.shape != session.input.shape
    results = []
    names = [o.name for o in session.outputs]
    for i in range(len(frames) if batched else 1):
        output = session.run(frames[i:i + 1] if batched else frames)
        arrays = output.values() if isinstance(output, dict) else (output,)
        results.append({"frame": i, "outputs": [summarise_output(name, array, top, session.labels)
                                                for name, array in zip(names, arrays)]})
        if decoder is not None:
            detections = decoder(dict(zip(names, arrays)))
            results[-1]["detections"] = detections.to_list()
            if annotate_to is not None:
                from edgekit.runtime.annotate import annotate

                results[-1]["annotated"] = str(annotate(input_path, detections, annotate_to))
        if session.last_reply is not None:
            reply = session.last_reply
            results[-1]["answered_by"] = {"source": reply.source, "ms": reply.latency_s * 1e3,
                                          "detail": reply.detail}
    return {"bundle": str(session.bundle.path), "model": session.manifest.model, "target": session.manifest.target,
            "backends": list(session.backends), "input": str(input_path), "results": results,
            "latency_ms": session.latency()["p50_ms"]}


def detection_decoder(session: Session) -> Decoder | None:
    """The decoder of a detector bundle's `detection` record, None for other bundles (which never import it)."""
    detection = session.manifest.detection
    if detection is None:
        return None
    from edgekit.runtime.detections import Decoder

    return Decoder(detection, session.labels)


def benchmark(bundle: str | Path, runs: int = 200, warmup: int = 20, backend: str | None = None,
              threads: int | None = None, show_progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Time `runs` frames through `Session.run` after `warmup` untimed ones.

    The frame is uniform [0, 1) float noise of the input's shape (quantized per run when the model takes
    integers, as a camera frame would be). Latency percentiles come from the session's own timer (the whole
    `run`: validation, quantization, every stage, dequantization); throughput is runs / wall time of the
    timed loop, one frame at a time.
    """
    if runs < 1 or warmup < 0:
        raise InputError(f"benchmark needs runs >= 1 and warmup >= 0, found runs {runs}, warmup {warmup}")
    session = load(bundle, backend, threads=threads, window=runs)
    frame = np.random.default_rng(seed).random(session.input.shape, dtype=np.float32)
    if session.input.dtype != "float32" and session.input.scale is None:
        frame = np.zeros(session.input.shape, session.input.dtype)  # unquantized integer input: zeros
    out = session.empty_output()
    for _ in range(warmup):
        session.run(frame, out)
    session.reset_stats()
    steps: Any = range(runs)
    if show_progress:
        from edgekit.progress import progress

        steps = progress(steps, "bench", runs)
    start = time.perf_counter()
    for _ in steps:
        session.run(frame, out)
    wall = time.perf_counter() - start
    stats = session.stats()
    return {"bundle": str(bundle), "model": session.manifest.model, "target": session.manifest.target,
            "engines": [s["engine"] for s in session.info()["stages"]], "backends": list(session.backends),
            "runs": runs, "warmup": warmup, "threads": threads, **stats, "throughput_fps": runs / wall}

