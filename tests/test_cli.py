"""The CLI is a thin shell: tables by default, JSON on request, one-line errors with non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run

from edgekit.cli import main


def test_analyze_json_and_plot(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    png = tmp_path / "memory.png"
    code, out, _ = run(capsys, "analyze", "digits_cnn", "--target", "stm32f412", "--plot", str(png), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "digits_cnn" and data["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert data["totals"]["macs"] == sum(layer["macs"] for layer in data["layers"]) > 0
    assert data["peak_activation_bytes"]["int8"]["bytes"] == max(l["live_bytes_int8"] for l in data["layers"])
    assert [f["fits"] for f in data["fits"]] == [True, True]
    assert [f["accounting"] for f in data["fits"]] == ["tflm", None]  # the SRAM verdict is TFLM's
    assert data["fits"][0]["needed_bytes"] == data["tflm_peak_activation_bytes"]["bytes"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_table_says_mobilenet_does_not_fit_an_stm32f746(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "analyze", "mobilenet_v2", "--target", "stm32f746")
    assert code == 0
    assert "int8 1,404,928 B" in out  # the paper's figure, beside TFLM's (BENCHMARKS: TFLM's measured head)
    assert "5 explicit pads materialised" in out and "int8 2,451,840 B (2.3 MiB) at features.2.block.1.0" in out
    assert f"is short by {2_451_840 - 320 * 1024:,} bytes of SRAM (needs 2.3 MiB, has 320.0 KiB)" in out


def test_analyze_mcunet_vww_gives_the_tflm_figure_it_deploys_under(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "analyze", "mcunet_vww", "--target", "stm32f746")
    assert code == 0
    # 50 KiB by the paper's accounting; TFLM's measured arena head is 80,736 B (BENCHMARKS.md), + a 29,712 B tail
    assert "peak activations, layer by layer: int8 51,200 B (50.0 KiB) at features.2.block.0.0" in out
    assert ("int8 80,736 B (78.8 KiB) at features.2.block.1.0, 1.58x the layer-by-layer int8 figure" in out)
    assert ("  fits: int8 peak activations under TF Lite Micro's accounting (compile deploys under TFLM) "
            "78.8 KiB of 320.0 KiB SRAM") in out


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


@pytest.mark.slow
@pytest.mark.parametrize("target, fmt", [("jetson-orin-nano", "onnx"), ("stm32f746", "tflite")])
def test_compile_writes_model_and_report(capsys: pytest.CaptureFixture, tmp_path: Path, digits_data, target: str,  # type: ignore[no-untyped-def]
                                         fmt: str) -> None:
    calib, held_out = digits_data
    out = tmp_path / "bundle"
    code, stdout, _ = run(capsys, "compile", "digits_cnn", "--pretrained", "--target", target, "--int8",
                          "--calib", str(calib), "--eval", str(held_out), "-o", str(out), "--json")
    assert code == 0
    report = json.loads(stdout)  # converter progress goes to stderr, so stdout is pure JSON
    assert report["config"]["format"] == fmt and report["calibration_samples"] == 100
    assert report["config"]["channels_last_io"] == (target == "stm32f746")
    assert report["fidelity"]["samples"] == 360 and report["fidelity_drop_points"] <= 1.0
    artifact = f"digits_cnn_int8.{fmt}"
    pack = ["mcu"] if fmt == "tflite" else []
    assert sorted(p.name for p in out.iterdir()) == [artifact, "manifest.json", *pack, "report.json", "report.txt"]
    assert json.loads((out / "report.json").read_text())["artifact_bytes"] == (out / artifact).stat().st_size
    from edgekit.formats.bundle import QuantRecipe, load_bundle

    manifest = load_bundle(out).manifest  # the output is a verified bundle
    stage = manifest.stages[0]
    assert (manifest.model, manifest.target, stage.file) == ("digits_cnn", target, artifact)
    assert manifest.labels == tuple("0123456789")  # from the model's cfg, as its normalisation
    assert manifest.preprocessing is not None and (manifest.preprocessing.mean, manifest.preprocessing.std) == \
        ((0.0,), (1.0,))
    tflite = fmt == "tflite"
    assert manifest.recipe == {"main": QuantRecipe(fmt, True, "int8" if tflite else "float32",
                                                   "NHWC" if tflite else "NCHW", "histogram" if tflite else "minmax",
                                                   200, 100, False)}
    assert stage.backend == ("tflite-micro" if fmt == "tflite" else "onnxruntime")
    if fmt == "tflite":  # int8 I/O, NHWC for the MCU, with the scales the runtime needs to quantize
        assert stage.inputs[0].shape == (1, 8, 8, 1) and stage.inputs[0].dtype == "int8"
        assert stage.inputs[0].layout == "NHWC" and stage.inputs[0].scale > 0
    else:
        assert stage.inputs[0].dtype == "float32" and stage.inputs[0].scale is None
    if fmt == "onnx":  # per-layer SQNR from onnxruntime's QDQ debugging helpers, every tensor well above noise
        assert len(report["layer_sqnr_db"]) >= 5 and min(report["layer_sqnr_db"].values()) > 20
        assert [i["op"] for i in report["float_islands"]] == ["ReduceMean", "Reshape"]
    else:
        assert report["float_islands"] == []
        assert 0 < report["mcu"]["arena_bytes"] < report["mcu"]["sram"]["needed_bytes"] < 320 * 1024
        assert report["mcu"]["sram"]["fits"] and report["mcu"]["flash"]["fits"]
        assert sorted(p.name for p in (out / "mcu").iterdir()) == ["arena.h", "model_data.cc", "model_data.h",
                                                                   "op_resolver.h"]


@pytest.mark.slow
def test_compile_data_free_is_labelled_and_accurate(capsys: pytest.CaptureFixture, tmp_path: Path, digits_data) -> None:  # type: ignore[no-untyped-def]
    _, held_out = digits_data
    code, stdout, _ = run(capsys, "compile", "digits_cnn", "--pretrained", "--target", "rpi4", "--int8",
                          "--data-free", "--eval", str(held_out), "-o", str(tmp_path / "o"), "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["calibration"].startswith("data-free: synthetic") and report["calibration_samples"] == 32
    assert report["fidelity_drop_points"] <= 1.0
    from edgekit.formats.bundle import load_bundle

    recipe = load_bundle(tmp_path / "o").manifest.recipe
    assert recipe is not None and (recipe["main"].samples, recipe["main"].data_free) == (32, True)


@pytest.mark.slow
def test_compile_failing_fidelity_leaves_nothing(capsys: pytest.CaptureFixture, tmp_path: Path, digits_data) -> None:  # type: ignore[no-untyped-def]
    calib, held_out = digits_data
    out = tmp_path / "bundle"
    # a limit no model can meet: INT8 would have to beat FP32 by 100 points
    code, _, err = run(capsys, "compile", "digits_cnn", "--pretrained", "--target", "rpi4", "--int8", "--calib",
                       str(calib), "--eval", str(held_out), "--max-drop", "-100", "-o", str(out))
    assert code == 2 and "top-1 points" in err and "limit -100.0" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("extra, message", [
    (["--calib", "x.npy"], "only INT8 compilation exists so far"),
    (["--int8", "--data-free", "--calib", "x.npy"], "pass exactly one of --calib PATH"),
    (["--int8"], "pass exactly one of --calib PATH"),
    (["--int8", "--calib", "missing.npz"], "missing.npz: no such file"),
])
def test_compile_bad_arguments(capsys: pytest.CaptureFixture, tmp_path: Path, extra: list[str], message: str) -> None:
    code, _, err = run(capsys, "compile", "digits_cnn", "--target", "rpi4", "-o", str(tmp_path / "o"), *extra)
    assert code == 2 and message in err


def test_compile_refuses_to_replace_a_foreign_folder(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                     digits_data) -> None:  # type: ignore[no-untyped-def]
    calib, _ = digits_data
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "compile", "digits_cnn", "--target", "rpi4", "--int8", "--calib", str(calib),
                       "-o", str(tmp_path))
    assert code == 2 and "not an earlier bundle" in err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_compile_batch_compiles_each_model_in_one_process_and_names_the_one_that_failed(
        capsys: pytest.CaptureFixture, tmp_path: Path, digits_data) -> None:  # type: ignore[no-untyped-def]
    calib, _ = digits_data
    batch = tmp_path / "batch.toml"
    batch.write_text(f"""[defaults]
