"""How many threads the host's conversion work runs torch on: a bounded count, so a busy CPU slows a compile in
proportion instead of 15-150x.

Torch's intra-op pool defaults to one thread per core. When other processes hold those cores, each of the many
small ops of a calibration or fidelity pass waits for the slowest of its threads: the same calibration took 61 s
with the default and 4.2 s with one thread. Calibration forward passes, data-free synthesis and the float side of
the fidelity check run inside `bounded_threads`; the LiteRT and ONNX Runtime models the convert steps open run on
one thread already (`runtime.backends.open_model`), while the device runtime keeps each backend's own default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

CONVERT_THREADS = 1  # batch-1 passes and small batches gain nothing from more threads and lose much under load


@contextlib.contextmanager
def bounded_threads(threads: int = CONVERT_THREADS) -> Iterator[int]:
    """Torch on at most `threads` intra-op threads inside the block (yields the count); the caller's setting is
    restored afterwards, also on an exception."""
    import torch

    saved = torch.get_num_threads()
    bounded = max(1, min(saved, threads))
    torch.set_num_threads(bounded)
    try:
        yield bounded
    finally:
        torch.set_num_threads(saved)
