"""INT8 patch-based execution: patched output is bit-exact with the full INT8 model, under LiteRT and
under the real tflite-micro interpreter, and the MCU artifacts (C arrays, schedule header) build."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import trained_like
from torch import nn

from edgekit.convert.config import Int8Config
from edgekit.convert.patch_artifacts import PatchArtifacts, build_patch_artifacts
from edgekit.convert.patch_pack import write_patch_pack
from edgekit.convert.quantize import quantize
from edgekit.errors import BackendError, BundleError, PlanError
from edgekit.formats.plans import PatchSchedule, Region
from edgekit.graph.from_tflite import from_tflite
from edgekit.memory import MemoryPolicy
from edgekit.models import create_model
from edgekit.models.resnet import BasicBlock
from edgekit.plan.patch import fixed_plan, plan_patches
from edgekit.runtime.backends import open_backend
from edgekit.runtime.patched import PatchExecutor

pytestmark = pytest.mark.slow


class ResidualPoolNet(nn.Module):
    """48x48 -> conv 3x3/2 -> max pool 3x3/1 (SAME) -> residual block -> max pool 2 | residual block/2 -> fc."""

    input_shape = (1, 3, 48, 48)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.features = nn.Sequential(nn.MaxPool2d(3, 1, 1), BasicBlock(16, 16, 1), nn.MaxPool2d(2),
                                      BasicBlock(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


class LinearPoolNet(nn.Module):
    """32x32 -> conv 3x3/2 (no activation: its zero point is not -128) -> max pool 3x3/1 (SAME) -> conv -> fc."""

    input_shape = (1, 3, 32, 32)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 8, 3, 2, 1),
                                      nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _int8_nhwc(model: nn.Module, path: Path) -> Path:
    """Full-integer TFLite with NHWC int8 I/O, the MCU preset, with trained-like batch-norm statistics."""
    calibration = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
    return quantize(trained_like(model), calibration, path, Int8Config(format="tflite", channels_last_io=True))


@pytest.fixture(scope="module")
def mbv2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PatchArtifacts]:
    """MobileNetV2-0.35@96 INT8, the searched plan (in-place residual accounting) on its own graph."""
    path = _int8_nhwc(create_model("mobilenet_v2_035_96"), tmp_path_factory.mktemp("int8") / "mbv2.tflite")
    plan = plan_patches(from_tflite(path), policy=MemoryPolicy(inplace_residual=True))
    return path, build_patch_artifacts(path, plan)


@pytest.fixture(scope="module")
def mcunet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PatchArtifacts]:
    """The MCUNet-style VWW net INT8 (mixed 3/5/7 kernels), the searched plan on its own graph."""
    path = _int8_nhwc(create_model("mcunet_vww"), tmp_path_factory.mktemp("int8") / "mcunet.tflite")
    return path, build_patch_artifacts(path, plan_patches(from_tflite(path)))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PatchArtifacts]:
    """ResidualPoolNet INT8, stage = stem, SAME max pool, residual block and max pool, 3x3 grid."""
    path = _int8_nhwc(ResidualPoolNet(), tmp_path_factory.mktemp("int8") / "resnet.tflite")
    graph = from_tflite(path)
    end = next(l.name for l in graph.layers if l.op == "maxpool2d" and l.stride == (2, 2))
    plan = fixed_plan(graph, end, 3)
    assert {"maxpool2d", "add"} <= {l.op for l in graph.layers[: len(plan.stage_layers)]}
    return path, build_patch_artifacts(path, plan)


def _full(path: Path, artifacts: PatchArtifacts, backend: str, x: np.ndarray) -> np.ndarray:
    """The full model's raw output (these models have one)."""
    full = open_backend(backend, path.read_bytes(), artifacts.schedule.input.shape)
    full.input_buffer[...] = x
    (output,) = full.invoke()
    return output


def _patched(executor: PatchExecutor, x: np.ndarray) -> np.ndarray:
    """The patch executor's raw output (these models have one)."""
    (output,) = executor.run_raw(x)
    return output


def _frame(artifacts: PatchArtifacts, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, artifacts.schedule.input.shape, dtype=np.int8)


