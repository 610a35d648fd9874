"""Bundles, the deployable unit: a folder or one `.ekb` zip archive holding `manifest.json` and model files.

The device reads bundles, so this module uses the standard library only: no numpy, never torch. Nothing in
a bundle is unpickled, imported or evaluated. Every file is listed in the manifest with its size and
sha256; a bundle with an unsafe name, a missing, extra, oversized or altered file is refused whole, and so is one
whose files together declare more than a total cap. Model files are checked before any interpreter sees them:
every `.tflite` flatbuffer is verified (`tflite_verify`), an `.onnx` model keeping data in other files is refused
(`onnx_verify`). Format and verification rules: docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgekit import __version__
from edgekit.errors import BundleError

if TYPE_CHECKING:
    from edgekit.formats.detection import DetectionSpec
    from edgekit.formats.plans import PatchSchedule, SplitSchedule

FORMAT = "edgekit-bundle"
VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".ekb"
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024  # all files together, as declared, before any is read
CHUNK_BYTES = 1024 * 1024
MAX_DIM = 2**31 - 1  # every dimension fits a C int32
BACKENDS = ("litert", "onnxruntime", "tflite-micro")
BACKEND_SUFFIX = {"litert": ".tflite", "onnxruntime": ".onnx", "tflite-micro": ".tflite"}
DTYPES = ("int8", "uint8", "int16", "int32", "float32", "float16")
INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-2**31, 2**31 - 1)}
LAYOUTS = ("NCHW", "NHWC")
MANIFEST_KEYS = ("format", "version", "edgekit_version", "model", "target", "stages", "plan", "preprocessing",
                 "labels", "recipe", "detection", "files")
OPTIONAL_MANIFEST_KEYS = ("recipe", "detection")  # absent from bundles written before they existed; never null
STAGE_KEYS = ("name", "backend", "file", "inputs", "outputs")
TENSOR_KEYS = ("name", "shape", "dtype", "layout", "scale", "zero_point")
PREPROCESSING_KEYS = ("layout", "channels", "height", "width", "scale", "mean", "std")
FILE_KEYS = ("sha256", "bytes")
RECIPE_KEYS = ("format", "per_channel", "io_dtype", "io_layout", "calibration_method", "max_samples", "samples",
               "data_free")
RECIPE_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}  # a recipe's format and the file it made
RECIPE_IO_DTYPES = ("int8", "float32")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "histogram")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same inputs give the same archive bytes
_HEX = frozenset("0123456789abcdef")


# ---------------------------------------------------------------------------------------------- validation


def _kind(value: Any) -> str:
    """A value as JSON names its type, with the value when short: `string 'abc'`, `array`."""
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    name = names.get(type(value), type(value).__name__)
    if isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return f"{name} {text if len(text) <= 60 else text[:57] + '...'}"
    return name


def _object(value: Any, where: str, key: str, keys: tuple[str, ...]) -> dict:
    """`value` as an object holding exactly `keys` (every key required; null where the format allows)."""
    label = f"'{key}'" if key else "the manifest"
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {label} must be an object, found {_kind(value)}")
    prefix = f"{key}." if key else ""
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise BundleError(f"{where}: unknown key '{prefix}{unknown[0]}' (expected: {', '.join(keys)})")
    missing = [k for k in keys if k not in value]
    if missing:
        raise BundleError(f"{where}: missing key '{prefix}{missing[0]}' (expected: {', '.join(keys)})")
    return value


def _string(value: Any, where: str, key: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: '{key}' must be a non-empty string, found {_kind(value)}")
    if choices and value not in choices:
        raise BundleError(f"{where}: '{key}' must be one of {', '.join(choices)}, found {value!r}")
    return value


def _integer(value: Any, where: str, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where}: '{key}' must be an integer, found {_kind(value)}")
    if minimum is not None and value < minimum:
        raise BundleError(f"{where}: '{key}' must be >= {minimum}, found {value}")
    if maximum is not None and value > maximum:
        raise BundleError(f"{where}: '{key}' must be <= {maximum}, found {value}")
    return value


def _number(value: Any, where: str, key: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BundleError(f"{where}: '{key}' must be a finite number, found {_kind(value)}")
    if positive and value <= 0:
        raise BundleError(f"{where}: '{key}' must be > 0, found {value}")
    return float(value)


def _boolean(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise BundleError(f"{where}: '{key}' must be true or false, found {_kind(value)}")
    return value


def _array(value: Any, where: str, key: str, nonempty: bool = True) -> list:
    if not isinstance(value, list):
        raise BundleError(f"{where}: '{key}' must be an array, found {_kind(value)}")
    if nonempty and not value:
        raise BundleError(f"{where}: '{key}' must not be empty")
    return value


def _unsafe_name(name: str) -> str | None:
    """Why `name` is not a safe bundle file name, or None when it is (rules: docs/bundle.md)."""
    if not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute path"
    if "\\" in name:
        return "backslash (names use '/' only)"
    if ":" in name:
        return "colon (drive letter or stream name)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control character"
    parts = name.split("/")
    if ".." in parts:
        return "'..' component (path traversal)"
    if "." in parts:
        return "'.' component"
    if "" in parts:
        return "empty component (leading, trailing or doubled '/')"
    return None


def _check_name(name: Any, where: str, context: str) -> str:
    """`name` when it is a string and a safe relative POSIX path; BundleError naming the rule it breaks."""
    if not isinstance(name, str):
        raise BundleError(f"{where}: {context} must be a string, found {_kind(name)}")
    reason = _unsafe_name(name)
    if reason:
        raise BundleError(f"{where}: unsafe file name {name!r} in {context}: {reason}; names must be relative "
                          f"POSIX paths")
    return name


# ---------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a stage: name, static shape, dtype, layout and per-tensor quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str | None = None
    scale: float | None = None
    zero_point: int | None = None

    def to_dict(self) -> dict:
        """The JSON object of this tensor."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout,
                "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "tensor") -> TensorInfo:
        """Validate one tensor object; `key` is its place in the manifest, e.g. `stages[0].inputs[0]`."""
        data = _object(data, where, key, TENSOR_KEYS)
        shape = tuple(_integer(dim, where, f"{key}.shape[{i}]", minimum=1, maximum=MAX_DIM)
                      for i, dim in enumerate(_array(data["shape"], where, f"{key}.shape")))
        dtype = _string(data["dtype"], where, f"{key}.dtype", DTYPES)
        layout = None
        if data["layout"] is not None:
            layout = _string(data["layout"], where, f"{key}.layout", LAYOUTS)
            if len(shape) != 4:
                raise BundleError(f"{where}: '{key}.layout' {layout} needs a 4-D shape, found {list(shape)}")
        scale, zero_point = data["scale"], data["zero_point"]
        if (scale is None) != (zero_point is None):
            raise BundleError(f"{where}: '{key}.scale' and '{key}.zero_point' must both be null or both be set, "
                              f"found scale {_kind(scale)} and zero_point {_kind(zero_point)}")
        if scale is not None:
            if dtype not in INTEGER_RANGES:
                raise BundleError(f"{where}: '{key}' has scale/zero_point but dtype {dtype} is not an integer type")
            scale = _number(scale, where, f"{key}.scale", positive=True)
            zero_point = _integer(zero_point, where, f"{key}.zero_point")
            low, high = INTEGER_RANGES[dtype]
            if not low <= zero_point <= high:
                raise BundleError(f"{where}: '{key}.zero_point' must be in [{low}, {high}] for {dtype}, "
                                  f"found {zero_point}")
        return cls(_string(data["name"], where, f"{key}.name"), shape, dtype, layout, scale, zero_point)


