"""One exception hierarchy: every message names the file/layer/field, what was expected and what was found."""


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose; the CLI prints these as one line."""


class ProfileError(EdgekitError):
    """A target or link profile is missing, malformed or inconsistent."""


class ModelLoadError(EdgekitError):
    """A model could not be imported: bad module path, corrupt file, wrong input shape."""


class UnsupportedOpError(EdgekitError):
    """The model uses an operator edgekit cannot analyse yet."""


class CalibrationError(EdgekitError):
    """Calibration or evaluation data is missing, unreadable, or of the wrong shape or dtype."""


class ConversionError(EdgekitError):
    """A model could not be exported or quantized, or the result failed its fidelity check."""


class BundleError(EdgekitError):
    """A bundle is missing, malformed, unsafe or does not verify against its manifest."""


class OffloadError(EdgekitError):
    """Offloading failed: the broker refused or is unreachable, a payload is too large, or no answer came."""