@pytest.mark.parametrize("backend, masked", [("litert", False), ("litert", True), ("tflite-micro", True)])
@pytest.mark.parametrize("net", ["mbv2", "mcunet", "resnet"])
def test_patched_int8_is_bit_exact(net: str, backend: str, masked: bool, request: pytest.FixtureRequest) -> None:
    """The unrolled model (LiteRT's default) and the masked stage model (tflite-micro's) both give the full
    model's int8 output."""
    path, artifacts = request.getfixturevalue(net)
    schedule = PatchSchedule.from_dict(json.loads(json.dumps(artifacts.schedule.to_dict())), net)  # as a bundle
    assert schedule == artifacts.schedule  # holds it, checked
    executor = PatchExecutor({name: artifacts.files[name] for name in schedule.model_files}, schedule, backend,
                             masked=masked)
    assert executor.unrolled == (not masked)
    for seed in (0, 1):
        x = _frame(artifacts, seed)
        assert np.array_equal(_patched(executor, x), _full(path, artifacts, backend, x))
    if executor.unrolled:  # LiteRT reports no arena: the stage buffer and the image the unrolled model reads
        assert executor.peak_bytes == np.prod(schedule.stage.shape) + np.prod(schedule.input.shape)


def test_masks_mark_only_the_image_border(resnet: tuple[Path, PatchArtifacts]) -> None:
    _, artifacts = resnet
    schedule = artifacts.schedule
    height, width = schedule.input.shape[1:3]
    window_hw = schedule.window.shape[1:3]
    assert len(schedule.patches) == 9 and schedule.masks
    assert schedule.window_fill == schedule.input.zero_point  # conv 3x3/2 pads with the zero point
    for patch in schedule.patches:
        top, left, bottom, right = patch.window
        assert (bottom - top, right - left) == window_hw  # one stage model: every window the same size
        border = (top < 0, left < 0, bottom > height, right > width)
        for mask, valid in zip(schedule.masks, patch.valid):
            full = (0, 0, *mask.shape)
            cut = [valid[0] > 0, valid[1] > 0, valid[2] < full[2], valid[3] < full[3]]
            assert all(b or not c for b, c in zip(border, cut)), (patch, mask)  # masked only at the image border
    center = schedule.patches[4]
    assert all(v == (0, 0, *m.shape) for m, v in zip(schedule.masks, center.valid))
    top_left = schedule.patches[0]
    assert top_left.window[0] < 0 and top_left.window[1] < 0  # reaches past the image: filled, not read
    assert all(v[0] > 0 and v[1] > 0 for v in top_left.valid)  # and every mask cuts its top and left


def _with_valid(schedule: PatchSchedule, patch: int, valid: tuple[Region, ...]) -> PatchSchedule:
    patches = list(schedule.patches)
    patches[patch] = replace(patches[patch], valid=valid)
    return replace(schedule, patches=tuple(patches))


def test_masks_decide_bit_exactness(mbv2: tuple[Path, PatchArtifacts]) -> None:
    """Junk instead of padding at the image border, or padding at a patch border: both wrong."""
    path, artifacts = mbv2
    schedule = artifacts.schedule
    x = _frame(artifacts)
    expected = _full(path, artifacts, "litert", x)
    assert np.array_equal(_patched(PatchExecutor(artifacts.files, schedule, "litert", masked=True), x), expected)
    unmasked = _with_valid(schedule, 0, tuple((0, 0, *m.shape) for m in schedule.masks))
    center = len(schedule.patches) // 2
    padded = _with_valid(schedule, center, tuple((1, 0, *m.shape) for m in schedule.masks))
    for wrong in (unmasked, padded):
        assert wrong != schedule
        assert not np.array_equal(_patched(PatchExecutor(artifacts.files, wrong, "litert", masked=True), x), expected)


def test_stage_model_stores_the_weights_once(mbv2: tuple[Path, PatchArtifacts]) -> None:
    from edgekit.formats.tflite import read_model

    path, artifacts = mbv2
    def weights(*models: Any) -> list[bytes]:  # tensor data of 64 bytes or more (not metadata, e.g. arena plans)
        used = [(m, {t.buffer for sub in m.subgraphs for t in sub.tensors}) for m in models]
        return sorted(bytes(m.buffers[i].data) for m, buffers in used for i in buffers
                      if m.buffers[i].data is not None and len(m.buffers[i].data) >= 64)

    written = {p.name: p for p in artifacts.write(path.parent / "artifacts")}
    stage, rest, unrolled = (read_model(written[name])[0] for name in artifacts.schedule.model_files)
    assert len(stage.subgraphs) == len(rest.subgraphs) == len(unrolled.subgraphs) == 1
    assert weights(stage, rest) == weights(read_model(path)[0])  # every weight buffer once, none repeated
    assert weights(unrolled) == weights(stage)  # LiteRT's unrolled model: the stage's weights, each once
    flash = artifacts.schedule.flash_bytes
    assert flash.patched == sum(len(artifacts.files[n]) for n in ("patch_stage.tflite", "patch_rest.tflite"))
    assert flash.full == path.stat().st_size and flash.patched < 1.01 * flash.full


