"""The INT8 recipe as a small dataclass, with presets derived from the target profile."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.formats.bundle import QuantRecipe
from edgekit.targets import Device

FORMATS = ("tflite", "onnx")
# Activation calibration per format, the default first: TFLite through PT2E observers (histogram, litert-torch's
# choice; minmax calibrates in about half its time: 1.5 vs 2.7 s for 48 MobileNetV2 @224 samples), ONNX through
# onnxruntime.quantization.
CALIBRATION_METHODS = {"tflite": ("histogram", "minmax"), "onnx": ("minmax", "entropy", "percentile")}
DATA_SAMPLES = 200  # the default cap on calibration samples read from data
DATA_FREE_SAMPLES = 32  # the default count of synthesised samples: each one is optimised, so each costs time


@dataclass(frozen=True)
class Int8Config:
    """How to quantize: output format, weight granularity, I/O types, calibration method and sample cap (None:
    DATA_SAMPLES from data, DATA_FREE_SAMPLES synthesised; a number given is honoured by both)."""

    format: str = "tflite"
    per_channel: bool = True
    int8_io: bool = True  # tflite: int8 input and output tensors (what TFLM and Pi deployments want)
    channels_last_io: bool = False  # tflite: NHWC input (and 4-D outputs), as cameras deliver frames
    calibration: str | None = None  # CALIBRATION_METHODS of the format; None: its default
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise EdgekitError(f"Int8Config.format must be one of {', '.join(FORMATS)}, found {self.format!r}")
        methods = CALIBRATION_METHODS[self.format]
        if self.calibration is not None and self.calibration not in methods:
            raise EdgekitError(f"Int8Config.calibration for {self.format} must be one of {', '.join(methods)}, "
                               f"found {self.calibration!r}")
        if self.channels_last_io and self.format != "tflite":
            raise EdgekitError("Int8Config.channels_last_io applies to tflite only (ONNX models keep NCHW)")
        if self.max_samples is not None and self.max_samples < 1:
            raise EdgekitError(f"Int8Config.max_samples must be >= 1, found {self.max_samples}")

    def sample_cap(self, data_free: bool) -> int:
        """How many calibration samples to use at most: `max_samples`, else the default for the source."""
        if self.max_samples is not None:
            return self.max_samples
        return DATA_FREE_SAMPLES if data_free else DATA_SAMPLES

    @property
    def method(self) -> str:
        """The activation calibration method: `calibration`, else the format's default."""
        return self.calibration or CALIBRATION_METHODS[self.format][0]

    @property
    def io_layout(self) -> str:
        """Axis order of the model's 4-D input (and outputs): NHWC with channels_last_io, else NCHW."""
        return "NHWC" if self.channels_last_io else "NCHW"

    def recipe(self, samples: int, data_free: bool, io_layout: str | None = None,
               method: str | None = None) -> QuantRecipe:
        """What the manifest records of a model this config quantized from `samples` calibration inputs.

        `method` overrides the calibration method recorded (a float .tflite file goes through ai-edge-quantizer's
        min/max whatever the config says); ONNX QDQ models keep float32 I/O. `io_layout` overrides the config's
        for a model whose input layout comes from elsewhere (a split tail takes the head's).
        """
        tflite = self.format == "tflite"
        return QuantRecipe(self.format, self.per_channel, "int8" if tflite and self.int8_io else "float32",
                           io_layout or self.io_layout, method or self.method, self.sample_cap(data_free), samples,
                           data_free)

    @classmethod
    def for_target(cls, device: Device, **overrides: Any) -> Int8Config:
        """MCU: full-integer TFLite with NHWC I/O; Pi-class: full-integer TFLite; Jetson, servers: ONNX QDQ."""
        uses_onnx = device.device_class in ("gpu-sbc", "server") or "litert" not in device.runtimes and \
            "tflite-micro" not in device.runtimes and "tflite-runtime" not in device.runtimes
        base = cls(format="onnx" if uses_onnx else "tflite", channels_last_io=device.device_class == "mcu")
        return replace(base, **overrides)
