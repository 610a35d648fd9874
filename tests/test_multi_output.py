"""Many outputs end to end, on a tiny FPN detector (heads on 4x5, 8x10 and 16x20 grids of a 64x80 image): the patch
bundle gives all three bit-exact with the full INT8 model under LiteRT's reference kernels and tf-micro, the MCU
pack and `edgekit run` list all three, a split bundle returns all three locally and through `edgekit serve`, and a
manifest that leaves an output out is refused."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run, trained_like
from torch import nn

from edgekit.convert.config import Int8Config
from edgekit.convert.quantize import quantize
from edgekit.errors import BrokerError, BundleError, InputError
from edgekit.formats.bundle import load_bundle, write_bundle
from edgekit.formats.quant import dequantize
from edgekit.runtime import backends, load

pytestmark = pytest.mark.slow  # two litert conversions and an ONNX export

GRIDS = ((4, 5), (8, 10), (16, 20))  # the heads of a 64x80 image at strides 16, 8 and 4
CHANNELS = 6  # per head: (x, y, w, h, objectness, one class), say


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyFpn(nn.Module):
    """64x80 -> two stride-2 convs (C3, 16x20) -> C4 (8x10) -> C5 (4x5); 1x1 laterals, nearest 2x upsampling and
    adds top-down; a 3x3 head conv per level. Returns the heads coarsest first: 4x5, 8x10, 16x20."""

    input_shape = (1, 3, 64, 80)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 8), _cbr(8, 8))
        self.c4, self.c5 = _cbr(8, 16), _cbr(16, 16)
        self.lat3, self.lat4, self.lat5 = nn.Conv2d(8, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head3, self.head4, self.head5 = (nn.Conv2d(8, CHANNELS, 3, 1, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stem(x)
        c4 = self.c4(c3)
        p5 = self.lat5(self.c5(c4))
        p4 = self.lat4(c4) + self.up(p5)
        p3 = self.lat3(c3) + self.up(p4)
        return self.head5(p5), self.head4(p4), self.head3(p3)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyFpn as full-integer TFLite with NHWC int8 I/O (the MCU preset)."""
    torch.manual_seed(0)
    model = trained_like(TinyFpn())
    calibration = np.random.default_rng(0).random((8, 3, 64, 80), dtype=np.float32)
    path = tmp_path_factory.mktemp("fpn") / "fpn.tflite"
    return quantize(model, calibration, path, Int8Config(format="tflite", channels_last_io=True))


@pytest.fixture(scope="module")
def patch_bundle(detector: Path) -> Path:
    """The searched patch plan for an STM32F746, emitted as `edgekit plan patch --emit` does (with the MCU pack)."""
    from edgekit.convert.patch_pack import emit_patch_artifacts
    from edgekit.graph.from_tflite import from_tflite
    from edgekit.plan.patch import plan_patches
    from edgekit.targets import load_target

    plan = plan_patches(from_tflite(detector))
    assert plan.chosen is not None, plan.reason
    out = detector.parent / "patched"
    emit_patch_artifacts(detector, plan, out, load_target("stm32f746"))
    return out


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(-128, 128, (1, 64, 80, 3), dtype=np.int8) for _ in range(count)]


