"""The plans a manifest's `plan` holds, typed: a patch schedule (MCUNetV2) or a split schedule.

`Manifest.from_dict` reads `plan` with `parse_plan`, so a loaded bundle holds a PatchSchedule, a SplitSchedule
or None, never a dict, and a malformed plan refuses the whole bundle. Each type's `from_dict` is strict (every
error a BundleError naming the key, what was expected and what was found) and `to_dict` gives back the same
JSON. Standard library only, like bundle.py. Format: docs/bundle.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from edgekit.errors import BundleError
from edgekit.formats.bundle import (
    INTEGER_RANGES,
    MAX_DIM,
    TENSOR_KEYS,
    FileEntry,
    Manifest,
    Stage,
    TensorInfo,
    _array,
    _check_name,
    _integer,
    _kind,
    _number,
    _object,
    _string,
    _string_any,
)

Region = tuple[int, int, int, int]  # top, left, bottom, right; bottom and right exclusive
SCHEDULE_TENSOR_KEYS = ("shape", "dtype", "scale", "zero_point")
MASK_KEYS = ("tensor", "shape", "fill", "inputs")
PATCH_KEYS = ("window", "tile", "valid")
PATCH_SCHEDULE_KEYS = ("kind", "version", "layout", "stage_model", "rest_model", "unrolled_model", "stage_end",
                       "grid", "input",
                       "stage", "outputs", "window", "tile", "masks", "patches", "macs", "flash_bytes", "rest_arena",
                       "planner")
SPLIT_KEYS = ("kind", "device_stages", "server_stages", "boundary", "split", "model_id", "model_version",
              "input_codec")
# absent in a hand-made split plan (no boundary record, no re-split) or one that sends its boundary as it is
SPLIT_OPTIONAL_KEYS = ("boundary", "split", "input_codec")
INPUT_CODECS = ("jpeg", "webp")  # frame codecs a compressed-input bundle's device may send its pixels with
BOUNDARY_EXTRA_KEYS = ("tensor", "payload_bytes", "fp32_bytes")
FIGURES_KEYS = ("device", "server", "link", "uplink_bps", "objective", "server_dtype", "requested", "chosen",
                "all_device", "all_server", "decision_map")
CUT_KEYS = ("device_layers", "last_device_layer", "payload_bytes", "device_seconds", "transfer_seconds",
            "server_seconds", "total_seconds", "device_joules")
_C = TypeVar("_C", bound="_Counts")


def _region(value: Any, where: str, key: str, minimum: int = -MAX_DIM) -> Region:
    """Four integers top, left, bottom, right."""
    items = _array(value, where, key)
    if len(items) != 4:
        raise BundleError(f"{where}: '{key}' must be 4 integers (top, left, bottom, right), found {len(items)}")
    top, left, bottom, right = (_integer(v, where, f"{key}[{i}]", minimum, MAX_DIM) for i, v in enumerate(items))
    return top, left, bottom, right


def _nonnegative(value: Any, where: str, key: str) -> float:
    """A finite number >= 0."""
    number = _number(value, where, key)
    if number < 0:
        raise BundleError(f"{where}: '{key}' must be >= 0, found {number}")
    return number


def _names(value: Any, where: str, key: str) -> tuple[str, ...]:
    """A non-empty array of non-empty strings."""
    return tuple(_string(v, where, f"{key}[{i}]") for i, v in enumerate(_array(value, where, key)))


# ---------------------------------------------------------------------------------------------- patch schedule


@dataclass(frozen=True)
class ScheduleTensor:
    """A tensor of a patch schedule: static shape, dtype, per-tensor quantization (the manifest's tensor rules)."""

    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    def to_dict(self) -> dict:
        """The JSON object of this tensor."""
        return {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str, nhwc: bool = True) -> ScheduleTensor:
        """Validate one tensor object; `nhwc` asks for a 4-D shape (batch, rows, cols, channels)."""
        data = _object(data, where, key, SCHEDULE_TENSOR_KEYS)
        info = TensorInfo.from_dict({"name": key, "layout": None, **data}, where, key)
        if nhwc and len(info.shape) != 4:
            raise BundleError(f"{where}: '{key}.shape' must have 4 dimensions (NHWC), found {list(info.shape)}")
        return cls(info.shape, info.dtype, info.scale, info.zero_point)


@dataclass(frozen=True)
class PatchMask:
    """One border mask of the stage model: the tensor it guards (by name, for reading), its rows x cols, its pad
    value, its two inputs (mask k's rows and cols vectors are stage-model inputs 1 + 2k and 2 + 2k)."""

    tensor: str
    shape: tuple[int, int]
    fill: int
    inputs: tuple[int, int]

    def to_dict(self) -> dict:
        """The JSON object of this mask."""
        return {"tensor": self.tensor, "shape": list(self.shape), "fill": self.fill, "inputs": list(self.inputs)}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str, index: int) -> PatchMask:
        """Validate mask number `index`."""
        data = _object(data, where, key, MASK_KEYS)
        dims = _array(data["shape"], where, f"{key}.shape")
        if len(dims) != 2:
            raise BundleError(f"{where}: '{key}.shape' must be 2 integers (rows, cols), found {len(dims)}")
        rows, cols = (_integer(v, where, f"{key}.shape[{i}]", 1, MAX_DIM) for i, v in enumerate(dims))
        inputs = [_integer(v, where, f"{key}.inputs[{i}]") for i, v in enumerate(_array(data["inputs"], where,
                                                                                          f"{key}.inputs"))]
        if inputs != [1 + 2 * index, 2 + 2 * index]:
            raise BundleError(f"{where}: '{key}.inputs' must be [{1 + 2 * index}, {2 + 2 * index}] (mask {index}'s "
                              f"rows and cols inputs of the stage model), found {inputs}")
        return cls(_string_any(data["tensor"], where, f"{key}.tensor"), (rows, cols),
                   _integer(data["fill"], where, f"{key}.fill"), (inputs[0], inputs[1]))


