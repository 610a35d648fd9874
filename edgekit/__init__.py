"""edgekit: take a PyTorch model to edge hardware (Raspberry Pi, Jetson, microcontrollers)."""

from edgekit.errors import (
    BackendError,
    BrokerError,
    BundleError,
    CalibrationError,
    ConversionError,
    EdgekitError,
    FrameError,
    InputError,
    ModelLoadError,
    OffloadError,
    PayloadTooLargeError,
    PlanError,
    ProfileError,
    SplitError,
    TargetMismatchError,
    UnsupportedOpError,
)

__version__ = "0.2.0"

__all__ = [
    "BackendError", "BrokerError", "BundleError", "CalibrationError", "ConversionError", "EdgekitError",
    "FrameError", "InputError", "ModelLoadError", "OffloadError", "PayloadTooLargeError", "PlanError",
    "ProfileError", "SplitError", "TargetMismatchError", "UnsupportedOpError", "__version__",
]
