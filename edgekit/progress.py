"""A one-line progress bar on stderr for long steps (calibration, conversion); no dependency.

On a terminal the bar redraws in place; into a file or pipe only the finished line is written, so logs get one
line per step. `set_quiet(True)` (the CLI's `--quiet`, and always with `--json`) silences every bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (True) or restore (False) every progress bar of this process."""
    global _quiet
    _quiet = quiet


def progress(items: Iterable[T], label: str, total: int, width: int = 30) -> Iterator[T]:
    """Yield `items`, showing '<label> [####    ] n/total  1.2s' on stderr as they pass."""
    if _quiet:
        yield from items
        return
    redraw = sys.stderr.isatty()
    start = time.monotonic()
    done, shown = 0, -1
    for item in items:
        yield item
        done += 1
        filled = width * done // max(total, 1)
        if not redraw or (filled == shown and done != total):
            continue
        shown = filled
        sys.stderr.write(f"\r{_line(label, filled, width, done, total, start)}")
        sys.stderr.flush()
    sys.stderr.write("\n" if redraw else _line(label, width * done // max(total, 1), width, done, total, start) + "\n")


def _line(label: str, filled: int, width: int, done: int, total: int, start: float) -> str:
    return f"{label} [{'#' * filled}{' ' * (width - filled)}] {done}/{total} {time.monotonic() - start:.1f}s"
