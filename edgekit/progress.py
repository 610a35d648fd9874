"""A one-line progress bar on stderr for long steps (calibration, conversion); no dependency.

On a terminal the bar redraws in place with an ETA. Into a file or pipe it never writes '\r': a step that runs
long gets a line per 10% done, at most one every LOG_EVERY_S seconds, and every step its finished line, so a
short step logs one line. `set_quiet(True)` (the CLI's `--quiet`, and always with `--json`) silences every bar;
`set_stream` sends bars elsewhere than sys.stderr (the CLI: the real stderr while it captures other output).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")
LOG_EVERY_S = 10.0
_quiet = False
_stream: TextIO | None = None


def set_quiet(quiet: bool) -> None:
    """Silence (True) or restore (False) every progress bar of this process."""
    global _quiet
    _quiet = quiet


def set_stream(stream: TextIO | None) -> None:
    """Draw every bar on `stream` (None: on sys.stderr as it is when the bar starts)."""
    global _stream
    _stream = stream


def progress(items: Iterable[T], label: str, total: int, width: int = 30) -> Iterator[T]:
    """Yield `items`, showing '<label> [####    ] n/total 1.2s ETA 3.6s' on stderr as they pass."""
    if _quiet:
        yield from items
        return
    out = _stream or sys.stderr
    redraw = out.isatty()
    start = logged_at = time.monotonic()
    done, shown, logged = 0, -1, 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if redraw:
            filled = width * done // max(total, 1)
            if filled != shown or done == total:
                shown = filled
                out.write(f"\r{_line(label, width, done, total, now - start)}\x1b[K")
                out.flush()
        elif done < total and 10 * done // total > logged and now - logged_at >= LOG_EVERY_S:
            logged, logged_at = 10 * done // total, now
            out.write(_line(label, width, done, total, now - start) + "\n")
            out.flush()
    out.write("\n" if redraw else _line(label, width, done, total, time.monotonic() - start) + "\n")
    out.flush()


def _line(label: str, width: int, done: int, total: int, elapsed: float) -> str:
    """'<label> [###   ] done/total 1.2s', with ' ETA 3.6s' (at the rate so far) while the step is unfinished."""
    filled = min(width, width * done // max(total, 1))
    eta = f" ETA {elapsed * (total - done) / done:.1f}s" if 0 < done < total else ""
    return f"{label} [{'#' * filled}{' ' * (width - filled)}] {done}/{total} {elapsed:.1f}s{eta}"