def _full_model(detector: Path, backend: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the full INT8 model, dequantized with its own scale and zero point, by name."""
    full = backends.open_backend(backend, detector.read_bytes(), x.shape)
    full.input_buffer[...] = x
    _, outputs = full.model_tensors()
    return {t.name: dequantize(raw, t.scale, t.zero_point) for t, raw in zip(outputs, full.invoke(), strict=True)}


@pytest.fixture
def reference_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteRT's reference kernels (BUILTIN_REF: TF Lite Micro's arithmetic) for every LiteRT adapter."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    monkeypatch.setattr(backends, "litert_interpreter_class", lambda: functools.partial(
        Interpreter, experimental_op_resolver_type=OpResolverType.BUILTIN_REF))


@pytest.mark.parametrize("backend", ["litert", "tflite-micro"])
def test_patch_bundle_is_bit_exact_on_every_output(detector: Path, patch_bundle: Path, backend: str,
                                                   request: pytest.FixtureRequest) -> None:
    if backend == "litert":
        request.getfixturevalue("reference_kernels")
    session = load(patch_bundle, backend=backend)
    assert "patch schedule" in session.info()["stages"][0]["engine"]
    assert [o.shape for o in session.outputs] == [(1, h, w, CHANNELS) for h, w in GRIDS]
    for x in _frames(2):
        expected = _full_model(detector, backend, x)
        got = session.run(x)
        assert isinstance(got, dict) and list(got) == list(expected)  # every output, in the model's order
        for name, array in got.items():
            assert np.array_equal(array, expected[name]), name
            assert len(np.unique(array)) > 10, name  # a real head, not a constant the test would pass on


def test_mcu_pack_lists_every_output(patch_bundle: Path) -> None:
    check = patch_bundle.parent / "outputs_check.c"
    check.write_text('#include "patch_schedule.h"\n_Static_assert(EK_OUTPUT_COUNT == 3, "outputs");\n' + "".join(
        f"int grid{k}(void) {{ return ek_outputs[{k}].dims[1] * 100 + ek_outputs[{k}].dims[2]; }}\n"
        for k in range(3)))
    done = subprocess.run(["gcc", "-std=c99", "-fsyntax-only", "-Wall", "-Werror", "-I", str(patch_bundle),
                           str(check)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    header = (patch_bundle / "patch_schedule.h").read_text()
    manifest = load_bundle(patch_bundle).manifest
    for output, (h, w) in zip(manifest.stages[0].outputs, GRIDS, strict=True):
        assert f'{{"{output.name}", 4, {{1, {h}, {w}, {CHANNELS}}}, {output.scale!r}f, {output.zero_point}}}' in header


def test_run_prints_every_output(patch_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    frame = patch_bundle.parent / "frame.npy"
    np.save(frame, np.random.default_rng(3).random((1, 64, 80, 3), dtype=np.float32))
    code, out, err = run(capsys, "run", str(patch_bundle), "--input", str(frame))
    assert code == 0, err
    names = [o.name for o in load_bundle(patch_bundle).manifest.stages[0].outputs]
    for name, (h, w) in zip(names, GRIDS, strict=True):
        assert f"output '{name}' float32 (1, {h}, {w}, {CHANNELS}): min " in out
    code, out, err = run(capsys, "run", str(patch_bundle), "--input", str(frame), "--json")
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert [(o["name"], o["shape"]) for o in result["outputs"]] == \
        [(name, [1, h, w, CHANNELS]) for name, (h, w) in zip(names, GRIDS)]
    assert all(o["min"] <= o["mean"] <= o["max"] for o in result["outputs"])


def test_a_manifest_that_leaves_an_output_out_is_refused(patch_bundle: Path, tmp_path: Path) -> None:
    manifest = load_bundle(patch_bundle).manifest
    stage = manifest.stages[0]
    short = replace(manifest, stages=(replace(stage, outputs=stage.outputs[:2]),))
    with pytest.raises(BundleError, match=r"stage 'patched' lists outputs \[.*\], 'plan.outputs' \[.*, "
                                          r"\(\(1, 16, 20, 6\), 'int8'\)\]: both must name every output"):
        write_bundle(patch_bundle, short, tmp_path / "short")  # the writer verifies what it wrote, as load does
    assert not (tmp_path / "short").exists()


def test_multi_output_buffers_are_a_dict(patch_bundle: Path) -> None:
    session = load(patch_bundle)
    x = _frames(1)[0]
    out = session.empty_output()
    assert isinstance(out, dict) and session.run(x, out=out) is out
    assert all(np.array_equal(out[name], array) for name, array in session.run(x).items())
    with pytest.raises(InputError, match=r"out= must be a dict \{'.*', '.*', '.*'\} of arrays .*got float32"):
        session.run(x, out=next(iter(out.values())))
    with pytest.raises(BundleError, match=r"the model has 3 outputs .*use Session.outputs"):
        session.output  # noqa: B018 - the property is what is tested
    for _ in range(20):  # warm-up
        session.run(x, out=out)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            session.run(x, out=out)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096, f"memory grew by {after - before} bytes over 100 frames"


# --- split: the tail gives all three -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyFpn cut after its stem (C3 is the one tensor crossing): INT8 head on a Pi, fp32 tail with the three heads."""
    from edgekit.convert.compile_split import compile_split
    from edgekit.targets import load_link, load_target

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fpn_split")
    np.save(root / "calib.npy", np.random.default_rng(1).random((8, 3, 64, 80), dtype=np.float32))
    report = compile_split(trained_like(TinyFpn()), "tiny_fpn", load_target("rpi4"), load_target("x86-server"),
                           load_link("wifi"), root / "split", root / "calib.npy", split="stem.1.0")
    assert report.boundary.shape == (1, 8, 16, 20)  # C3
    return root / "split"


def _split_frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.random((1, 3, 64, 80), dtype=np.float32) for _ in range(count)]


