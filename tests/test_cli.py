"""The CLI is a thin shell: tables by default, JSON on request, one-line errors with non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.cli import main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json_and_plot(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    png = tmp_path / "memory.png"
    code, out, _ = run(capsys, "analyze", "digits_cnn", "--target", "stm32f412", "--plot", str(png), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "digits_cnn" and data["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert data["totals"]["macs"] == sum(layer["macs"] for layer in data["layers"]) > 0
    assert data["peak_activation_bytes"]["int8"]["bytes"] == max(l["live_bytes_int8"] for l in data["layers"])
    assert [f["fits"] for f in data["fits"]] == [True, True]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_table_says_mobilenet_does_not_fit_an_stm32f746(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "analyze", "mobilenet_v2", "--target", "stm32f746")
    assert code == 0
    assert "int8 1,404,928 B" in out
    assert f"short by {1_404_928 - 320 * 1024:,} bytes of SRAM" in out


def test_targets_list_and_show(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "targets", "list", "stm32*", "--json")
    assert code == 0
    assert [d["name"] for d in json.loads(out)["devices"]] == ["stm32f412", "stm32f746", "stm32h743"]
    code, out, _ = run(capsys, "targets", "show", "stm32f746")
    assert code == 0 and "320 KiB" in out and "DS10916" in out
    code, out, _ = run(capsys, "targets", "show", "lora", "--json")
    assert code == 0 and json.loads(out)["max_payload"]["value"] < 256


@pytest.mark.parametrize("argv, message", [
    (["analyze", "no_such_pkg.mod:factory"], "cannot import module 'no_such_pkg.mod'"),
    (["analyze", "digits_cnn", "--input-shape", "1,3,8,8"], "input shape (1, 3, 8, 8)"),
    (["analyze", "missing.tflite"], "missing.tflite: no such file"),
    (["analyze", "digits_cnn", "--target", "no_such_board"], "unknown profile 'no_such_board'"),
    (["targets", "show", "no_such_board"], "unknown profile 'no_such_board'"),
])
def test_bad_input_is_one_line_with_exit_2(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_console_script_hides_traceback_unless_debug(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    plain = subprocess.run([sys.executable, "-m", "edgekit.cli", "analyze", str(corrupt)],
                           capture_output=True, text=True)
    assert plain.returncode == 2 and "corrupt.onnx" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "edgekit.cli", "--debug", "analyze", str(corrupt)],
                           capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