@dataclass(frozen=True)
class Stage:
    """One model file and the backend that runs it, with its input and output tensors."""

    name: str
    backend: str
    file: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def to_dict(self) -> dict:
        """The JSON object of this stage."""
        return {"name": self.name, "backend": self.backend, "file": self.file,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "stage") -> Stage:
        """Validate one stage object; `key` is its place in the manifest, e.g. `stages[0]`."""
        data = _object(data, where, key, STAGE_KEYS)
        backend = _string(data["backend"], where, f"{key}.backend", BACKENDS)
        file = _check_name(data["file"], where, f"'{key}.file'")
        if not file.endswith(BACKEND_SUFFIX[backend]):
            raise BundleError(f"{where}: '{key}.file' {file!r} must end in {BACKEND_SUFFIX[backend]} "
                              f"for backend {backend}")
        tensors = {}
        for side in ("inputs", "outputs"):
            items = tuple(TensorInfo.from_dict(t, where, f"{key}.{side}[{i}]")
                          for i, t in enumerate(_array(data[side], where, f"{key}.{side}")))
            names = [t.name for t in items]
            duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
            if duplicate is not None:
                raise BundleError(f"{where}: duplicate tensor name {duplicate!r} in '{key}.{side}'")
            tensors[side] = items
        return cls(_string(data["name"], where, f"{key}.name"), backend, file, tensors["inputs"], tensors["outputs"])


