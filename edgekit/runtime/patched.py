"""Run an INT8 patch schedule (MCUNetV2) on the device: numpy + one TFLite backend, never torch.

Under tflite-micro (as on the microcontroller), for each patch the executor writes the patch's window of the int8
image into the stage model's input (the schedule's fill value where the window lies beyond the image), sets the
patch's border masks, runs the stage model and copies the tile it computed into one preallocated stage buffer;
the rest model then runs on the stage buffer and gives every output the model has (a detector's heads, say).
One stage model serves every patch, so its weights are stored once. Under LiteRT the unrolled model computes
every patch, one after the other, in one call on the whole image and gives the stage buffer; the rest model
follows as before. It computes the same int8 values with every op delegated to XNNPACK, no Python per patch,
and no border MACs beyond the planner's (`masked=True` runs the stage model patch by patch on LiteRT too, for
comparison: BENCHMARKS.md, tools/bench_patch.py --speed). Artifacts and schedule come
from `edgekit.convert.patch_artifacts`; the schedule is an `edgekit.formats.plans.PatchSchedule`, its
geometry checked when it was read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.errors import BackendError
from edgekit.formats.plans import Patch, PatchSchedule, Region
from edgekit.formats.quant import dequantize, quantization, quantize
from edgekit.runtime.backends import LiteRTAdapter, ModelTensor, Signature, TflmAdapter

Slices = tuple[slice, slice]


def _copy_plan(window: Region, height: int, width: int) -> tuple[Slices, Slices]:
    """(image rows/cols, window-buffer rows/cols) of the part of `window` (top, left, bottom, right) inside
    an image of height x width."""
    top, left, bottom, right = window
    rows, cols = (max(top, 0), min(bottom, height)), (max(left, 0), min(right, width))
    return ((slice(*rows), slice(*cols)),
            (slice(rows[0] - top, rows[1] - top), slice(cols[0] - left, cols[1] - left)))


def _masks(schedule: PatchSchedule, patch: Patch) -> list[np.ndarray]:
    """The patch's mask inputs: per mask a rows and a cols bool vector, True inside the tensor."""
    out = []
    for mask, (top, left, bottom, right) in zip(schedule.masks, patch.valid):
        height, width = mask.shape
        rows, cols = np.zeros((1, height, 1, 1), bool), np.zeros((1, 1, width, 1), bool)
        rows[0, top:bottom], cols[0, :, left:right] = True, True
        out += [rows, cols]
    return out


