"""The frames and float model `cost.codec` measures compressed inputs with, for `plan split` and `compile --split`.

Held-out data (`--eval`) is preferred; without it the calibration data is used, and the figures say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.calibration import load_calibration, load_labelled
from edgekit.convert.preprocessing import input_preprocessing
from edgekit.convert.torch_model import as_torch_model, numpy_runner
from edgekit.cost.codec import DEFAULT_CODECS, CodecFigures, measure_codecs
from edgekit.errors import SplitError
from edgekit.targets import Device

MAX_FRAMES = 256  # enough for a top-1 drop to the point, few enough to encode in seconds


def codec_figures(model: Any, device: Device, server: Device, calibration: str | Path | None = None,
                  evaluation: str | Path | None = None, codecs: tuple[tuple[str, int], ...] = DEFAULT_CODECS,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                  host_rate: float | None = None,
                  input_shape: tuple[int, ...] | None = None) -> tuple[CodecFigures, ...]:
    """Each codec measured on up to MAX_FRAMES frames of `evaluation` (else `calibration`) through the torch
    `model` in float (the server's full model), its input `input_shape` (default: the model's own)."""
    if not (calibration or evaluation):
        raise SplitError("measuring compressed inputs needs frames: pass --eval (held-out, preferred) or --calib")
    torch_model = as_torch_model(model, input_shape, calibration or evaluation)
    shape = tuple(torch_model.input_shape)
    prep = input_preprocessing(torch_model, "NCHW", mean, std)
    if prep is None:
        raise SplitError(f"a compressed input needs a 4-D image input, the model takes {shape}")
    if evaluation:
        frames, data = load_labelled(evaluation, shape, preprocessing=prep)[0], "held-out"
    else:
        assert calibration is not None
        frames, data = load_calibration(calibration, shape, MAX_FRAMES, prep), "calibration"
    run = numpy_runner(torch_model)

    def first_output(x: np.ndarray) -> np.ndarray:
        return np.concatenate([next(iter(run(x[i:i + 32]).values())) for i in range(0, len(x), 32)])

    return measure_codecs(first_output, frames[:MAX_FRAMES], prep, device, server, codecs, data, host_rate)
