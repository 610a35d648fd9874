"""Run an INT8 patch schedule (MCUNetV2) on the device: numpy + one TFLite backend, never torch.

Each patch's input window is cut from the int8 image and run through its class model, which pads the
true image border itself; the output tile is written into one preallocated stage buffer; the rest model
then runs on the stage buffer. Artifacts and schedule come from `edgekit.convert.patch_artifacts`.
Backends: "litert" runs the shared `patched.tflite` (one weight copy) through its signatures;
"tflite-micro" runs the standalone per-class files, since TF Lite Micro invokes only subgraph 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.runtime.backends import BackendError, ModelTensor, TflmAdapter, litert_interpreter_class

SCHEDULE_VERSION = 1
Step = Callable[[np.ndarray], np.ndarray]


def _litert_steps(files: dict[str, bytes], schedule: dict, threads: int | None) -> tuple[list[Step], Step, Any]:
    """One LiteRT interpreter over the shared model; a signature runner per class and one for the rest."""
    try:
        interpreter = litert_interpreter_class()(model_content=files[schedule["shared_model"]], num_threads=threads)
        runners = [interpreter.get_signature_runner(c["signature"]) for c in schedule["classes"]]
        rest = interpreter.get_signature_runner(schedule["rest"]["signature"])
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"LiteRT cannot load {schedule['shared_model']} ({' '.join(str(exc).split())[:300]})") \
            from None
    steps = [lambda a, r=r: r(input=np.ascontiguousarray(a))["output"] for r in runners]
    return steps, lambda a: rest(input=a)["output"], interpreter


def _tflm_step(adapter: TflmAdapter) -> Step:
    def run(a: np.ndarray) -> np.ndarray:
        adapter.input_buffer[...] = a
        return adapter.invoke()

    return run


def schedule_files(schedule: dict, backend: str) -> list[str]:
    """The model files `backend` reads for `schedule`: the shared model (litert) or the standalone ones."""
    if backend == "litert":
        return [schedule["shared_model"]]
    return [c["model"] for c in schedule["classes"]] + [schedule["rest"]["model"]]


class PatchExecutor:
    """Runs frames patch by patch under `schedule` ({"kind": "patch", ...}) on `backend`."""

    def __init__(self, files: dict[str, bytes], schedule: dict, backend: str = "litert",
                 threads: int | None = None) -> None:
        if schedule.get("kind") != "patch" or schedule.get("version") != SCHEDULE_VERSION:
            raise BackendError(f"expected a patch schedule (kind 'patch', version {SCHEDULE_VERSION}), found kind "
                               f"{schedule.get('kind')!r} version {schedule.get('version')!r}")
        if backend not in ("litert", "tflite-micro"):
            raise BackendError(f"patch schedules run on 'litert' or 'tflite-micro', found {backend!r}")
        missing = [name for name in schedule_files(schedule, backend) if name not in files]
        if missing:
            raise BackendError(f"patch schedule on {backend}: model file {missing[0]!r} missing "
                               f"(given: {', '.join(sorted(files)) or 'none'})")
        self.schedule, self.backend = schedule, backend
        self.stage = np.zeros(schedule["stage"]["shape"], schedule["stage"]["dtype"])
        self.input_buffer = np.zeros(schedule["input"]["shape"], schedule["input"]["dtype"])
        self._adapters: list[TflmAdapter] = []
        if backend == "litert":
            self._classes, self._rest, self._interpreter = _litert_steps(files, schedule, threads)
        else:
            specs = [(c["model"], c["input"]["shape"], c["output"]["shape"]) for c in schedule["classes"]]
            specs.append((schedule["rest"]["model"], schedule["stage"]["shape"], schedule["output"]["shape"]))
            self._adapters = [TflmAdapter(files[name], tuple(i), tuple(o)) for name, i, o in specs]
            self._classes = [_tflm_step(a) for a in self._adapters[:-1]]
            self._rest = _tflm_step(self._adapters[-1])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The model's int8 input for a float NHWC frame (int8 frames pass as they are)."""
        info = self.schedule["input"]
        if tuple(x.shape) != tuple(info["shape"]):
            raise BackendError(f"patch executor: input shape {tuple(info['shape'])} (NHWC) expected, "
                               f"found {tuple(x.shape)}")
        if x.dtype == np.dtype(info["dtype"]) or info["scale"] is None:
            return x.astype(info["dtype"], copy=False)
        bounds = np.iinfo(info["dtype"])
        q = np.round(x / info["scale"]) + info["zero_point"]
        return np.clip(q, bounds.min, bounds.max).astype(info["dtype"])

    def invoke(self) -> np.ndarray:
        """Run the frame in `input_buffer`: every patch into the stage buffer, then the rest; raw output.

        With `input_buffer`, `model_tensors()` and `memory()` this is the backend-adapter surface of
        `edgekit.runtime.backends`, so a session can drive the schedule like any single model.
        """
        image = self.input_buffer
        for patch in self.schedule["patches"]:
            top, left, bottom, right = patch["window"]
            rows, cols = slice(patch["tile"][0], patch["tile"][2]), slice(patch["tile"][1], patch["tile"][3])
            self.stage[:, rows, cols] = self._classes[patch["class"]](image[:, top:bottom, left:right])
        return self._rest(self.stage)

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """One frame (float NHWC, quantized here, or int8) to the model's raw (int8) output."""
        self.input_buffer[...] = self.quantize(x)
        return self.invoke()

    def run(self, x: np.ndarray) -> np.ndarray:
        """One frame (float NHWC, quantized here, or int8) to the dequantized float32 output."""
        out, info = self.run_raw(x), self.schedule["output"]
        if info["scale"] is None:
            return out.astype(np.float32)
        return ((out.astype(np.int32) - info["zero_point"]) * info["scale"]).astype(np.float32)

    def model_tensors(self) -> tuple[ModelTensor, ModelTensor]:
        """The schedule's input (the whole image) and output, as the artifacts declare them."""
        def describe(info: dict, name: str) -> ModelTensor:
            return ModelTensor(name, tuple(info["shape"]), info["dtype"], info["scale"], info["zero_point"])

        return describe(self.schedule["input"], "input"), describe(self.schedule["output"], "output")

    def memory(self) -> dict[str, Any]:
        """Peak bytes (see `peak_bytes`), the stage buffer and, under tflite-micro, each model's arena."""
        report: dict[str, Any] = {"stage_bytes": self.stage.nbytes}
        if self._adapters:
            arenas = [a.memory()["bytes"] for a in self._adapters]
            report.update(class_arena_bytes=arenas[:-1], rest_arena_bytes=arenas[-1],
                          kind="patch schedule: largest class arena + stage buffer, or the rest arena (TFLM)",
                          bytes=max(max(arenas[:-1]) + self.stage.nbytes, arenas[-1]))
        else:
            window = max((p["window"][2] - p["window"][0]) * (p["window"][3] - p["window"][1])
                         for p in self.schedule["patches"]) * self.input_buffer.shape[3]
            tile = max((p["tile"][2] - p["tile"][0]) * (p["tile"][3] - p["tile"][1])
                       for p in self.schedule["patches"]) * self.stage.shape[3]
            report.update(kind="patch schedule: stage buffer + largest window and tile (LiteRT reports no arena)",
                          bytes=self.stage.nbytes + (window + tile) * self.stage.itemsize)
        return report

    def describe(self) -> str:
        """What runs: the schedule's size and the backend."""
        return (f"patch schedule ({len(self.schedule['patches'])} patches, {len(self.schedule['classes'])} "
                f"border classes, {self.schedule['grid']}x{self.schedule['grid']} grid) on {self.backend}")

    @property
    def peak_bytes(self) -> int:
        """Peak SRAM of the schedule. tflite-micro: max(largest class arena + stage buffer, rest arena),
        the rest arena holding the stage buffer as its input tensor (arenas as TFLM measures them, each
        with its persistent tail). litert reports no arena: the stage buffer, largest window and tile."""
        return int(self.memory()["bytes"])
