"""Compressed input (JPEG/WebP, all on the server) as a split candidate: costs by hand, measured figures, the CLI."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import TwoConvs, needs_mosquitto, run
from PIL import Image
from test_plan_split import device, link

from edgekit.convert.preprocessing import image_input
from edgekit.cost.codec import CodecFigures, core_rate, measure_codecs, parse_codecs
from edgekit.errors import FrameError, SplitError
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES
from edgekit.formats.image import decode_image, encode_image
from edgekit.graph import load_graph
from edgekit.models.digits import digits_cnn, load_digits_split
from edgekit.offload.broker import Broker
from edgekit.plan.split import SplitPlan, plan_split
from edgekit.report.plans import render_split_plan, split_verdict
from edgekit.targets import load_link, load_target


def figures(codec: str, quality: int, payload: int, agreement: float, encode_s: float = 0.001) -> CodecFigures:
    """Figures as `measure_codecs` gives them, with round numbers: 0.5 ms to decode, 100 held-out frames."""
    return CodecFigures(codec, quality, payload, payload, encode_s, 0.0005, agreement, 100, "held-out")


def test_a_compressed_input_costs_its_encode_its_bytes_and_its_decode_and_can_win(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())  # 256 B of raw uint8 input; 18,696 MACs in all
    cam = load_target(device(tmp_path, "cam", "1 MMAC/s", "1 MMAC/s", power=("1 W", "100 mW")))
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    slow_link = load_link(link(tmp_path, "1 Mbit/s"))
    jpeg, webp = figures("jpeg", 75, 40, 1.0), figures("webp", 50, 10, 0.9)
    plain = plan_split(graph, cam, fast, slow_link)
    plan = plan_split(graph, cam, fast, slow_link, codecs=(jpeg, webp))
    assert plan.candidates == plain.candidates and plan.decision_map == plain.decision_map  # the cuts are as before
    raw, (as_jpeg, as_webp) = plan.all_server, plan.compressed
    # 216 B fewer at 1 Mbit/s save 1.728 ms; encoding costs 1 ms on the device, decoding 0.5 ms on the server
    assert as_jpeg.input_codec == "jpeg q75" and as_jpeg.payload_bytes == 40 and as_jpeg.device_seconds == 0.001
    assert raw.transfer_seconds - as_jpeg.transfer_seconds == pytest.approx(216 * 8 / 1e6)
    assert as_jpeg.server_seconds == pytest.approx(raw.server_seconds + 0.0005)
    assert as_jpeg.total_seconds == pytest.approx(raw.total_seconds - 216 * 8 / 1e6 + 0.0015)
    # the device pays 1 ms at 1 W to encode, and its radio idles (100 mW) for a 216 B shorter message
    assert as_jpeg.device_joules == pytest.approx(raw.device_joules + 0.001 - 0.1 * 216 * 8 / 1e6)
    # webp q50 would be faster still, but loses 10 points of top-1: shown, refused
    assert as_webp.total_seconds < as_jpeg.total_seconds and not as_webp.valid
    assert as_webp.why_invalid == "top-1 drops 10.00 points on 100 held-out frames, over the 1-point limit"
    assert plan.chosen == as_jpeg == plan.best and plan.verdict.best_name == "jpeg q75"
    # the JPEG wins from where its 168 B beat 18.7 ms on the device (1,344 bit in 18.7 - 10 - 1.5 ms: 187 kbit/s)
    # to where its 1.5 ms of codec outweigh 216 B saved (1,728 bit in 1.5 ms: 1.15 Mbit/s); the cut map keeps cuts
    (lo, to, local), (start, end, compressed), (_, _, raw_input) = plan.choice_map
    assert (local, compressed, raw_input) == ("head.2", "jpeg q75", "(all on server)")
    assert to < 1344 / (0.0187 - 0.0115) < start and end < 1728 / 0.0015 < plan.choice_map[2][0]
    lenient = plan_split(graph, cam, fast, slow_link, codecs=(jpeg, webp), max_drop_points=10)
    assert lenient.chosen == replace(as_webp, valid=True, why_invalid="")
    assert SplitPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    text = render_split_plan(plan)
    assert "(jpeg q75 encoder)" in text and "(webp q50 encoder)" in text and "top-1 drop" in text
    assert "measured on 100 held-out frames" in text
    assert split_verdict(plan).startswith("chosen: all server, input as jpeg q75: ")
    assert "compared on seconds end to end per frame among 7 valid options" in split_verdict(plan)


def test_energy_objective_weighs_the_encode_against_the_radio(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())
    cam = load_target(device(tmp_path, "cam", "1 MMAC/s", "1 MMAC/s", power=("1 W", "100 mW")))
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    radio = load_link(link(tmp_path, "1 Mbit/s", tx_energy="100 uJ/B"))
    cheap, costly = (figures("jpeg", 90, 40, 1.0, encode_s=seconds) for seconds in (0.0001, 0.001))
    (as_jpeg,) = plan_split(graph, cam, fast, radio, objective="energy", codecs=(cheap,)).compressed
    # 216 B fewer on the radio (21.6 mJ) and 1.728 ms less idling at 100 mW, for the encode's seconds at 1 W
    assert as_jpeg.device_joules == pytest.approx(plan_split(graph, cam, fast, radio).all_server.device_joules
                                                  - 216 * 100e-6 - 0.1 * 216 * 8 / 1e6 + 0.0001)
    # against 18.70 mJ all on the device: 168 B on the radio (16.8 mJ) + 11.3 ms idle (1.13 mJ) + the encode
    assert plan_split(graph, cam, fast, radio, objective="energy", codecs=(cheap,)).chosen == as_jpeg  # 18.03 mJ
    assert plan_split(graph, cam, fast, radio, objective="energy", codecs=(costly,)).chosen.device_layers == 5


def test_a_compressed_input_too_large_for_the_link_is_refused(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    tiny = load_link(link(tmp_path, "1 Mbit/s", max_payload=f"{PROTOCOL_OVERHEAD_BYTES + 300} B"))
    big = replace(figures("webp", 75, 200, 1.0), max_payload_bytes=301)  # the mean fits; the largest frame does not
    (refused,) = plan_split(graph, fast, fast, tiny, codecs=(big,)).compressed
    assert refused.why_invalid == "301 B frames exceed testlink's maximum payload"
    with pytest.raises(SplitError, match="max_drop_points must be >= 0"):
        plan_split(graph, fast, fast, tiny, codecs=(big,), max_drop_points=-1)


def _pil_round_trip(pixels: np.ndarray, codec: str, quality: int) -> tuple[list[int], np.ndarray]:
    """Sizes and decoded [0, 1] N,1,H,W frames of N,H,W uint8 greyscale pixels, straight through Pillow."""
    sizes, frames = [], []
    for frame in pixels:
        out = io.BytesIO()
        Image.fromarray(frame, "L").save(out, codec.upper(), quality=quality)
        sizes.append(len(out.getvalue()))
        frames.append(np.asarray(Image.open(io.BytesIO(out.getvalue())), np.float32)[None] * np.float32(1 / 255))
    return sizes, np.stack(frames)


def test_measured_bytes_and_agreement_match_pillow_and_the_model_on_real_digits() -> None:
    import torch

    _, _, x, _ = load_digits_split()  # 360 held-out 8x8 digits
    pixels = np.rint(x[:120, 0] * 255).astype(np.uint8)  # the digits on the 8-bit grid a camera gives
    x = pixels[:, None].astype(np.float32) * np.float32(1 / 255)
    model = digits_cnn(pretrained=True).eval()

    def run_model(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    rpi4, server = load_target("rpi4"), load_target("x86-server")
    prep = image_input(model.input_shape)  # [0, 1] pixels, as the digits are
    measured = measure_codecs(run_model, x, prep, rpi4, server, (("jpeg", 90), ("jpeg", 10)), "held-out",
                              host_rate=1e9)
    reference = run_model(x).argmax(1)
    for fig in measured:
        sizes, decoded = _pil_round_trip(pixels, fig.codec, fig.quality)
        assert fig.payload_bytes == math.ceil(np.mean(sizes)) and fig.max_payload_bytes == max(sizes)
        assert fig.agreement == pytest.approx(np.mean(run_model(decoded).argmax(1) == reference))
        assert fig.frames == 120 and fig.data == "held-out" and fig.encode_seconds > 0
    assert measured[1].payload_bytes < measured[0].payload_bytes
    assert core_rate(rpi4) == (7e9 / 4, "fp32 throughput per core")
    with pytest.raises(SplitError, match="1- or 3-channel image model input"):
        measure_codecs(run_model, x[:, :, :4], replace(prep, channels=2), rpi4, server, host_rate=1e9)


def test_decode_refuses_another_size_format_or_garbage() -> None:
    pixels = np.full((16, 16, 3), 128, np.uint8)
    jpeg = encode_image(pixels, "jpeg", 75)
    assert decode_image(jpeg, "jpeg", (16, 16, 3)).shape == (16, 16, 3)
    with pytest.raises(FrameError, match="jpeg image is 16x16, the model takes 32x32"):
        decode_image(jpeg, "jpeg", (32, 32, 3))
    with pytest.raises(FrameError, match="not a decodable webp image"):
        decode_image(jpeg, "webp", (16, 16, 3))
    with pytest.raises(FrameError, match="not a decodable jpeg image"):
        decode_image(jpeg[:40], "jpeg", (16, 16, 3))
    with pytest.raises(FrameError, match="quality must be 1..100"):
        encode_image(pixels, "jpeg", 0)
    assert parse_codecs("jpeg:50, webp:75") == (("jpeg", 50), ("webp", 75))
    with pytest.raises(SplitError, match="found 'png:5'"):
        parse_codecs("jpeg:50,png:5")


def test_plan_split_cli_measures_codecs_on_eval_data_and_chooses_among_all(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    _, _, x, y = load_digits_split()
    np.savez(tmp_path / "eval.npz", x=x[:100], y=y[:100])
    code, out, _ = run(capsys, "plan", "split", "digits_cnn", "--device", "rpi4", "--server", "x86-server",
                       "--link", "wifi", "--bandwidth", "50 kbit/s", "--eval", str(tmp_path / "eval.npz"),
                       "--codecs", "jpeg:95,webp:5", "--max-drop", "2", "--json")
    assert code == 0
    plan = SplitPlan.from_dict(json.loads(out))
    assert [c.input_codec for c in plan.compressed] == ["jpeg q95", "webp q5"]
    for c in plan.compressed:
        assert c.drop_points is not None and c.valid == (c.drop_points <= 2)
    assert plan.chosen == min((c for c in plan.options if c.valid), key=lambda c: (c.total_seconds,
                                                                                   -c.device_layers))
    assert plan.codec_frames == "100 held-out frames" and plan.max_drop_points == 2
    code, _, err = run(capsys, "plan", "split", "digits_cnn", "--device", "rpi4", "--server", "x86-server",
                       "--link", "wifi", "--codecs", "jpeg:75")
    assert code != 0 and "needs frames: pass --eval" in err


# --- a bundle that sends its input compressed -------------------------------------------------------------------


def smooth_frames(count: int, size: int = 32) -> np.ndarray:
    """Camera-like N,3,H,W [0, 1] frames on the 8-bit grid (smooth shading and a flat disc), seeded."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = []
    for _ in range(count):
        phase = rng.uniform(0, 6, 3)
        image = np.stack([0.5 + 0.4 * np.sin(4 * xx + p) * np.cos(3 * yy - p) for p in phase])
        cy, cx, r = rng.uniform(0.2, 0.8, 3) * (1, 1, 0.4)
        image[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, (3, 1))
        frames.append(np.rint(np.clip(image, 0, 1) * 255) / 255)
    return np.stack(frames).astype(np.float32)


