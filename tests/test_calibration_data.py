"""Calibration and held-out arrays as users bring them: uint8 arrays are raw pixels and get the bundle's image
preprocessing (as image folders do, and the report says so); float values far outside what that preprocessing
gives are warned about, naming both ranges."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from PIL import Image

from edgekit.convert.calibration import load_calibration, load_described, load_labelled
from edgekit.formats.bundle import InputPreprocessing

NORMALISED = InputPreprocessing("NCHW", 3, 2, 2, 1 / 255, (0.5, 0.5, 0.0), (0.5, 0.25, 1.0))


def _white_and_black(layout: str) -> np.ndarray:
    """Two 3x2x2 uint8 images, all 255 and all 0, laid out `layout`."""
    pixels = np.stack([np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2, 3), np.uint8)])
    return pixels if layout == "NHWC" else pixels.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("layout, shape", [("NCHW", (1, 3, 2, 2)), ("NHWC", (1, 2, 2, 3))])
def test_uint8_arrays_are_pixels_and_get_the_image_preprocessing(tmp_path: Path, layout: str,
                                                                 shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "pixels.npy", _white_and_black(layout))
    data, described = load_described(tmp_path / "pixels.npy", shape, 10, NORMALISED, layout)
    channels = data[:, :, 0, 0] if layout == "NCHW" else data[:, 0, 0, :]
    # white: (1 - 0.5) / 0.5, (1 - 0.5) / 0.25, (1 - 0) / 1; black: -0.5 / 0.5, -0.5 / 0.25, 0
    assert data.dtype == np.float32 and channels.tolist() == [[1.0, 2.0, 1.0], [-1.0, -2.0, 0.0]]
    assert described == (f"from {tmp_path / 'pixels.npy'} (uint8 pixels: 0..255 x 1/255, then (x - mean) / std "
                         "with mean 0.5,0.5,0 and std 0.5,0.25,1, as the bundle preprocesses images)")


def test_uint8_pixels_read_as_the_same_images_in_a_folder_do(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i}.png")
    np.save(tmp_path / "pixels.npy", pixels.transpose(0, 3, 1, 2))
    from_folder, described = load_described(folder, (1, 3, 4, 4), 10)
    assert described == f"from {folder} (images: 0..255 x 1/255, as the bundle preprocesses images)"
    np.testing.assert_array_equal(load_calibration(tmp_path / "pixels.npy", (1, 3, 4, 4), 10), from_folder)


def test_float_pixels_0_to_255_are_warned_about_with_both_ranges(tmp_path: Path) -> None:
    np.save(tmp_path / "calib.npy", np.linspace(0, 255, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 2, 2))
    with pytest.warns(UserWarning) as caught:
        data, described = load_described(tmp_path / "calib.npy", (1, 3, 2, 2), 10)
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'calib.npy'}: values span [0, 255], far outside [0, 1] that the bundle's image preprocessing "
        "(0..255 x 1/255) gives; pass raw pixels as a uint8 array (they get that preprocessing), values preprocessed "
        "the same way, or --mean and --std for your model's normalisation"]
    assert data.max() == 255 and described == f"from {tmp_path / 'calib.npy'}"  # taken as they are


def test_normalised_data_outside_the_default_range_is_warned_and_in_range_data_is_not(tmp_path: Path) -> None:
    imagenet = InputPreprocessing("NCHW", 3, 2, 2, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    normalised = np.random.default_rng(0).uniform(-2.1, 2.6, (4, 3, 2, 2)).astype(np.float32)
    np.save(tmp_path / "norm.npy", normalised)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_calibration(tmp_path / "norm.npy", (1, 3, 2, 2), 10, imagenet)  # what that preprocessing gives
        np.save(tmp_path / "unit.npy", normalised / 5 + 0.5)
        load_calibration(tmp_path / "unit.npy", (1, 3, 2, 2), 10)  # within [0, 1] +- its width
    # the default preprocessing gives [0, 1]; this -2.1 .. 2.6 data lies more than 1 below it
    with pytest.warns(UserWarning, match=r"values span \[-2.\d+, 2.\d+\], far outside \[0, 1\]"):
        load_calibration(tmp_path / "norm.npy", (1, 3, 2, 2), 10)


def test_held_out_uint8_pixels_get_the_preprocessing_and_keep_their_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "eval.npz", x=_white_and_black("NCHW"), y=np.array([3, 7]))
    x, y = load_labelled(tmp_path / "eval.npz", (1, 3, 2, 2), preprocessing=NORMALISED)
    assert x[:, :, 1, 1].tolist() == [[1.0, 2.0, 1.0], [-1.0, -2.0, 0.0]] and y is not None and y.tolist() == [3, 7]


@pytest.mark.slow
def test_compile_with_uint8_calibration_and_held_out_digits(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from edgekit.models.digits import load_digits_split

    x_train, _, x_test, y_test = load_digits_split()
    np.savez(tmp_path / "calib.npz", x=np.round(x_train[:50] * 255).astype(np.uint8))
    np.savez(tmp_path / "eval.npz", x=np.round(x_test[:100] * 255).astype(np.uint8), y=y_test[:100])
    code, out, err = run(capsys, "compile", "digits_cnn", "--pretrained", "--target", "jetson-orin-nano", "--int8",
                         "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
                         "-o", str(tmp_path / "bundle"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["calibration"] == \
        f"from {tmp_path / 'calib.npz'} (uint8 pixels: 0..255 x 1/255, as the bundle preprocesses images)"
    # taken as 0..255 floats, the held-out digits would score near chance; preprocessed they score as in [0, 1]
    assert report["fidelity"]["samples"] == 100 and report["fidelity_drop_points"] <= 1.0
    assert report["fidelity"]["fp32_accuracy"] >= 0.95
