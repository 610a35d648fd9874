"""The manifest's typed plans: a patch schedule and a split schedule read from JSON and written back the same,
and every malformed field refused by name when the bundle loads, before anything runs."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import drop_at, set_at
from mutations import minimal_tflite

from edgekit.errors import BundleError
from edgekit.formats.bundle import FileEntry, Manifest, Stage, TensorInfo, load_bundle, write_bundle
from edgekit.formats.plans import PatchSchedule, SplitSchedule, parse_plan
from edgekit.runtime.split_exec import Resplit


def patch_plan() -> dict:
    """A 2x2 schedule over a 4x4 stage buffer: 6x6 windows of an 8x8 image, one 5x5 border mask."""
    def tensor(shape: list[int]) -> dict:
        return {"shape": shape, "dtype": "int8", "scale": 0.5, "zero_point": -3}

    tiles = [[0, 0, 2, 2], [0, 2, 2, 4], [2, 0, 4, 2], [2, 2, 4, 4]]
    windows = [[-1, -1, 5, 5], [-1, 3, 5, 9], [3, -1, 9, 5], [3, 3, 9, 9]]
    valid = [[[1, 1, 5, 5]], [[1, 0, 5, 4]], [[0, 1, 4, 5]], [[0, 0, 4, 4]]]
    return {"kind": "patch", "version": 4, "layout": "NHWC", "stage_model": "patch_stage.tflite",
            "rest_model": "patch_rest.tflite", "unrolled_model": "patch_stage_unrolled.tflite",
            "stage_end": "features.3", "grid": 2,
            "input": tensor([1, 8, 8, 3]), "stage": tensor([1, 4, 4, 8]),
            "outputs": [tensor([1, 10]), tensor([1, 4, 4, 2])],
            "window": {**tensor([1, 6, 6, 3]), "fill": -3}, "tile": tensor([1, 2, 2, 8]),
            "masks": [{"tensor": "conv1", "shape": [5, 5], "fill": -3, "inputs": [1, 2]}],
            "patches": [{"window": w, "tile": t, "valid": v} for w, t, v in zip(windows, tiles, valid)],
            "macs": {"stage_full": 1000, "stage_patched": 1400, "stage_unrolled": 1300},
            "flash_bytes": {"full": 64, "patched": 66},
            "rest_arena": {"input_offset": 0, "head_bytes": 256, "lower_bound_bytes": 256},
            "planner": {"peak_bytes": 512, "layer_by_layer_peak_bytes": 900, "extra_macs": 300}}


def split_plan() -> dict:
    """A split plan as `edgekit compile --split` writes it."""
    def cut(layers: int, last: str | None) -> dict:
        return {"device_layers": layers, "last_device_layer": last, "payload_bytes": 512, "device_seconds": 0.01,
                "transfer_seconds": 0.002, "server_seconds": 0.001, "total_seconds": 0.013, "device_joules": 0.05}

    return {"kind": "split", "device_stages": ["head"], "server_stages": ["tail"],
            "boundary": {"name": "conv2d_1", "shape": [1, 8, 8, 8], "dtype": "int8", "layout": "NHWC",
                         "scale": 0.02, "zero_point": -128, "tensor": "conv2d_1", "payload_bytes": 512,
                         "fp32_bytes": 2048},
            "split": {"device": "rpi4", "server": "x86-server", "link": "wifi", "uplink_bps": 2e7,
                      "objective": "latency", "server_dtype": "fp32", "requested": "auto",
                      "chosen": cut(2, "features.1"), "all_device": cut(6, "fc"), "all_server": cut(0, None),
                      "decision_map": [[1e3, 2e5, 6], [2e5, 1e9, 2]]},
            "model_id": "toy", "model_version": "sha256:0123456789abcdef"}


def minimal_split_plan() -> dict:
    """A hand-made split plan: stages, model id and version only (no boundary record, no re-split)."""
    return {"kind": "split", "device_stages": ["head"], "server_stages": ["tail"], "model_id": "toy",
            "model_version": "1"}


@pytest.mark.parametrize("make, kind", [(patch_plan, PatchSchedule), (split_plan, SplitSchedule),
                                        (minimal_split_plan, SplitSchedule)])
def test_round_trip_is_exact(make: Callable[[], dict], kind: type) -> None:
    data = make()
    plan = kind.from_dict(json.loads(json.dumps(data)), "x")
    assert isinstance(plan, kind) and plan.to_dict() == data
    assert json.dumps(plan.to_dict()) == json.dumps(data)  # the same keys in the same order: the same bytes
    assert kind.from_dict(plan.to_dict(), "x") == plan
    hash(plan)


def test_typed_fields() -> None:
    patch = PatchSchedule.from_dict(patch_plan(), "x")
    assert patch.model_files == ("patch_stage.tflite", "patch_rest.tflite", "patch_stage_unrolled.tflite")
    assert patch.mcu_files == ("patch_stage.tflite", "patch_rest.tflite") and patch.window_fill == -3
    assert patch.window.shape == (1, 6, 6, 3) and patch.patches[1].tile == (0, 2, 2, 4)
    assert patch.masks[0].inputs == (1, 2) and patch.rest_arena.head_bytes == 256 and patch.VERSION == 4
    assert [o.shape for o in patch.outputs] == [(1, 10), (1, 4, 4, 2)]
    split = SplitSchedule.from_dict(split_plan(), "x")
    assert split.figures is not None and split.boundary is not None
    assert split.figures.all_server.last_device_layer is None and split.figures.decision_map[1] == (2e5, 1e9, 2)
    assert split.boundary.info == TensorInfo("conv2d_1", (1, 8, 8, 8), "int8", "NHWC", 0.02, -128)
    minimal = SplitSchedule.from_dict(minimal_split_plan(), "x")
    assert minimal.figures is None and minimal.boundary is None and Resplit.of(minimal.figures) is None
    resplit = Resplit.of(split.figures)
    assert resplit is not None and (resplit.device_s, resplit.payload_bytes, resplit.all_device_s) == (0.01, 512, 0.01)




PATCH_CASES = {
    "kind": (set_at("kind", value="patches"), r"'plan.kind' must be one of patch, found 'patches'"),
    "version": (set_at("version", value=3), r"'plan.version' must be 4 .* found 3"),
    "no outputs": (set_at("outputs", value=[]), r"'plan.outputs' must not be empty"),
    "layout": (set_at("layout", value="NCHW"), r"'plan.layout' must be one of NHWC, found 'NCHW'"),
    "missing key": (drop_at("planner"), r"missing key 'plan.planner'"),
    "unknown key": (set_at("extra", value=1), r"unknown key 'plan.extra'"),
    "unsafe model name": (set_at("rest_model", value="../rest.tflite"), r"'plan.rest_model'.*path traversal"),
    "grid": (set_at("grid", value=0), r"'plan.grid' must be >= 1, found 0"),
    "stage end": (set_at("stage_end", value=""), r"'plan.stage_end' must be a non-empty string"),
    "tensor rank": (set_at("stage", "shape", value=[4, 4, 8]), r"'plan.stage.shape' must have 4 dimensions"),
    "tensor dtype": (set_at("input", "dtype", value="int4"), r"'plan.input.dtype' must be one of"),
    "tensor key": (set_at("tile", "name", value="t"), r"unknown key 'plan.tile.name'"),
    "quantization": (set_at("outputs", 1, "scale", value=None),
                     r"'plan.outputs\[1\].scale' and 'plan.outputs\[1\].zero_point'"),
    "window fill": (set_at("window", "fill", value=200), r"'plan.window.fill' must be <= 127, found 200"),
    "window key": (drop_at("window", "fill"), r"missing key 'plan.window.fill'"),
    "window channels": (set_at("window", "shape", value=[1, 6, 6, 4]), r"'plan.window' must have the batch, "
                                                                     r"channels and dtype of 'plan.input'"),
    "tile dtype": (set_at("tile", "dtype", value="int16"), r"'plan.tile' must have the batch, channels and dtype"),
    "mask inputs": (set_at("masks", 0, "inputs", value=[2, 1]), r"'plan.masks\[0\].inputs' must be \[1, 2\]"),
    "mask shape": (set_at("masks", 0, "shape", value=[5]), r"'plan.masks\[0\].shape' must be 2 integers"),
    "mask dim": (set_at("masks", 0, "shape", value=[5, 0]), r"'plan.masks\[0\].shape\[1\]' must be >= 1"),
    "no patches": (set_at("patches", value=[]), r"'plan.patches' must not be empty"),
    "region length": (set_at("patches", 0, "tile", value=[0, 0, 2]), r"'plan.patches\[0\].tile' must be 4 integers"),
    "region type": (set_at("patches", 0, "window", value=["a", 0, 1, 2]),
                    r"'plan.patches\[0\].window\[0\]' must be an integer, found string 'a'"),
    "negative tile": (set_at("patches", 0, "tile", value=[-1, 0, 1, 2]), r"'plan.patches\[0\].tile\[0\]' must be >= 0"),
    "window size": (set_at("patches", 0, "window", value=[0, -1, 5, 5]),
                    r"'plan.patches\[0\].window' \[0, -1, 5, 5\] must span 6x6 .* found 5x6"),
    "tile outside": (set_at("patches", 3, "tile", value=[2, 2, 4, 5]),
                     r"'plan.patches\[3\].tile' \[2, 2, 4, 5\] must be a non-empty region inside the 4x4 stage"),
    "empty tile": (set_at("patches", 3, "tile", value=[2, 2, 2, 4]), r"'plan.patches\[3\].tile'.*non-empty region"),
    "tile too large": (set_at("patches", 0, "tile", value=[0, 0, 3, 2]),
                       r"'plan.patches\[0\].tile' \[0, 0, 3, 2\] must span at most 2x2 .* found 3x2"),
    "valid count": (set_at("patches", 1, "valid", value=[]),
                    r"'plan.patches\[1\].valid' must hold one region per mask \(1\), found 0"),
    "valid outside": (set_at("patches", 2, "valid", value=[[0, 0, 6, 5]]),
                      r"'plan.patches\[2\].valid\[0\]' \[0, 0, 6, 5\] must lie inside mask 0's 5x5"),
    "valid inverted": (set_at("patches", 2, "valid", value=[[3, 0, 2, 5]]), r"'plan.patches\[2\].valid\[0\]'"),
    "cover gap": (set_at("patches", 3, "tile", value=[2, 2, 4, 3]),
                  r"tiles of 'plan.patches' do not cover the 4x4 stage buffer exactly once: rows 2..3, columns 3..3 "
                  r"are in no tile"),
    "cover overlap": (set_at("patches", 1, "tile", value=[0, 1, 2, 3]),
                      r"do not cover the 4x4 stage buffer exactly once: row 0, column 1 is in two tiles"),
    "counts": (set_at("macs", "stage_full", value=-1), r"'plan.macs.stage_full' must be >= 0, found -1"),
    "counts key": (drop_at("rest_arena", "head_bytes"), r"missing key 'plan.rest_arena.head_bytes'"),
    "counts type": (set_at("flash_bytes", "full", value=1.5), r"'plan.flash_bytes.full' must be an integer"),
}

SPLIT_CASES = {
    "no device stages": (set_at("device_stages", value=[]), r"'plan.device_stages' must not be empty"),
    "stage name": (set_at("server_stages", value=[3]), r"'plan.server_stages\[0\]' must be a non-empty string"),
    "model id": (set_at("model_id", value=""), r"'plan.model_id' must be a non-empty string"),
    "model version": (drop_at("model_version"), r"missing key 'plan.model_version'"),
    "unknown key": (set_at("version", value=1), r"unknown key 'plan.version'"),
    "null figures": (set_at("split", value=None), r"'plan.split' must be an object, found null"),
    "figures key": (drop_at("split", "objective"), r"missing key 'plan.split.objective'"),
    "seconds": (set_at("split", "chosen", "device_seconds", value="fast"),
                r"'plan.split.chosen.device_seconds' must be a finite number, found string 'fast'"),
    "negative seconds": (set_at("split", "all_device", "device_seconds", value=-1.0),
                         r"'plan.split.all_device.device_seconds' must be >= 0"),
    "uplink": (set_at("split", "uplink_bps", value=0), r"'plan.split.uplink_bps' must be > 0"),
    "decision map": (set_at("split", "decision_map", value=[[1e3, 6]]),
                     r"'plan.split.decision_map\[0\]' must be \[from bit/s, to bit/s, device layers\]"),
    "decision range": (set_at("split", "decision_map", value=[[2e5, 1e3, 6]]),
                       r"'plan.split.decision_map\[0\]' must run from a lower to a higher bandwidth"),
    "cut layers": (set_at("split", "chosen", "device_layers", value=1.0),
                   r"'plan.split.chosen.device_layers' must be an integer"),
    "boundary": (set_at("boundary", "dtype", value="int4"), r"'plan.boundary.dtype' must be one of"),
    "boundary key": (drop_at("boundary", "fp32_bytes"), r"missing key 'plan.boundary.fp32_bytes'"),
}


@pytest.mark.parametrize("case", list(PATCH_CASES))
def test_malformed_patch_schedule_is_refused(case: str) -> None:
    change, message = PATCH_CASES[case]
    data = patch_plan()
    change(data)
    with pytest.raises(BundleError, match=f"^x: .*{message}"):
        PatchSchedule.from_dict(data, "x")


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_malformed_split_schedule_is_refused(case: str) -> None:
    change, message = SPLIT_CASES[case]
    data = split_plan()
    change(data)
    with pytest.raises(BundleError, match=f"^x: .*{message}"):
        SplitSchedule.from_dict(data, "x")


# ---------------------------------------------------------------------------------------------- in a manifest


def _tensor(name: str, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(name, shape, "int8", "NHWC" if len(shape) == 4 else None, 0.5, -3)


@pytest.fixture
def patch_bundle(tmp_path: Path) -> Path:
    source = tmp_path / "patch_src"
    source.mkdir()
    for name in ("patch_stage.tflite", "patch_rest.tflite", "patch_stage_unrolled.tflite"):
        (source / name).write_bytes(minimal_tflite(len(name) + 64))
    stage = Stage("patched", "litert", "patch_stage.tflite", (_tensor("input", (1, 8, 8, 3)),),
                  (_tensor("output", (1, 10)), _tensor("features", (1, 4, 4, 2))))
    plan = PatchSchedule.from_dict(patch_plan(), "x")
    return write_bundle(source, Manifest("toy", "stm32f746", (stage,), plan=plan), tmp_path / "patched")


@pytest.fixture
def split_bundle(tmp_path: Path) -> Path:
    source = tmp_path / "split_src"
    source.mkdir()
    (source / "head.tflite").write_bytes(minimal_tflite())
    (source / "tail.onnx").write_bytes(b"\x08\x07")  # ir_version 7 and nothing else: what the loader checks
    boundary = _tensor("conv2d_1", (1, 8, 8, 8))
    stages = (Stage("head", "litert", "head.tflite", (_tensor("x", (1, 16, 16, 3)),), (boundary,)),
              Stage("tail", "onnxruntime", "tail.onnx", (TensorInfo("b", (1, 8, 8, 8), "float32", "NHWC"),),
                    (TensorInfo("logits", (1, 5), "float32"),)))
    plan = SplitSchedule.from_dict(split_plan(), "x")
    return write_bundle(source, Manifest("toy", "rpi4", stages, plan=plan), tmp_path / "split")


def _edit(bundle: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    change(data["plan"])
    (bundle / "manifest.json").write_text(json.dumps(data))


def test_a_loaded_manifest_holds_typed_plans(patch_bundle: Path, split_bundle: Path) -> None:
    patch, split = load_bundle(patch_bundle).manifest, load_bundle(split_bundle).manifest
    assert patch.plan == PatchSchedule.from_dict(patch_plan(), "x") and SplitSchedule.of(patch) is None
    assert SplitSchedule.of(split) == split.plan == SplitSchedule.from_dict(split_plan(), "x")
    assert json.loads((split_bundle / "manifest.json").read_text())["plan"] == split_plan()
    assert json.loads((patch_bundle / "manifest.json").read_text())["plan"] == patch_plan()


@pytest.mark.parametrize("change, message", [
    (set_at("split", "chosen", "payload_bytes", value="512"), r"'plan.split.chosen.payload_bytes' must be an integer"),
    (drop_at("split", "decision_map"), r"missing key 'plan.split.decision_map'"),
    (set_at("split", "all_device", value=[]), r"'plan.split.all_device' must be an object, found array"),
    (set_at("device_stages", value=["tail"]), r"runs \['tail'\] on the device and \['tail'\] on the server, but the "
                                            r"stages are \['head', 'tail'\]"),
])
def test_load_refuses_a_malformed_split_plan(split_bundle: Path, change: Callable[[dict], None],
                                             message: str) -> None:
    """A split plan whose figures are malformed used to load and silently run without re-split."""
    from edgekit.runtime import load

    _edit(split_bundle, change)
    with pytest.raises(BundleError, match=f"^{re.escape(str(split_bundle))}: manifest.json: .*{message}"):
        load_bundle(split_bundle)
    with pytest.raises(BundleError, match=message):
        load(split_bundle)


def test_load_refuses_a_malformed_patch_schedule(patch_bundle: Path) -> None:
    _edit(patch_bundle, set_at("patches", 0, "tile", value=[0, 0, 1, 1]))
    where = re.escape(str(patch_bundle))
    with pytest.raises(BundleError, match=f"^{where}: manifest.json: the tiles of 'plan.patches' do not cover the 4x4 "
                                          "stage buffer exactly once"):
        load_bundle(patch_bundle)


def _stages(*files: tuple[str, str]) -> tuple[Stage, ...]:
    return tuple(Stage(f"s{i}", backend, file, (_tensor("x", (1, 8, 8, 3)),), (_tensor("y", (1, 10)),))
                 for i, (backend, file) in enumerate(files))


@pytest.mark.parametrize("plan, stages, message", [
    ([1], (), r"'plan' must be an object or null, found array"),
    ({"grid": 2}, (), r"missing key 'plan.kind' \(expected: patch, split\)"),
    ({"kind": "tiles"}, (), r"'plan.kind' must be one of patch, split, found 'tiles'"),
    (patch_plan(), _stages(("litert", "patch_stage.tflite"), ("litert", "patch_rest.tflite")),
     r"a patch schedule runs as the one stage whose file is 'plan.stage_model' 'patch_stage.tflite', found stages "
     r"'s0' \(patch_stage.tflite\), 's1' \(patch_rest.tflite\)"),
    (patch_plan(), _stages(("litert", "other.tflite")), r"the one stage whose file is 'plan.stage_model'"),
    ({**patch_plan(), "rest_model": "gone.tflite"}, _stages(("litert", "patch_stage.tflite")),
     r"'plan.rest_model' 'gone.tflite' is not listed in 'files'"),
    ({**patch_plan(), "unrolled_model": "gone.tflite"}, _stages(("litert", "patch_stage.tflite")),
     r"'plan.unrolled_model' 'gone.tflite' is not listed in 'files'"),
    (patch_plan(), _stages(("litert", "patch_stage.tflite")),
     r"stage 's0' lists outputs \[\(\(1, 10\), 'int8'\)\], 'plan.outputs' \[\(\(1, 10\), 'int8'\), "
     r"\(\(1, 4, 4, 2\), 'int8'\)\]: both must name every output"),
    (minimal_split_plan(), _stages(("litert", "head.tflite")), r"runs \['head'\] on the device and \['tail'\] on the "
                                                                r"server, but the stages are \['s0'\]"),
])
def test_the_plan_must_fit_the_manifest(plan: Any, stages: tuple[Stage, ...], message: str) -> None:
    files = {name: FileEntry("0" * 64, 1)
             for name in [s.file for s in stages] + ["patch_rest.tflite", "patch_stage_unrolled.tflite"]}
    with pytest.raises(BundleError, match=f"^m: .*{message}"):
        parse_plan(copy.deepcopy(plan), "m", stages, files)


def test_a_split_plan_s_input_codec_round_trips_and_is_checked() -> None:
    from edgekit.formats.plans import SplitSchedule

    plan = SplitSchedule(("head",), ("tail",), "m", "1", input_codec="jpeg:75")
    assert SplitSchedule.from_dict(plan.to_dict(), "m.json").input_codec == "jpeg:75"
    assert "input_codec" not in SplitSchedule(("head",), ("tail",), "m", "1").to_dict()  # older bundles load as before
    for bad in ("png:75", "jpeg", "jpeg:0", "jpeg:101", 75):
        with pytest.raises(BundleError, match="'plan.input_codec' must be (CODEC:QUALITY|a non-empty string)"):
            SplitSchedule.from_dict({**plan.to_dict(), "input_codec": bad}, "m.json")
