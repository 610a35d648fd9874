"""Quiet, honest output: other libraries' writes (C code on file descriptors 1 and 2, Python logging, warnings,
converter steps) are captured and shown only with --verbose or when the command fails; edgekit's report, progress,
log records and warnings still reach the user; --json prints JSON only on stdout; a TFLite compile prints at most
10 lines."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_tail_bundle

import edgekit.cli
from edgekit.capture import Captured, user_stderr, user_stdout
from edgekit.errors import ConversionError
from edgekit.runtime.backends import CapturedStderr

NOISY_MODULE = '''
import logging, os, warnings
import torch
os.write(1, b"noise: C write on fd 1\\n")
os.write(2, b"noise: C write on fd 2\\n")
print("noise: python print")
logging.getLogger("thirdparty").warning("noise: a log record")
warnings.warn("noise: a warning")

def net():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
'''
NOISE = ["noise: C write on fd 1", "noise: C write on fd 2", "noise: python print", "noise: a log record",
         f"{{folder}}{os.sep}noisy.py:8: UserWarning: noise: a warning", '  warnings.warn("noise: a warning")']


def test_fd_writes_are_captured_while_edgekit_output_reaches_the_user(capfd: pytest.CaptureFixture[str]) -> None:
    with Captured() as captured:
        os.write(1, b"converter step 1\n")
        os.write(2, b"absl: log line\n")
        print("the report", file=user_stdout())
        user_stderr().write("calibrating [####] 4/4 0.1s\n")
        logging.getLogger("edgekit.offload.client").warning("lost broker mqtt://x:1883 (timeout); reconnecting")
        warnings.warn_explicit("host is x86_64, the profile's device aarch64", UserWarning, edgekit.cli.__file__, 1)
    assert captured.text == "converter step 1\nabsl: log line\n"
    assert capfd.readouterr() == ("the report\n", "calibrating [####] 4/4 0.1s\n"
                                  "lost broker mqtt://x:1883 (timeout); reconnecting\n"
                                  "edgekit: warning: host is x86_64, the profile's device aarch64\n")


def test_a_failing_block_writes_what_it_captured_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConversionError), Captured():
        os.write(2, b"E: converter: unsupported op\n")
        raise ConversionError("m.tflite: INT8 tflite conversion failed")
    assert capfd.readouterr() == ("", "E: converter: unsupported op\n")


def test_verbose_shows_both_descriptors_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with Captured(show=True):
        os.write(1, b"converter step 1\n")
        print('{"report": 1}', file=user_stdout())
    assert capfd.readouterr() == ('{"report": 1}\n', "converter step 1\n")


def test_a_nested_fd_capture_still_reads_its_own_text(capfd: pytest.CaptureFixture[str]) -> None:
    with Captured() as outer:  # as convert.mcu reads TFLM's allocation report inside a captured compile
        with CapturedStderr() as inner:
            os.write(2, b"[RecordingMicroAllocator] Arena allocation total 5440 bytes\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert inner.text == "[RecordingMicroAllocator] Arena allocation total 5440 bytes\n"
    assert outer.text == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    assert capfd.readouterr() == ("", "")


def test_importing_the_cli_redirects_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    os.write(1, b"library caller's own output\n")
    assert capfd.readouterr().out == "library caller's own output\n"


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture
def noisy(tmp_path: Path) -> Path:
    """A folder holding noisy.py: a model module that, as many libraries do on import, writes to fd 1 and 2 and
    prints, logs and warns."""
    (tmp_path / "noisy.py").write_text(NOISY_MODULE)
    return tmp_path


def test_third_party_output_is_hidden_by_default(noisy: Path) -> None:
    done = run_cli("analyze", "noisy:net", "--input-shape", "1,1,8,8", cwd=noisy)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("net (torch, NCHW); input input 1x1x8x8 fp32\n") and "noise" not in done.stdout


def test_verbose_shows_it_on_stderr_and_json_stays_alone_on_stdout(noisy: Path) -> None:
    done = run_cli("--verbose", "analyze", "noisy:net", "--input-shape", "1,1,8,8", "--json", cwd=noisy)
    assert done.returncode == 0 and json.loads(done.stdout)["model"] == "net"
    assert sorted(done.stderr.splitlines()) == sorted(line.format(folder=noisy) for line in NOISE)


def test_a_failing_compile_shows_the_captured_text_before_the_error(noisy: Path) -> None:
    done = run_cli("compile", "noisy:net", "--input-shape", "1,1,8,8", "--target", "stm32f746", "--int8",
                   "--calib", "missing.npz", "-o", "out", cwd=noisy)
    assert done.returncode == 2 and done.stdout == ""
    *captured, error = done.stderr.splitlines()
    assert sorted(captured) == sorted(line.format(folder=noisy) for line in NOISE)
    assert error == "edgekit: error: missing.npz: no such file or folder"


@pytest.fixture(scope="module")
def compiled(digits_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[
        subprocess.CompletedProcess[str], Path]:
    """One TFLite compile of the digits CNN for the STM32F746, as the quick start runs it (not on a terminal)."""
    calib, held_out = digits_data
    bundle = tmp_path_factory.mktemp("quiet") / "digits_stm32f746"
    done = run_cli("compile", "digits_cnn", "--pretrained", "--target", "stm32f746", "--int8", "--calib", str(calib),
                   "--eval", str(held_out), "-o", str(bundle))
    assert done.returncode == 0, done.stderr
    return done, bundle


@pytest.mark.slow
def test_a_tflite_compile_prints_at_most_10_lines(compiled: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, bundle = compiled
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    assert len(lines) <= 10, lines
    assert done.stdout.startswith("digits_cnn -> digits_cnn_int8.tflite (tflite, NHWC input, ")
    assert done.stdout.endswith(f"written to {bundle}/\n")
    progress = re.compile(r"[a-z ]+( \(\d+ samples\))? \[[# ]{30}\] \d+/\d+ \d+\.\ds( ETA \d+\.\ds)?")
    assert all(progress.fullmatch(line) for line in done.stderr.splitlines()), done.stderr  # nothing but bars
    assert "\r" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["compile", "{bundle}/digits_cnn_int8.tflite", "--target", "stm32f746", "--int8", "-o", "{tmp}/packaged"],
    ["run", "{bundle}", "--input", "{tmp}/digit.png", "--top", "3"],
    ["bench", "{bundle}", "--runs", "5", "--warmup", "1"],
    ["plan", "patch", "{bundle}/digits_cnn_int8.tflite", "--target", "stm32f746", "--force-patch", "--emit",
     "{tmp}/patches"],
    ["calibrate", "digits_cnn", "--target", "rpi4", "--repeats", "2"],
], ids=lambda argv: " ".join(a for a in argv[:2] if "{" not in a))
def test_json_is_alone_on_stdout(compiled: tuple[subprocess.CompletedProcess[str], Path], digits_data,  # type: ignore[no-untyped-def]
                                 tmp_path: Path, argv: list[str]) -> None:
    from PIL import Image

    _, bundle = compiled
    digit = np.load(digits_data[1])["x"][0, 0]
    Image.fromarray(np.round(digit * 255).astype(np.uint8), mode="L").save(tmp_path / "digit.png")
    done = run_cli("--verbose", *(a.format(bundle=bundle, tmp=tmp_path) for a in argv), "--json")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)


@pytest.mark.slow
def test_serve_json_is_alone_on_stdout(tmp_path: Path) -> None:
    from edgekit.errors import BrokerError
    from edgekit.offload.broker import find_mosquitto

    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))
    bundle = tiny_tail_bundle(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--listen", "127.0.0.1",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        announced = []
        for line in proc.stderr:
            announced.append(line.strip())
            if announced[-1] == "ready":
                break
        assert announced[-1:] == ["ready"], announced
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and json.loads(out)["requests"] == 0
