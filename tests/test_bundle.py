"""Bundles round-trip as a folder and as an .ekb archive, and every way a bundle can be wrong is refused with a
message naming the problem. The loader only verifies models (tests/test_bundle_tamper.py), so the model file here is
the smallest one it accepts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import drop_at, set_at
from mutations import minimal_tflite

from edgekit.errors import BundleError
from edgekit.formats.bundle import (
    FileEntry,
    InputPreprocessing,
    Manifest,
    Stage,
    TensorInfo,
    load_bundle,
    write_bundle,
)

MODEL = "digits_cnn_int8.tflite"
MODEL_BYTES = minimal_tflite(64)  # 64 bytes: a model the loader's verifier accepts, never run


def manifest() -> Manifest:
    """The manifest a compile for stm32f746 would write for the digits CNN (files filled in by write_bundle)."""
    image = TensorInfo("serving_default_x:0", (1, 8, 8, 1), "int8", "NHWC", 0.0627451, -128)
    logits = TensorInfo("StatefulPartitionedCall:0", (1, 10), "int8", None, 0.1171875, 11)
    return Manifest(model="digits_cnn", target="stm32f746",
                    stages=(Stage("main", "litert", MODEL, (image,), (logits,)),),
                    preprocessing=InputPreprocessing("NHWC", 1, 8, 8, 1 / 16, (0.0,), (1.0,)),
                    labels=tuple(str(d) for d in range(10)))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A compile output folder: model, report and an MCU pack in a subfolder."""
    folder = tmp_path / "compiled"
    (folder / "mcu").mkdir(parents=True)
    (folder / MODEL).write_bytes(MODEL_BYTES)
    (folder / "report.json").write_text('{"artifact_bytes": 64}\n')
    (folder / "mcu" / "arena.h").write_text("constexpr int kTensorArenaSize = 6400;\n")
    return folder


