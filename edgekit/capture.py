"""Other libraries' output kept off the user's screen: the CLI runs each command inside `Captured`.

Converters, exporters and C++ runtimes write to file descriptors 1 and 2 (C code, Python logging, warnings,
converter steps). While `Captured` holds, both descriptors point at a temporary file (or, with `show`, at
stderr, so stdout stays edgekit's), and edgekit's own output goes to the real streams: the report through
`user_stdout()`, progress bars, the `edgekit` loggers and warnings raised by edgekit's code through
`user_stderr()`. When the block raises, the captured text is written to stderr. Nested fd-level captures
(convert.mcu reading TFLM's allocation report) keep working: they redirect whatever fd 2 is at the time.
Importing this module changes nothing; only the CLI enters `Captured`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import TextIO

from edgekit import progress

PACKAGE = Path(__file__).resolve().parent
_LIBC = ctypes.CDLL(None) if os.name == "posix" else None  # the C library this process runs with (no side effect)
_user: tuple[TextIO, TextIO] | None = None


def user_stdout() -> TextIO:
    """Where edgekit's report goes: the real stdout, also while `Captured` holds file descriptor 1."""
    return _user[0] if _user else sys.stdout


def user_stderr() -> TextIO:
    """Where edgekit's progress and messages go: the real stderr, also while `Captured` holds descriptor 2."""
    return _user[1] if _user else sys.stderr


class Captured:
    """Capture file descriptors 1 and 2 for the block: kept in `text`, and written to stderr if the block raises
    (a broken pipe aside); with `show`, both go to stderr as they come (the CLI's --verbose)."""

    text = ""

    def __init__(self, show: bool = False) -> None:
        self.show = show

    def __enter__(self) -> Captured:
        _flush()
        self._outer = _user
        self._saved = os.dup(1), os.dup(2)
        self._opened: list[TextIO] = []
        user = self._user_stream(sys.stdout, 1), self._user_stream(sys.stderr, 2)
        self._sink = tempfile.TemporaryFile()
        target = self._saved[1] if self.show else self._sink.fileno()
        os.dup2(target, 1)
        os.dup2(target, 2)
        self._use(user)
        self._handler = logging.StreamHandler(user[1])
        logging.getLogger("edgekit").addHandler(self._handler)
        self._warnings = contextlib.ExitStack()
        self._warnings.enter_context(warnings.catch_warnings())
        warnings.showwarning = _show_warning
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._warnings.close()
        logging.getLogger("edgekit").removeHandler(self._handler)
        _flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._use(self._outer)
        for stream in self._opened:
            try:
                stream.close()
            except BrokenPipeError:  # the reader went away (`| head`); the CLI ends quietly
                pass
        self._sink.seek(0)
        self.text = self._sink.read().decode(errors="replace")
        self._sink.close()
        if kind is not None and not issubclass(kind, BrokenPipeError) and self.text:
            sys.stderr.write(self.text if self.text.endswith("\n") else self.text + "\n")
            sys.stderr.flush()

    def _user_stream(self, stream: TextIO, fd: int) -> TextIO:
        """`stream` itself, or, when it writes to descriptor `fd` (about to be captured), a copy on that fd's
        current target."""
        try:
            if stream.fileno() != fd:
                return stream
        except (AttributeError, OSError, ValueError):  # an in-memory stream (pytest's, a notebook's): not on fd
            return stream
        copy = open(os.dup(fd), "w", buffering=1, encoding=stream.encoding, errors=stream.errors)  # noqa: SIM115
        self._opened.append(copy)
        return copy

    @staticmethod
    def _use(user: tuple[TextIO, TextIO] | None) -> None:
        global _user
        _user = user
        progress.set_stream(user[1] if user else None)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings edgekit's code raises reach the user as 'edgekit: warning: ...'; other libraries' are captured."""
    if Path(filename).resolve().is_relative_to(PACKAGE):
        user_stderr().write(f"edgekit: warning: {message}\n")
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _flush() -> None:
    """Flush Python's and the C library's stdout/stderr buffers, so each write lands where it was aimed."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _LIBC is not None:
        _LIBC.fflush(None)
