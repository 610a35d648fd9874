"""Target profiles: what a device or a link is, loaded from TOML and validated strictly.

Built-in profiles live in the repository's `targets/` folder (installed as `edgekit.profiles`);
users pass their own file by path. Every number is written with a unit and carries either a
`source` (datasheet, paper, URL) or an `estimate` (how it was derived). A device profile written by
`edgekit calibrate` adds a `[calibration]` table (`DeviceCalibration`): fitted rates and measured
per-layer seconds, each with a "measured: ..." source, which the cost model prefers over the estimates.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgekit.errors import ProfileError
from edgekit.units import parse_quantity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEVICE_CLASSES = ("mcu", "sbc", "gpu-sbc", "server")
DTYPES = ("int8", "fp16", "fp32")  # the per-dtype throughput keys
RUNTIMES = ("tflite-micro", "litert", "tflite-runtime", "onnxruntime", "onnxruntime-cuda", "tensorrt")
# `cpu.arch`: the instruction set the device runs, as Linux's `uname -m` names it for application processors and
# as the Arm / RISC-V / Xtensa architecture names go for MCUs. Calibration compares it with the measuring machine's.
ARCHES = ("x86_64", "i686", "aarch64", "armv7l", "armv6l", "riscv64", "ppc64le", "s390x",
          "armv6-m", "armv7-m", "armv7e-m", "armv8-m", "riscv32", "xtensa")


@dataclass(frozen=True)
class Quantity:
    """A number in SI base units, as written in the profile, with where it comes from."""

    value: float
    text: str
    source: str | None = None
    estimate: str | None = None

    @property
    def provenance(self) -> str:
        return self.source if self.source else f"estimate: {self.estimate}"


@dataclass(frozen=True)
class MeasuredModel:
    """Measured seconds of each layer of one model (keyed by the graph IR's layer names) and end to end."""

    input_shape: tuple[int, ...]
    total: Quantity
    layers: dict[str, float]
    source: str


@dataclass(frozen=True)
class DeviceCalibration:
    """What `edgekit calibrate` measured on the device: the fitted cost model for one dtype and the raw tables."""

    backend: str
    threads: int
    dtype: str  # the cost model uses this calibration only for layers run in this dtype
    date: str
    machine: str
    command: str
    repeats: int
    throughput: Quantity  # fitted effective MAC/s
    machine_arch: str | None = None  # the measuring machine's CPU architecture (None: written before edgekit kept it)
    overhead: Quantity | None = None  # per inference, outside any layer; None when not above zero
    bandwidth: Quantity | None = None  # fitted effective B/s; None when the fit gives memory no weight
    layer_overhead: Quantity | None = None  # fitted fixed seconds per executed layer; None when zero
    models: dict[str, MeasuredModel] = field(default_factory=dict)

    def __str__(self) -> str:
        """One line for tables: how it was measured, the fitted figures, which models have measured layers."""
        fitted = ", ".join(q.text for q in (self.throughput, self.bandwidth, self.layer_overhead) if q is not None)
        overhead = self.overhead.text if self.overhead else "0 us"
        return (f"{self.dtype} on {self.backend}, {self.threads} thread(s), {self.date}: {fitted}"
                f"{' per layer' if self.layer_overhead else ''}; overhead {overhead}; measured layers of "
                f"{', '.join(self.models) or 'no model'}")


@dataclass(frozen=True)
class Device:
    """A compute target: an MCU, a single-board computer, a GPU board or an edge server."""

    name: str
    description: str
    device_class: str
    cpu: str
    cores: int
    clock: Quantity
    accelerator: str | None
    runtimes: tuple[str, ...]
    throughput: dict[str, Quantity]  # dtype -> effective MAC/s used by the cost model
    arch: str | None = None  # instruction set (one of ARCHES); None when the profile does not say
    sram: Quantity | None = None
    flash: Quantity | None = None
    ram: Quantity | None = None
    memory_bandwidth: Quantity | None = None
    power_active: Quantity | None = None
    power_idle: Quantity | None = None
    links: tuple[str, ...] = ()
    path: str = ""
    calibration: DeviceCalibration | None = None

    @property
    def activation_budget_bytes(self) -> int:
        """Memory available for activations: SRAM on an MCU, RAM elsewhere."""
        memory = self.sram if self.device_class == "mcu" else self.ram
        assert memory is not None  # guaranteed by the loader
        return int(memory.value)


@dataclass(frozen=True)
class Link:
    """A network link between a device and a server."""

    name: str
    description: str
    uplink: Quantity  # bit/s, device -> server
    downlink: Quantity  # bit/s, server -> device
    rtt: Quantity  # seconds
    max_payload: Quantity  # bytes per message
    tx_energy: Quantity | None = None  # J per byte sent by the device radio
    path: str = ""


# Field specs: key -> (kind, required). kind is a type name, a dimension for quantities
# ("q:<dimension>"), or a nested spec dict for a table.
_Q = "q:"
_DEVICE_SPEC: dict[str, tuple[Any, bool]] = {
    "kind": ("str", True),
    "name": ("str", True),
    "description": ("str", True),
    "class": ("str", True),
    "runtimes": ("list[str]", True),
    "links": ("list[str]", False),
    "cpu": ({"model": ("str", True), "cores": ("int", True), "clock": (_Q + "frequency", True),
             "arch": ("str", False), "accelerator": ("str", False)}, True),
    "memory": ({"sram": (_Q + "bytes", False), "flash": (_Q + "bytes", False), "ram": (_Q + "bytes", False),
                "bandwidth": (_Q + "byte_rate", False)}, True),
    "throughput": ({"int8": (_Q + "mac_rate", True), "fp32": (_Q + "mac_rate", True),
                    "fp16": (_Q + "mac_rate", False)}, True),
    "power": ({"active": (_Q + "power", True), "idle": (_Q + "power", True)}, False),
    "calibration": ("calibration", False),
}
_CALIBRATION_SPEC: dict[str, tuple[Any, bool]] = {
    "backend": ("str", True),
    "threads": ("int", True),
    "dtype": ("str", True),
    "date": ("str", True),
    "machine": ("str", True),
    "command": ("str", True),
    "repeats": ("int", True),
    "machine_arch": ("str", False),
    "throughput": (_Q + "mac_rate", True),
    "overhead": (_Q + "time", False),
    "bandwidth": (_Q + "byte_rate", False),
    "layer_overhead": (_Q + "time", False),
    "models": ("models", True),
}
_MODEL_SPEC: dict[str, tuple[Any, bool]] = {
    "input_shape": ("list[int]", True),
    "total": (_Q + "time", True),
    "source": ("str", True),
    "layers": ("layers", True),
}
_LINK_SPEC: dict[str, tuple[Any, bool]] = {
    "kind": ("str", True),
    "name": ("str", True),
    "description": ("str", True),
    "uplink": (_Q + "bit_rate", True),
    "downlink": (_Q + "bit_rate", True),
    "rtt": (_Q + "time", True),
    "max_payload": (_Q + "bytes", True),
    "tx_energy": (_Q + "energy_per_byte", False),
}


def _check_table(table: dict, spec: dict, where: str, prefix: str = "") -> dict:
    """Validate `table` against `spec`; return it with quantities parsed. Errors name file and key."""
    unknown = sorted(set(table) - set(spec))
    if unknown:
        raise ProfileError(f"{where}: unknown key '{prefix}{unknown[0]}' (expected one of: {', '.join(spec)})")
    out: dict[str, Any] = {}
    for key, (kind, required) in spec.items():
        dotted = prefix + key
        if key not in table:
            if required:
                raise ProfileError(f"{where}: missing required key '{dotted}'")
            continue
        out[key] = _check_value(table[key], kind, where, dotted)
    return out


def _check_value(value: Any, kind: Any, where: str, dotted: str) -> Any:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise ProfileError(f"{where}: '{dotted}' must be a table, found {type(value).__name__}")
        return _check_table(value, kind, where, dotted + ".")
    if kind.startswith(_Q):
        return _check_quantity(value, kind[len(_Q):], where, dotted)
    if kind == "calibration":
        return _check_calibration(value, where, dotted)
    if kind in ("models", "layers"):
        return _check_named_tables(value, kind, where, dotted)
    expected: Any = {"str": str, "int": int, "list[str]": list, "list[int]": list}[kind]
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ProfileError(f"{where}: '{dotted}' must be {kind}, found {type(value).__name__} {value!r}")
    item = {"list[str]": str, "list[int]": int}.get(kind)
    if item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
        raise ProfileError(f"{where}: '{dotted}' must be a {kind}, found {value!r}")
    return tuple(value) if item is not None else value


def _check_calibration(value: Any, where: str, dotted: str) -> DeviceCalibration:
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: '{dotted}' must be a table, found {type(value).__name__}")
    data = _check_table(value, _CALIBRATION_SPEC, where, dotted + ".")
    if data["dtype"] not in DTYPES:
        raise ProfileError(f"{where}: '{dotted}.dtype' must be one of {', '.join(DTYPES)}, found {data['dtype']!r}")
    for key in ("threads", "repeats"):
        if data[key] < 1:
            raise ProfileError(f"{where}: '{dotted}.{key}' must be a positive integer, found {data[key]!r}")
    return DeviceCalibration(**data)


def _check_named_tables(value: Any, kind: str, where: str, dotted: str) -> dict:
    """`models`: model name -> measured table; `layers`: layer name -> time text such as '12.5 us' (0 allowed)."""
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: '{dotted}' must be a table, found {type(value).__name__}")
    out: dict[str, Any] = {}
    for name, entry in value.items():
        key = f"{dotted}.{name}"
        if kind == "models":
            if not isinstance(entry, dict):
                raise ProfileError(f"{where}: '{key}' must be a table, found {type(entry).__name__}")
            out[name] = MeasuredModel(**_check_table(entry, _MODEL_SPEC, where, key + "."))
            continue
        try:
            out[name] = parse_quantity(entry, "time")
        except ValueError as exc:
            raise ProfileError(f"{where}: '{key}': {exc}") from None
    return out


def _check_quantity(value: Any, dimension: str, where: str, dotted: str) -> Quantity:
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: '{dotted}' must be a table like {{ value = \"...\", source = \"...\" }}, "
                           f"found {value!r}")
    extra = sorted(set(value) - {"value", "source", "estimate"})
    if extra:
        raise ProfileError(f"{where}: unknown key '{dotted}.{extra[0]}' (expected value, source or estimate)")
    if "value" not in value:
        raise ProfileError(f"{where}: missing required key '{dotted}.value'")
    if ("source" in value) == ("estimate" in value):
        raise ProfileError(f"{where}: '{dotted}' needs exactly one of 'source' (where the number comes from) "
                           "or 'estimate' (how it was derived)")
    note = value.get("source", value.get("estimate"))
    if not isinstance(note, str) or not note.strip():
        raise ProfileError(f"{where}: '{dotted}' source/estimate must be a non-empty string")
    try:
        number = parse_quantity(value["value"], dimension)
    except ValueError as exc:
        raise ProfileError(f"{where}: '{dotted}.value': {exc}") from None
    if number <= 0:
        raise ProfileError(f"{where}: '{dotted}.value' must be positive, found {value['value']!r}")
    return Quantity(number, value["value"], value.get("source"), value.get("estimate"))


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None


def _builtin_dir() -> Path:
    return Path(str(resources.files("edgekit.profiles")))


def _profile_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_builtin_dir().glob("*.toml"))}


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        return Path(text)
    paths = _profile_paths()
    if text not in paths:
        raise ProfileError(f"unknown profile '{text}' (known: {', '.join(paths)}; or pass a path to a .toml file)")
    return paths[text]


