"""The package's layering, read from the source (every import, module level or inside a function).

Device side: formats <- runtime <- offload <- integrations, importing only the base modules (errors, units,
progress, the package root) and each other in that order. Host side, in data-flow order: targets, graph, memory,
analysis, cost, plan, report, convert, mcu; each imports the base, formats and host layers before it (the reference
models from graph on), never the device side, except that convert and cost's measurement modules run models through
runtime.backends' adapters. Only convert (its report.txt) and the CLI import report; the CLI, the shell over both
sides, may import anything. Imports under
`if TYPE_CHECKING:` are annotations, not edges, and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
BASE = {"edgekit", "errors", "units", "progress"}
DEVICE = ["formats", "runtime", "offload", "integrations"]
HOST = ["targets", "graph", "memory", "analysis", "cost", "plan", "report", "convert", "mcu", "cli"]
ADAPTER_USERS = ("edgekit.convert.", "edgekit.cost.measure_")  # may import edgekit.runtime.backends


def layer(module: str) -> str:
    """'edgekit.runtime.session' -> 'runtime'; the package root is 'edgekit'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgekit"


def allowed(importer: str, imported: str) -> bool:
    """Whether module `importer` may import module `imported` under the layering above."""
    source, target = layer(importer), layer(imported)
    if target in BASE or source in (target, "cli"):
        return True
    if source in BASE:
        return False
    if target == "models":
        return source in HOST[HOST.index("graph"):]
    if source in DEVICE:
        return target in DEVICE and DEVICE.index(target) < DEVICE.index(source)
    if target == "formats":
        return True
    if target in DEVICE:
        return imported == "edgekit.runtime.backends" and importer.startswith(ADAPTER_USERS)
    return target in HOST and HOST.index(target) < HOST.index(source)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edgekit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import of an edgekit module in the file; `from edgekit.x import y`
    counts as edgekit.x.y when that is a module, else as edgekit.x."""
    tree = ast.parse(path.read_text())
    annotations_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                        and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                        for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module and node.module.split(".")[0] == "edgekit":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                        (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                    found.append((node.lineno, sub if is_module else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "edgekit"]
    return found


def test_layering_rules_themselves() -> None:
    assert allowed("edgekit.runtime.session", "edgekit.formats.bundle")
    assert allowed("edgekit.offload.client", "edgekit.runtime.transport")
    assert not allowed("edgekit.runtime.session", "edgekit.offload.client")
    assert not allowed("edgekit.formats.frame", "edgekit.runtime.transport")
    assert not allowed("edgekit.runtime.tasks", "edgekit.report.table")
    assert not allowed("edgekit.plan.split", "edgekit.offload.protocol")
    assert allowed("edgekit.convert.mcu", "edgekit.runtime.backends")
    assert not allowed("edgekit.convert.mcu", "edgekit.runtime.session")
    assert not allowed("edgekit.graph.ir", "edgekit.plan.patch")
    assert allowed("edgekit.convert.compile", "edgekit.report.plans")
    assert not allowed("edgekit.report.plans", "edgekit.convert.compile")
    assert allowed("edgekit.cli", "edgekit.report.plans")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    importer = module_name(path)
    bad = [f"line {line}: {imported}" for line, imported in edgekit_imports(path) if not allowed(importer, imported)]
    assert not bad, f"{importer} imports across the layers: {'; '.join(bad)}"