@dataclass(frozen=True)
class Patch:
    """One patch: its window in image coordinates (it may reach past the image), its tile in the stage buffer,
    and per mask the region inside the tensor."""

    window: Region
    tile: Region
    valid: tuple[Region, ...]

    def to_dict(self) -> dict:
        """The JSON object of this patch."""
        return {"window": list(self.window), "tile": list(self.tile), "valid": [list(r) for r in self.valid]}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str) -> Patch:
        """Validate one patch's regions (their geometry is checked by the schedule)."""
        data = _object(data, where, key, PATCH_KEYS)
        valid = tuple(_region(r, where, f"{key}.valid[{i}]", 0)
                      for i, r in enumerate(_array(data["valid"], where, f"{key}.valid", nonempty=False)))
        return cls(_region(data["window"], where, f"{key}.window"), _region(data["tile"], where, f"{key}.tile", 0),
                   valid)


@dataclass(frozen=True)
class _Counts:
    """A JSON object of integers >= 0, one key per field, in field order."""

    def to_dict(self) -> dict:
        """The JSON object of these counts."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[_C], data: Any, where: str, key: str) -> _C:
        """Validate the object: exactly the fields' keys, each an integer >= 0."""
        names = tuple(f.name for f in fields(cls))
        data = _object(data, where, key, names)
        return cls(*(_integer(data[name], where, f"{key}.{name}", 0) for name in names))


@dataclass(frozen=True)
class StageMacs(_Counts):
    """MACs of the stage layers: run whole once, as the stage model runs them over every patch (whole windows),
    and as the unrolled model runs them (each patch on its regions cut to the tensors)."""

    stage_full: int
    stage_patched: int
    stage_unrolled: int


@dataclass(frozen=True)
class FlashBytes(_Counts):
    """Model bytes: the full model, and the stage and rest models together."""

    full: int
    patched: int


@dataclass(frozen=True)
class RestArena(_Counts):
    """The rest model's offline arena plan: where its input (the stage buffer) lies, its head, its lower bound."""

    input_offset: int
    head_bytes: int
    lower_bound_bytes: int


