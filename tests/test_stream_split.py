"""`edgekit stream --broker`: a split detector bundle (the tiny detector, INT8 head, FP32 tail) with its tail on an
OffloadServer behind a real Mosquitto; every frame's detections equal the all-local run's, and the summary counts
who answered (the server, or the local tail when none answers within the deadline)."""

from __future__ import annotations

import json
from pathlib import Path

import bench_stream  # tools/, on the path through conftest: the tiny detector's bundles
import pytest
from helpers import needs_mosquitto, run, vtest_video
from synthetic_clip import astronaut_clip

from edgekit.formats.bundle import load_bundle
from edgekit.offload.broker import Broker
from edgekit.offload.client import OffloadClient
from edgekit.offload.server import OffloadServer, tail_session
from edgekit.runtime import load
from edgekit.runtime.detections import Detections
from edgekit.runtime.session import Session
from edgekit.runtime.stream import stream

pytestmark = [needs_mosquitto(), pytest.mark.slow]  # one litert conversion of the head (~20 s)
FRAMES = 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return astronaut_clip(tmp_path_factory.mktemp("video") / "clip.avi", FRAMES, blank_every=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> dict[str, Path]:
    return bench_stream.tiny_detector_bundles(tmp_path_factory.mktemp("tiny"), clip)


@pytest.fixture(scope="module")
def split(tiny: dict[str, Path]) -> Path:
    manifest = load_bundle(tiny["split"]).manifest
    assert [s.name for s in manifest.stages] == ["head", "tail"] and manifest.detection is not None
    return tiny["split"]


def _frames(session: Session, source: Path, frames: int = FRAMES) -> tuple[list[list[dict]], dict | None]:
    """Each frame's detections (as JSON-ready lists) of the first `frames` of `source`, and who answered."""
    found: list[Detections] = []
    summary = stream(session, str(source), [found.append], realtime=False, max_frames=frames)
    assert summary.frames_processed == frames
    return [d.to_list() for d in found], summary.answers


def test_every_offloaded_frame_gives_the_local_detections(split: Path, clip: Path, broker: Broker) -> None:
    local, answers = _frames(load(split), clip)
    assert answers is None and sum(len(d) for d in local) > 0  # all here: nobody to count
    with OffloadServer(tail_session(split), broker.url), \
            OffloadClient.for_bundle(load_bundle(split), broker.url) as client:
        remote, answers = _frames(load(split, transport=client, deadline_s=5.0, resplit=False), clip)
    assert remote == local
    assert answers == {"remote": FRAMES, "fallback": 0, "local": 0, "timeout": 0, "error": 0}


def test_the_cli_streams_over_the_broker_and_falls_back_without_a_server(capsys: pytest.CaptureFixture,
                                                                         tiny: dict[str, Path], split: Path,
                                                                         clip: Path, broker: Broker) -> None:
    argv = ("stream", str(split), "--source", str(clip), "--pace", "fast", "--broker", broker.url, "--json")
    with OffloadServer(tail_session(split), broker.url):
        code, out, err = run(capsys, *argv)
    assert code == 0, err
    summary = json.loads(out)
    # resplit: the plan says all-device wins on loopback's numbers, so after the first (probe) frame most run here
    assert summary["frames_processed"] == sum(summary["answers"].values()) == FRAMES
    assert summary["answers"]["remote"] >= 1 and summary["answers"]["fallback"] == 0
    code, out, err = run(capsys, *argv[:-1], "--deadline-ms", "300", "--max-frames", "3")  # the server is gone
    assert code == 0, err
    assert "3 processed" in out and "split: answered by" in out and "fallback 3" in out, out
    code, out, err = run(capsys, "stream", str(tiny["fp32"]), *argv[2:])  # whole on the device: nothing to offload
    assert code == 2 and out == "" and err.count("\n") == 1 and "offloading needs a split bundle" in err, err



def test_vtest_pedestrians_through_the_split_bundle_and_the_hog_reference(split: Path, broker: Broker) -> None:
    """The benchmark's inputs: vtest.avi's first frames give the same detections offloaded as here, and OpenCV's
    HOG people detector (the classical reference) finds people in them (vtest shows 2 to 6 pedestrians)."""
    video = vtest_video()
    local, _ = _frames(load(split), video, 5)
    with bench_stream.offloaded(split) as session:
        remote, answers = _frames(session, video, 5)
    assert remote == local and answers is not None and answers["remote"] == 5
    hog = bench_stream.hog_row(video, 5)
    assert hog["frames"] == 5 and 1 <= hog["boxes_per_frame"] <= 10
