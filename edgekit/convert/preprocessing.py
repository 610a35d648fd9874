"""What compile takes from the model itself: how an image becomes its input, and its class labels.

A registry model carries a `pretrained_cfg` (edgekit.models.ModelCfg, timm's idea); its mean, std and labels
are compile's defaults. Any other model gets [0, 1] pixels unnormalised and no labels. Flags override.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import CalibrationError
from edgekit.formats.bundle import InputPreprocessing
from edgekit.models import ModelCfg

PIXEL_SCALE = 1 / 255  # 8-bit pixels to [0, 1], where mean and std apply


def image_input(input_shape: tuple[int, ...], layout: str = "NCHW", mean: tuple[float, ...] = (0.0,),
                std: tuple[float, ...] = (1.0,)) -> InputPreprocessing:
    """How an 8-bit image becomes the N,C,H,W `input_shape`: scaled to [0, 1], then (x - mean) / std."""
    _, channels, height, width = input_shape
    for flag, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise CalibrationError(f"{flag} has {len(values)} values; the model's input has {channels} channels "
                                   "(give 1 value or one per channel)")
    if any(s <= 0 for s in std):
        raise CalibrationError(f"--std values must be > 0, found {', '.join(map(str, std))}")
    return InputPreprocessing(layout, channels, height, width, PIXEL_SCALE, tuple(mean), tuple(std))


def to_nchw(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A 4-D shape laid out `layout` (NCHW or NHWC) in N,C,H,W order."""
    return (shape[0], shape[3], shape[1], shape[2]) if layout == "NHWC" else tuple(shape)


def model_cfg(model: Any) -> ModelCfg | None:
    """The cfg the registry attached to `model`, or None for a model built elsewhere."""
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg if isinstance(cfg, ModelCfg) else None


def input_preprocessing(model: Any, layout: str, mean: tuple[float, ...] | None = None,
                        std: tuple[float, ...] | None = None,
                        input_shape: tuple[int, ...] | None = None) -> InputPreprocessing | None:
    """`model`'s image preprocessing laid out `layout`: mean/std as given, else its cfg's, else 0 and 1.

    The input is `input_shape` in N,C,H,W order, by default the torch model's own; None when it is not 4-D.
    """
    shape = tuple(input_shape or model.input_shape)
    if len(shape) != 4:
        return None
    cfg = model_cfg(model)
    return image_input(shape, layout, mean or (cfg.mean if cfg else (0.0,)), std or (cfg.std if cfg else (1.0,)))


def model_labels(model: Any) -> tuple[str, ...] | None:
    """The class labels of `model`'s cfg, None when it has none."""
    cfg = model_cfg(model)
    return cfg.labels if cfg else None
