"""The split executor behind Session: an INT8 TFLite head here, a float ONNX tail "on the server" through a
Transport, the local tail as the fallback. Every frame gets exactly one answer: the server's (equal to the local
tail's numbers, since the wire carries the head's own int8 and quantization) or the fallback's."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.convert.compile import tensor_infos
from edgekit.errors import BundleError, EdgekitError, OffloadError
from edgekit.formats import frame
from edgekit.formats.bundle import Manifest, Stage, write_bundle
from edgekit.formats.plans import SplitCut, SplitFigures, SplitSchedule
from edgekit.runtime import load
from edgekit.runtime.split_exec import Resplit
from edgekit.runtime.transport import InProcessTransport, dequantize

pytestmark = pytest.mark.slow  # one litert conversion


class Head(nn.Module):
    input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Tail(nn.Module):
    input_shape = (1, 8, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def _tail_session_handler(bundle: Path):
    """A minimal server: decode, dequantize, run the bundle's server stages, answer with float32."""
    session = load(bundle, part="server")

    def handle(raw: bytes) -> bytes:
        request = frame.decode(raw)
        out = session.run(dequantize(request.tensors[0]))
        return frame.encode(frame.Frame(request.request_id, request.deadline_ms, request.model_id,
                                        request.model_version, (frame.Tensor("logits", out),), kind="response"))
    return handle


@pytest.fixture(scope="module")
def split_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from helpers import export_onnx

    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize

    torch.manual_seed(0)
    head, tail = Head().eval(), Tail().eval()
    root = tmp_path_factory.mktemp("split")
    samples = np.random.default_rng(0).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    source = root / "src"
    source.mkdir()
    quantize(head, samples, source / "head.tflite", Int8Config(format="tflite"))
    export_onnx(tail, source / "tail.onnx")
    (h_in,), (h_out,) = tensor_infos(source / "head.tflite")
    (t_in,), (t_out,) = tensor_infos(source / "tail.onnx")
    stages = (Stage("head", "litert", "head.tflite", (h_in,), (h_out,)),
              Stage("tail", "onnxruntime", "tail.onnx", (t_in,), (t_out,)))
    plan = SplitSchedule(("head",), ("tail",), "toy", "1")
    bundle = write_bundle(source, Manifest("toy", "rpi4", stages, plan=plan), root / "toy_split")
    tail_src = root / "tail_src"
    tail_src.mkdir()
    shutil.copy(source / "tail.onnx", tail_src / "tail.onnx")
    tail_bundle = write_bundle(tail_src, Manifest("toy_tail", "x86-server", (stages[1],)), root / "toy_tail")
    return {"bundle": bundle, "tail": tail_bundle, "x": samples[:8], "source": source, "stages": stages}


def test_split_bundle_without_transport_runs_every_stage_here(split_bundle: dict) -> None:
    session = load(split_bundle["bundle"])
    head, tail = load(split_bundle["bundle"], part="device"), load(split_bundle["bundle"], part="server")
    x = split_bundle["x"][:1]
    boundary = head.run(x)  # the head's dequantized output
    assert boundary.shape == (1, 8, 8, 8) and tail.input.dtype == "float32"
    np.testing.assert_array_equal(session.run(x), tail.run(boundary))
    assert session.output.shape == (1, 5) and session.stats().get("answers") is None
    with pytest.raises(BundleError, match="not split"):
        load(split_bundle["tail"], part="server")


def test_remote_answers_equal_the_local_tail_bit_for_bit(split_bundle: dict) -> None:
    local = load(split_bundle["bundle"])
    transport = InProcessTransport(_tail_session_handler(split_bundle["bundle"]), "toy", "1")
    remote = load(split_bundle["bundle"], transport=transport, deadline_s=5.0)
    for x in split_bundle["x"]:
        np.testing.assert_array_equal(remote.run(x[None]), local.run(x[None]))
        assert remote.last_reply.source == "remote"
    assert remote.stats()["answers"] == {"remote": 8, "fallback": 0, "local": 0, "timeout": 0, "error": 0}


def test_a_failing_server_is_answered_by_the_local_tail(split_bundle: dict) -> None:
    def broken(raw: bytes) -> bytes:
        return raw[:10]  # a truncated answer: the client's decoder refuses it

    local = load(split_bundle["bundle"])
    session = load(split_bundle["bundle"], transport=InProcessTransport(broken, "toy", "1"))
    x = split_bundle["x"][:1]
    np.testing.assert_array_equal(session.run(x), local.run(x))
    assert session.last_reply.source == "fallback" and "shorter than" in session.last_reply.detail


def test_wrong_shaped_answers_never_reach_the_caller(split_bundle: dict) -> None:
    def wrong(raw: bytes) -> bytes:
        request = frame.decode(raw)
        return frame.encode(frame.Frame(request.request_id, 0, "toy", "1",
                                        (frame.Tensor("logits", np.zeros((1, 7), np.float32)),), kind="response"))

    x = split_bundle["x"][:1]
    session = load(split_bundle["bundle"], transport=InProcessTransport(wrong, "toy", "1"))
    np.testing.assert_array_equal(session.run(x), load(split_bundle["bundle"]).run(x))
    assert session.last_reply.source == "fallback" and "(1, 7)" in session.last_reply.detail
    no_tail = load(split_bundle["bundle"], transport=InProcessTransport(wrong, "toy", "1"), local_tail=False)
    assert [r.stage.name for r in no_tail._runners] == ["head"]  # the tail is not even loaded
    with pytest.raises(OffloadError, match=r"server answered float32 \(1, 7\), expected float32 \(1, 5\)"):
        no_tail.run(x)


