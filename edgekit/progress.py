"""A one-line progress bar on stderr for long steps (calibration, conversion); no dependency."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], label: str, total: int, width: int = 30) -> Iterator[T]:
    """Yield `items`, redrawing '<label> [####    ] n/total  1.2s' on stderr as they pass."""
    start = time.monotonic()
    done, shown = 0, -1
    for item in items:
        yield item
        done += 1
        filled = width * done // max(total, 1)
        if filled == shown and done != total:
            continue
        shown = filled
        sys.stderr.write(f"\r{label} [{'#' * filled}{' ' * (width - filled)}] {done}/{total} "
                         f"{time.monotonic() - start:.1f}s")
        sys.stderr.flush()
    sys.stderr.write("\n")
