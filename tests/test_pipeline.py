"""The compile pipeline (steps, staging, the bundle whole or not at all) and what every compile writes besides the
model: the model's own preprocessing and labels, and the INT8 recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from mutations import minimal_tflite

from edgekit.convert.compile_split import split_recipe
from edgekit.convert.config import Int8Config
from edgekit.convert.patch_pack import source_recipe
from edgekit.convert.pipeline import Build, Pipeline
from edgekit.convert.preprocessing import input_preprocessing, model_labels
from edgekit.errors import BundleError, CalibrationError, ConversionError
from edgekit.formats.bundle import Manifest, QuantRecipe, Stage, TensorInfo, load_bundle, write_bundle
from edgekit.models import ModelCfg, create_model

RECIPE = QuantRecipe("tflite", True, "int8", "NHWC", "histogram", 200, 100, False)


def test_preprocessing_and_labels_come_from_the_model_cfg_and_flags_override() -> None:
    digits = create_model("digits_cnn")
    default = input_preprocessing(digits, "NHWC")
    assert default is not None and (default.layout, default.channels, default.height, default.width) == \
        ("NHWC", 1, 8, 8)
    assert (default.scale, default.mean, default.std) == (1 / 255, (0.0,), (1.0,))
    assert model_labels(digits) == tuple("0123456789")

    normalised = create_model("mobilenet_v2_035_96")
    normalised.pretrained_cfg = ModelCfg((3, 96, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ("a", "b"))
    from_cfg = input_preprocessing(normalised, "NCHW")
    assert from_cfg is not None and from_cfg.mean == (0.485, 0.456, 0.406) and model_labels(normalised) == ("a", "b")
    overridden = input_preprocessing(normalised, "NCHW", mean=(0.5,), std=(0.25,))
    assert overridden is not None and (overridden.mean, overridden.std) == ((0.5,), (0.25,))

    class Custom(torch.nn.Module):  # built outside the registry: no cfg, [0, 1] pixels, no labels
        input_shape = (1, 3, 4, 4)

    custom = input_preprocessing(Custom(), "NCHW")
    assert custom is not None and (custom.mean, custom.std) == ((0.0,), (1.0,)) and model_labels(Custom()) is None
    with pytest.raises(CalibrationError, match="--mean has 2 values; the model's input has 3 channels"):
        input_preprocessing(Custom(), "NCHW", mean=(0.5, 0.5))


def test_the_recipe_records_what_the_config_did() -> None:
    assert Int8Config(channels_last_io=True).recipe(100, data_free=False) == RECIPE
    onnx = Int8Config(format="onnx", calibration="entropy", per_channel=False, max_samples=64).recipe(64, True)
    assert onnx == QuantRecipe("onnx", False, "float32", "NCHW", "entropy", 64, 64, True)
    head = Int8Config(max_samples=500)
    assert split_recipe(head, "fp32", 300, False, "NCHW") == {"head": head.recipe(300, False)}
    tail = split_recipe(head, "int8", 300, False, "NHWC")["tail"]  # the tail sees every sample, in the head's layout
    assert tail == QuantRecipe("onnx", True, "float32", "NHWC", "minmax", 500, 300, False)


def _bundle(tmp_path: Path, recipe: dict[str, QuantRecipe] | None, name: str = "b") -> Path:
    source = tmp_path / f"{name}_src"
    source.mkdir()
    (source / "m.tflite").write_bytes(minimal_tflite())  # the loader verifies it; nothing runs it
    tensor = TensorInfo("x", (1, 8, 8, 1), "int8", "NHWC", 0.1, 0)
    stage = Stage("main", "litert", "m.tflite", (tensor,), (TensorInfo("y", (1, 10), "int8", None, 0.1, 0),))
    return write_bundle(source, Manifest("m", "rpi4", (stage,), recipe=recipe), tmp_path / name)


def test_the_recipe_is_optional_and_round_trips(tmp_path: Path) -> None:
    with_recipe = _bundle(tmp_path, {"main": RECIPE})
    assert load_bundle(with_recipe).manifest.recipe == {"main": RECIPE}
    keys = list(json.loads((with_recipe / "manifest.json").read_text()))
    assert keys[-3:] == ["labels", "recipe", "files"]
    older = _bundle(tmp_path, None, "older")  # as bundles were written before the recipe: no key at all
    assert "recipe" not in json.loads((older / "manifest.json").read_text())
    assert load_bundle(older).manifest.recipe is None


@pytest.mark.parametrize("mutate, message", [
    (lambda r: None, "'recipe' must be an object (stage name -> recipe), found null"),
    (lambda r: {}, "'recipe' must not be empty"),
    (lambda r: {**r, "tail": r["main"]}, "'recipe['tail']' names no stage (stages: main)"),
    (lambda r: {"main": {**r["main"], "format": "onnx"}}, "format' onnx does not match stage 'main''s file"),
    (lambda r: {"main": {**r["main"], "samples": 201}}, "samples' must be <= 200, found 201"),
    (lambda r: {"main": {**r["main"], "data_free": 0}}, "data_free' must be true or false, found integer 0"),
    (lambda r: {"main": {**r["main"], "calibration_method": "kl"}}, "calibration_method' must be one of"),
    (lambda r: {"main": {k: v for k, v in r["main"].items() if k != "io_layout"}}, "missing key 'recipe['main'].io_l"),
])
def test_a_bad_recipe_refuses_the_manifest(tmp_path: Path, mutate: Any, message: str) -> None:
    data = json.loads((_bundle(tmp_path, {"main": RECIPE}) / "manifest.json").read_text())
    data["recipe"] = mutate(data["recipe"])
    with pytest.raises(BundleError, match=re.escape(message)):
        Manifest.from_dict(data)


def test_patch_artifacts_take_the_recipe_of_the_bundle_their_model_lies_in(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"main": RECIPE})
    assert source_recipe(bundle / "m.tflite") == RECIPE
    assert source_recipe(_bundle(tmp_path, None, "older") / "m.tflite") is None
    (bundle / "m.tflite").write_bytes(b"altered")  # the bundle no longer verifies: its recipe is not these bytes'
    assert source_recipe(bundle / "m.tflite") is None
    loose = tmp_path / "loose.tflite"
    loose.write_bytes(b"TFL3")
    assert source_recipe(loose) is None


class _Toy:
    """A report as compiles give them."""

    def to_dict(self) -> dict:
        return {"ok": True}

    def render(self) -> str:
        return "ok"


def _model_file(build: Build) -> None:
    (build.tmp / "m.tflite").write_bytes(minimal_tflite())


def _describe(build: Build) -> None:
    tensor = TensorInfo("x", (1, 4), "int8", None, 0.1, 0)
    build.manifest = Manifest("toy", "rpi4", (Stage("main", "litert", "m.tflite", (tensor,), (tensor,)),))
    build.report = _Toy()


def _fail(build: Build) -> None:
    raise ConversionError("step failed")


def test_a_pipeline_writes_the_bundle_and_its_report_after_every_step(tmp_path: Path) -> None:
    order: list[str] = []
    steps = Pipeline(prepare=(lambda b: order.append("prepare"),),
                     stage=(lambda b: order.append("stage"), _model_file, _describe))
    out = steps.run(Build(out_dir=tmp_path / "out")).out_dir
    assert order == ["prepare", "stage"]
    assert sorted(p.name for p in out.iterdir()) == ["m.tflite", "manifest.json", "report.json", "report.txt"]
    assert json.loads((out / "report.json").read_text()) == {"ok": True} and load_bundle(out).manifest.model == "toy"


@pytest.mark.parametrize("where", ["prepare", "stage", "after_describe"])
def test_a_failing_step_leaves_the_output_as_it_was(tmp_path: Path, where: str) -> None:
    out = tmp_path / "deep" / "out"
    steps = {"prepare": Pipeline(prepare=(_fail,), stage=(_model_file, _describe)),
             "stage": Pipeline(prepare=(), stage=(_model_file, _fail, _describe)),
             "after_describe": Pipeline(prepare=(), stage=(_model_file, _describe, _fail))}[where]
    with pytest.raises(ConversionError, match="step failed"):
        steps.run(Build(out_dir=out))
    assert not out.exists()  # nor any staging folder beside it; a failed prepare creates no folder at all
    assert [p.name for p in tmp_path.iterdir()] == ([] if where == "prepare" else ["deep"])
    assert where == "prepare" or list((tmp_path / "deep").iterdir()) == []


def test_a_pipeline_refuses_a_foreign_output_before_any_step(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not an earlier bundle"):
        Pipeline(prepare=(_fail,), stage=()).run(Build(out_dir=tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "mine"
