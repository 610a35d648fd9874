"""A patch bundle cut from a compiled bundle's .tflite keeps what turns an image into input and an output into
labels, so `edgekit run` takes an image as it does on the compiled bundle; one cut from a loose .tflite says, in
CLI and API words, to pass an array."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from PIL import Image

from edgekit.errors import ConversionError, InputError

pytestmark = pytest.mark.slow  # one real INT8 TFLite compile


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """digits_cnn compiled for stm32f746 (labels 0-9, pixels x 1/255) and one held-out digit as a PNG."""
    from edgekit.convert.compile import compile_int8
    from edgekit.models import create_model
    from edgekit.models.digits import load_digits_split
    from edgekit.targets import load_target

    folder = tmp_path_factory.mktemp("digits")
    x_train, _, x_test, _ = load_digits_split()
    np.save(folder / "calib.npy", x_train[:32])
    compile_int8(create_model("digits_cnn", pretrained=True), "digits_cnn", load_target("stm32f746"),
                 folder / "bundle", folder / "calib.npy")
    Image.fromarray(np.round(x_test[0, 0] * 255).astype(np.uint8), mode="L").save(folder / "digit.png")
    return folder / "bundle", folder / "digit.png"


def _emit(model: Path, out: Path) -> Path:
    """`plan patch MODEL --emit OUT` with a 2x2 grid over the first two convolutions."""
    from edgekit.convert.patch_pack import bundle_model_file, emit_patch_artifacts
    from edgekit.graph import load_graph
    from edgekit.plan.patch import fixed_plan

    graph = load_graph(bundle_model_file(model))
    emit_patch_artifacts(model, fixed_plan(graph, graph.layers[1].name, 2), out, None)
    return out


@pytest.mark.parametrize("given", ["bundle folder", "tflite in the bundle"])
def test_a_patch_bundle_carries_the_preprocessing_and_labels(compiled: tuple[Path, Path], tmp_path: Path,
                                                            given: str) -> None:
    from edgekit.formats.bundle import load_bundle
    from edgekit.runtime import load

    bundle, digit = compiled
    source = bundle if given == "bundle folder" else bundle / "digits_cnn_int8.tflite"
    patched = _emit(source, tmp_path / "patches")
    compiled_manifest, manifest = load_bundle(bundle).manifest, load_bundle(patched).manifest
    assert (manifest.model, manifest.labels) == ("digits_cnn", tuple("0123456789"))
    assert manifest.preprocessing == compiled_manifest.preprocessing is not None
    assert manifest.preprocessing.scale == 1 / 255 and manifest.plan is not None
    # patch by patch, bit-exact with the full INT8 model under the same interpreter
    np.testing.assert_array_equal(load(patched).run_image(digit), load(bundle, backend="litert").run_image(digit))


def test_edgekit_run_on_an_image_names_the_same_class_patched(compiled: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    bundle, digit = compiled
    code, out, err = run(capsys, "plan", "patch", str(bundle), "--stage-end", "wrapped.features.1.0:conv_2d",
                         "--grid", "2", "--target", "stm32f746", "--emit", str(tmp_path / "patches"), "--json")
    assert code == 0, err
    assert json.loads(out)["emitted"]["patches"] == 4
    answers = []
    for folder in (bundle, tmp_path / "patches"):
        code, out, err = run(capsys, "run", str(folder), "--input", str(digit), "--top", "1", "--json")
        assert code == 0, err
        answers.append(json.loads(out)["results"][0]["outputs"][0]["top"])
    (top,) = answers[1]
    assert answers[0] == answers[1] and top["label"] == str(top["index"])  # both on tflite-micro: bit-exact


def test_a_loose_tflite_gives_a_bundle_that_asks_for_an_array(compiled: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from edgekit.runtime import load

    bundle, digit = compiled
    loose = tmp_path / "loose.tflite"
    shutil.copy(bundle / "digits_cnn_int8.tflite", loose)  # no manifest beside it: nothing known
    patched = _emit(loose, tmp_path / "patches")
    expected = (f"{patched}: the bundle has no image preprocessing in its manifest, so an image cannot become its "
                "input; pass the frames as an array instead (edgekit run --input frames.npy or .npz; "
                "Session.run(array))")
    with pytest.raises(InputError) as caught:
        load(patched).run_image(digit)
    assert str(caught.value) == expected
    code, _, err = run(capsys, "run", str(patched), "--input", str(digit))
    assert code != 0 and err.strip().splitlines()[-1] == f"edgekit: error: {expected}"


def test_a_bundle_without_one_tflite_stage_is_refused_by_name(tmp_path: Path) -> None:
    from helpers import tiny_tail_bundle

    from edgekit.convert.patch_pack import bundle_model_file

    onnx_bundle = tiny_tail_bundle(tmp_path)
    with pytest.raises(ConversionError) as caught:
        bundle_model_file(onnx_bundle)
    assert str(caught.value) == (f"{onnx_bundle}: patch artifacts are cut from a bundle of one INT8 .tflite stage, "
                                 "found stages tail (tail.onnx); pass the .tflite file itself")
