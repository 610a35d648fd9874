"""Models as users write them: a plain nn.Module without `input_shape`, outputs in a dict, a dataclass or a tuple.

The factories below are what `edgekit compile test_plain_models:<factory>` imports (tests/ is on sys.path).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run, sample_files
from torch import nn

from edgekit.convert.torch_model import TorchModel, as_torch_model, named_outputs
from edgekit.errors import ConversionError, ModelLoadError
from edgekit.formats.bundle import load_bundle
from edgekit.graph.from_torch import from_torch
from edgekit.runtime import load


class Net(nn.Module):
    """3 channels -> conv 3x3/2 (8ch) + ReLU -> global mean -> linear 5; any H, W; no `input_shape`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class DictNet(Net):
    """A dict with one tensor and an unset entry, as `{"logits": ..., "loss": None}`."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:  # type: ignore[override]
        return {"logits": super().forward(x), "loss": None}


@dataclasses.dataclass
class Output:
    """Two outputs, as transformers' ModelOutput dataclasses hold them."""

    logits: torch.Tensor
    features: torch.Tensor


class DataclassNet(Net):
    def forward(self, x: torch.Tensor) -> Output:  # type: ignore[override]
        features = self.features(x)
        return Output(self.fc(features.mean((2, 3))), features)


class TupleNet(Net):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        features = self.features(x)
        return self.fc(features.mean((2, 3))), features


def _seeded(cls: type[Net]) -> Net:
    torch.manual_seed(0)
    return cls().eval()


def plain() -> Net:
    return _seeded(Net)


def dict_output() -> Net:
    return _seeded(DictNet)


def dataclass_output() -> Net:
    return _seeded(DataclassNet)