@dataclass(frozen=True)
class InputPreprocessing:
    """How a raw 0..255 image becomes the first stage's input: x * scale, then (x - mean) / std per channel."""

    layout: str
    channels: int
    height: int
    width: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        """The JSON object of this preprocessing."""
        return {"layout": self.layout, "channels": self.channels, "height": self.height, "width": self.width,
                "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "preprocessing") -> InputPreprocessing:
        """Validate the preprocessing object; mean and std hold one value or one per channel."""
        data = _object(data, where, key, PREPROCESSING_KEYS)
        layout = _string(data["layout"], where, f"{key}.layout", LAYOUTS)
        channels, height, width = (_integer(data[k], where, f"{key}.{k}", minimum=1, maximum=MAX_DIM)
                                   for k in ("channels", "height", "width"))
        scale = _number(data["scale"], where, f"{key}.scale", positive=True)
        stats = {}
        for k in ("mean", "std"):
            values = tuple(_number(v, where, f"{key}.{k}[{i}]", positive=k == "std")
                           for i, v in enumerate(_array(data[k], where, f"{key}.{k}")))
            if len(values) not in (1, channels):
                raise BundleError(f"{where}: '{key}.{k}' must hold 1 or {channels} (channels) values, "
                                  f"found {len(values)}")
            stats[k] = values
        return cls(layout, channels, height, width, scale, stats["mean"], stats["std"])


@dataclass(frozen=True)
class FileEntry:
    """What the manifest promises about one file: its sha256 (lowercase hex) and its size in bytes."""

    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        """The JSON object of this entry."""
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str) -> FileEntry:
        """Validate one `files` entry."""
        data = _object(data, where, key, FILE_KEYS)
        digest = data["sha256"]
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise BundleError(f"{where}: '{key}.sha256' must be 64 lowercase hex digits, found {_kind(digest)}")
        return cls(digest, _integer(data["bytes"], where, f"{key}.bytes", minimum=0))


@dataclass(frozen=True)
class QuantRecipe:
    """How one stage's INT8 model was made: the Int8Config that quantized it and the calibration it saw."""

    format: str  # tflite (litert-torch PT2E) or onnx (onnxruntime QDQ)
    per_channel: bool  # weights quantized per output channel, else per tensor
    io_dtype: str  # dtype of the model's inputs and outputs: int8 or float32
    io_layout: str  # axis order of its 4-D input: NCHW or NHWC
    calibration_method: str  # how activation ranges were set: minmax, entropy, percentile or histogram
    max_samples: int  # the cap on calibration samples
    samples: int  # calibration samples used, at most the cap
    data_free: bool  # the samples were synthesised (batch-norm statistics), not real data

    def to_dict(self) -> dict:
        """The JSON object of this recipe."""
        return {"format": self.format, "per_channel": self.per_channel, "io_dtype": self.io_dtype,
                "io_layout": self.io_layout, "calibration_method": self.calibration_method,
                "max_samples": self.max_samples, "samples": self.samples, "data_free": self.data_free}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str) -> QuantRecipe:
        """Validate one recipe object; `key` is its place in the manifest, e.g. `recipe['main']`."""
        data = _object(data, where, key, RECIPE_KEYS)
        max_samples = _integer(data["max_samples"], where, f"{key}.max_samples", minimum=1)
        return cls(_string(data["format"], where, f"{key}.format", tuple(RECIPE_SUFFIX)),
                   _boolean(data["per_channel"], where, f"{key}.per_channel"),
                   _string(data["io_dtype"], where, f"{key}.io_dtype", RECIPE_IO_DTYPES),
                   _string(data["io_layout"], where, f"{key}.io_layout", LAYOUTS),
                   _string(data["calibration_method"], where, f"{key}.calibration_method", CALIBRATION_METHODS),
                   max_samples, _integer(data["samples"], where, f"{key}.samples", 1, max_samples),
                   _boolean(data["data_free"], where, f"{key}.data_free"))