@dataclass(frozen=True)
class PlannerFigures(_Counts):
    """What the planner predicted: the patched peak, the layer-by-layer peak, the MACs recomputed."""

    peak_bytes: int
    layer_by_layer_peak_bytes: int
    extra_macs: int


@dataclass(frozen=True)
class PatchSchedule:
    """A patch schedule (`plan.kind` "patch"): one stage model computes every patch's tile of the stage buffer
    from the patch's window of the NHWC image, then the rest model runs on the stage buffer. The unrolled model
    (LiteRT) computes every patch in one call instead: the whole image in, the stage buffer out.

    Read whole or refused: every window the stage model's input size, one valid region per mask inside it,
    tiles inside the stage buffer, no larger than the stage model's output, covering the buffer exactly once.
    """

    KIND: ClassVar[str] = "patch"
    VERSION: ClassVar[int] = 4  # 4: `unrolled_model`; 3: every rest-model output (`outputs`), 2 had only the first
    LAYOUT: ClassVar[str] = "NHWC"

    stage_model: str
    rest_model: str
    unrolled_model: str  # every patch in one subgraph, for LiteRT (TF Lite Micro runs the stage model)
    stage_end: str  # the last layer the patches compute
    grid: int
    input: ScheduleTensor  # the whole image
    stage: ScheduleTensor  # the stage buffer: the rest model's input
    outputs: tuple[ScheduleTensor, ...]  # every output of the rest model, in its order
    window: ScheduleTensor  # the stage model's image input
    window_fill: int  # what the window holds where it lies beyond the image
    tile: ScheduleTensor  # the stage model's output
    masks: tuple[PatchMask, ...]
    patches: tuple[Patch, ...]
    macs: StageMacs
    flash_bytes: FlashBytes
    rest_arena: RestArena
    planner: PlannerFigures

    @property
    def model_files(self) -> tuple[str, str, str]:
        """The model files the schedule runs: the stage model, the rest model and the unrolled model."""
        return self.stage_model, self.rest_model, self.unrolled_model

    @property
    def mcu_files(self) -> tuple[str, str]:
        """The model files a microcontroller runs (under TF Lite Micro): the stage model and the rest model."""
        return self.stage_model, self.rest_model

    def to_dict(self) -> dict:
        """The JSON object of this schedule, as the manifest's `plan` and patch_schedule.json hold it."""
        return {"kind": self.KIND, "version": self.VERSION, "layout": self.LAYOUT, "stage_model": self.stage_model,
                "rest_model": self.rest_model, "unrolled_model": self.unrolled_model, "stage_end": self.stage_end,
                "grid": self.grid,
                "input": self.input.to_dict(), "stage": self.stage.to_dict(),
                "outputs": [o.to_dict() for o in self.outputs],
                "window": {**self.window.to_dict(), "fill": self.window_fill}, "tile": self.tile.to_dict(),
                "masks": [m.to_dict() for m in self.masks], "patches": [p.to_dict() for p in self.patches],
                "macs": self.macs.to_dict(), "flash_bytes": self.flash_bytes.to_dict(),
                "rest_arena": self.rest_arena.to_dict(), "planner": self.planner.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "plan") -> PatchSchedule:
        """Validate a patch schedule object, its geometry included; `key` is its place, e.g. `plan`."""
        data = _object(data, where, key, PATCH_SCHEDULE_KEYS)
        _string(data["kind"], where, f"{key}.kind", (cls.KIND,))
        version = _integer(data["version"], where, f"{key}.version")
        if version != cls.VERSION:
            raise BundleError(f"{where}: '{key}.version' must be {cls.VERSION} (the patch schedule version this "
                              f"edgekit runs), found {version}; rebuild the bundle with this edgekit")
        _string(data["layout"], where, f"{key}.layout", (cls.LAYOUT,))
        window = _object(data["window"], where, f"{key}.window", (*SCHEDULE_TENSOR_KEYS, "fill"))
        tensors = {name: ScheduleTensor.from_dict(data[name], where, f"{key}.{name}")
                   for name in ("input", "stage", "tile")}
        outputs = tuple(ScheduleTensor.from_dict(o, where, f"{key}.outputs[{i}]", nhwc=False)
                        for i, o in enumerate(_array(data["outputs"], where, f"{key}.outputs")))
        tensors["window"] = ScheduleTensor.from_dict({k: window[k] for k in SCHEDULE_TENSOR_KEYS}, where,
                                                     f"{key}.window")
        low, high = INTEGER_RANGES.get(tensors["window"].dtype, (None, None))
        masks = tuple(PatchMask.from_dict(m, where, f"{key}.masks[{i}]", i)
                      for i, m in enumerate(_array(data["masks"], where, f"{key}.masks", nonempty=False)))
        patches = tuple(Patch.from_dict(p, where, f"{key}.patches[{i}]")
                        for i, p in enumerate(_array(data["patches"], where, f"{key}.patches")))
        schedule = cls(
            _check_name(data["stage_model"], where, f"'{key}.stage_model'"),
            _check_name(data["rest_model"], where, f"'{key}.rest_model'"),
            _check_name(data["unrolled_model"], where, f"'{key}.unrolled_model'"),
            _string(data["stage_end"], where, f"{key}.stage_end"), _integer(data["grid"], where, f"{key}.grid", 1),
            tensors["input"], tensors["stage"], outputs, tensors["window"],
            _integer(window["fill"], where, f"{key}.window.fill", low, high), tensors["tile"], masks, patches,
            StageMacs.from_dict(data["macs"], where, f"{key}.macs"),
            FlashBytes.from_dict(data["flash_bytes"], where, f"{key}.flash_bytes"),
            RestArena.from_dict(data["rest_arena"], where, f"{key}.rest_arena"),
            PlannerFigures.from_dict(data["planner"], where, f"{key}.planner"))
        _check_geometry(schedule, where, key)
        return schedule

    def check_manifest(self, stages: tuple[Stage, ...], files: dict[str, FileEntry], where: str,
                       key: str = "plan") -> None:
        """The manifest runs the schedule as its one stage, whose file is the stage model; both models listed."""
        if len(stages) != 1 or stages[0].file != self.stage_model:
            found = ", ".join(f"{s.name!r} ({s.file})" for s in stages)
            raise BundleError(f"{where}: a patch schedule runs as the one stage whose file is '{key}.stage_model' "
                              f"{self.stage_model!r}, found stages {found}")
        for name, file in (("rest_model", self.rest_model), ("unrolled_model", self.unrolled_model)):
            if file not in files:
                raise BundleError(f"{where}: '{key}.{name}' {file!r} is not listed in 'files'")
        declared = [(o.shape, o.dtype) for o in self.outputs]
        listed = [(o.shape, o.dtype) for o in stages[0].outputs]
        if listed != declared:
            raise BundleError(f"{where}: stage {stages[0].name!r} lists outputs {listed}, '{key}.outputs' {declared}: "
                              "both must name every output of the rest model, in its order")


