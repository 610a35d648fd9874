"""A .tflite bundle cut in two (edgekit.convert.split_tflite) on a real outside detector, MediaPipe's BlazeFace: the
split bundle answers exactly as the unsplit one, locally and with its tail served over MQTT, and a cut that more
than one tensor crosses is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import blazeface  # tools/, on the path through conftest
import blazeface_bundle
import numpy as np
import pytest
from helpers import needs_mosquitto, run

from edgekit.convert.split_tflite import cut_tflite
from edgekit.errors import SplitError
from edgekit.graph.from_tflite import from_tflite
from edgekit.offload.broker import Broker
from edgekit.runtime import load


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blazeface_split")
    whole = {"fp32": blazeface_bundle.bundle(root / "fp32"), "int8": blazeface_bundle.int8_bundle(root / "int8")}
    return {**whole, **{f"{kind}_split": blazeface_bundle.split(path, root / f"{kind}_split")
                        for kind, path in whole.items()}}


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_split_bundle_gives_every_output_of_the_unsplit_one(bundles: dict[str, Path], kind: str) -> None:
    whole, split = load(bundles[kind]), load(bundles[f"{kind}_split"])
    x = blazeface.frame(blazeface.test_image("astronaut"))
    want, got = whole.run(x), split.run(x)
    assert isinstance(want, dict) and isinstance(got, dict)
    assert list(got) == ["regressors", "classificators"] == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    manifest = split.manifest
    assert [(s.name, s.backend) for s in manifest.stages] == [("head", "litert"), ("tail", "litert")]
    boundary = manifest.plan.boundary
    assert boundary is not None and boundary.info.shape == (1, 16, 16, 48)
    assert (boundary.info.dtype, boundary.payload_bytes) == (("int8", 16 * 16 * 48) if kind == "int8" else
                                                             ("float32", 16 * 16 * 48 * 4))
    assert manifest.detection == whole.manifest.detection and manifest.labels == ("face",)
    assert manifest.plan.figures.chosen.last_device_layer == blazeface_bundle.SPLIT_AT


@needs_mosquitto()
def test_the_tail_served_over_mqtt_answers_as_the_local_tail(bundles: dict[str, Path], broker: Broker) -> None:
    from edgekit.formats.bundle import load_bundle
    from edgekit.offload.client import OffloadClient
    from edgekit.offload.server import OffloadServer, tail_session

    path = bundles["int8_split"]
    x = blazeface.frame(blazeface.test_image("astronaut"))
    want = load(path).run(x)
    with OffloadServer(tail_session(path), broker.start().url), \
            OffloadClient.for_bundle(load_bundle(path), broker.url) as client:
        session = load(path, transport=client, deadline_s=5.0, resplit=False)
        answers = [session.run(x) for _ in range(3)]
        assert session.stats()["answers"]["remote"] == 3
    for got in answers:
        assert isinstance(got, dict) and isinstance(want, dict)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_cut_that_two_tensors_cross_is_refused_by_name(bundles: dict[str, Path]) -> None:
    model = next(bundles["int8"].glob("*.tflite"))
    graph = from_tflite(model)
    inside = graph.layers[1]  # inside the first residual block: its input also feeds the block's ADD
    with pytest.raises(SplitError, match="is not crossed by one tensor alone"):
        cut_tflite(model, int(inside.output[1:]))
    with pytest.raises(SplitError, match="is not made by an operator"):
        cut_tflite(model, int(graph.inputs[0].name[1:]))


def test_compile_splits_a_float_tflite_file_with_its_labels_and_decoder(capsys: pytest.CaptureFixture,
                                                                         tmp_path: Path) -> None:
    from PIL import Image

    from edgekit.targets import load_target

    calib = blazeface_bundle.save_calibration(tmp_path / "calib", 20)
    profile = tmp_path / "my-pi.toml"  # the user's own profile file: the split plans for it, not a registry name
    profile.write_text(Path(str(load_target("rpi4").path)).read_text().replace('name = "rpi4"', 'name = "my-pi"'))
    (tmp_path / "labels.txt").write_text("face\n")
    (tmp_path / "detection.json").write_text(json.dumps(blazeface_bundle.DETECTION.to_dict()))
    code, out, err = run(capsys, "compile", str(blazeface.model_path()), "--target", str(profile), "--int8", "--calib",
                         str(calib), "--mean", "0.5", "--std", "0.5", "--labels", str(tmp_path / "labels.txt"),
                         "--detection", str(tmp_path / "detection.json"), "--split", blazeface_bundle.SPLIT_AT,
                         "--server", "x86-server", "--link", "wifi", "-o", str(tmp_path / "split"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["compiled"]["calibration_samples"] == 20 and report["dtype"] == "int8"
    assert report["payload_bytes"] == 16 * 16 * 48 and report["checked_inputs"] >= 1
    assert report["plan"]["device"] == "my-pi"
    manifest = load(tmp_path / "split").manifest
    assert [s.name for s in manifest.stages] == ["head", "tail"]
    assert manifest.detection == blazeface_bundle.DETECTION and manifest.labels == ("face",)
    Image.fromarray(blazeface.test_image("astronaut")).save(tmp_path / "astronaut.png")
    code, out, err = run(capsys, "run", str(tmp_path / "split"), "--input", str(tmp_path / "astronaut.png"), "--json")
    assert code == 0, err
    assert [d["label"] for d in json.loads(out)["results"][0]["detections"]] == ["face"]
    (tmp_path / "detection.json").write_text("{'decoder': 'grid'}")  # Python, not JSON: refused, never evaluated
    code, out, err = run(capsys, "compile", str(blazeface.model_path()), "--target", "rpi4", "--int8", "--calib",
                         str(calib), "--detection", str(tmp_path / "detection.json"), "-o", str(tmp_path / "bad"))
    assert code == 2 and "detection.json: not JSON" in err and not (tmp_path / "bad").exists()
    code, _, err = run(capsys, "compile", str(tmp_path / "model.onnx"), "--target", "rpi4", "--int8", "--calib",
                       str(calib), "--split", "auto", "--server", "x86-server", "--link", "wifi", "-o",
                       str(tmp_path / "onnx_split"))
    assert code != 0 and "not an .onnx file" in err


@needs_mosquitto()
def test_stream_always_offload_sends_every_frame_and_offload_flags_need_a_broker(
        capsys: pytest.CaptureFixture, bundles: dict[str, Path], broker: Broker, tmp_path: Path) -> None:
    from synthetic_clip import astronaut_clip

    from edgekit.offload.server import OffloadServer, tail_session

    path, frames = bundles["int8_split"], 6
    clip = astronaut_clip(tmp_path / "clip.avi", frames, blank_every=3)
    argv = ("stream", str(path), "--source", str(clip), "--pace", "fast", "--json")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    local = json.loads(out)
    with OffloadServer(tail_session(path), broker.start().url):
        code, out, err = run(capsys, *argv, "--broker", broker.url, "--always-offload")
    assert code == 0, err
    summary = json.loads(out)
    # the plan puts all of BlazeFace on the device at every uplink: without --always-offload only probes would go
    assert summary["answers"] == {"remote": frames, "fallback": 0, "local": 0, "timeout": 0, "error": 0}
    assert summary["frames_processed"] == local["frames_processed"] == frames
    for flags in (("--always-offload",), ("--deadline-ms", "200")):
        code, out, err = run(capsys, *argv, *flags)
        assert code == 2 and out == "" and f"{flags[0]} only mean something with --broker" in err, err


def test_a_model_output_made_before_the_cut_crosses_it() -> None:
    """BlazeFace full-range finishes its classifier output one layer before the end: a cut there still sends it,
    so the planner never offers it as a one-tensor cut (the tail must give every output)."""
    from edgekit.plan.split import crossing_tensors

    graph = from_tflite(blazeface.model_path("face_detection_full_range"))
    early = [k for k in range(1, len(graph.layers)) if graph.layers[k - 1].output in graph.outputs]
    assert early, "the full-range model no longer makes an output early"
    for k in early:
        crossing = crossing_tensors(graph, k)
        assert graph.layers[k - 1].output in crossing and len(crossing) >= 2