def _load(name_or_path: str | Path, kind: str) -> tuple[dict, str]:
    path = _resolve(name_or_path)
    raw = _read_toml(path)
    found = raw.get("kind")
    if found != kind:
        raise ProfileError(f"{path}: 'kind' must be \"{kind}\" for this use, found {found!r}")
    data = _check_table(raw, _DEVICE_SPEC if kind == "device" else _LINK_SPEC, str(path))
    return data, str(path)


def load_target(name_or_path: str | Path) -> Device:
    """Load a device profile by built-in name ('rpi4') or by path to a TOML file."""
    data, where = _load(name_or_path, "device")
    if data["class"] not in DEVICE_CLASSES:
        raise ProfileError(f"{where}: 'class' must be one of {', '.join(DEVICE_CLASSES)}, found {data['class']!r}")
    bad = [r for r in data["runtimes"] if r not in RUNTIMES]
    if bad:
        raise ProfileError(f"{where}: 'runtimes' has unknown runtime {bad[0]!r} (known: {', '.join(RUNTIMES)})")
    memory = data["memory"]
    needed = ("sram", "flash") if data["class"] == "mcu" else ("ram",)
    for key in needed:
        if key not in memory:
            raise ProfileError(f"{where}: missing required key 'memory.{key}' for class {data['class']!r}")
    cpu, power = data["cpu"], data.get("power", {})
    if "arch" in cpu and cpu["arch"] not in ARCHES:
        raise ProfileError(f"{where}: 'cpu.arch' must be one of {', '.join(ARCHES)}, found {cpu['arch']!r}")
    return Device(
        name=data["name"], description=data["description"], device_class=data["class"],
        cpu=cpu["model"], cores=cpu["cores"], clock=cpu["clock"], accelerator=cpu.get("accelerator"),
        runtimes=data["runtimes"], throughput=data["throughput"], arch=cpu.get("arch"),
        sram=memory.get("sram"), flash=memory.get("flash"), ram=memory.get("ram"),
        memory_bandwidth=memory.get("bandwidth"), power_active=power.get("active"), power_idle=power.get("idle"),
        links=data.get("links", ()), path=where, calibration=data.get("calibration"),
    )


def load_link(name_or_path: str | Path) -> Link:
    """Load a link profile by built-in name ('wifi') or by path to a TOML file."""
    data, where = _load(name_or_path, "link")
    return Link(
        name=data["name"], description=data["description"], uplink=data["uplink"], downlink=data["downlink"],
        rtt=data["rtt"], max_payload=data["max_payload"], tx_energy=data.get("tx_energy"), path=where,
    )


def load_profile(name_or_path: str | Path) -> Device | Link:
    """Load a device or a link profile, whichever the file's `kind` says."""
    kind = _read_toml(_resolve(name_or_path)).get("kind")
    return load_link(name_or_path) if kind == "link" else load_target(name_or_path)


def list_targets(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted names of built-in profiles matching a shell-style pattern, optionally of one kind."""
    names = []
    for name, path in _profile_paths().items():
        if fnmatch.fnmatch(name, pattern) and (kind is None or _read_toml(path).get("kind") == kind):
            names.append(name)
    return names
