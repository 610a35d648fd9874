"""The device runtime: real INT8 digits bundles (TFLite under LiteRT, ONNX QDQ under ONNX Runtime) run through
`edgekit.runtime` give exactly what the model files give when run directly, refuse bad frames before running,
read images by the manifest's preprocessing, report latency and memory, and allocate nothing per frame."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekit.convert.compile import tensor_infos
from edgekit.errors import BackendError, BundleError, EdgekitError, InputError, TargetMismatchError
from edgekit.formats import quant
from edgekit.formats.bundle import InputPreprocessing, Manifest, Stage, write_bundle
from edgekit.report.runtime import render_benchmark, render_prediction
from edgekit.runtime import choose_providers, load
from edgekit.runtime.backends import FloatRunner, open_model
from edgekit.runtime.tasks import benchmark, predict

ROOT = Path(__file__).resolve().parents[1]
LABELS = tuple(str(d) for d in range(10))
DIGITS_PREPROCESSING = InputPreprocessing("NCHW", 1, 8, 8, 1 / 255, (0.0,), (1.0,))  # digits are in [0, 1]


def make_bundle(model_file: Path, out: Path, target: str = "rpi4", **changes: object) -> Path:
    """A one-stage bundle around `model_file`, its tensors read from the file; `changes` edit the input tensor."""
    fmt = model_file.suffix[1:]
    (inputs,), (outputs,) = tensor_infos(model_file)
    if changes:
        inputs = replace(inputs, **changes)
    source = out.parent / (out.name + ".src")
    source.mkdir(parents=True)
    shutil.copy(model_file, source / f"digits.{fmt}")
    backend = "litert" if fmt == "tflite" else "onnxruntime"
    stage = Stage("main", backend, f"digits.{fmt}", (inputs,), (outputs,))
    manifest = Manifest("digits_cnn", target, (stage,), preprocessing=DIGITS_PREPROCESSING, labels=LABELS)
    return write_bundle(source, manifest, out)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Held-out digits, the INT8 model files (quantize on 100 training digits) and their bundles."""
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize
    from edgekit.models import create_model
    from edgekit.models.digits import load_digits_split

    x_train, _, x_test, y_test = load_digits_split()
    root = tmp_path_factory.mktemp("runtime")
    model = create_model("digits_cnn", pretrained=True)
    files = {fmt: quantize(model, x_train[:100], root / f"digits.{fmt}", Int8Config(format=fmt))
             for fmt in ("tflite", "onnx")}
    bundles = {"tflite": make_bundle(files["tflite"], root / "digits_tflite.ekb"),  # an archive
               "onnx": make_bundle(files["onnx"], root / "digits_onnx")}  # a folder
    return {"x": x_test, "y": y_test, "files": files, "bundles": bundles}


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_session_gives_what_the_model_file_gives(digits: dict, fmt: str) -> None:
    session = load(digits["bundles"][fmt], threads=1)
    direct = FloatRunner(open_model(digits["files"][fmt]))
    outputs = np.concatenate([session.run(x[None]) for x in digits["x"]])
    expected = np.concatenate([direct(x[None]) for x in digits["x"]])
    assert outputs.dtype == np.float32 and outputs.shape == (360, 10)
    np.testing.assert_array_equal(outputs, expected)  # same quantization, same backend, same numbers
    assert (outputs.argmax(1) == digits["y"]).mean() > 0.95
    assert session.backends == ({"tflite": "litert", "onnx": "onnxruntime"}[fmt],)


