"""The fleet key that authenticates offload frames: 32 random bytes, stored as hex in a file only its owner reads.

The tail server signs every answer with it (HMAC-SHA256 over the whole frame, request id included: see
`edgekit.formats.frame`), and a device holding it accepts only answers whose tag verifies, so another client on
the broker cannot pass off its own answers as the tail's. Devices sign their requests with the same key and a
server holding it serves only signed requests. One key per fleet: every holder can sign, so a device that
leaks it lets its holder forge answers to the whole fleet (rotate it then). `edgekit serve` keeps one in the
bundle's secrets folder unless given another, and a device running the same bundle path finds it there.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from edgekit.errors import OffloadError
from edgekit.offload.security import private_folder, secrets_folder

KEY_BYTES = 32
KEY_FILE = "fleet.key"  # its name in a secrets folder


def new_key(path: str | Path) -> bytes:
    """Write a fresh random key to `path` (hex, mode 0600, never over an existing file) and return it."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OffloadError(f"{path}: a key file already exists; load it (auth.load_key) or remove it first") from None
    except OSError as exc:
        raise OffloadError(f"{path}: cannot create the key file ({exc.strerror})") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    return key


def load_key(path: str | Path) -> bytes:
    """The key in `path`; OffloadError when it is missing, readable by group or others, or not 64 hex digits."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise OffloadError(f"{path}: cannot read the key file ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise OffloadError(f"{path}: the key file is mode {stat.S_IMODE(mode):04o}, open to group or others; anyone "
                           f"who reads it can forge answers: chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise OffloadError(f"{path}: expected {KEY_BYTES * 2} hex digits (a {KEY_BYTES}-byte key), found "
                           f"{len(text)} characters")
    return key


def fleet_key(folder: str | Path) -> tuple[bytes, Path, bool]:
    """The fleet key kept in `folder` (made 0700), created there when it holds none: (key, its file, whether new)."""
    path = private_folder(folder) / KEY_FILE
    if path.exists():
        return load_key(path), path, False
    return new_key(path), path, True


def bundle_key(bundle: str | Path) -> bytes | None:
    """The fleet key `edgekit serve` keeps beside `bundle` (BUNDLE.secrets/fleet.key), or None where there is none."""
    path = secrets_folder(bundle) / KEY_FILE
    return load_key(path) if path.exists() else None


def report_forged(logger: logging.Logger, count: int, where: str, reason: str, every: int = 100) -> None:
    """Log the first forged frame and then one in `every`: a flood of them must not flood the log as well."""
    if count % every == 1 or every == 1:
        logger.warning("%s: dropped %d forged frame(s) so far (%s)", where, count, reason)
