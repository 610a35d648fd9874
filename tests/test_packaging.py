"""What `pip install edgekit` installs: every package of the source tree with its data files, and the extras the
messages about missing optional packages name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"models": "edgekit.models", "targets": "edgekit.profiles"}  # [tool.setuptools.package-dir]


def _source_packages() -> set[str]:
    """Every folder holding Python code under edgekit/, models/ and targets/, as the package it installs as."""
    names = set()
    for top, package in {"edgekit": "edgekit", **MAPPED}.items():
        for source in (ROOT / top).rglob("*.py"):
            parts = source.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in parts:
                names.add(".".join((package, *parts)))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A non-editable wheel built from a copy of the tree (the build writes build/ and egg-info beside it)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for top in ("edgekit", *MAPPED):
        shutil.copytree(ROOT / top, source / top, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(dist), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (built,) = dist.glob("edgekit-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_every_package_of_the_tree(wheel: zipfile.ZipFile) -> None:
    installed = {str(Path(name).parent).replace("/", ".") for name in wheel.namelist() if name.endswith("__init__.py")}
    assert "edgekit.report" in _source_packages()
    assert sorted(_source_packages() - installed) == []
    assert sorted(installed - _source_packages()) == []


def test_the_wheel_holds_the_profiles_and_the_model_weights(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    profiles = sorted(f"edgekit/profiles/{p.name}" for p in (ROOT / "targets").glob("*.toml"))
    assert "edgekit/profiles/rpi4.toml" in profiles and sorted(set(profiles) - names) == []
    assert "edgekit/models/digits_cnn.npz" in names


def test_onnx_is_an_extra_the_host_extra_includes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["onnx"] == ["onnx>=1.16"]
    assert "edgekit[onnx]" in project["optional-dependencies"]["convert"]
    assert [d for d in project["dependencies"] if d.startswith("onnx")] == []  # not on every device


def _edgekit_without(tmp_path: Path, missing: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess:
    """`edgekit ARGV` in a fresh interpreter where the packages `missing` cannot be imported (a smaller install)."""
    script = (f"import sys\nclass Gone:\n    def find_spec(self, name, path=None, target=None):\n"
              f"        if name.split('.')[0] in {missing!r}:\n            raise ImportError(name)\n"
              f"sys.meta_path.insert(0, Gone())\nfrom edgekit.cli import main\nsys.exit(main({list(argv)!r}))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)


def _conv_onnx(path: Path) -> Path:
    """x 1x2x6x6 -> Conv 3x3 (4ch, no padding): 4 x 4x4 outputs x 2 x 3x3 = 1,152 MACs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


HOST_ONLY = ("torch", "onnxscript", "litert_torch", "ai_edge_quantizer", "matplotlib", "sklearn", "onnxruntime",
             "ai_edge_litert", "tflite_micro", "paho")


def test_analyze_of_an_onnx_file_needs_only_the_onnx_extra(tmp_path: Path) -> None:
    done = _edgekit_without(tmp_path, HOST_ONLY, "analyze", str(_conv_onnx(tmp_path / "conv.onnx")))
    assert done.returncode == 0, done.stderr
    assert "layers 1   MACs 1.2 k (1,152)   params 72" in done.stdout


def test_without_the_onnx_package_analyze_names_the_extra_to_install(tmp_path: Path) -> None:
    model = _conv_onnx(tmp_path / "conv.onnx")
    done = _edgekit_without(tmp_path, (*HOST_ONLY, "onnx"), "analyze", str(model))
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"edgekit: error: {model}: reading ONNX models needs the 'onnx' package, which is not installed: "
        "pip install 'edgekit[onnx]'"]