@pytest.fixture(scope="module")
def compressed_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tiny_net compiled for a slow camera over a 1 Mbit/s link, where sending a JPEG beats every cut."""
    from helpers import tiny_net

    from edgekit.convert.compile_split import compile_split
    from edgekit.convert.input_codecs import codec_figures

    root = tmp_path_factory.mktemp("compressed")
    np.savez(root / "eval.npz", x=smooth_frames(24))
    cam = load_target(device(root, "cam", "1 MMAC/s", "1 GMAC/s"))  # slow int8 layers; codecs at this host's speed
    server, slow_link = load_target("x86-server"), load_link(link(root, "1 Mbit/s"))
    model = tiny_net()
    codecs = codec_figures(model, cam, server, evaluation=root / "eval.npz", codecs=(("jpeg", 90), ("webp", 80)),
                           host_rate=1e9)
    report = compile_split(model, "TinyNet", cam, server, slow_link, root / "bundle", root / "eval.npz",
                           root / "eval.npz", codecs=codecs, max_drop_points=100)
    return {"bundle": root / "bundle", "report": report, "model": model}


def _float_model_on_decoded(model: object, frame: np.ndarray, codec: str) -> np.ndarray:
    """What the answer must be: the float model on the frame after the image codec, decoded by Pillow here."""
    import torch

    name, _, quality = codec.partition(":")
    pixels = np.rint(frame[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, name.upper(), quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"), np.float32) / 255
    with torch.no_grad():
        return model(torch.from_numpy(decoded.transpose(2, 0, 1)[None].copy())).numpy()  # type: ignore[operator]


def test_compile_deploys_the_compressed_input_when_it_wins(compressed_bundle: dict) -> None:
    from edgekit.formats.bundle import load_bundle

    report = compressed_bundle["report"]
    chosen = report.plan.chosen
    assert chosen.input_codec and chosen == report.plan.best and report.codec == chosen.input_codec.replace(" q", ":")
    manifest = load_bundle(compressed_bundle["bundle"]).manifest
    head, tail = manifest.stages
    assert head.outputs[0].dtype == "uint8" and head.outputs[0].scale == pytest.approx(1 / 255)
    assert tail.inputs[0].shape == (1, 3, 32, 32) and manifest.plan.figures.requested == "auto"
    assert manifest.plan.input_codec == report.codec  # what the device's transport reads from the bundle
    assert "the device's transport must send with codec" in report.render()


def test_answers_through_the_wire_equal_the_float_model_on_the_decoded_frame(compressed_bundle: dict) -> None:
    from edgekit.offload.handler import TailHandler
    from edgekit.runtime import load
    from edgekit.runtime.transport import InProcessTransport

    report, bundle = compressed_bundle["report"], compressed_bundle["bundle"]
    handler = TailHandler(load(bundle, part="server"), "TinyNet", "1")
    transport = InProcessTransport(handler, "TinyNet", "1", codec=report.codec)
    session = load(bundle, transport=transport, local_tail=False)
    for frame in smooth_frames(3):
        got = session.run(frame[None])
        np.testing.assert_allclose(got, _float_model_on_decoded(compressed_bundle["model"], frame[None],
                                                                report.codec), rtol=1e-4, atol=1e-5)
    assert session.last_reply.source == "remote"


def test_the_server_refuses_a_wrong_image_with_an_error_answer(compressed_bundle: dict) -> None:
    from edgekit.formats import frame as wire
    from edgekit.offload.handler import TailHandler
    from edgekit.runtime import load

    handler = TailHandler(load(compressed_bundle["bundle"], part="server"), "TinyNet", "1")
    good = wire.encode(wire.Frame(bytes(16), 2**62, "TinyNet", "1", (wire.Tensor(
        "pixels", np.zeros((1, 3, 32, 32), np.uint8), 1 / 255),)), "jpeg:75")
    assert handler.handle(good)[0] == "ok"
    small = wire.encode(wire.Frame(bytes(16), 2**62, "TinyNet", "1", (wire.Tensor(
        "pixels", np.zeros((1, 3, 16, 16), np.uint8), 1 / 255),)), "jpeg:75")
    status, answer = handler.handle(small)
    assert status == "error" and "takes float32 (1, 3, 32, 32)" in wire.decode(answer).error  # refused on the header
    # the same frame with its JPEG's first bytes zeroed (CRC fixed): the decoder's refusal is an error answer
    payload = wire.read_header(good).tensors[0].payload
    at = good.index(payload)
    body = good[:at] + bytes(4) + good[at + 4:-4]
    status, answer = handler.handle(body + struct.pack("<I", zlib.crc32(body)))
    assert status == "error" and "not a decodable jpeg image" in wire.decode(answer).error
    # a header that claims 32x32 around a 16x16 JPEG: the decoder checks the size before decoding any pixel
    tensor = wire.TensorHeader("pixels", np.dtype(np.uint8), (1, 3, 32, 32), "jpeg", 1 / 255, 0,
                               encode_image(np.zeros((16, 16, 3), np.uint8), "jpeg", 75))
    with pytest.raises(FrameError, match="jpeg image is 16x16, the model takes 32x32"):
        tensor.tensor()
    with pytest.raises(FrameError, match="a jpeg image is a uint8 1,C,H,W tensor with C 1 or 3"):
        wire.encode(wire.Frame(bytes(16), 0, "TinyNet", "1", (wire.Tensor("x", np.zeros((1, 3, 8, 8),
                                                                                       np.float32)),)), "jpeg:75")
    with pytest.raises(FrameError, match="quality must be 1..100"):
        wire.codec_quality("webp:0")


@needs_mosquitto()
def test_a_real_broker_carries_the_compressed_frames(compressed_bundle: dict, broker: Broker) -> None:
    from edgekit.formats.bundle import load_bundle
    from edgekit.offload.client import OffloadClient
    from edgekit.offload.server import OffloadServer
    from edgekit.runtime import load

    report, bundle = compressed_bundle["report"], compressed_bundle["bundle"]
    with OffloadServer(bundle, broker.url), \
            OffloadClient.for_bundle(load_bundle(bundle), broker.url, device_id="cam-1") as client:  # as `run` does
        assert client.codec == report.codec
        session = load(bundle, transport=client, local_tail=False, deadline_s=10)
        frame = smooth_frames(1)
        got = session.run(frame)
        assert session.last_reply.source == "remote"
    np.testing.assert_allclose(got, _float_model_on_decoded(compressed_bundle["model"], frame, report.codec),
                               rtol=1e-4, atol=1e-5)
