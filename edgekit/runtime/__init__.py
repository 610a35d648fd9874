"""The device side: load a verified bundle and run frames with numpy and one backend; never imports torch.

    from edgekit.runtime import load
    session = load("digits.ekb", expected_target="rpi4")
    scores = session.run(frame)          # or session.run_image("digit.png")
    session.stats()                      # p50/p90/p99 ms, peak RSS, backend memory
"""

from edgekit.errors import BackendError, InputError, TargetMismatchError
from edgekit.runtime.backends import BACKENDS, choose_providers
from edgekit.runtime.session import Session, load, peak_rss_bytes

__all__ = ["BACKENDS", "BackendError", "InputError", "Session", "TargetMismatchError", "choose_providers", "load",
           "peak_rss_bytes"]