def tuple_output() -> Net:
    return _seeded(TupleNet)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 calibration and 8 held-out samples, 3x16x16."""
    return sample_files(tmp_path_factory.mktemp("plain"), (3, 16, 16), 32, 8)


def test_the_adapter_keeps_the_users_names_and_leaves_the_module_alone() -> None:
    module = dataclass_output()
    before = dict(vars(module))
    model = as_torch_model(module, (1, 3, 16, 16))
    assert vars(module).keys() == before.keys() and not hasattr(module, "input_shape")
    assert model.input_shape == (1, 3, 16, 16) and model.output_names == ("logits", "features")
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in module.named_parameters()]
    ours, theirs = from_torch(model, (1, 3, 16, 16)), from_torch(Net().eval(), (1, 3, 16, 16))
    assert [layer.name for layer in ours.layers][:2] == [layer.name for layer in theirs.layers][:2] == ["conv", "mean"]
    x = torch.rand(1, 3, 16, 16)
    logits, features = model(x)
    assert torch.equal(logits, module(x).logits) and features.shape == (1, 8, 8, 8)
    assert as_torch_model(model) is model  # wrapping is done once


def test_output_names_follow_keys_fields_and_positions() -> None:
    t = torch.zeros(1)
    nested = {"boxes": (t, t), "extra": {"score": t, "unused": None}}
    assert [name for name, _ in named_outputs(nested, "m")] == ["boxes.0", "boxes.1", "extra.score"]
    assert [name for name, _ in named_outputs((t, [t]), "m")] == ["output_0", "output_1.0"]
    with pytest.raises(ConversionError, match="m: the model returns str at label; expected tensors"):
        named_outputs({"label": "cat"}, "m")
    with pytest.raises(ConversionError, match="m: the model's output holds no tensor"):
        named_outputs({"loss": None}, "m")


def test_the_shape_comes_from_the_flag_then_the_attribute_then_the_data(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 12, 20), np.float32))
    assert as_torch_model(plain(), calibration=tmp_path / "x.npy").input_shape == (1, 3, 12, 20)
    assert as_torch_model(plain(), (1, 3, 8, 8), tmp_path / "x.npy").input_shape == (1, 3, 8, 8)
    with_attribute = plain()
    with_attribute.input_shape = (1, 3, 24, 24)  # type: ignore[assignment]
    assert as_torch_model(with_attribute, calibration=tmp_path / "x.npy").input_shape == (1, 3, 24, 24)
    with pytest.raises(ModelLoadError, match="Net: no input shape: pass --input-shape N,C,H,W"):
        as_torch_model(plain(), calibration=tmp_path)  # a folder of images has no array shape


@pytest.mark.slow
def test_a_plain_module_compiles_with_input_shape_or_calibration_data_only(
        capsys: pytest.CaptureFixture, tmp_path: Path, data: tuple[Path, Path]) -> None:
    calib, held_out = data
    code, out, err = run(capsys, "compile", "test_plain_models:plain", "--target", "rpi4", "--int8", "--input-shape",
                         "1,3,16,16", "--calib", str(calib), "--eval", str(held_out), "-o", str(tmp_path / "a"),
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["calibration_samples"] == 32 and report["fidelity"]["samples"] == 8
    assert report["fidelity"]["outputs"][0]["name"] == "output" and report["fidelity"]["outputs"][0]["sqnr_db"] > 20
    assert load_bundle(tmp_path / "a").manifest.stages[0].inputs[0].shape == (1, 3, 16, 16)

    code, out, err = run(capsys, "compile", "test_plain_models:plain", "--target", "jetson-orin-nano", "--int8",
                         "--calib", str(calib), "-o", str(tmp_path / "b"), "--json")
    assert code == 0, err
    assert load_bundle(tmp_path / "b").manifest.stages[0].inputs[0].shape == (1, 3, 16, 16)  # from calib.npy


@pytest.mark.parametrize("argv", [
    ["compile", "test_plain_models:plain", "--target", "rpi4", "--int8", "--data-free", "-o", "OUT"],
    ["analyze", "test_plain_models:plain"],
    ["plan", "patch", "test_plain_models:plain", "--target", "stm32f746"],
])
def test_no_shape_anywhere_is_one_line_naming_input_shape(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                          argv: list[str]) -> None:
    code, out, err = run(capsys, *(str(tmp_path / "out") if a == "OUT" else a for a in argv))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert ": no input shape: pass --input-shape N,C,H,W" in err and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("factory, target, outputs", [
    ("dict_output", "jetson-orin-nano", {"logits": (1, 5)}),
    ("dataclass_output", "jetson-orin-nano", {"logits": (1, 5), "features": (1, 8, 8, 8)}),
    ("tuple_output", "stm32f746", {"output_0": (1, 5), "output_1": (1, 8, 8, 8)}),
])
def test_dict_dataclass_and_tuple_outputs_compile_and_the_bundle_runs(
        capsys: pytest.CaptureFixture, tmp_path: Path, data: tuple[Path, Path], factory: str, target: str,
        outputs: dict[str, tuple[int, ...]]) -> None:
    calib, held_out = data
    code, out, err = run(capsys, "compile", f"test_plain_models:{factory}", "--target", target, "--int8",
                         "--input-shape", "1,3,16,16", "--calib", str(calib), "--eval", str(held_out),
                         "-o", str(tmp_path / "b"), "--json")
    assert code == 0, err
    fidelity = json.loads(out)["fidelity"]
    assert [o["name"] for o in fidelity["outputs"]] == list(outputs)  # named as the model names them
    assert all(o["sqnr_db"] > 20 for o in fidelity["outputs"]) and fidelity["top1_agreement"] >= 0.75
    session = load(tmp_path / "b")
    x = np.load(held_out)["x"][:1]
    result = session.run(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if target == "stm32f746" else x)
    got = result if isinstance(result, dict) else {"logits": result}
    assert [v.shape for v in got.values()] == [
        (s[0], s[2], s[3], s[1]) if target == "stm32f746" and len(s) == 4 else s for s in outputs.values()]
    if target != "stm32f746":  # ONNX keeps the model's output names and float I/O
        assert list(got) == list(outputs)
        reference = TorchModel(globals()[factory](), (1, 3, 16, 16))(torch.from_numpy(x))
        logits = reference[0] if isinstance(reference, tuple) else reference
        assert np.abs(got["logits"] - logits.detach().numpy()).max() < 0.05


def test_a_class_in_the_current_folder_is_a_model_spec_for_the_edgekit_command(tmp_path: Path) -> None:
    """`edgekit analyze mynet:Net` from the folder holding mynet.py: no PYTHONPATH, the class is instantiated."""
    import os
    import subprocess
    import sys

    (tmp_path / "mynet.py").write_text("from torch import nn\n\n\nclass Net(nn.Module):\n"
                                       "    def __init__(self):\n        super().__init__()\n"
                                       "        self.conv = nn.Conv2d(3, 4, 3)\n\n"
                                       "    def forward(self, x):\n        return self.conv(x)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(Path(sys.executable).parent / "edgekit"), "analyze", "mynet:Net", "--input-shape",
                           "1,3,10,10", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["macs"] == 4 * 8 * 8 * 3 * 3 * 3