def test_malformed_split_plans_and_misplaced_transports_are_refused(split_bundle: dict, tmp_path: Path) -> None:
    transport = InProcessTransport(lambda raw: raw, "toy", "1")
    with pytest.raises(BundleError, match="is not split"):
        load(split_bundle["tail"], transport=transport)
    plan = SplitSchedule(("tail",), ("head",), "toy", "1")
    with pytest.raises(BundleError, match=r"runs \['tail'\] on the device and \['head'\] on the server"):
        write_bundle(split_bundle["source"], Manifest("toy", "rpi4", split_bundle["stages"], plan=plan),
                     tmp_path / "bad")  # refused before it is written, and by load_bundle (tests/test_plans.py)


def _figures(decision_map: tuple[tuple[float, float, int], ...]) -> SplitFigures:
    """Planner figures: 10 ms head + 512 B + 1 ms tail at the cut, 20 ms all on the device."""
    def cut(layers: int, device_s: float, payload: int, server_s: float) -> SplitCut:
        return SplitCut(layers, None, payload, device_s, 0.0, server_s, device_s + server_s, 0.0)

    return SplitFigures("rpi4", "x86-server", "wifi", 2e7, "latency", "fp32", "auto", cut(1, 0.010, 512, 0.001),
                        cut(9, 0.020, 0, 0.0), cut(0, 0.0, 768, 0.002), decision_map)


def test_resplit_reads_the_plans_figures() -> None:
    resplit = Resplit.of(_figures(((1e3, 2e5, 9), (2e5, 1e9, 4))))
    assert resplit is not None
    # 0.010 + (512 + 128) * 8 / bps + rtt + 0.001 against 0.020 all on the device
    assert resplit.offload(1e6, 0.0, frame=1) and not resplit.offload(1e5, 0.0, frame=1)
    assert not resplit.offload(1e6, 0.005, frame=1)  # 0.0211 with a 5 ms round trip
    assert resplit.offload(1e5, 0.0, frame=20) and resplit.offload(None, None, frame=1)  # probe; no estimate yet
    assert resplit.winner(5e4) == 9 and resplit.winner(1e6) == 4 and resplit.winner(10.0) is None
    assert Resplit.of(None) is None


class _MeteredTransport(InProcessTransport):
    """An in-process transport that claims a measured uplink, as the MQTT client does."""

    uplink_bps = 1e9

    def link_estimate(self) -> SimpleNamespace:
        return SimpleNamespace(uplink_bps=self.uplink_bps, rtt_s=0.0)


def test_a_slow_link_runs_frames_here_but_keeps_probing(split_bundle: dict, tmp_path: Path) -> None:
    plan = SplitSchedule(("head",), ("tail",), "toy", "1", figures=_figures(((1e3, 1e9, 1),)))
    bundle = write_bundle(split_bundle["source"], Manifest("toy", "rpi4", split_bundle["stages"], plan=plan),
                          tmp_path / "planned")
    transport = _MeteredTransport(_tail_session_handler(bundle), "toy", "1")
    session, local = load(bundle, transport=transport), load(bundle)
    x = split_bundle["x"][:1]
    for _ in range(5):
        np.testing.assert_array_equal(session.run(x), local.run(x))
    transport.uplink_bps = 1e4  # the link collapses: 0.5 s per message against 20 ms here
    for _ in range(40):
        np.testing.assert_array_equal(session.run(x), local.run(x))
    answers = session.stats()["answers"]
    assert answers["local"] == 38 and answers["remote"] == 5 + 2  # frames 20 and 40 probe the link
    assert "all-device is faster" in session.last_reply.detail and "would deploy 1 device layers" in \
        session.last_reply.detail


def test_split_bundle_over_a_real_broker_gives_the_local_numbers(split_bundle: dict, tmp_path: Path) -> None:
    """`edgekit serve` serves the server stages of the split bundle; `run --broker` gets its answers."""
    from edgekit.formats.bundle import load_bundle
    from edgekit.offload.broker import Broker, find_mosquitto
    from edgekit.offload.client import OffloadClient
    from edgekit.offload.server import OffloadServer, tail_session
    from edgekit.runtime.tasks import predict

    try:
        find_mosquitto()
    except EdgekitError as exc:
        pytest.skip(str(exc))
    frames = tmp_path / "frames.npy"
    np.save(frames, split_bundle["x"][:3])
    local = predict(split_bundle["bundle"], frames, top=5)
    with Broker() as broker, OffloadServer(tail_session(split_bundle["bundle"]), broker.start().url):
        assert tail_session(split_bundle["bundle"]).input.name == split_bundle["stages"][1].inputs[0].name
        with OffloadClient.for_bundle(load_bundle(split_bundle["bundle"]), broker.url) as client:
            remote = predict(split_bundle["bundle"], frames, top=5, transport=client, deadline_s=5.0)
    assert [r["answered_by"]["source"] for r in remote["results"]] == ["remote"] * 3
    assert [r["outputs"] for r in remote["results"]] == [r["outputs"] for r in local["results"]]
    with pytest.raises(BundleError, match="needs a split bundle"):
        OffloadClient.for_bundle(load_bundle(split_bundle["tail"]), broker.url)