def pack(folder: Path, out: Path) -> Path:
    """Zip a folder member by member as it is, without any of write_bundle's checks (to build bad archives)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return out


def edit_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))


def test_round_trip_folder(source: Path, tmp_path: Path) -> None:
    out = write_bundle(source, manifest(), tmp_path / "digits_bundle")
    bundle = load_bundle(out)
    assert bundle.path == out and not bundle.is_archive
    assert sorted(bundle.manifest.files) == ["digits_cnn_int8.tflite", "mcu/arena.h", "report.json"]
    assert bundle.manifest.files[MODEL] == FileEntry(hashlib.sha256(MODEL_BYTES).hexdigest(), 64)
    assert bundle.manifest == replace(manifest(), files=bundle.manifest.files)
    assert bundle.read(MODEL) == MODEL_BYTES
    assert bundle.file_path("mcu/arena.h").read_text().startswith("constexpr")
    assert bundle.manifest.stage("main").inputs[0].zero_point == -128
    with pytest.raises(BundleError, match="no file 'nope.bin'"):
        bundle.read("nope.bin")


def test_round_trip_archive(source: Path, tmp_path: Path) -> None:
    out = write_bundle(source, manifest(), tmp_path / "digits.ekb")
    assert out.is_file() and zipfile.is_zipfile(out)
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["digits_cnn_int8.tflite", "mcu/arena.h", "report.json", "manifest.json"]
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    bundle = load_bundle(out)
    assert bundle.is_archive and bundle.read(MODEL) == MODEL_BYTES
    assert bundle.manifest == load_bundle(write_bundle(source, manifest(), tmp_path / "again")).manifest
    with pytest.raises(BundleError, match="use Bundle.read"):
        bundle.file_path(MODEL)


def test_archive_is_deterministic(source: Path, tmp_path: Path) -> None:
    first = write_bundle(source, manifest(), tmp_path / "a.ekb").read_bytes()
    os.utime(source / MODEL, (0, 0))  # file times do not reach the archive
    assert write_bundle(source, manifest(), tmp_path / "b.ekb").read_bytes() == first


def test_manifest_json_round_trip() -> None:
    m = replace(manifest(), files={MODEL: FileEntry("ab" * 32, 64)})
    text = m.to_json()
    assert text.endswith("\n") and json.loads(text)["format"] == "edgekit-bundle"
    assert list(json.loads(text)) == ["format", "version", "edgekit_version", "model", "target", "stages", "plan",
                                      "preprocessing", "labels", "files"]
    assert Manifest.from_dict(json.loads(text), "x") == m
    hash(m)  # frozen and hashable despite the files dict


def test_old_manifest_in_source_is_replaced(source: Path, tmp_path: Path) -> None:
    (source / "manifest.json").write_text("stale")
    bundle = load_bundle(write_bundle(source, manifest(), tmp_path / "b.ekb"))
    assert "manifest.json" not in bundle.manifest.files


def test_overwrites_a_bundle_but_nothing_else(source: Path, tmp_path: Path) -> None:
    for out in (tmp_path / "b", tmp_path / "b.ekb"):
        write_bundle(source, manifest(), out)
        (source / "report.json").write_text("{}\n")
        assert load_bundle(write_bundle(source, manifest(), out)).read("report.json") == b"{}\n"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "photo.ekb").write_bytes(b"not a zip")
    for out in (tmp_path / "notes", tmp_path / "photo.ekb"):
        with pytest.raises(BundleError, match="is not .*refusing to overwrite"):
            write_bundle(source, manifest(), out)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(BundleError, match="outside the source folder"):
        write_bundle(source, manifest(), source / "inside.ekb")


def test_bad_manifest_writes_nothing(source: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bad = replace(manifest(), stages=(replace(manifest().stages[0], backend="tensorrt"),))
    for name in ("b", "b.ekb"):
        with pytest.raises(BundleError, match="'stages\\[0\\].backend' must be one of"):
            write_bundle(source, bad, out_dir / name)
    missing = replace(manifest(), stages=(replace(manifest().stages[0], file="other.tflite"),))
    with pytest.raises(BundleError, match="'other.tflite' is not listed in 'files'"):
        write_bundle(source, missing, out_dir / "b")
    assert list(out_dir.iterdir()) == []  # no bundle, no temporary left behind



def _rename_file(old: str, new: str) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["files"][new] = data["files"].pop(old)
    return change


def _duplicate_stage(data: dict) -> None:
    data["stages"].append(dict(data["stages"][0]))


def _tamper(folder: Path) -> None:
    raw = bytearray((folder / MODEL).read_bytes())
    raw[10] ^= 0x01
    (folder / MODEL).write_bytes(bytes(raw))


MANIFEST_CASES = {
    "version 2": (set_at("version", value=2), "unsupported manifest version 2"),
    "no format": (drop_at("format"), "missing key 'format'"),
    "other format": (set_at("format", value="zip"), "'format' must be \"edgekit-bundle\""),
    "unknown key": (set_at("extra", value=1), "unknown key 'extra'"),
    "unknown stage key": (set_at("stages", 0, "device", value="npu"), "unknown key 'stages\\[0\\].device'"),
    "missing key": (drop_at("labels"), "missing key 'labels'"),
    "wrong type": (set_at("model", value=3), "'model' must be a non-empty string, found integer 3"),
    "unknown backend": (set_at("stages", 0, "backend", value="tensorrt"),
                        "'stages\\[0\\].backend' must be one of litert, onnxruntime, tflite-micro, found 'tensorrt'"),
    "unknown dtype": (set_at("stages", 0, "inputs", 0, "dtype", value="int4"), "'stages\\[0\\].inputs\\[0\\].dtype'"),
    "unknown layout": (set_at("stages", 0, "inputs", 0, "layout", value="CHW"), "inputs\\[0\\].layout' must be one of"),
    "zero dim": (set_at("stages", 0, "outputs", 0, "shape", value=[1, 0]),
                 "'stages\\[0\\].outputs\\[0\\].shape\\[1\\]' must be >= 1, found 0"),
    "negative dim": (set_at("stages", 0, "inputs", 0, "shape", value=[-1, 8, 8, 1]), "shape\\[0\\]' must be >= 1"),
    "zero point out of range": (set_at("stages", 0, "inputs", 0, "zero_point", value=200),
                                "must be in \\[-128, 127\\]"),
    "stage file not listed": (set_at("stages", 0, "file", value="other.tflite"), "'other.tflite' is not listed"),
    "duplicate stage": (_duplicate_stage, "duplicate stage name 'main'"),
    "plan not an object": (set_at("plan", value=[1]), "'plan' must be an object or null"),
    "traversal": (_rename_file("report.json", "../evil"), "unsafe file name '../evil'.*path traversal"),
    "absolute": (_rename_file("report.json", "/etc/passwd"), "unsafe file name '/etc/passwd'.*absolute path"),
    "backslash": (_rename_file("report.json", "mcu\\report.json"), "backslash"),
    "dot component": (_rename_file("report.json", "./report.json"), "'.' component"),
    "case collision": (_rename_file("report.json", "DIGITS_CNN_INT8.tflite"), "differ only in case"),
    "bad sha256": (set_at("files", MODEL, "sha256", value="XYZ"),
                   "'files\\['digits_cnn_int8.tflite'\\].sha256' must be"),
    "declared smaller": (set_at("files", MODEL, "bytes", value=10), "size mismatch .*says 10 bytes, the file has 64"),
    "declared larger": (set_at("files", MODEL, "bytes", value=100), "size mismatch"),
    "wrong hash": (set_at("files", MODEL, "sha256", value="0" * 64), "sha256 mismatch for 'digits_cnn_int8.tflite'"),
}

FILE_CASES = {
    "tampered byte": (_tamper, "sha256 mismatch for 'digits_cnn_int8.tflite'"),
    "deleted file": (lambda f: (f / "mcu" / "arena.h").unlink(), "'mcu/arena.h' is listed .* but missing"),
    "extra file": (lambda f: (f / "mcu" / "evil.so").write_bytes(b"x"), "'mcu/evil.so' is in the bundle but not "
                                                                         "listed"),
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
    "bad JSON": (lambda f: (f / "manifest.json").write_text('{"format": '), "malformed JSON"),
    "duplicate JSON key": (lambda f: (f / "manifest.json").write_text('{"format": 1, "format": 2}'),
                           "malformed JSON: duplicate key 'format'"),
    "NaN": (lambda f: (f / "manifest.json").write_text('{"format": NaN}'), "malformed JSON: NaN"),
    "not UTF-8": (lambda f: (f / "manifest.json").write_bytes(b'{"model": "\xff"}'), "malformed JSON: not UTF-8"),
    "not an object": (lambda f: (f / "manifest.json").write_text("[]"), "must be a JSON object, found array"),
}

CASES = {name: ((lambda change: lambda f: edit_manifest(f, change))(change), message)
         for name, (change, message) in MANIFEST_CASES.items()} | FILE_CASES


@pytest.mark.parametrize("kind", ["folder", "ekb"])
@pytest.mark.parametrize("case", list(CASES))
def test_refused(case: str, kind: str, source: Path, tmp_path: Path) -> None:
    mutate, message = CASES[case]
    folder = write_bundle(source, manifest(), tmp_path / "bundle")
    mutate(folder)
    path = folder if kind == "folder" else pack(folder, tmp_path / "bundle.ekb")
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("member, message", [
    ("../evil.tflite", "unsafe file name '../evil.tflite'.*path traversal"),
    ("mcu/../../evil", "path traversal"),
    ("/abs/evil", "absolute path"),
    ("C:evil", "colon"),
    ("mcu\\evil", "backslash"),
])
def test_archive_member_names_refused(member: str, message: str, source: Path, tmp_path: Path) -> None:
    path = write_bundle(source, manifest(), tmp_path / "b.ekb")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, b"payload")
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_archive_duplicate_member_refused(source: Path, tmp_path: Path) -> None:
    path = write_bundle(source, manifest(), tmp_path / "b.ekb")
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")
        archive.writestr(MODEL, MODEL_BYTES)
    with pytest.raises(BundleError, match="appears twice"):
        load_bundle(path)


@pytest.mark.parametrize("kind", ["folder", "ekb"])
def test_oversized_refused(kind: str, source: Path, tmp_path: Path) -> None:
    path = write_bundle(source, manifest(), tmp_path / ("b" if kind == "folder" else "b.ekb"))
    with pytest.raises(BundleError, match="'digits_cnn_int8.tflite' declares 64 bytes, over the per-file cap of 40"):
        load_bundle(path, max_file_bytes=40)
    with pytest.raises(BundleError, match="manifest.json is .* bytes, over the cap of 100 bytes"):
        load_bundle(path, max_manifest_bytes=100)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "missing.ekb")
    (tmp_path / "model.tflite").write_bytes(MODEL_BYTES)
    with pytest.raises(BundleError, match="not a bundle: expected a folder or an .ekb zip archive"):
        load_bundle(tmp_path / "model.tflite")


def test_symlink_in_folder_refused(source: Path, tmp_path: Path) -> None:
    folder = write_bundle(source, manifest(), tmp_path / "b")
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="'link' is a symbolic link"):
        load_bundle(folder)


def test_import_needs_neither_numpy_nor_torch() -> None:
    code = ("import sys, edgekit.formats.bundle; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'; "
            "loaded = sorted(m for m in sys.modules if m.startswith('edgekit')); "
            "assert loaded == ['edgekit', 'edgekit.errors', 'edgekit.formats', 'edgekit.formats.bundle'], loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_archive_crc_and_folder_entries(source: Path, tmp_path: Path) -> None:
    folder = write_bundle(source, manifest(), tmp_path / "b")
    stored = tmp_path / "stored.ekb"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("mcu/", b"")  # folder entries, as `zip -r` writes them, are allowed
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    assert load_bundle(stored).read(MODEL) == MODEL_BYTES
    raw = stored.read_bytes()
    stored.write_bytes(raw.replace(MODEL_BYTES, MODEL_BYTES[:-1] + b"!"))  # same size, CRC no longer matches
    with pytest.raises(BundleError, match="'digits_cnn_int8.tflite' is corrupt in the archive"):
        load_bundle(stored)
