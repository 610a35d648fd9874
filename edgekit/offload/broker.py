"""A Mosquitto 2.x broker started with a generated config: `edgekit serve`'s embedded default, and tests' brokers.

Mosquitto 2 listens on nothing useful and refuses anonymous clients unless told, so the config names the
listener (`listener PORT ADDRESS`) and `allow_anonymous` explicitly. Options add TLS, a password file, an ACL
and a maximum packet size. Readiness is read from the broker's log, so a broker launched in another network
namespace (through `launcher`) is waited for the same way.
"""

from __future__ import annotations

import ctypes
import functools
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import BrokerError
from edgekit.offload.connection import BrokerConfig

Launcher = Callable[[list[str]], subprocess.Popen]
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent (a forked child should not load libraries); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(parent: int | None = None) -> bool:
    """Ask Linux to SIGKILL this process when its parent *thread* ends (prctl PR_SET_PDEATHSIG); False elsewhere.

    Called in the child. Given the parent's pid, a parent already gone before the call ends the child at once.
    The signal fires when the thread that started the child exits, so start children from a long-lived thread.
    """
    prctl = _prctl()
    if prctl is None or prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    return True


def _launch_tied(argv: list[str]) -> subprocess.Popen:
    """Popen that dies with this process, even after a SIGKILL of it (PDEATHSIG set before exec), in a session
    of its own so a Ctrl-C at the terminal reaches only its owner, which stops it."""
    _prctl()  # resolve prctl here, not in the forked child
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()))


def _launch(argv: list[str]) -> subprocess.Popen:
    """Popen with no console: the broker writes to its own log file."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: the CA clients trust, the broker's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def find_mosquitto() -> str:
    """The mosquitto executable (PATH, then /usr/sbin); BrokerError naming how to install it."""
    found = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                                if Path(p).is_file()), None)
    if found is None:
        raise BrokerError("the embedded broker needs Mosquitto 2.x: apt-get install mosquitto (Debian/Ubuntu), "
                          "brew install mosquitto (macOS), or pass --broker URL of a running broker")
    return found


def free_port(host: str = "") -> int:
    """A TCP port nothing listens on right now (on any address, by default)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def advertised_host(listen: str) -> str:
    """The address devices should dial for a broker listening on `listen` (the main interface for 0.0.0.0)."""
    if listen not in ("0.0.0.0", ""):
        return listen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET address: picks the outgoing interface, sends nothing
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class Broker:
    """One Mosquitto process with its own config, log and port; `start()`, `stop()`, `kill()`, `restart()`."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", *, tls: TlsFiles | None = None,
                 password_file: str | Path | None = None, acl_file: str | Path | None = None,
                 max_packet_size: int | None = None, workdir: str | Path | None = None,
                 launcher: Launcher | None = None, tied: bool = False, username_as_clientid: bool = False,
                 extra_config: Sequence[str] = ()) -> None:
        """Anonymous clients are allowed only without a password file. `launcher` runs the argv (default Popen;
        `tied`: one that dies with this process, see die_with_parent). `username_as_clientid` makes each
        client's id its username, so no client can take over another's session by reusing its id.
        `extra_config` lines are appended to the config as given (a bridge: edgekit.offload.bridge)."""
        self.host = host
        self.port = port or free_port()
        self.tls = tls
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edgekit-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "mosquitto.log"
        lines = [f"listener {self.port} {host}", f"allow_anonymous {'false' if password_file else 'true'}",
                 f"log_dest file {self.log}", *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
                 "persistence false", "set_tcp_nodelay true",
                 f"user {getpass.getuser()}"]  # run as whoever started it, so it can read its files
        if password_file:
            lines.append(f"password_file {Path(password_file).resolve()}")
        if acl_file:
            lines.append(f"acl_file {Path(acl_file).resolve()}")
        if max_packet_size:
            lines.append(f"max_packet_size {max_packet_size}")
        if username_as_clientid:
            lines.append("use_username_as_clientid true")
        if tls:
            lines += [f"cafile {tls.ca.resolve()}", f"certfile {tls.cert.resolve()}", f"keyfile {tls.key.resolve()}"]
        lines += extra_config
        self.config_file = self.workdir / "mosquitto.conf"
        self.config_file.write_text("\n".join(lines) + "\n")
        self.launcher = launcher or (_launch_tied if tied else _launch)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL to reach this broker from this machine."""
        return self.url_for("127.0.0.1" if self.host == "0.0.0.0" else self.host)

    def url_for(self, host: str) -> str:
        """The URL with another host name (what devices elsewhere dial)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def client_config(self, **options: object) -> BrokerConfig:
        """A BrokerConfig for this broker (TLS trusting its CA); `options` add username, password..."""
        extra = {"ca_certs": str(self.tls.ca)} if self.tls else {}
        return BrokerConfig.parse(self.url, **{**extra, **options})

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Launch and wait until the broker says it is running; BrokerError with its log otherwise."""
        if self.process is not None and self.process.poll() is None:
            return self
        marker = self.log.read_text(errors="replace").count(" running") if self.log.exists() else 0
        self.process = self.launcher([find_mosquitto(), "-c", str(self.config_file)])
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if text.count(" running") > marker:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        tail = self.log.read_text(errors="replace")[-800:] if self.log.exists() else "(no log)"
        raise BrokerError(f"mosquitto on {self.host}:{self.port} did not start within {timeout_s:g} s; "
                          f"its log:\n{tail}")

    def stop(self) -> None:
        """Terminate (SIGTERM) and wait; the work folder stays until `close()`."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: clients see the connection drop without a goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> Broker:
        """Start again on the same port with the same config."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the generated files (only when this object made the folder)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