def _check_geometry(schedule: PatchSchedule, where: str, key: str) -> None:
    """Refuse patches that would leave stale or misplaced data in the stage buffer."""
    for name, tensor, source in (("window", schedule.window, ("input", schedule.input)),
                                 ("tile", schedule.tile, ("stage", schedule.stage))):
        of, other = source
        if (tensor.shape[0], tensor.shape[3], tensor.dtype) != (other.shape[0], other.shape[3], other.dtype):
            raise BundleError(f"{where}: '{key}.{name}' must have the batch, channels and dtype of '{key}.{of}' "
                              f"({other.shape[0]}, {other.shape[3]}, {other.dtype}), found "
                              f"({tensor.shape[0]}, {tensor.shape[3]}, {tensor.dtype})")
    window_h, window_w = schedule.window.shape[1:3]
    tile_h, tile_w = schedule.tile.shape[1:3]
    height, width = schedule.stage.shape[1:3]
    for k, patch in enumerate(schedule.patches):
        at = f"{key}.patches[{k}]"
        top, left, bottom, right = patch.window
        if (bottom - top, right - left) != (window_h, window_w):
            raise BundleError(f"{where}: '{at}.window' {list(patch.window)} must span {window_h}x{window_w} (the "
                              f"stage model's input, '{key}.window.shape'), found {bottom - top}x{right - left}")
        top, left, bottom, right = patch.tile
        if not (top < bottom <= height and left < right <= width):
            raise BundleError(f"{where}: '{at}.tile' {list(patch.tile)} must be a non-empty region inside the "
                              f"{height}x{width} stage buffer ('{key}.stage.shape')")
        if bottom - top > tile_h or right - left > tile_w:
            raise BundleError(f"{where}: '{at}.tile' {list(patch.tile)} must span at most {tile_h}x{tile_w} (the "
                              f"stage model's output, '{key}.tile.shape'), found {bottom - top}x{right - left}")
        if len(patch.valid) != len(schedule.masks):
            raise BundleError(f"{where}: '{at}.valid' must hold one region per mask ({len(schedule.masks)}), found "
                              f"{len(patch.valid)}")
        for m, (region, mask) in enumerate(zip(patch.valid, schedule.masks)):
            top, left, bottom, right = region
            if not (top <= bottom <= mask.shape[0] and left <= right <= mask.shape[1]):
                raise BundleError(f"{where}: '{at}.valid[{m}]' {list(region)} must lie inside mask {m}'s "
                                  f"{mask.shape[0]}x{mask.shape[1]} ('{key}.masks[{m}].shape')")
    problem = _cover_problem([p.tile for p in schedule.patches], height, width)
    if problem:
        raise BundleError(f"{where}: the tiles of '{key}.patches' do not cover the {height}x{width} stage buffer "
                          f"exactly once: {problem}")