def test_split_bundle_gives_every_tail_output_locally(split_bundle: Path) -> None:
    session = load(split_bundle)
    head, tail = session.manifest.stages
    assert [o.shape for o in tail.outputs] == [(1, CHANNELS, h, w) for h, w in GRIDS]
    device, server = load(split_bundle, part="device"), load(split_bundle, part="server")
    for x in _split_frames(2):
        got = session.run(x)
        assert isinstance(got, dict) and list(got) == [o.name for o in tail.outputs]
        composed = server.run(device.run(x))  # head, dequantized boundary, tail: what the session runs
        for name, array in got.items():
            np.testing.assert_array_equal(array, composed[name])
            assert array.std() > 0, name


@pytest.fixture
def served(split_bundle: Path) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    """`edgekit serve` of the split bundle on a Mosquitto of its own: (broker URL, the server, what it announced)."""
    from edgekit.offload.broker import Broker, find_mosquitto

    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))
    with Broker() as broker:
        proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(split_bundle), "--broker",
                                 broker.url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lines = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.strip())
                if lines[-1] == "ready":
                    break
            assert lines[-1:] == ["ready"], lines
            yield broker.url, proc, lines
        finally:
            proc.terminate()
            proc.wait(30)


def test_serve_returns_every_output_and_the_fallback_too(split_bundle: Path,
                                                         served: tuple[str, subprocess.Popen, list[str]],
                                                         capsys: pytest.CaptureFixture) -> None:
    from edgekit.offload.client import OffloadClient

    url, server, announced = served
    names = [o.name for o in load_bundle(split_bundle).manifest.stages[-1].outputs]
    assert any(f"carrying 3 output(s): {names[0]} [1, {CHANNELS}, 4, 5]" in line for line in announced), announced
    local = load(split_bundle)
    bundle = load_bundle(split_bundle)
    with OffloadClient.for_bundle(bundle, url) as client:
        remote = load(bundle, transport=client, deadline_s=10.0)
        for x in _split_frames(3):
            got, expected = remote.run(x), local.run(x)
            assert remote.last_reply is not None and remote.last_reply.source == "remote"
            assert list(got) == names
            for name in names:
                np.testing.assert_array_equal(got[name], expected[name])  # the wire carries the head's int8
        server.terminate()
        server.wait(30)
        fallback = load(bundle, transport=client, deadline_s=0.5)
        x = _split_frames(1)[0]
        got = fallback.run(x)
        assert fallback.last_reply is not None and fallback.last_reply.source == "fallback"
        assert all(np.array_equal(got[name], array) for name, array in local.run(x).items())