int8 = true
pretrained = true
calib = "{calib}"

[[model]]
model = "digits_cnn"
target = "rpi4"
output = "{tmp_path / 'pi'}"

[[model]]
model = "digits_cnn"
target = "stm32f746"
max_samples = 0
output = "{tmp_path / 'mcu'}"
""")
    code, out, err = run(capsys, "compile-batch", str(batch), "--json")
    report = json.loads(out)  # JSON only on stdout, even with a failed model
    last = err.strip().splitlines()[-1]
    assert code == 2 and last == "edgekit: error: 1 of 2 models failed: digits_cnn for stm32f746"
    written, failed = report["models"]
    assert written["output"] == str(tmp_path / "pi") and (tmp_path / "pi" / "manifest.json").is_file()
    assert written["report"]["target"] == "rpi4" and failed["model"] == "digits_cnn for stm32f746"
    assert failed["error"].endswith("model 2 (digits_cnn for stm32f746): Int8Config.max_samples must be >= 1, found 0")
    assert not (tmp_path / "mcu").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[[model]]\ntarget = 'rpi4'\n", "model 1 has no `model = \"NAME\"`"),
    ("[models]\n", "a batch file holds an optional [defaults] table and one [[model]] table per model"),
    ("[[model]\n", "not valid TOML"),
])
def test_compile_batch_refuses_a_malformed_file(capsys: pytest.CaptureFixture, tmp_path: Path, text: str,
                                                message: str) -> None:
    (tmp_path / "b.toml").write_text(text)
    code, _, err = run(capsys, "compile-batch", str(tmp_path / "b.toml"))
    assert code == 2 and message in err


def test_plan_patch_json_and_plot(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    png = tmp_path / "patch.png"
    code, out, _ = run(capsys, "plan", "patch", "mobilenet_v2", "--target", "stm32f412", "--inplace-residual",
                       "--plot", str(png), "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["chosen"]["grid"] == 4 and plan["chosen"]["peak_bytes"] <= 172 * 1024
    assert plan["budget_bytes"] == 256 * 1024 and plan["policy"]["inplace_residual"] is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "plan", "patch", "mobilenet_v2_035_96", "--target", "nrf52840",
                       "--max-extra-macs", "0.0", "--force-patch")  # it fits layer by layer: patching on request
    assert code == 0 and ("\npatching does not lower the peak below layer-by-layer 129,024 B (patching was forced: "
                          "layer by layer, 129,024 B, already fits the budget)\n") in out


def test_plan_patch_by_hand(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "plan", "patch", "mobilenet_v2", "--stage-end", "features.4.block.2.0", "--grid", "3",
                       "--inplace-residual", "--json")
    assert code == 0 and json.loads(out)["chosen"]["peak_bytes"] == 251_888  # the 3x3 row of the Pareto table
    code, _, err = run(capsys, "plan", "patch", "mobilenet_v2", "--stage-end", "classifier.fc", "--grid", "2")
    assert code == 2 and "'classifier.fc' cannot end a patch stage (valid: features.0.0" in err
    code, _, err = run(capsys, "plan", "patch", "mobilenet_v2", "--grid", "2")
    assert code == 2 and "--stage-end and --grid go together" in err


def test_plan_split_json_plot_and_bad_bandwidth(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    png = tmp_path / "split.png"
    code, out, _ = run(capsys, "plan", "split", "mobilenet_v2", "--device", "rpi4", "--server", "gpu-server",
                       "--link", "wifi", "--bandwidth", "20 Mbit/s", "--plot", str(png), "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["uplink_bps"] == 20e6 and plan["chosen"]["valid"] and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["plan", "split", "mobilenet_v2", "--device", "rpi4", "--server", "gpu-server", "--link", "wifi",
              "--bandwidth", "20 MB"])
    assert "'MB' in '20 MB' is a bytes unit" in capsys.readouterr().err
