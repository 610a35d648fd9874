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


class InputError(EdgekitError):
    """A frame the model cannot take: wrong shape or dtype, NaN or infinity, an unreadable image."""


class TargetMismatchError(EdgekitError):
    """The bundle was built for another target than the one this device expects."""


class BackendError(EdgekitError):
    """A backend is unknown, not installed, cannot run the stage's model format, or refuses the model."""


class PlanError(EdgekitError):
    """A plan was asked for that cannot exist (no valid stage, bad grid)."""


class SplitError(EdgekitError):
    """No valid split exists, or a requested one is not a valid cut."""


class FrameError(EdgekitError):
    """A frame that cannot be decoded: truncated, corrupt, oversized or of an unknown version."""


class SignatureError(FrameError):
    """A frame that should carry the fleet key's HMAC does not, or carries a wrong one: forged or another fleet's."""


class ChunkError(FrameError):
    """A chunk of a big frame that is refused before it is buffered; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PayloadTooLargeError(OffloadError):
    """A frame is larger than the broker accepts (its Maximum Packet Size): pick a later cut or compress."""


class BrokerError(OffloadError):
    """The broker could not be started: mosquitto missing, bad config, port taken."""


class IntegrationError(EdgekitError):
    """A drone or robot link cannot be set up: its library is missing, or the endpoint is malformed."""
