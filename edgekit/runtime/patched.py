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

from edgekit.runtime.backends import BackendError, TflmAdapter, litert_interpreter_class

SCHEDULE_VERSION = 1
Step = Callable[[np.ndarray], np.ndarray]


def _litert_steps(files: dict[str, bytes], schedule: dict, threads: int | None) -> tuple[list[Step], Step, Any]:
    interpreter = litert_interpreter_class()(model_content=files[schedule["shared_model"]], num_threads=threads)
    runners = [interpreter.get_signature_runner(c["signature"]) for c in schedule["classes"]]
    rest = interpreter.get_signature_runner(schedule["rest"]["signature"])
    steps = [lambda a, r=r: r(input=np.ascontiguousarray(a))["output"] for r in runners]
    return steps, lambda a: rest(input=a)["output"], interpreter


def _tflm_step(adapter: TflmAdapter) -> Step:
    def run(a: np.ndarray) -> np.ndarray:
        adapter.input_buffer[...] = a
        return adapter.invoke()

    return run


class PatchExecutor:
    """Runs frames patch by patch under `schedule` ({"kind": "patch", ...}) on `backend`."""

    def __init__(self, files: dict[str, bytes], schedule: dict, backend: str = "litert",
                 threads: int | None = None) -> None:
        if schedule.get("kind") != "patch" or schedule.get("version") != SCHEDULE_VERSION:
            raise BackendError(f"expected a patch schedule (kind 'patch', version {SCHEDULE_VERSION}), found kind "
                               f"{schedule.get('kind')!r} version {schedule.get('version')!r}")
        needed = [schedule["shared_model"]] if backend == "litert" else \
            [c["model"] for c in schedule["classes"]] + [schedule["rest"]["model"]]
        missing = [name for name in needed if name not in files]
        if missing:
            raise BackendError(f"patch schedule on {backend}: model file {missing[0]!r} missing "
                               f"(given: {', '.join(sorted(files)) or 'none'})")
        self.schedule, self.backend = schedule, backend
        self.stage = np.zeros(schedule["stage"]["shape"], schedule["stage"]["dtype"])
        self._adapters: list[TflmAdapter] = []
        if backend == "litert":
            self._classes, self._rest, self._interpreter = _litert_steps(files, schedule, threads)
        elif backend == "tflite-micro":
            specs = [(c["model"], c["input"]["shape"], c["output"]["shape"]) for c in schedule["classes"]]
            specs.append((schedule["rest"]["model"], schedule["stage"]["shape"], schedule["output"]["shape"]))
            self._adapters = [TflmAdapter(files[name], tuple(i), tuple(o)) for name, i, o in specs]
            self._classes = [_tflm_step(a) for a in self._adapters[:-1]]
            self._rest = _tflm_step(self._adapters[-1])
        else:
            raise BackendError(f"patch schedules run on 'litert' or 'tflite-micro', found {backend!r}")

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

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """One frame to the model's raw (int8) output: every patch into the stage buffer, then the rest."""
        q = self.quantize(x)
        for patch in self.schedule["patches"]:
            top, left, bottom, right = patch["window"]
            rows, cols = slice(patch["tile"][0], patch["tile"][2]), slice(patch["tile"][1], patch["tile"][3])
            self.stage[:, rows, cols] = self._classes[patch["class"]](q[:, top:bottom, left:right])
        return self._rest(self.stage)

    def run(self, x: np.ndarray) -> np.ndarray:
        """One frame (float NHWC, quantized here, or int8) to the dequantized float32 output."""
        out, info = self.run_raw(x), self.schedule["output"]
        if info["scale"] is None:
            return out.astype(np.float32)
        return ((out.astype(np.int32) - info["zero_point"]) * info["scale"]).astype(np.float32)

    def memory(self) -> dict[str, Any]:
        """Stage buffer bytes and, under tflite-micro, each model's measured arena."""
        report: dict[str, Any] = {"stage_bytes": self.stage.nbytes}
        if self._adapters:
            arenas = [a.memory()["bytes"] for a in self._adapters]
            report.update(class_arena_bytes=arenas[:-1], rest_arena_bytes=arenas[-1])
        return report

    @property
    def peak_bytes(self) -> int:
        """Peak SRAM of the schedule: the largest class arena + the stage buffer, or the rest arena (which
        holds the stage buffer as its input tensor), whichever is larger. tflite-micro: measured arenas.
        litert reports no arena: the bytes this executor itself holds (stage, largest window and tile)."""
        memory = self.memory()
        if "rest_arena_bytes" in memory:
            return max(max(memory["class_arena_bytes"]) + memory["stage_bytes"], memory["rest_arena_bytes"])
        itemsize = self.stage.itemsize
        window = max((p["window"][2] - p["window"][0]) * (p["window"][3] - p["window"][1])
                     for p in self.schedule["patches"]) * self.schedule["input"]["shape"][3]
        tile = max((p["tile"][2] - p["tile"][0]) * (p["tile"][3] - p["tile"][1])
                   for p in self.schedule["patches"]) * self.schedule["stage"]["shape"][3]
        return memory["stage_bytes"] + (window + tile) * itemsize