def test_int8_frames_pass_as_is_and_match_float_frames(digits: dict) -> None:
    session = load(digits["bundles"]["tflite"])
    assert session.input.dtype == "int8" and session.input.scale is not None
    x = digits["x"][:1]
    q = quant.quantize(x, session.input.scale, session.input.zero_point)
    np.testing.assert_array_equal(session.run(q), session.run(x))
    np.testing.assert_array_equal(session.run(x[0]), session.run(x))  # the batch of 1 may be left off
    buffer = np.empty((1, 10), np.float32)
    assert session.run(x, out=buffer) is buffer and np.array_equal(buffer, session.run(x))


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_huge_but_finite_frames_are_not_taken_for_nan(digits: dict, fmt: str) -> None:
    session = load(digits["bundles"][fmt])
    huge = np.full((1, 1, 8, 8), 1e20, np.float32)  # its sum of squares overflows; every value is finite
    assert session.run(huge).shape == (1, 10)
    huge[0, 0, 3, 3] = np.nan
    with pytest.raises(InputError, match="got 1 NaN and 0 infinite values"):
        session.run(huge)


def test_tflite_micro_runs_the_same_bundle(digits: dict) -> None:
    pytest.importorskip("tflite_micro")
    micro, litert = load(digits["bundles"]["tflite"], backend="tflite-micro"), load(digits["bundles"]["tflite"])
    x = digits["x"][:60]
    a = np.concatenate([micro.run(f[None]) for f in x])
    b = np.concatenate([litert.run(f[None]) for f in x])
    step = litert.output.scale  # reference kernels may round differently from XNNPACK by one output step
    assert np.abs(a - b).max() <= 2 * step + 1e-6
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98
    arena = micro.stats()["backend_memory"][0]
    assert arena["backend"] == "tflite-micro" and 1000 < arena["bytes"] < 64 * 1024


class _CountingInvoke:
    def __init__(self, invoke: object) -> None:
        self.invoke, self.calls = invoke, 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.invoke()  # type: ignore[operator]


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("frame, message", [
    (np.zeros((1, 1, 8, 9), np.float32), r"takes .*\(1, 1, 8, 8\).*; got shape \(1, 1, 8, 9\)"),
    (np.zeros((2, 1, 8, 8), np.float32), r"got shape \(2, 1, 8, 8\)"),
    (np.zeros((1, 8, 8, 1), np.float32), r"got shape \(1, 8, 8, 1\)"),
    (np.zeros((1, 1, 8, 8), np.uint8), r"got dtype uint8 \(pass float"),
    (np.zeros((1, 1, 8, 8), np.int32), r"got dtype int32"),
    (np.full((1, 1, 8, 8), np.nan, np.float32), r"got 64 NaN and 0 infinite values"),
    (np.where(np.eye(8, dtype=bool), np.inf, 0).reshape(1, 1, 8, 8), r"got 0 NaN and 8 infinite values"),
    (np.where(np.eye(8, dtype=bool), -np.inf, 0).astype(np.float32).reshape(1, 1, 8, 8), r"got 0 NaN and 8 infinite"),
    (np.where(np.eye(8, dtype=bool), np.nan, 0.5).astype(np.float16).reshape(1, 1, 8, 8), r"got 8 NaN and 0 infinite"),
    ([[0.0] * 8] * 8, r"got a list, not a numpy array"),
])
def test_bad_frames_are_refused_before_running(digits: dict, fmt: str, frame: object, message: str) -> None:
    session = load(digits["bundles"][fmt])
    counter = _CountingInvoke(session._runners[0].adapter.invoke)
    session._runners[0].adapter.invoke = counter  # type: ignore[method-assign]
    with pytest.raises(InputError, match=message) as caught:
        session.run(frame)  # type: ignore[arg-type]
    assert counter.calls == 0 and session.stats()["count"] == 0
    assert session.input.name in str(caught.value)


def test_int8_frame_into_a_float_model_names_the_dtype(digits: dict) -> None:
    with pytest.raises(InputError, match=r"takes float32 \(1, 1, 8, 8\) NCHW; got dtype int8 \(pass float\)"):
        load(digits["bundles"]["onnx"]).run(np.zeros((1, 1, 8, 8), np.int8))