class PatchExecutor:
    """Runs frames under `schedule` (checked when it was read) on `backend`: on LiteRT the unrolled model (every
    patch in one call), or with `masked` the stage model patch by patch, as tflite-micro always runs it."""

    def __init__(self, files: dict[str, bytes], schedule: PatchSchedule, backend: str = "litert",
                 threads: int | None = None, masked: bool = False) -> None:
        adapters = {"litert": LiteRTAdapter, "tflite-micro": TflmAdapter}
        if backend not in adapters:
            raise BackendError(f"patch schedules run on 'litert' or 'tflite-micro', found {backend!r}")
        self.unrolled = backend == "litert" and not masked
        needed = (schedule.unrolled_model, schedule.rest_model) if self.unrolled else schedule.mcu_files
        missing = [name for name in needed if name not in files]
        if missing:
            raise BackendError(f"patch schedule: model file {missing[0]!r} missing "
                               f"(given: {', '.join(sorted(files)) or 'none'})")
        self.schedule, self.backend = schedule, backend
        self._rest = adapters[backend](files[schedule.rest_model], schedule.stage.shape, None, threads)
        self.stage = self._rest.input_buffer  # the tiles land in the rest model's input: no copy per frame
        if self.unrolled:
            self._whole = LiteRTAdapter(files[schedule.unrolled_model], schedule.input.shape, None, threads)
            self.input_buffer = self._whole.input_buffer
            image, stage = self._whole.model_tensors()
            if image.shape != schedule.input.shape or [t.shape for t in stage] != [schedule.stage.shape]:
                raise BackendError(f"{schedule.unrolled_model}: its input and output do not match the schedule's "
                                   "image and stage buffer")
        else:
            self.input_buffer = np.zeros(schedule.input.shape, schedule.input.dtype)
            self._open_stage(adapters[backend](files[schedule.stage_model], schedule.window.shape, None, threads,
                                               side_inputs=2 * len(schedule.masks)))
        self._outputs = self._rest.model_tensors()[1]  # every output of the model, as the schedule lists them
        found = [(t.dtype, t.shape) for t in self._outputs]
        listed = [(o.dtype, o.shape) for o in schedule.outputs]
        if found != listed:
            raise BackendError(f"{schedule.rest_model}: its outputs are {found}, the schedule's {listed}")

    def _open_stage(self, stage: LiteRTAdapter | TflmAdapter) -> None:
        """Check the stage model against the schedule's window, masks and tile; plan each patch's copies."""
        schedule = self.schedule
        shapes = [tuple(b.shape) for b in stage.side_buffers]
        declared = [s for m in schedule.masks for s in ((1, m.shape[0], 1, 1), (1, 1, m.shape[1], 1))]
        window, tiles = stage.model_tensors()
        if shapes != declared or tuple(stage.input_buffer.shape) != window.shape or \
                [t.shape for t in tiles] != [schedule.tile.shape]:
            raise BackendError(f"{schedule.stage_model}: its inputs and output do not match the schedule's window, "
                               "masks and tile")
        self._stage = stage
        height, width = self.input_buffer.shape[1:3]
        self._patches = [(*_copy_plan(p.window, height, width), _masks(schedule, p),
                          (slice(p.tile[0], p.tile[2]), slice(p.tile[1], p.tile[3])),
                          (slice(0, p.tile[2] - p.tile[0]), slice(0, p.tile[3] - p.tile[1])))
                         for p in schedule.patches]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The model's int8 input for a float NHWC frame (int8 frames pass as they are)."""
        info = self.schedule.input
        if tuple(x.shape) != info.shape:
            raise BackendError(f"patch executor: input shape {info.shape} (NHWC) expected, found {tuple(x.shape)}")
        params = quantization(info)
        if x.dtype == np.dtype(info.dtype) or params is None:
            return x.astype(info.dtype, copy=False)
        return quantize(x, *params, info.dtype)

    def invoke(self) -> tuple[np.ndarray, ...]:
        """Run the frame in `input_buffer`: every patch into the stage buffer, then the rest; raw outputs.

        With `input_buffer`, `model_tensors()` and `memory()` this is the backend-adapter surface of
        `edgekit.runtime.backends`, so a session can drive the schedule like any single model.
        """
        if self.unrolled:
            self.stage[...] = self._whole.invoke()[0]
        else:
            self._run_patches()
        return self._rest.invoke()

    def _run_patches(self) -> None:
        """The stage model once per patch: window and masks in, its tile into the stage buffer."""
        image, window, fill = self.input_buffer, self._stage.input_buffer, self.schedule.window_fill
        for (rows, cols), (w_rows, w_cols), masks, (t_rows, t_cols), (o_rows, o_cols) in self._patches:
            window[...] = fill
            window[:, w_rows, w_cols] = image[:, rows, cols]
            for buffer, mask in zip(self._stage.side_buffers, masks):
                buffer[...] = mask
            self.stage[:, t_rows, t_cols] = self._stage.invoke()[0][:, o_rows, o_cols]

    def run_raw(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One frame (float NHWC, quantized here, or int8) to the model's raw (int8) outputs."""
        self.input_buffer[...] = self.quantize(x)
        return self.invoke()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One frame (float NHWC, quantized here, or int8) to the dequantized float32 outputs."""
        return tuple(out.astype(np.float32) if params is None else dequantize(out, *params)
                     for out, params in zip(self.run_raw(x), map(quantization, self._outputs)))

    def model_tensors(self) -> Signature:
        """The schedule's input (the whole image), and every output as the rest model declares it."""
        image = self.schedule.input
        return ModelTensor("input", image.shape, image.dtype, image.scale, image.zero_point), self._outputs

    def memory(self) -> dict[str, Any]:
        """Peak bytes (see `peak_bytes`), the stage buffer and, under tflite-micro, both models' arenas."""
        report: dict[str, Any] = {"stage_bytes": self.stage.nbytes}
        if self.backend == "tflite-micro":
            stage, rest = self._stage.memory()["bytes"], self._rest.memory()["bytes"]
            report.update(stage_arena_bytes=stage, rest_arena_bytes=rest,
                          kind="patch schedule: stage-model arena + stage buffer, or the rest arena (TFLM)",
                          bytes=max(stage + self.stage.nbytes, rest))
        elif self.unrolled:
            report.update(kind="patch schedule, unrolled: stage buffer + the whole image (LiteRT reports no arena)",
                          bytes=self.stage.nbytes + self.input_buffer.nbytes)
        else:
            report.update(kind="patch schedule: stage buffer + window and tile (LiteRT reports no arena)",
                          bytes=self.stage.nbytes + self._stage.input_buffer.nbytes
                          + int(np.prod(self.schedule.tile.shape)) * self.stage.itemsize)
        return report

    def describe(self) -> str:
        """What runs: the schedule's size and the backend."""
        schedule = self.schedule
        how = "unrolled: every patch in one call" if self.unrolled else f"{len(schedule.masks)} border masks"
        return (f"patch schedule ({len(schedule.patches)} patches, {schedule.grid}x{schedule.grid} grid, "
                f"{how}) on {self.backend}")

    @property
    def peak_bytes(self) -> int:
        """Peak SRAM of the schedule. tflite-micro: max(stage-model arena + stage buffer, rest arena), the
        rest arena holding the stage buffer as its input tensor (at offset 0, by its offline plan; arenas as
        TFLM measures them, each with its persistent tail). litert reports no arena: the stage buffer and
        the whole image (unrolled), or the stage buffer, window and tile (masked)."""
        return int(self.memory()["bytes"])
