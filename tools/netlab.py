"""Two network namespaces joined by a veth pair, for link faults and bandwidth limits in tests and benchmarks.

    with NetLab("ekt") as lab:                   # netns ekt-dev and ekt-srv, 10.X.Y.1 <-> 10.X.Y.2
        broker = lab.popen("srv", ["mosquitto", "-c", conf])
        lab.shape(2.0)                           # tc tbf, 2 Mbit/s each way; None removes it
        lab.down(); lab.up()                     # the device's end of the cable pulled and plugged back

Needs root and iproute2 (`ip`, `tc`). The /24 is derived from the prefix, so labs with different prefixes
can coexist; `close()` deletes both namespaces (and with them the veth pair) and is safe to call twice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import Any


class NetLabError(RuntimeError):
    """The lab could not be built: not root, iproute2 missing, or a command failed."""


def available() -> str | None:
    """None when a NetLab can be built here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found (iproute2)" if missing else None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetLabError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class NetLab:
    """netns `{prefix}-dev` and `{prefix}-srv`, a veth pair between them, one private /24 for the prefix."""

    def __init__(self, prefix: str) -> None:
        why = available()
        if why:
            raise NetLabError(why)
        if len(prefix) > 10 or not prefix.replace("-", "").isalnum():
            raise NetLabError(f"prefix must be at most 10 letters, digits or '-', found {prefix!r}")
        self.prefix = prefix
        self.device_ns, self.server_ns = f"{prefix}-dev", f"{prefix}-srv"
        self._veth = {"dev": f"{prefix}-d", "srv": f"{prefix}-s"}  # interface names, 15 characters at most
        digest = hashlib.sha256(prefix.encode()).digest()
        net = f"10.{200 + digest[0] % 50}.{digest[1]}"
        self.device_ip, self.server_ip = f"{net}.1", f"{net}.2"
        self._closed = False
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def _ns(self, side: str) -> str:
        if side not in self._veth:
            raise NetLabError(f"side must be 'dev' or 'srv', found {side!r}")
        return self.device_ns if side == "dev" else self.server_ns

    def _build(self) -> None:
        for ns in (self.device_ns, self.server_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", self._veth["dev"], "netns", self.device_ns, "type", "veth",
            "peer", "name", self._veth["srv"], "netns", self.server_ns)
        for side, address in (("dev", self.device_ip), ("srv", self.server_ip)):
            _ip("-n", self._ns(side), "addr", "add", f"{address}/24", "dev", self._veth[side])
            _ip("-n", self._ns(side), "link", "set", self._veth[side], "up")

    def shape(self, rate_mbit: float | None) -> None:
        """Limit both directions to `rate_mbit` Mbit/s with a token bucket (tc tbf); None removes the limit."""
        for side in ("dev", "srv"):
            ns, dev = self._ns(side), self._veth[side]
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True)
            if rate_mbit is not None:
                burst = max(1600, int(rate_mbit * 1e6 / 8 / 100))  # about 10 ms worth of bytes
                done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                                       "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "400ms"],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise NetLabError(f"tc tbf on {dev}: {done.stderr.strip()}")

    def down(self) -> None:
        """Take the device's end of the link down (packets are lost; TCP notices only by timeout)."""
        _ip("-n", self.device_ns, "link", "set", self._veth["dev"], "down")

    def up(self) -> None:
        """Bring the device's end back up."""
        _ip("-n", self.device_ns, "link", "set", self._veth["dev"], "up")

    def popen(self, side: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start `argv` inside the 'dev' or 'srv' namespace (Popen keyword arguments pass through)."""
        return subprocess.Popen(["ip", "netns", "exec", self._ns(side), *argv], **kwargs)

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them); idempotent."""
        if self._closed:
            return
        self._closed = True
        for ns in (self.device_ns, self.server_ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
