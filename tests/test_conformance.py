"""The conformance tool's machinery on one tiny cell: a real CLI subprocess, its figure, its row, and the ✗ a
broken model, a crash, a timeout or a missing builder gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgekit.units import format_count

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.conformance import (  # noqa: E402 - the repository root is importable only from here on
    COLUMNS,
    Cell,
    Subject,
    WrongResult,
    analyze_figure,
    bit_exact_figure,
    cli,
    earlier_rows,
    failure_reason,
    parse_row,
    render_markdown,
    run_cell,
    run_subject,
    table_row,
)


@pytest.fixture(scope="module")
def tiny_analyze() -> Cell:
    return run_cell("analyze", cli("analyze", "tests.helpers:tiny_net"), 120, analyze_figure)


def test_analyze_cell_reads_the_cli_figures(tiny_analyze: Cell) -> None:
    # TinyNet, 8 layers: stem 8x16x16x3x9 = 55,296 + depthwise 8x16x16x9 = 18,432 + pointwise 8x16x16x8 = 16,384
    # + fc 8x10 = 80 MACs (add and pools are the op table's business); peak at the pointwise conv: residual
    # input, depthwise out and its own out, 2,048 B each = 6.0 KiB.
    assert tiny_analyze.status == "ok", tiny_analyze.text
    macs = tiny_analyze.data["totals"]["macs"]
    assert macs >= 55_296 + 18_432 + 16_384 + 80
    assert tiny_analyze.text == f"8 layers, {format_count(macs)} MACs, int8 peak 6.0 KiB"
    assert tiny_analyze.command == "edgekit analyze tests.helpers:tiny_net --json"


def test_broken_model_gives_the_cli_error_line() -> None:
    cell = run_cell("analyze", cli("analyze", "tests.helpers:no_such_factory"), 120, analyze_figure)
    assert cell.status == "fail"
    assert cell.text.startswith("edgekit: error: ") and "no_such_factory" in cell.text
    assert "\n" not in cell.text


def test_timeout_is_a_cell_result() -> None:
    cell = run_cell("analyze", cli("analyze", "tests.helpers:tiny_net"), 0.5, analyze_figure)
    assert (cell.status, cell.text) == ("fail", "timeout after 0.5 s")


def test_failure_reason_names_crashes() -> None:
    traceback = "noise\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n"
    assert failure_reason(1, "", traceback) == "crash: ValueError: boom"
    assert failure_reason(2, "", "usage: edgekit\nedgekit: error: bad flag\n") == "edgekit: error: bad flag"
    assert failure_reason(-11, "", "last words\n") == "crash: SIGSEGV (last line: last words)"
    assert failure_reason(3, "", "") == "exit 3 with no output"


def test_row_round_trips(tiny_analyze: Cell, tmp_path: Path) -> None:
    subject = Subject("mcunet_se", "TinyNet | 1x3x32x32", "tests.helpers:tiny_net", (1, 3, 32, 32))
    cells = {c: Cell(c, "fail", f"edgekit: error: {c} a|b") for c in COLUMNS} | {"analyze": tiny_analyze}
    row = table_row(subject, cells)
    parsed = parse_row(row)
    assert len(parsed) == 1 + len(COLUMNS)
    assert parsed[0] == "**mcunet_se**<br>TinyNet | 1x3x32x32"
    assert parsed[1] == "✓ " + tiny_analyze.text
    assert parsed[2:] == [f"✗ edgekit: error: {c} a|b" for c in list(COLUMNS)[1:]]
    meta = {"date": "2026-01-01", "edgekit": "0", "revision": "x", "timeout": "1", "minutes": "0", "note": ""}
    table = tmp_path / "conformance.md"
    table.write_text(render_markdown({"mcunet_se": row}, meta))
    assert earlier_rows(table) == {"mcunet_se": row}  # what --only keeps of the rows it does not rerun
    assert table.read_text().splitlines()[-1] == f"1 ✓, {len(COLUMNS) - 1} ✗, 0 — in all."


def test_missing_builder_skips_the_row(tmp_path: Path) -> None:
    def missing(_: Path) -> Path:
        raise FileNotFoundError("builder not available yet")

    seen: list[Cell] = []
    cells = run_subject(Subject("absent", "not built", make=missing), tmp_path, 60, seen.append)
    assert list(cells) == list(COLUMNS) and [c.column for c in seen] == list(COLUMNS)
    assert {(c.status, c.text) for c in cells.values()} == {("skip", "builder not available yet")}


def test_bit_exact_figure_fails_on_any_differing_output() -> None:
    exact = {"litert": {"outputs": 2, "patched_outputs": 2, "equal": 2},
             "tflite-micro": {"outputs": 2, "patched_outputs": 2, "equal": 2}}
    assert bit_exact_figure(exact) == "bit-exact 2/2 outputs (litert, tflite-micro)"
    dropped = exact | {"tflite-micro": {"outputs": 2, "patched_outputs": 1, "equal": 1}}
    with pytest.raises(WrongResult, match=r"^not bit-exact: tflite-micro: 1/2 outputs equal \(1 from the bundle\)$"):
        bit_exact_figure(dropped)