def test_backend_choice_errors(digits: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = digits["bundles"]["tflite"]
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrt' \(expected one of litert, onnxruntime, "
                                           r"tflite-micro\)"):
        load(bundle, backend="tensorrt")
    with pytest.raises(BackendError, match=r"stage 'main' is a tflite model \(digits.tflite\); backend "
                                           r"'onnxruntime' runs onnx models only"):
        load(bundle, backend="onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on a device without it
    with pytest.raises(BackendError, match=r"'onnxruntime' is not installed: pip install 'edgekit\[runtime-onnx\]'"):
        load(digits["bundles"]["onnx"])
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendError, match=r"'litert' is not installed: pip install 'edgekit\[runtime-litert\]'"):
        load(bundle)


def test_onnx_providers_prefer_the_gpu_when_present() -> None:
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(list(reversed(jetson))) == jetson
    assert choose_providers(["CUDAExecutionProvider", "AzureExecutionProvider"]) == ["CUDAExecutionProvider",
                                                                                      "CPUExecutionProvider"]


def test_expected_target_must_match(digits: dict) -> None:
    with pytest.raises(TargetMismatchError, match=r"built for target 'rpi4', but this device expects "
                                                  r"'jetson-orin-nano'"):
        load(digits["bundles"]["onnx"], expected_target="jetson-orin-nano")
    assert load(digits["bundles"]["onnx"], expected_target="rpi4").manifest.target == "rpi4"


def test_manifest_that_disagrees_with_its_model_is_refused(digits: dict, tmp_path: Path) -> None:
    wrong_scale = make_bundle(digits["files"]["tflite"], tmp_path / "scale.ekb", scale=0.5)
    with pytest.raises(BundleError, match=r"input '.*' does not match the model file: quantization scale 0.5"):
        load(wrong_scale)
    wrong_shape = make_bundle(digits["files"]["onnx"], tmp_path / "shape", shape=(1, 1, 16, 16))
    with pytest.raises(BundleError, match=r"shape \(1, 1, 16, 16\) in the manifest, \(1, 1, 8, 8\) in the model"):
        load(wrong_shape)


def test_run_image_follows_the_manifest_preprocessing(digits: dict, tmp_path: Path) -> None:
    from PIL import Image

    session = load(digits["bundles"]["tflite"])
    hits = 0
    for i in range(20):
        x, label = digits["x"][i], digits["y"][i]
        png = tmp_path / f"{i}.png"
        Image.fromarray(np.round(x[0] * 255).astype(np.uint8), mode="L").save(png)
        frame = session.preprocess_image(png)
        assert frame.shape == (1, 1, 8, 8) and frame.dtype == np.float32
        assert np.abs(frame - x).max() <= 0.5 / 255 + 1e-6
        hits += int(session.run_image(png).argmax() == label)
    assert hits >= 19
    rgb = tmp_path / "big.png"  # a larger colour photo is resized and turned grey
    Image.fromarray(np.full((32, 48, 3), 255, np.uint8)).save(rgb)
    np.testing.assert_allclose(session.preprocess_image(rgb), np.ones((1, 1, 8, 8)), atol=1e-6)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"bad.png: not a readable image"):
        session.run_image(tmp_path / "bad.png")


def test_stats_are_sane(digits: dict) -> None:
    session = load(digits["bundles"]["tflite"], window=50)
    empty = session.stats()
    assert empty["count"] == 0 and empty["p50_ms"] is None
    for x in digits["x"][:80]:
        session.run(x[None])
    stats = session.stats()
    assert stats["count"] == 80 and stats["window"] == 50
    assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] < 1000
    assert stats["peak_rss_bytes"] > 10 * 2**20
    memory = stats["backend_memory"][0]
    assert memory["backend"] == "litert" and 64 < memory["bytes"] < 64 * 1024  # activations, not weights
    session.reset_stats()
    assert session.stats()["count"] == 0
    json.dumps(stats)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_steady_state_allocates_nothing(digits: dict, fmt: str) -> None:
    session = load(digits["bundles"][fmt])
    frames = [x[None] for x in digits["x"]]
    tracemalloc.start()
    try:
        for _ in range(3):  # warm-up: ONNX Runtime's IOBinding path fills a small cache of its own (<= ~25 KB)
            for x in frames:
                session.run(x)
        before, _ = tracemalloc.get_traced_memory()
        for x in frames[:200]:
            session.run(x)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096, f"memory grew by {after - before} bytes over 200 frames"


