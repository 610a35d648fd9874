"""edgekit: take a PyTorch model to edge hardware (Raspberry Pi, Jetson, microcontrollers)."""

from edgekit.errors import (
    CalibrationError,
    ConversionError,
    EdgekitError,
    ModelLoadError,
    ProfileError,
    UnsupportedOpError,
)

__version__ = "0.1.0"

__all__ = ["CalibrationError", "ConversionError", "EdgekitError", "ModelLoadError", "ProfileError",
           "UnsupportedOpError", "__version__"]
