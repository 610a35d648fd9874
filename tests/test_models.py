"""Tests for edgekit.models: registry, architecture sizes, shapes, export, and the bundled digits weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ModelLoadError
from edgekit.models import ModelCfg, create_model, list_models, model_cfg
from edgekit.models.digits import (
    DigitsCNN,
    evaluate_accuracy,
    load_digits_split,
    load_digits_weights,
    save_digits_weights,
    train_digits_cnn,
)
from edgekit.models.layers import InvertedResidual

EXPECTED_OUTPUT = {
    "digits_cnn": (1, 10),
    "mcunet_in": (1, 1000),
    "mcunet_vww": (1, 2),
    "mobilenet_v2": (1, 1000),
    "mobilenet_v2_035_96": (1, 1000),
    "resnet18": (1, 1000),
    "tiny_detector": (1, 6, 8, 8),
}


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module) -> int:
    """Conv and linear multiply-accumulates for one forward pass at model.input_shape."""
    total = 0

    def hook(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(model.input_shape))
    for handle in handles:
        handle.remove()
    return total


def test_every_registered_model_is_covered() -> None:
    assert list_models() == sorted(EXPECTED_OUTPUT)


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_forward_shape_eval_mode_and_export(name: str) -> None:
    model = create_model(name)
    assert not model.training
    x = torch.zeros(model.input_shape)
    with torch.no_grad():
        assert tuple(model(x).shape) == EXPECTED_OUTPUT[name]
    exported = torch.export.export(model, (x,))
    assert tuple(exported.module()(x).shape) == EXPECTED_OUTPUT[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "mcunet_vww"])
def test_onnx_dynamo_export(name: str, tmp_path: Path) -> None:
    """The exported file is a valid ONNX model that ONNX Runtime runs to torch's numbers."""
    import onnx
    import onnxruntime as ort

    model = create_model(name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (torch.zeros(model.input_shape),), str(path), dynamo=True)
    exported = onnx.load(path)
    onnx.checker.check_model(exported, full_check=True)  # well-formed, and shapes infer
    (graph_input,) = exported.graph.input
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == list(model.input_shape)
    x = np.random.default_rng(0).random((4, *model.input_shape), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for frame in x:
            (got,) = session.run(None, {graph_input.name: frame})
            expected = model(torch.from_numpy(frame)).numpy()
            assert got.shape == EXPECTED_OUTPUT[name]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_mobilenet_v2_size() -> None:
    model = create_model("mobilenet_v2")
    assert count_params(model) == 3_504_872
    assert count_macs(model) == pytest.approx(300.8e6, rel=1e-3)


def test_resnet18_size() -> None:
    assert count_params(create_model("resnet18")) == 11_689_512


def test_overrides_reach_the_factory() -> None:
    model = create_model("mobilenet_v2", width_mult=0.5, resolution=128, num_classes=7)
    assert model.input_shape == (1, 3, 128, 128)
    with torch.no_grad():
        assert tuple(model(torch.zeros(model.input_shape)).shape) == (1, 7)


def test_mcunet_has_mixed_kernels_expansions_and_residuals() -> None:
    modules = list(create_model("mcunet_in").modules())
    assert {m.kernel_size[0] for m in modules if isinstance(m, nn.Conv2d) and m.groups > 1} == {3, 5, 7}
    assert any(m.use_residual for m in modules if isinstance(m, InvertedResidual))


def test_list_models_pattern() -> None:
    assert list_models("mobilenet_v2*") == ["mobilenet_v2", "mobilenet_v2_035_96"]
    assert list_models("mcunet_?ww") == ["mcunet_vww"]
    assert list_models("nothing*") == []


def test_an_argument_a_factory_does_not_take_is_named() -> None:
    with pytest.raises(ModelLoadError, match="model 'mobilenet_v2_035_96' has no bundled weights .--pretrained.; "
                                             "edgekit ships weights for digits_cnn only"):
        create_model("mobilenet_v2_035_96", pretrained=True)
    with pytest.raises(ModelLoadError, match="model 'resnet18' takes no argument depth; it takes "):
        create_model("resnet18", depth=50)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match="resnet18"):
        create_model("resnet19")


def test_digits_split_shapes_and_range() -> None:
    x_train, y_train, x_test, y_test = load_digits_split(resolution=32)
    assert x_train.shape[1:] == (1, 32, 32) and x_train.dtype == "float32"
    assert len(x_train) + len(x_test) == 1797 and len(y_test) == len(x_test) == 360
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0


def test_pretrained_digits_accuracy() -> None:
    _, _, x_test, y_test = load_digits_split()
    assert evaluate_accuracy(create_model("digits_cnn", pretrained=True), x_test, y_test) >= 0.95


def test_pretrained_weights_file_is_small() -> None:
    assert (Path(__file__).parents[1] / "models" / "digits_cnn.npz").stat().st_size < 100_000


def test_training_is_deterministic() -> None:
    first, _ = train_digits_cnn(seed=3, epochs=1)
    second, _ = train_digits_cnn(seed=3, epochs=1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_weights_round_trip(tmp_path: Path) -> None:
    source = DigitsCNN()
    save_digits_weights(source, tmp_path / "w.npz")
    loaded = load_digits_weights(DigitsCNN(), tmp_path / "w.npz")
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_loader_refuses_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 definitely not weights")
    with pytest.raises(ModelLoadError, match="garbage.npz"):
        load_digits_weights(DigitsCNN(), path)


def test_loader_refuses_key_and_shape_mismatch(tmp_path: Path) -> None:
    arrays = {key: value.numpy() for key, value in DigitsCNN().state_dict().items()}
    np.savez(tmp_path / "wrong_shape.npz", **{**arrays, "classifier.fc.weight": np.zeros((5, 32), np.float32)})
    with pytest.raises(ModelLoadError, match="wrong_shape.npz.*classifier.fc.weight"):
        load_digits_weights(DigitsCNN(), tmp_path / "wrong_shape.npz")
    del arrays["classifier.fc.bias"]
    np.savez(tmp_path / "missing_key.npz", **arrays)
    with pytest.raises(ModelLoadError, match="missing_key.npz.*classifier.fc.bias"):
        load_digits_weights(DigitsCNN(), tmp_path / "missing_key.npz")


def test_pretrained_needs_training_resolution() -> None:
    with pytest.raises(ModelLoadError, match="resolution"):
        create_model("digits_cnn", resolution=32, pretrained=True)


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_every_model_carries_its_cfg_at_its_input_size(name: str) -> None:
    model = create_model(name)
    assert model.pretrained_cfg == model_cfg(name)  # the registered cfg describes the default build
    assert model.pretrained_cfg.input_size == model.input_shape[1:]
    assert model.pretrained_cfg.labels == (tuple("0123456789") if name == "digits_cnn" else None)


def test_cfg_follows_overrides_and_refuses_bad_normalisation() -> None:
    assert create_model("mobilenet_v2", resolution=128).pretrained_cfg.input_size == (3, 128, 128)
    with pytest.raises(ValueError, match="mean must hold 1 or 3"):
        ModelCfg((3, 8, 8), mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        ModelCfg((1, 8, 8), std=(0.0,))
