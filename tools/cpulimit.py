"""Emulate a slow device: a cgroup v1 CPU quota for the benchmark's own processes, removed afterwards.

    with CpuQuota("edgekit-dev", fraction=0.1) as quota:
        proc = subprocess.Popen(...)
        quota.add(proc.pid)

Only the pids added are moved into the group; on exit they are moved back to the root group (if still alive)
and the group is removed. Needs root and the cgroup v1 `cpu` controller at /sys/fs/cgroup/cpu.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CPU_ROOT = Path("/sys/fs/cgroup/cpu")


def available() -> str | None:
    """None when quotas can be set here, else why not."""
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_ROOT}"
    return None


class CpuQuota:
    """A cgroup limiting its processes to `fraction` of one core, enforced every `period_us`."""

    def __init__(self, name: str, fraction: float, period_us: int = 10_000) -> None:
        if not 0.01 <= fraction <= 64:
            raise ValueError(f"fraction must be in [0.01, 64] cores, got {fraction}")
        why = available()
        if why:
            raise RuntimeError(f"cannot emulate a slow device: {why}")
        self.path = CPU_ROOT / f"{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(max(1000, int(fraction * period_us))))
        self.fraction, self.pids = fraction, []

    def add(self, pid: int) -> None:
        """Move one process (and the threads it starts later) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))
        self.pids.append(pid)

    def close(self) -> None:
        """Move the pids still alive back to the root group and remove the group (idempotent)."""
        if not self.path.exists():
            return
        for _ in range(50):  # a process that is exiting leaves the group a moment later
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    (CPU_ROOT / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # exited meanwhile
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.path} still has processes; remove it by hand")

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