def _cover_problem(tiles: list[Region], height: int, width: int) -> str | None:
    """Where `tiles` (each inside height x width) fail to cover it exactly once, or None when they do.

    Swept band by band: between consecutive tile edges the same tiles span every row, and their column spans
    must follow each other from 0 to `width`.
    """
    edges = sorted({0, height, *(t[0] for t in tiles), *(t[2] for t in tiles)})
    for top, bottom in zip(edges, edges[1:]):
        spans = sorted((t[1], t[3]) for t in tiles if t[0] <= top < t[2])
        reached = 0
        for left, right in [*spans, (width, width)]:
            if left > reached:
                return f"rows {top}..{bottom - 1}, columns {reached}..{left - 1} are in no tile"
            if left < reached:
                return f"row {top}, column {left} is in two tiles"
            reached = right
    return None


# ---------------------------------------------------------------------------------------------- split schedule


@dataclass(frozen=True)
class SplitBoundary:
    """The tensor that crosses the link: the head's output as the manifest describes tensors, its name in the
    graph, and its bytes per frame as sent and in float32."""

    info: TensorInfo
    tensor: str
    payload_bytes: int
    fp32_bytes: int

    def to_dict(self) -> dict:
        """The JSON object of the boundary: the tensor's keys, then the graph name and the sizes."""
        return {**self.info.to_dict(), "tensor": self.tensor, "payload_bytes": self.payload_bytes,
                "fp32_bytes": self.fp32_bytes}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str) -> SplitBoundary:
        """Validate the boundary object."""
        data = _object(data, where, key, (*TENSOR_KEYS, *BOUNDARY_EXTRA_KEYS))
        info = TensorInfo.from_dict({k: data[k] for k in TENSOR_KEYS}, where, key)
        return cls(info, _string(data["tensor"], where, f"{key}.tensor"),
                   _integer(data["payload_bytes"], where, f"{key}.payload_bytes", 0),
                   _integer(data["fp32_bytes"], where, f"{key}.fp32_bytes", 0))


