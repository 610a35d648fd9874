"""Shared fixtures: exports of the tiny models and the held-out digits. Plain helpers are in helpers.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import export_tflite, tiny_net

from edgekit.offload.broker import Broker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # tests read tools/blazeface.py's model files


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tflite(tiny_net(), tmp_path_factory.mktemp("tflite") / "tiny.tflite")


@pytest.fixture(scope="session")
def mbv2_int8_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize
    from edgekit.models import create_model

    model = create_model("mobilenet_v2_035_96")
    calibration = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
    path = tmp_path_factory.mktemp("tflite") / "mobilenet_v2_035_96_int8.tflite"
    return quantize(model, calibration, path, Int8Config(format="tflite"))


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """100 training digits (calibration) and the 360 held-out ones (evaluation), as .npz files."""
    from edgekit.models.digits import load_digits_split

    folder = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez(folder / "calib.npz", x=x_train[:100], y=y_train[:100])
    np.savez(folder / "eval.npz", x=x_test, y=y_test)
    return folder / "calib.npz", folder / "eval.npz"


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A Mosquitto of the test's own on a free loopback port (skip the module with helpers.needs_mosquitto)."""
    with Broker() as running:
        yield running
