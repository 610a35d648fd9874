"""The one compile skeleton: steps sharing one build context, run in order, the bundle written whole or not at all.

Every compile (`compile_int8`, `compile_split`, the patch emitter) is a Pipeline: `prepare` steps read and check
their inputs and write nothing; `stage` steps write the bundle's files into a staging folder beside the output
and leave its manifest (and report) on the context. Only when every step has passed is the staging folder
written out as a verified bundle; any failure leaves the output as it was.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from edgekit.errors import ConversionError
from edgekit.formats.bundle import MANIFEST, Manifest, write_bundle


class Report(Protocol):
    """What a compile tells the user: report.json and report.txt in the bundle, and the CLI's output."""

    def to_dict(self) -> dict: ...

    def render(self) -> str: ...


@dataclass(kw_only=True)
class Build:
    """What every step shares: the output, the staging folder, and what the steps leave for the bundle."""

    out_dir: Path
    tmp: Path = field(init=False)  # the staging folder, once the `stage` steps run
    manifest: Manifest = field(init=False)  # left by the last stage step
    report: Report | None = None  # written as report.json and report.txt when set


B = TypeVar("B", bound=Build)
Step = Callable[[B], None]


@dataclass(frozen=True)
class Pipeline(Generic[B]):
    """A compile as two lists of steps: `prepare` (reads inputs, writes nothing), then `stage` (writes files)."""

    prepare: tuple[Step[B], ...]
    stage: tuple[Step[B], ...]

    def run(self, build: B) -> B:
        """Check the output, run every step in order, then write the bundle whole to `build.out_dir`."""
        build.out_dir = check_output(build.out_dir)
        for step in self.prepare:
            step(build)
        with staging(build.out_dir) as tmp:
            build.tmp = tmp
            for step in self.stage:
                step(build)
            if build.report is not None:
                write_report(tmp, build.report)
            write_bundle(tmp, build.manifest, build.out_dir)
        return build


def check_output(out_dir: str | Path) -> Path:
    """`out_dir` as a Path, refused when it holds something other than an earlier bundle."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ConversionError(f"{out_dir} exists and is not an earlier bundle; choose another output folder")
    return out_dir


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A scratch folder beside `out_dir` for the bundle's files; removed afterwards, whatever happens."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(folder: Path, report: Report) -> None:
    """report.json (numpy scalars as numbers, anything else unknown as text) and report.txt into `folder`."""
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=_json_default))
    (folder / "report.txt").write_text(report.render() + "\n")


def _json_default(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)