def _recipes(data: Any, where: str, stages: tuple[Stage, ...]) -> dict[str, QuantRecipe]:
    """The manifest's `recipe`: stage name -> the recipe that made that stage's file (a stage of its format)."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: 'recipe' must be an object (stage name -> recipe), found {_kind(data)}; "
                          "leave the key out when there is none")
    if not data:
        raise BundleError(f"{where}: 'recipe' must not be empty; leave the key out when there is none")
    files = {stage.name: stage.file for stage in stages}
    recipes = {}
    for name, value in data.items():
        key = f"recipe[{name!r}]"
        if name not in files:
            raise BundleError(f"{where}: '{key}' names no stage (stages: {', '.join(files)})")
        recipe = QuantRecipe.from_dict(value, where, key)
        if not files[name].endswith(RECIPE_SUFFIX[recipe.format]):
            raise BundleError(f"{where}: '{key}.format' {recipe.format} does not match stage {name!r}'s file "
                              f"{files[name]!r}")
        recipes[name] = recipe
    return recipes


@dataclass(frozen=True)
class Manifest:
    """The contents of `manifest.json` (format version 1): what the bundle runs, how, and every file's hash."""

    model: str
    target: str
    stages: tuple[Stage, ...]
    plan: PatchSchedule | SplitSchedule | None = None
    preprocessing: InputPreprocessing | None = None
    labels: tuple[str, ...] | None = None
    recipe: dict[str, QuantRecipe] | None = field(default=None, hash=False)  # stage name -> how it was quantized
    files: dict[str, FileEntry] = field(default_factory=dict, hash=False)
    edgekit_version: str = __version__
    detection: DetectionSpec | None = None  # how a detector's outputs decode into boxes (formats/detection.py)

    def stage(self, name: str) -> Stage:
        """The stage called `name`."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise BundleError(f"no stage {name!r} in the manifest (stages: {', '.join(s.name for s in self.stages)})")

    def to_dict(self) -> dict:
        """The JSON object of `manifest.json`, keys in the documented order, files sorted by name; `recipe`
        and `detection` only when there is one."""
        data: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "edgekit_version": self.edgekit_version,
            "model": self.model, "target": self.target, "stages": [s.to_dict() for s in self.stages],
            "plan": None if self.plan is None else self.plan.to_dict(),
            "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict(),
            "labels": None if self.labels is None else list(self.labels)}
        if self.recipe is not None:
            data["recipe"] = {name: recipe.to_dict() for name, recipe in self.recipe.items()}
        if self.detection is not None:
            data["detection"] = self.detection.to_dict()
        return {**data, "files": {name: self.files[name].to_dict() for name in sorted(self.files)}}

    def to_json(self) -> str:
        """`manifest.json` text: UTF-8 JSON, 2-space indent, trailing newline; no NaN or infinity."""
        try:
            return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest of {self.model}: cannot be written as JSON ({exc})") from None

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = MANIFEST) -> Manifest:
        """Validate a parsed manifest strictly; every error names `where`, the key, what was expected and found."""
        where = str(where)
        _check_format(data, where)
        absent = tuple(k for k in OPTIONAL_MANIFEST_KEYS if k not in data)
        data = _object({**data, **dict.fromkeys(absent)}, where, "", MANIFEST_KEYS)
        files_data = data["files"]
        if not isinstance(files_data, dict):
            raise BundleError(f"{where}: 'files' must be an object, found {_kind(files_data)}")
        files: dict[str, FileEntry] = {}
        folded: dict[str, str] = {}
        for name in sorted(files_data):
            _check_name(name, where, "'files'")
            if name.casefold() == MANIFEST:
                raise BundleError(f"{where}: 'files' must not list {name!r} (the manifest is not hashed)")
            if name.casefold() in folded:
                raise BundleError(f"{where}: 'files' lists {folded[name.casefold()]!r} and {name!r}, which differ "
                                  f"only in case (they collide on case-insensitive file systems)")
            folded[name.casefold()] = name
            files[name] = FileEntry.from_dict(files_data[name], where, f"files[{name!r}]")
        stages = tuple(Stage.from_dict(s, where, f"stages[{i}]")
                       for i, s in enumerate(_array(data["stages"], where, "stages")))
        for i, stage in enumerate(stages):
            if any(s.name == stage.name for s in stages[:i]):
                raise BundleError(f"{where}: duplicate stage name {stage.name!r} at 'stages[{i}].name'")
            if stage.file not in files:
                raise BundleError(f"{where}: 'stages[{i}].file' {stage.file!r} is not listed in 'files'")
        plan = None
        if data["plan"] is not None:  # plans.py builds on this module's types; a bundle without a plan skips it
            from edgekit.formats.plans import parse_plan

            plan = parse_plan(data["plan"], where, stages, files)
        preprocessing = None if data["preprocessing"] is None else \
            InputPreprocessing.from_dict(data["preprocessing"], where)
        labels = None
        if data["labels"] is not None:
            labels = tuple(_string_any(v, where, f"labels[{i}]")
                           for i, v in enumerate(_array(data["labels"], where, "labels", nonempty=False)))
        recipe = None if "recipe" in absent else _recipes(data["recipe"], where, stages)
        detection = None
        if "detection" not in absent:  # like plans.py, the detection types build on this module's
            from edgekit.formats.detection import parse_detection

            detection = parse_detection(data["detection"], where, stages[-1].outputs)
        return cls(_string(data["model"], where, "model"), _string(data["target"], where, "target"), stages,
                   plan, preprocessing, labels, recipe, files,
                   _string(data["edgekit_version"], where, "edgekit_version"), detection)


def _string_any(value: Any, where: str, key: str) -> str:
    """A string, possibly empty (labels may be blank)."""
    if not isinstance(value, str):
        raise BundleError(f"{where}: '{key}' must be a string, found {_kind(value)}")
    return value


def _check_format(data: Any, where: str) -> None:
    """Format and version first, so a newer manifest is refused for its version, not for its new keys."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object, found {_kind(data)}")
    if "format" not in data:
        raise BundleError(f"{where}: missing key 'format' (expected \"{FORMAT}\"; not an edgekit bundle?)")
    if data["format"] != FORMAT:
        raise BundleError(f"{where}: 'format' must be \"{FORMAT}\", found {_kind(data['format'])}")
    if "version" not in data:
        raise BundleError(f"{where}: missing key 'version' (expected {VERSION})")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{where}: 'version' must be an integer, found {_kind(version)}")
    if version != VERSION:
        raise BundleError(f"{where}: unsupported manifest version {version} (this edgekit reads version {VERSION}; "
                          f"{'upgrade edgekit' if version > VERSION else 'rebuild the bundle'})")