@dataclass(frozen=True)
class SplitCut:
    """One cut as the planner costed it: layers on the device (the last by name; None: none), bytes sent per
    frame, seconds on each side and on the link, and the device's energy."""

    device_layers: int
    last_device_layer: str | None
    payload_bytes: int
    device_seconds: float
    transfer_seconds: float
    server_seconds: float
    total_seconds: float
    device_joules: float

    def to_dict(self) -> dict:
        """The JSON object of this cut."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str) -> SplitCut:
        """Validate one cut object."""
        data = _object(data, where, key, CUT_KEYS)
        last = data["last_device_layer"]
        return cls(_integer(data["device_layers"], where, f"{key}.device_layers", 0),
                   None if last is None else _string(last, where, f"{key}.last_device_layer"),
                   _integer(data["payload_bytes"], where, f"{key}.payload_bytes", 0),
                   *(_nonnegative(data[k], where, f"{key}.{k}") for k in CUT_KEYS[3:]))


@dataclass(frozen=True)
class SplitFigures:
    """The planner's figures behind the bundle's cut (`plan.split`): where and over what link it planned, the
    cut and both baselines, and which cut wins over which uplink range; the runtime re-splits by them."""

    device: str
    server: str
    link: str
    uplink_bps: float
    objective: str
    server_dtype: str
    requested: str  # "auto" or the layer the user named
    chosen: SplitCut
    all_device: SplitCut
    all_server: SplitCut
    decision_map: tuple[tuple[float, float, int], ...]  # (from bit/s, to bit/s, layers on the device)

    def to_dict(self) -> dict:
        """The JSON object of these figures."""
        return {"device": self.device, "server": self.server, "link": self.link, "uplink_bps": self.uplink_bps,
                "objective": self.objective, "server_dtype": self.server_dtype, "requested": self.requested,
                "chosen": self.chosen.to_dict(), "all_device": self.all_device.to_dict(),
                "all_server": self.all_server.to_dict(), "decision_map": [list(r) for r in self.decision_map]}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str) -> SplitFigures:
        """Validate the figures object."""
        data = _object(data, where, key, FIGURES_KEYS)
        ranges = []
        for i, entry in enumerate(_array(data["decision_map"], where, f"{key}.decision_map", nonempty=False)):
            at = f"{key}.decision_map[{i}]"
            items = _array(entry, where, at)
            if len(items) != 3:
                raise BundleError(f"{where}: '{at}' must be [from bit/s, to bit/s, device layers], found "
                                  f"{len(items)} values")
            low, high = _nonnegative(items[0], where, f"{at}[0]"), _nonnegative(items[1], where, f"{at}[1]")
            if high < low:
                raise BundleError(f"{where}: '{at}' must run from a lower to a higher bandwidth, found {low} to "
                                  f"{high}")
            ranges.append((low, high, _integer(items[2], where, f"{at}[2]", 0)))
        names = {k: _string(data[k], where, f"{key}.{k}")
                 for k in ("device", "server", "link", "objective", "server_dtype", "requested")}
        cuts = {k: SplitCut.from_dict(data[k], where, f"{key}.{k}") for k in ("chosen", "all_device", "all_server")}
        return cls(names["device"], names["server"], names["link"],
                   _number(data["uplink_bps"], where, f"{key}.uplink_bps", positive=True), names["objective"],
                   names["server_dtype"], names["requested"], cuts["chosen"], cuts["all_device"],
                   cuts["all_server"], tuple(ranges))


@dataclass(frozen=True)
class SplitSchedule:
    """A split schedule (`plan.kind` "split"): which stages run on the device and which on the server, the model
    id and version the server checks requests against, and from a compile the boundary and the planner's figures.

    Its JSON has no `version` key: this layout is version 1, and a later one adds the key.
    """

    KIND: ClassVar[str] = "split"
    VERSION: ClassVar[int] = 1

    device_stages: tuple[str, ...]
    server_stages: tuple[str, ...]
    model_id: str
    model_version: str
    boundary: SplitBoundary | None = None
    figures: SplitFigures | None = None  # JSON key `split`
    input_codec: str | None = None  # "jpeg:75": the device sends its boundary (8-bit pixels) image-coded so

    @classmethod
    def of(cls, manifest: Manifest) -> SplitSchedule | None:
        """The manifest's split schedule; None when its plan is another kind or there is none."""
        return manifest.plan if isinstance(manifest.plan, SplitSchedule) else None

    def to_dict(self) -> dict:
        """The JSON object of this schedule; `boundary` and `split` only when present."""
        data: dict[str, Any] = {"kind": self.KIND, "device_stages": list(self.device_stages),
                                "server_stages": list(self.server_stages)}
        if self.boundary is not None:
            data["boundary"] = self.boundary.to_dict()
        if self.figures is not None:
            data["split"] = self.figures.to_dict()
        if self.input_codec is not None:
            data["input_codec"] = self.input_codec
        return {**data, "model_id": self.model_id, "model_version": self.model_version}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "plan") -> SplitSchedule:
        """Validate a split schedule object; `boundary` and `split` may be absent (a hand-made bundle)."""
        absent = tuple(k for k in SPLIT_OPTIONAL_KEYS if isinstance(data, dict) and k not in data)
        data = _object({**data, **dict.fromkeys(absent)} if absent else data, where, key, SPLIT_KEYS)
        _string(data["kind"], where, f"{key}.kind", (cls.KIND,))
        boundary = None if "boundary" in absent else SplitBoundary.from_dict(data["boundary"], where,
                                                                             f"{key}.boundary")
        figures = None if "split" in absent else SplitFigures.from_dict(data["split"], where, f"{key}.split")
        codec = None if "input_codec" in absent else _input_codec(data["input_codec"], where, f"{key}.input_codec")
        return cls(_names(data["device_stages"], where, f"{key}.device_stages"),
                   _names(data["server_stages"], where, f"{key}.server_stages"),
                   _string(data["model_id"], where, f"{key}.model_id"),
                   _string(data["model_version"], where, f"{key}.model_version"), boundary, figures, codec)

    def check_manifest(self, stages: tuple[Stage, ...], files: dict[str, FileEntry], where: str,
                       key: str = "plan") -> None:
        """The device stages then the server stages are the manifest's stages, in order."""
        names = tuple(s.name for s in stages)
        if self.device_stages + self.server_stages != names:
            raise BundleError(f"{where}: the split plan ('{key}.device_stages', '{key}.server_stages') runs "
                              f"{list(self.device_stages)} on the device and {list(self.server_stages)} on the "
                              f"server, but the stages are {list(names)}; it must run them all, in order")


