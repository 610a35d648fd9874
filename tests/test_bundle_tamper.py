"""Tampered bundles whose hashes were made consistent: every model file is checked before an interpreter sees it.

A corpus of 330 mutants (tests/mutations.py, fixed seed) of two real .tflite files and one .onnx file, each packed
into a bundle by the writer and opened, loaded and run once in a child process (TFLite mutants under tflite-micro,
the MCU bundle's backend, and under LiteRT), gives 0 crashes and 0 tracebacks: each runs or is an edgekit error.
Then the verifier's messages, ONNX external data, and the bundle's total size cap.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mutations import minimal_tflite, onnx_mutants, tflite_mutants

from edgekit.convert.compile import tensor_infos
from edgekit.errors import BackendError, BundleError
from edgekit.formats.bundle import FileEntry, Manifest, Stage, TensorInfo, load_bundle, write_bundle
from edgekit.runtime import backends, load

HERE = Path(__file__).resolve().parent
SEED = 15
BATCH_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_tflite: Path) -> dict[str, Path]:
    """The INT8 digits CNN as .tflite and .onnx (quantized on 50 digits) and the tiny float net as .tflite."""
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize
    from edgekit.models import create_model
    from edgekit.models.digits import load_digits_split

    root = tmp_path_factory.mktemp("tamper")
    model, calibration = create_model("digits_cnn", pretrained=True), load_digits_split()[0][:50]
    files = {fmt: quantize(model, calibration, root / f"digits.{fmt}", Int8Config(format=fmt))
             for fmt in ("tflite", "onnx")}
    return {"digits.tflite": files["tflite"], "digits.onnx": files["onnx"], "tiny.tflite": tiny_tflite}


def _stage_bundle(model: Path, data: bytes, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A one-stage bundle of `data` with `model`'s tensors: an MCU bundle (tflite-micro) for .tflite."""
    (inputs,), (outputs,) = tensor_infos(model)
    source = out.with_name(out.name + ".src")
    source.mkdir()
    name = "model" + model.suffix
    (source / name).write_bytes(data)
    for extra_name, content in (extra or {}).items():
        (source / extra_name).write_bytes(content)
    tflite = model.suffix == ".tflite"
    stage = Stage("main", "tflite-micro" if tflite else "onnxruntime", name, (inputs,), (outputs,))
    return write_bundle(source, Manifest("mutant", "stm32f746" if tflite else "x86-server", (stage,)), out)


def _run_jobs(jobs: list[tuple[str, str, str]], folder: Path) -> tuple[list[dict], list[str]]:
    """Each job's result (path, backend, what was mutated) from child processes; a job that kills its child
    (signal, hang) is a failure and the next child starts after it."""
    results: list[dict] = []
    failures: list[str] = []
    while len(results) + len(failures) < len(jobs):
        start = len(results) + len(failures)
        listing = folder / f"jobs_{start}.txt"
        listing.write_text("".join(f"{path}\t{backend}\n" for path, backend, _ in jobs[start:]))
        try:
            child = subprocess.run([sys.executable, str(HERE / "mutations.py"), str(listing)], capture_output=True,
                                   text=True, timeout=BATCH_TIMEOUT_S, cwd=folder)
            out, err, code = child.stdout, child.stderr, child.returncode
        except subprocess.TimeoutExpired as exc:  # text=True, yet what a killed child wrote comes back as bytes
            out, err, code = (exc.stdout or b"").decode(), (exc.stderr or b"").decode(), "a hang"
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results += [{**result, "job": jobs[start + n]} for n, result in enumerate(done)]
        if code != 0:
            failures.append(f"{jobs[start + len(done)]}: child ended with {code} (stderr ends: {err[-300:]})")
    return results, failures