def test_tflm_patched_peak_is_below_the_full_arena(resnet: tuple[Path, PatchArtifacts], tmp_path: Path) -> None:
    from edgekit.convert.mcu import measure_arena

    path, artifacts = resnet
    arenas = write_patch_pack(artifacts, tmp_path)
    executor = PatchExecutor(artifacts.files, artifacts.schedule, "tflite-micro")
    memory = executor.memory()
    assert memory["rest_arena_bytes"] == arenas["patch_rest.tflite"]["total"]
    assert executor.peak_bytes < measure_arena(path)


def test_mcu_pack_and_schedule_header_compile(resnet: tuple[Path, PatchArtifacts], tmp_path: Path) -> None:
    _, artifacts = resnet
    write_patch_pack(artifacts, tmp_path)
    for name in ("patch_schedule.h", "patch_schedule.json", "op_resolver.h", "arena.h", "patch_rest_data.cc",
                 "patch_stage_data.h"):
        assert (tmp_path / name).is_file(), name
    count = len(artifacts.schedule.patches)
    (tmp_path / "check.c").write_text(
        '#include "patch_schedule.h"\n'
        f"_Static_assert(EK_PATCH_COUNT == {count}, \"patch count\");\n"
        "_Static_assert(sizeof(ek_patches) / sizeof(ek_patches[0]) == EK_PATCH_COUNT, \"table\");\n"
        f"_Static_assert(EK_MASK_COUNT == {len(artifacts.schedule.masks)}, \"mask count\");\n"
        "_Static_assert(EK_REST_INPUT_OFFSET == 0, \"stage buffer heads the rest arena\");\n"
        "int last_tile_right(void) { return ek_patches[EK_PATCH_COUNT - 1].tile.right; }\n"
        "int first_valid_top(void) { return ek_patches[0].valid[0].top + ek_masks[0].rows_len; }\n")
    for compiler in (["gcc", "-std=c99"], ["g++", "-x", "c++", "-std=c++17"]):
        if compiler[0] == "g++":
            (tmp_path / "check.c").write_text((tmp_path / "check.c").read_text().replace("_Static_assert",
                                                                                         "static_assert"))
        done = subprocess.run([*compiler, "-fsyntax-only", "-Wall", "-Werror", "-I", str(tmp_path),
                               str(tmp_path / "check.c")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", str(tmp_path / "patch_rest_data.cc")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("backend", ["litert", "tflite-micro"])
def test_cli_emits_a_bundle_the_runtime_runs_patch_by_patch(mbv2: tuple[Path, PatchArtifacts], tmp_path: Path,
                                                           backend: str) -> None:
    from edgekit.cli import main
    from edgekit.runtime import load

    path, artifacts = mbv2
    assert main(["plan", "patch", str(path), "--target", "stm32f746", "--force-patch",  # it fits layer by layer
                 "--emit", str(tmp_path / "pack")]) == 0
    names = {p.name for p in (tmp_path / "pack").iterdir()}
    assert {"manifest.json", "patch_stage.tflite", "patch_rest.tflite", "patch_schedule.h", "arena.h",
            "op_resolver.h"} <= names
    session = load(tmp_path / "pack", backend=backend)
    assert "patch schedule" in session.info()["stages"][0]["engine"]
    x = _frame(artifacts, 3)
    out = artifacts.schedule.outputs[0]
    expected = (_full(path, artifacts, backend, x).astype(np.int32) - out.zero_point) * np.float32(out.scale)
    np.testing.assert_array_equal(session.run(x), expected.astype(np.float32))
    (memory,) = session.stats()["backend_memory"]  # what `edgekit bench` prints: the schedule's own figure
    assert memory["kind"].startswith("patch schedule") and memory["bytes"] > np.prod(artifacts.schedule.stage.shape)


def test_tflm_accounting_is_tflm_arena_head(mbv2: tuple[Path, PatchArtifacts], tmp_path: Path) -> None:
    """MemoryPolicy.tflm() predicts TF Lite Micro's arena head byte for byte: full model and rest model."""
    from edgekit.convert.mcu import arena_parts

    path, artifacts = mbv2
    arenas = write_patch_pack(artifacts, tmp_path)
    graph = from_tflite(path)
    stage_end = artifacts.schedule.stage_end
    plan = fixed_plan(graph, stage_end, artifacts.schedule.grid, policy=MemoryPolicy.tflm())
    assert plan.layer_by_layer_peak_bytes == arena_parts(path)["head"]
    assert plan.chosen.rest_bytes == arenas["patch_rest.tflite"]["head"]
    default = fixed_plan(graph, stage_end, artifacts.schedule.grid)
    assert default.layer_by_layer_peak_bytes < plan.layer_by_layer_peak_bytes  # TFLM pays for PADs, dw copies


def test_planner_predicts_the_stage_models_macs(mbv2: tuple[Path, PatchArtifacts]) -> None:
    """Border patches of the one stage model compute their whole window: the planner's second MAC figure."""
    path, artifacts = mbv2
    schedule = artifacts.schedule
    plan = fixed_plan(from_tflite(path), schedule.stage_end, schedule.grid)
    macs = schedule.macs
    assert macs.stage_patched - macs.stage_full == plan.chosen.stage_model_extra_macs
    assert plan.chosen.stage_model_extra_macs > plan.chosen.extra_macs == schedule.planner.extra_macs
    assert macs.stage_unrolled - macs.stage_full == plan.chosen.extra_macs  # the unrolled model: per-patch figure


def test_unrolled_model_runs_every_patch_without_masks(mbv2: tuple[Path, PatchArtifacts],
                                                        resnet: tuple[Path, PatchArtifacts]) -> None:
    """One subgraph, whole image in and stage buffer out, with no mask ops: PAD at the border (ResidualPoolNet's
    SAME max pool reads a ReLU output, whose zero point is its -128), one SLICE of the image per patch."""
    from edgekit.formats.tflite import op_name, parse_model

    for (_, artifacts), pad_ops in ((mbv2, {"PAD"}), (resnet, {"PAD"})):
        schedule = artifacts.schedule
        model = parse_model(artifacts.files[schedule.unrolled_model], "unrolled")
        (sub,) = model.subgraphs
        ops = [op_name(model, op) for op in sub.operators]
        assert not {"LOGICAL_AND", "SELECT_V2"} & set(ops) and pad_ops <= set(ops)
        shapes = [tuple(sub.tensors[i].shape) for i in (*sub.inputs, *sub.outputs)]
        assert shapes == [schedule.input.shape, schedule.stage.shape]
        image = sub.inputs[0]
        assert sum(image in op.inputs for op in sub.operators) == len(schedule.patches)


def test_rest_model_carries_an_offline_arena_plan_tflm_follows(mbv2: tuple[Path, PatchArtifacts],
                                                                tmp_path: Path) -> None:
    """The rest model's offline plan (input = stage buffer at offset 0) is what TFLM allocates: its head is
    the plan's, and a wrong plan (every tensor at offset 0) changes the output."""
    from edgekit.convert.arena_plan import ArenaPlan, attach_arena_plan
    from edgekit.convert.mcu import arena_parts
    from edgekit.formats.tflite import pack_model, read_model

    path, artifacts = mbv2
    rest_file = tmp_path / "patch_rest.tflite"
    rest_file.write_bytes(artifacts.files["patch_rest.tflite"])
    planned = artifacts.schedule.rest_arena
    assert planned.input_offset == 0
    assert arena_parts(rest_file)["head"] == planned.head_bytes == planned.lower_bound_bytes
    x = _frame(artifacts)
    expected = _full(path, artifacts, "tflite-micro", x)
    model = read_model(rest_file)[0]
    attach_arena_plan(model, ArenaPlan((0,) * len(model.subgraphs[0].tensors), 0, 0))
    clobbered = {**artifacts.files, "patch_rest.tflite": pack_model(model)}
    assert np.array_equal(_patched(PatchExecutor(artifacts.files, artifacts.schedule, "tflite-micro"), x), expected)
    assert not np.array_equal(_patched(PatchExecutor(clobbered, artifacts.schedule, "tflite-micro"), x), expected)


def test_a_plan_for_another_model_is_refused(mbv2: tuple[Path, PatchArtifacts],
                                              resnet: tuple[Path, PatchArtifacts]) -> None:

    mbv2_path, resnet_path = mbv2[0], resnet[0]
    graph = from_tflite(resnet_path)
    plan = fixed_plan(graph, next(l.name for l in graph.layers if l.op == "add"), 2)
    with pytest.raises(PlanError, match="not this model's first layers"):
        build_patch_artifacts(mbv2_path, plan)


def test_executor_quantizes_float_frames_and_checks_the_shape(resnet: tuple[Path, PatchArtifacts]) -> None:

    path, artifacts = resnet
    executor = PatchExecutor(artifacts.files, artifacts.schedule, "litert")
    x = np.random.default_rng(2).random(artifacts.schedule.input.shape, dtype=np.float32)
    out = artifacts.schedule.outputs[0]
    expected = _full(path, artifacts, "litert", executor.quantize(x))
    (patched,) = executor.run(x)
    assert np.array_equal(patched, ((expected.astype(np.int32) - out.zero_point) * out.scale).astype(np.float32))
    with pytest.raises(BackendError, match=r"input shape \(1, 48, 48, 3\) \(NHWC\) expected, found \(1, 3, 48, 48\)"):
        executor.run(x.transpose(0, 3, 1, 2))
    full = open_backend("litert", path.read_bytes(), (1, 48, 48, 3))
    (ours_in, ours_out), (theirs_in, theirs_out) = executor.model_tensors(), full.model_tensors()
    assert len(ours_out) == len(theirs_out) == 1
    for ours, theirs in ((ours_in, theirs_in), (ours_out[0], theirs_out[0])):  # what a session checks
        assert (ours.shape, ours.dtype, ours.zero_point) == (theirs.shape, theirs.dtype, theirs.zero_point)
        assert ours.scale == pytest.approx(theirs.scale, rel=1e-7)


def test_a_corrupt_schedule_is_refused_not_run(resnet: tuple[Path, PatchArtifacts]) -> None:

    _, artifacts = resnet
    schedule = artifacts.schedule
    data = schedule.to_dict()
    first = data["patches"][0]
    window = [first["window"][0] + 1, *first["window"][1:]]
    corrupt = [
        ({**first, "valid": first["valid"][:-1]}, r"'plan.patches\[0\].valid' must hold one region per mask"),
        ({**first, "window": window}, r"'plan.patches\[0\].window' .* must span"),
        ({**first, "tile": data["patches"][1]["tile"]}, "do not cover the .* stage buffer exactly once"),
        ({**first, "valid": [[0, 0, 99, 99]] * len(data["masks"])},
         r"'plan.patches\[0\].valid\[0\]' .* must lie inside mask 0"),
        ({**first, "window": ["a", 0, 1, 2]}, r"'plan.patches\[0\].window\[0\]' must be an integer, found string"),
    ]
    for patch, message in corrupt:
        with pytest.raises(BundleError, match=f"^resnet: .*{message}"):
            PatchSchedule.from_dict({**data, "patches": [patch, *data["patches"][1:]]}, "resnet")
    with pytest.raises(BackendError, match="patch schedule: model file 'patch_rest.tflite' missing"):
        PatchExecutor({"patch_stage.tflite": artifacts.files["patch_stage.tflite"]}, schedule, "litert", masked=True)
    with pytest.raises(BackendError, match="patch schedule: model file 'patch_stage_unrolled.tflite' missing"):
        PatchExecutor({name: artifacts.files[name] for name in schedule.mcu_files}, schedule, "litert")


def test_max_pool_fill_is_not_the_zero_point(tmp_path: Path) -> None:
    """A SAME max pool reads -128 beyond the border, not its input's zero point: the masked stage model's mask and
    the unrolled model's PADV2 both write -128 there, and both stay bit-exact (LiteRT and tflite-micro)."""
    from edgekit.formats.tflite import op_name, parse_model

    path = _int8_nhwc(LinearPoolNet(), tmp_path / "pool.tflite")
    graph = from_tflite(path)
    artifacts = build_patch_artifacts(path, fixed_plan(graph, next(l.name for l in graph.layers
                                                                    if l.op == "maxpool2d"), 2))
    schedule = artifacts.schedule
    assert -128 in {m.fill for m in schedule.masks}
    model = parse_model(artifacts.files[schedule.unrolled_model], "unrolled")
    assert "PADV2" in {op_name(model, op) for op in model.subgraphs[0].operators}
    x = _frame(artifacts)
    for backend, masked in (("litert", False), ("litert", True), ("tflite-micro", True)):
        executor = PatchExecutor(artifacts.files, schedule, backend, masked=masked)
        assert np.array_equal(_patched(executor, x), _full(path, artifacts, backend, x)), (backend, masked)