def _parse_json(raw: bytes, where: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no numbers that overflow to infinity."""
    def pairs(items: list[tuple[str, Any]]) -> dict:
        result: dict = {}
        for key, value in items:
            if key in result:
                raise BundleError(f"{where}: malformed JSON: duplicate key {key!r}")
            result[key] = value
        return result

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise BundleError(f"{where}: malformed JSON: number {text} is out of range")
        return value

    def constant(text: str) -> Any:
        raise BundleError(f"{where}: malformed JSON: {text} is not JSON")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where}: malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_float=finite, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{where}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BundleError(f"{where}: malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise BundleError(f"{where}: malformed JSON: {exc}") from None


# ---------------------------------------------------------------------------------------------- reading


def _scan_folder(root: Path, where: str) -> dict[str, int]:
    """Every regular file under `root` as relative POSIX name -> size; links and special files refused."""
    found: dict[str, int] = {}

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = prefix + entry.name
                if entry.is_symlink():
                    raise BundleError(f"{where}: {name!r} is a symbolic link; bundles hold regular files only")
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), name + "/")
                    continue
                if not entry.is_file(follow_symlinks=False):
                    raise BundleError(f"{where}: {name!r} is not a regular file; bundles hold regular files only")
                _check_name(name, where, "the bundle folder")
                found[name] = entry.stat(follow_symlinks=False).st_size

    walk(root, "")
    return found


class _FolderReader:
    """Files of a directory bundle."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> dict[str, int]:
        return _scan_folder(self.root, str(self.root))

    def open(self, name: str) -> IO[bytes]:
        fd = os.open(self.root / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        return os.fdopen(fd, "rb")

    def close(self) -> None:
        pass


class _ZipReader:
    """Members of an `.ekb` archive; sizes come from the central directory and are checked before reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable zip archive ({exc})") from None
        self.members: dict[str, zipfile.ZipInfo] = {}

    def entries(self) -> dict[str, int]:
        where = str(self.path)
        for info in self.zip.infolist():
            name = info.filename
            if name.endswith("/"):  # a folder entry, as `zip -r` writes: allowed, holds nothing
                _check_name(name[:-1], where, "the archive's member names")
                if info.file_size:
                    raise BundleError(f"{where}: folder member {name!r} declares {info.file_size} bytes")
                continue
            _check_name(name, where, "the archive's member names")
            if name in self.members:
                raise BundleError(f"{where}: member {name!r} appears twice in the archive")
            if info.flag_bits & 0x1:
                raise BundleError(f"{where}: member {name!r} is encrypted; bundles are not")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleError(f"{where}: member {name!r} uses compression method {info.compress_type}; "
                                  f"bundles use stored (0) or deflated (8)")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BundleError(f"{where}: member {name!r} is a symbolic link; bundles hold regular files only")
            self.members[name] = info
        return {name: info.file_size for name, info in self.members.items()}

    def open(self, name: str) -> IO[bytes]:
        return self.zip.open(self.members[name])

    def close(self) -> None:
        self.zip.close()


def _read_verified(reader: _FolderReader | _ZipReader, name: str, declared: int, where: str) -> tuple[bytes, str]:
    """Read `name` once in chunks, hashing as it goes, never more than `declared` + 1 bytes."""
    digest, chunks, count = hashlib.sha256(), [], 0
    try:
        with reader.open(name) as stream:
            while count <= declared:
                chunk = stream.read(min(CHUNK_BYTES, declared + 1 - count))
                if not chunk:
                    break
                digest.update(chunk)
                chunks.append(chunk)
                count += len(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"{where}: file {name!r} is corrupt in the archive ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{where}: cannot read file {name!r} ({exc.strerror or exc})") from None
    if count != declared:
        found = f"more than {declared}" if count > declared else str(count)
        raise BundleError(f"{where}: size mismatch for {name!r}: expected {declared} bytes, read {found}")
    return b"".join(chunks), digest.hexdigest()


class Bundle:
    """A verified bundle: its manifest and the bytes of every file, each checked against its sha256 at load."""

    def __init__(self, path: Path, manifest: Manifest, contents: dict[str, bytes], archive: bool) -> None:
        self._path, self._manifest, self._contents, self._archive = path, manifest, contents, archive

    @property
    def path(self) -> Path:
        """The folder or `.ekb` file this bundle was loaded from."""
        return self._path

    @property
    def manifest(self) -> Manifest:
        """The validated manifest."""
        return self._manifest

    @property
    def is_archive(self) -> bool:
        """True for an `.ekb` zip archive, False for a folder."""
        return self._archive

    def read(self, name: str) -> bytes:
        """The verified bytes of file `name` (as listed in the manifest), held since load."""
        try:
            return self._contents[name]
        except KeyError:
            raise BundleError(f"{self._path}: no file {name!r} in the bundle "
                              f"(files: {', '.join(sorted(self._contents))})") from None

    def file_path(self, name: str) -> Path:
        """Where file `name` lies in a folder bundle, for backends that want a path; not re-verified."""
        self.read(name)
        if self.is_archive:
            raise BundleError(f"{self._path}: an .ekb archive has no file paths; use Bundle.read({name!r})")
        return self._path / name

    def __repr__(self) -> str:
        return f"Bundle({str(self._path)!r}, model={self._manifest.model!r}, files={len(self._contents)})"


def _verify_models(contents: dict[str, bytes], where: str) -> None:
    """Every .tflite file a verified flatbuffer, every .onnx file without external data (see the module docstring)."""
    from edgekit.formats.onnx_verify import refuse_external_data  # standard library too; loaded when first used
    from edgekit.formats.tflite_verify import verify_tflite

    for name, data in contents.items():
        if name.endswith(".tflite"):
            verify_tflite(data, f"{where}: {name}", BundleError)
        elif name.endswith(".onnx"):
            refuse_external_data(data, f"{where}: {name}", BundleError)


def load_bundle(path: str | Path, *, max_file_bytes: int = MAX_FILE_BYTES,
                max_manifest_bytes: int = MAX_MANIFEST_BYTES, max_bundle_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Open and verify a folder or `.ekb` bundle; any problem is a BundleError naming the file and the rule.

    The caps bound what loading holds in memory: each file, the manifest, and every file together (checked on
    the sizes the folder or the archive's central directory declares, before anything is read)."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise BundleError(f"{where}: no such bundle (expected a folder or an {SUFFIX} file)")
    if path.is_dir():
        reader: _FolderReader | _ZipReader = _FolderReader(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        reader = _ZipReader(path)
    else:
        raise BundleError(f"{where}: not a bundle: expected a folder or an {SUFFIX} zip archive")
    try:
        present = reader.entries()
        total = sum(present.values())
        if total > max_bundle_bytes:
            raise BundleError(f"{where}: its files declare {total:,} bytes together, over the bundle cap of "
                              f"{max_bundle_bytes:,} bytes (oversized)")
        if MANIFEST not in present:
            raise BundleError(f"{where}: no {MANIFEST} (not an edgekit bundle?)")
        manifest_bytes = present.pop(MANIFEST)
        if manifest_bytes > max_manifest_bytes:
            raise BundleError(f"{where}: {MANIFEST} is {manifest_bytes:,} bytes, over the cap of "
                              f"{max_manifest_bytes:,} bytes (oversized)")
        raw, _ = _read_verified(reader, MANIFEST, manifest_bytes, where)
        manifest_where = f"{where}: {MANIFEST}"
        manifest = Manifest.from_dict(_parse_json(raw, manifest_where), manifest_where)
        missing = [name for name in manifest.files if name not in present]
        if missing:
            raise BundleError(f"{where}: file {missing[0]!r} is listed in {MANIFEST} but missing from the bundle"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        unlisted = sorted(name for name in present if name not in manifest.files)
        if unlisted:
            raise BundleError(f"{where}: file {unlisted[0]!r} is in the bundle but not listed in {MANIFEST}; "
                              f"unlisted files are refused"
                              + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""))
        contents = {}
        for name, entry in manifest.files.items():
            if entry.bytes > max_file_bytes:
                raise BundleError(f"{where}: file {name!r} declares {entry.bytes:,} bytes, over the per-file cap "
                                  f"of {max_file_bytes:,} bytes (oversized)")
            if present[name] != entry.bytes:
                raise BundleError(f"{where}: size mismatch for {name!r}: {MANIFEST} says {entry.bytes} bytes, "
                                  f"the file has {present[name]}")
            data, digest = _read_verified(reader, name, entry.bytes, where)
            if digest != entry.sha256:
                raise BundleError(f"{where}: sha256 mismatch for {name!r}: {MANIFEST} says {entry.sha256}, "
                                  f"the file hashes to {digest} (altered or corrupt)")
            contents[name] = data
    finally:
        reader.close()
    _verify_models(contents, where)
    return Bundle(path, manifest, contents, archive=isinstance(reader, _ZipReader))


# ---------------------------------------------------------------------------------------------- writing


def _zip_info(name: str, size: int) -> zipfile.ZipInfo:
    """A member header that depends only on the name and size: fixed time, Unix mode 0644, deflated."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size
    return info


def _copy_hashed(source: IO[bytes], target: IO[bytes], name: str, where: str) -> FileEntry:
    """Copy in chunks, hashing as it goes: one read of the source."""
    digest, count = hashlib.sha256(), 0
    while chunk := source.read(CHUNK_BYTES):
        count += len(chunk)
        if count > MAX_FILE_BYTES:
            raise BundleError(f"{where}: {name!r} is over the per-file cap of {MAX_FILE_BYTES:,} bytes (oversized)")
        digest.update(chunk)
        target.write(chunk)
    return FileEntry(digest.hexdigest(), count)


def _is_bundle(path: Path) -> bool:
    """Whether `path` holds a manifest.json of this format (any version), so replacing it loses no user data."""
    try:
        if path.is_dir():
            manifest = path / MANIFEST
            if not manifest.is_file() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
                return False
            raw = manifest.read_bytes()
        else:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(MANIFEST)
                if info.file_size > MAX_MANIFEST_BYTES:
                    return False
                raw = archive.read(info)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error, EOFError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _check_target(out: Path, source: Path, archive: bool) -> None:
    """Refuse an output that overlaps the source or that exists and is not a bundle of the same kind."""
    src, dst = source.resolve(), out.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise BundleError(f"{out}: the bundle must lie outside the source folder {source} (and not contain it)")
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise BundleError(f"{out} exists and is a symbolic link; refusing to overwrite it")
    if archive and out.is_file() and _is_bundle(out):
        return
    if not archive and out.is_dir() and (not any(out.iterdir()) or _is_bundle(out)):
        return
    kind = f"an {SUFFIX} bundle" if archive else "a bundle folder"
    raise BundleError(f"{out} exists and is not {kind}; refusing to overwrite it (choose another path)")


def _write_folder(source: Path, names: list[str], tmp: Path, where: str) -> dict[str, FileEntry]:
    files = {}
    for name in names:
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source / name, "rb") as src, open(target, "wb") as dst:
            files[name] = _copy_hashed(src, dst, name, where)
    return files


def _write_archive(source: Path, sizes: dict[str, int], archive: zipfile.ZipFile, where: str) -> dict[str, FileEntry]:
    files = {}
    for name in sorted(sizes):
        info = _zip_info(name, sizes[name])
        with open(source / name, "rb") as src, archive.open(info, "w") as dst:
            files[name] = _copy_hashed(src, dst, name, where)
    return files


def write_bundle(source_dir: str | Path, manifest: Manifest, out: str | Path) -> Path:
    """Bundle every file under `source_dir` with `manifest` (its `files` filled in) into `out`.

    `out` ending in `.ekb` gives a zip archive (sorted members, deflated, fixed timestamps), anything else a
    folder. Written under a temporary name beside `out` and renamed into place; an existing `out` is replaced
    only when it is a bundle of the same kind (or an empty folder).
    """
    source, out = Path(source_dir), Path(out)
    where = str(out)
    if not source.is_dir():
        raise BundleError(f"{source}: no such folder to bundle")
    archive = out.suffix == SUFFIX
    _check_target(out, source, archive)
    sizes = {name: size for name, size in _scan_folder(source, str(source)).items() if name != MANIFEST}
    names = sorted(sizes)
    oversized = [name for name in names if sizes[name] > MAX_FILE_BYTES]
    if oversized:
        raise BundleError(f"{source}: {oversized[0]!r} is {sizes[oversized[0]]:,} bytes, over the per-file cap of "
                          f"{MAX_FILE_BYTES:,} bytes (oversized)")
    # Validate everything but the hashes before copying anything, so a bad manifest fails fast.
    draft = replace(manifest, files={name: FileEntry("0" * 64, size) for name, size in sizes.items()})
    Manifest.from_dict(json.loads(draft.to_json()), f"{where}: {MANIFEST}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if archive:
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
    else:
        tmp_name = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if archive:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                files = _write_archive(source, sizes, zf, where)
                final = replace(manifest, files=files)
                text = final.to_json()
                Manifest.from_dict(json.loads(text), f"{where}: {MANIFEST}")
                zf.writestr(_zip_info(MANIFEST, len(text.encode("utf-8"))), text.encode("utf-8"))
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        else:
            files = _write_folder(source, names, tmp, where)
            final = replace(manifest, files=files)
            text = final.to_json()
            Manifest.from_dict(json.loads(text), f"{where}: {MANIFEST}")
            (tmp / MANIFEST).write_text(text, encoding="utf-8")
            os.chmod(tmp, 0o755)
            _replace_folder(tmp, out)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return out


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`; an old bundle there is renamed aside first and removed after."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    old.rmdir()
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)