def test_predict_and_benchmark_for_the_cli(digits: dict, tmp_path: Path) -> None:
    np.save(tmp_path / "three.npy", digits["x"][:3])
    result = predict(digits["bundles"]["onnx"], tmp_path / "three.npy", top=2)
    assert [r["outputs"][0]["top"][0]["label"] for r in result["results"]] == [str(y) for y in digits["y"][:3]]
    assert len(result["results"][0]["outputs"]) == 1 and len(result["results"][0]["outputs"][0]["top"]) == 2
    assert "rank" in render_prediction(result)
    report = benchmark(digits["bundles"]["tflite"], runs=30, warmup=5)
    assert report["count"] == 30 and report["throughput_fps"] > 10
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert "latency p99" in render_benchmark(report)
    np.save(tmp_path / "bad.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(EdgekitError, match=r"array of shape \(3, 8\); input '.*' takes \(1, 1, 8, 8\)"):
        predict(digits["bundles"]["onnx"], tmp_path / "bad.npy")
    with pytest.raises(EdgekitError, match=r"missing.png: no such file"):
        predict(digits["bundles"]["onnx"], tmp_path / "missing.png")


@pytest.mark.slow
@pytest.mark.timeout(1500)  # its own steps may take 120 + 600 + 300 + 300 s (venv, two installs, the run)
def test_runtime_only_venv_has_no_torch(digits: dict, tmp_path: Path) -> None:
    """A device-like install (numpy, onnxruntime, ai-edge-litert, edgekit without the convert extra) runs both
    bundles without importing torch, and `import edgekit.runtime` imports no installed package but numpy (the
    backends load when a bundle needs them); import time and installed size are printed for BENCHMARKS.md."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["numpy", "onnxruntime", "ai-edge-litert"], check=True, timeout=600)
    subprocess.run(pip + ["--no-deps", str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    script = textwrap.dedent(f"""
        import importlib.util, json, subprocess, sys, sysconfig, time
        import numpy as np
        from edgekit.runtime import load
        out = {{}}
        for fmt, path in {json.dumps({k: str(v) for k, v in digits["bundles"].items()})}.items():
            session = load(path)
            out[fmt] = session.run(np.zeros(session.input.shape, np.float32)).tolist()
        assert "torch" not in sys.modules, "torch was imported"
        import edgekit
        assert edgekit.__file__.startswith({json.dumps(str(venv))}), edgekit.__file__
        cold = subprocess.run([sys.executable, "-X", "importtime", "-c", "import edgekit.runtime"],
                              capture_output=True, text=True, check=True).stderr.splitlines()
        out["import_us"] = int(cold[-1].split("|")[1])
        site = tuple({{sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}})
        tops = {{line.split("|")[2].strip().split(".")[0] for line in cold[1:]}}
        specs = {{top: importlib.util.find_spec(top) for top in tops}}  # None: tried and absent (e.g. Jython's)
        out["installed"] = sorted(t for t, spec in specs.items()  # '_distutils_hack': setuptools' startup .pth
                                  if spec and not t.startswith("_") and (spec.origin or "").startswith(site))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import edgekit.runtime"], check=True)
        out["import_process_s"] = time.perf_counter() - start
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for fmt in ("tflite", "onnx"):
        assert len(result[fmt][0]) == 10
    site = next((venv / "lib").glob("python*/site-packages")) if os.name != "nt" else venv / "Lib/site-packages"
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nruntime-only venv: import edgekit.runtime {result['import_us'] / 1e6:.3f} s (importtime), "
          f"python -c 'import edgekit.runtime' {result['import_process_s']:.3f} s; "
          f"site-packages {size / 2**20:.1f} MiB")
    assert result["installed"] == ["edgekit", "numpy"]  # what makes the import fast: nothing heavy comes with it
    assert size < 400 * 2**20