def _input_codec(value: Any, where: str, key: str) -> str:
    """'jpeg:75' or 'webp:50': one of INPUT_CODECS and a quality 1..100."""
    text = _string(value, where, key)
    codec, _, quality = text.partition(":")
    if codec not in INPUT_CODECS or not quality.isdigit() or not 1 <= int(quality) <= 100:
        raise BundleError(f"{where}: '{key}' must be CODEC:QUALITY with CODEC one of {', '.join(INPUT_CODECS)} and "
                          f"QUALITY 1..100, found {text!r}")
    return text


# ---------------------------------------------------------------------------------------------- the manifest's plan


PLANS: dict[str, type[PatchSchedule] | type[SplitSchedule]] = {PatchSchedule.KIND: PatchSchedule,
                                                               SplitSchedule.KIND: SplitSchedule}


def parse_plan(data: Any, where: str, stages: tuple[Stage, ...],
               files: dict[str, FileEntry]) -> PatchSchedule | SplitSchedule | None:
    """The manifest's `plan`: null, or by its `kind` a patch or a split schedule, checked against the stages."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BundleError(f"{where}: 'plan' must be an object or null, found {_kind(data)}")
    if "kind" not in data:
        raise BundleError(f"{where}: missing key 'plan.kind' (expected: {', '.join(PLANS)})")
    kind = _string(data["kind"], where, "plan.kind", tuple(PLANS))
    plan = PLANS[kind].from_dict(data, where)
    plan.check_manifest(stages, files, where)
    return plan