def test_every_tampered_model_is_a_clean_error(models: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    corpus = [(name, label, data) for name, count in (("digits.tflite", 130), ("tiny.tflite", 120))
              for label, data in tflite_mutants(models[name].read_bytes(), rng, count)]
    corpus += [("digits.onnx", label, data) for label, data in onnx_mutants(models["digits.onnx"].read_bytes(),
                                                                             rng, 80)]
    jobs = []
    for i, (name, label, data) in enumerate(corpus):
        bundle = str(_stage_bundle(models[name], data, tmp_path / f"m{i}.ekb"))
        jobs += [(bundle, "-", f"{name}: {label}")] + ([(bundle, "litert", f"{name}: {label}")]
                                                       if name.endswith(".tflite") else [])
    (tmp_path / "weights.bin").write_bytes(bytes(200_000))  # what external data would read from the cwd
    results, failures = _run_jobs(jobs, tmp_path)
    counts = Counter(r["outcome"] for r in results)
    tracebacks = [f"{r['job']}: {r['traceback']}" for r in results if r["outcome"] == "traceback"]
    summary = (f"{len(corpus)} mutants, {len(jobs)} runs: {counts['verifier']} refused by the verifier, "
               f"{counts['refused']} refused by the session or interpreter, {counts['ran']} ran; "
               f"{len(failures)} crashes or hangs, {len(tracebacks)} tracebacks")
    print(summary)
    assert len(corpus) >= 300
    assert not failures and not tracebacks, summary + "\n" + "\n".join(failures + tracebacks[:3])
    assert counts["verifier"] > 100 and counts["ran"] > 20, summary  # both kinds occur: the corpus bites
    external = [r for r in results if "external data" in r.get("message", "")]
    assert external and all(r["outcome"] == "verifier" for r in external), summary


def _tflite_bytes(models: dict[str, Path], name: str) -> bytearray:
    return bytearray(models[name].read_bytes())


def _first_operator_input(data: bytes) -> int:
    """The byte position of operator 0's first input index in subgraph 0."""
    from edgekit.formats.tflite_verify import schema

    op = schema().Model.GetRootAs(data, 0).Subgraphs(0).Operators(0)._tab
    return op.Vector(op.Offset(6))


def test_the_verifier_names_the_field(models: dict[str, Path], tmp_path: Path) -> None:
    data = _tflite_bytes(models, "digits.tflite")
    tensors = len(tensor_count_of(data))
    struct.pack_into("<i", data, _first_operator_input(bytes(data)), tensors + 40)
    bundle = _stage_bundle(models["digits.tflite"], bytes(data), tmp_path / "index.ekb")
    with pytest.raises(BundleError, match=rf"^{bundle}: model.tflite: invalid TFLite model: operator 0 of subgraph "
                                          rf"0: input tensor index {tensors + 40} out of range \({tensors} tensors\)$"):
        load_bundle(bundle)
    (tmp_path / "index.tflite").write_bytes(data)  # a file opened directly by the runtime: the same check
    with pytest.raises(BackendError, match=rf"{tmp_path / 'index.tflite'}: invalid TFLite model: operator 0 of"):
        backends.open_model(tmp_path / "index.tflite")
    truncated = _stage_bundle(models["tiny.tflite"], models["tiny.tflite"].read_bytes()[:-200], tmp_path / "cut.ekb")
    with pytest.raises(BundleError, match=r"model.tflite: invalid TFLite model: .* lies outside the file \(at byte"):
        load_bundle(truncated)


def tensor_count_of(data: bytes) -> range:
    from edgekit.formats.tflite_verify import schema

    return range(schema().Model.GetRootAs(bytes(data), 0).Subgraphs(0).TensorsLength())


def test_an_mcu_bundle_runs_under_tflite_micro_after_verification(models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("tflite_micro")
    bundle = _stage_bundle(models["digits.tflite"], models["digits.tflite"].read_bytes(), tmp_path / "mcu.ekb")
    session, host = load(bundle), load(bundle, "litert")
    assert session.backends == ("tflite-micro",) and host.backends == ("litert",)
    x = np.random.default_rng(0).random(session.input.shape, dtype=np.float32)
    assert session.run(x).argmax() == host.run(x).argmax()


def test_onnx_external_data_is_refused_at_load_and_by_the_backend(models: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    model = onnx.load(models["digits.onnx"])
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True, location="weights.bin",
                    size_threshold=1024)
    data = (tmp_path / "ext.onnx").read_bytes()
    monkeypatch.chdir(tmp_path)  # weights.bin lies in the current folder, as in the finding
    bundle = _stage_bundle(models["digits.onnx"], data, tmp_path / "ext.ekb", {"weights.bin": b"\0" * 64})
    with pytest.raises(BundleError, match=r"ext.ekb: model.onnx: tensor '[^']+' keeps its data outside the model "
                                          r"file \(ONNX external data\), which bundles do not allow"):
        load_bundle(bundle)
    with pytest.raises(BackendError, match=r"the model: tensor '[^']+' keeps its data outside the model file"):
        backends.OrtAdapter(data)
    # behind the scan, ONNX Runtime itself is told no folder holds external data, so the cwd's weights.bin is unused
    monkeypatch.setattr(backends, "refuse_external_data", lambda *args: None)
    assert backends.OrtAdapter(models["digits.onnx"].read_bytes()).invoke()[0].shape == (1, 10)
    with pytest.raises(BackendError, match=r"ONNX Runtime cannot load the model .*External data path"):
        backends.OrtAdapter(data)


def test_the_bundle_total_is_capped_before_reading(models: dict[str, Path], tmp_path: Path) -> None:
    data = models["digits.tflite"].read_bytes()
    bundle = _stage_bundle(models["digits.tflite"], data, tmp_path / "two.ekb", {"report.json": b"x" * 5000})
    total = sum(info.file_size for info in zipfile.ZipFile(bundle).infolist())
    assert load_bundle(bundle, max_bundle_bytes=total).read("model.tflite") == data
    with pytest.raises(BundleError, match=rf"two.ekb: its files declare {total:,} bytes together, over the bundle "
                                          rf"cap of {total - 1:,} bytes \(oversized\)"):
        load_bundle(bundle, max_bundle_bytes=total - 1)


def _lying_archive(path: Path, name: str, actual: bytes, declared: int) -> Path:
    """A valid bundle but for member `name`: it inflates to `actual`, while its zip headers and the manifest say
    `declared` bytes (hashed over the first `declared`)."""
    stage = Stage("main", "litert", "m.tflite", *tensor_infos_of_minimal())
    files = {"m.tflite": minimal_tflite(), name: actual}
    entries = {key: FileEntry(hashlib.sha256(data[:declared] if key == name else data).hexdigest(),
                              declared if key == name else len(data)) for key, data in files.items()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, data in files.items():
            archive.writestr(key, data)
        archive.writestr("manifest.json", Manifest("m", "rpi4", (stage,), files=entries).to_json())
    raw = bytearray(path.read_bytes())
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):  # local, central
        at = raw.index(signature)
        while raw[at + name_at:at + name_at + len(name)] != name.encode():
            at = raw.index(signature, at + 1)
        struct.pack_into("<I", raw, at + size_at, declared)
    path.write_bytes(raw)
    return path


def tensor_infos_of_minimal() -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Tensors for a stage over `minimal_tflite` (the loader checks them against nothing; no session opens it)."""
    return (TensorInfo("x", (1, 4), "float32"),), (TensorInfo("y", (1, 4), "float32"),)


def test_a_zip_that_lies_about_sizes_is_read_no_further_than_declared(tmp_path: Path) -> None:
    archive = _lying_archive(tmp_path / "lying.ekb", "notes.txt", b"\0" * 50_000_000, 1000)
    assert zipfile.ZipFile(archive).getinfo("notes.txt").file_size == 1000
    tracemalloc.start()
    with pytest.raises(BundleError, match=r"lying.ekb: .*'notes.txt'"):
        load_bundle(archive)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # the 50 MB it would inflate to were never held


def test_the_builtin_codes_taken_without_the_schema_are_all_in_it() -> None:
    """The verifier takes codes below COMMON_BUILTINS without importing the schema: each must be a real operator."""
    from edgekit.formats.tflite_verify import COMMON_BUILTINS, schema

    codes = {v for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}
    assert set(range(COMMON_BUILTINS)) <= codes
