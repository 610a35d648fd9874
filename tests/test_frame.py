"""The offload frame: exact round trips, and every malformed input rejected as FrameError, never a crash."""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from helpers import mutated

from edgekit.errors import FrameError
from edgekit.formats.frame import MAX_TENSOR_BYTES, Frame, Tensor, decode, encode, peek_request_id


def sample_frame() -> Frame:
    rng = np.random.default_rng(0)
    activation = rng.integers(-128, 128, (1, 32, 28, 28), dtype=np.int8)
    return Frame(bytes(range(16)), 1_700_000_000_123, "mobilenet_v2", "1.0",
                 (Tensor("features.4", activation, 0.0473, -3), Tensor("logits", np.ones((1, 10), np.float32))))


@pytest.mark.parametrize("codec", ["raw", "zlib"])
def test_round_trip_is_exact(codec: str) -> None:
    frame = sample_frame()
    back = decode(encode(frame, codec))
    assert (back.request_id, back.deadline_ms, back.model_id, back.model_version) == \
        (frame.request_id, frame.deadline_ms, frame.model_id, frame.model_version)
    for got, sent in zip(back.tensors, frame.tensors):
        assert got.name == sent.name and got.zero_point == sent.zero_point
        assert got.scale == pytest.approx(sent.scale) and got.array.dtype == sent.array.dtype
        assert np.array_equal(got.array, sent.array)


def test_int8_frame_is_a_quarter_of_fp32_plus_a_small_header() -> None:
    activation = np.zeros((1, 32, 28, 28), np.int8)
    int8 = encode(Frame(bytes(16), 0, "m", "1", (Tensor("a", activation, 0.05, 0),)))
    fp32 = encode(Frame(bytes(16), 0, "m", "1", (Tensor("a", activation.astype(np.float32)),)))
    # header 30 + model id 2 + version 2 + count 1; tensor: name 2 + codes 3 + 4 dims 16 + quantization 12; CRC 4
    assert len(int8) - activation.size == 72
    assert len(fp32) / len(int8) > 3.9


def resealed(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("mangle, message", [
    (lambda f: f[:10], "shorter than"),
    (lambda f: b"XYZ" + f[3:], "not an edgekit frame"),
    (lambda f: resealed(f[:3] + b"\x01" + f[4:-4]), "frame version 1 is not supported"),
    (lambda f: resealed(f[:4] + b"\x07" + f[5:-4]), "frame kind 7 is unknown"),
    (lambda f: f[:-5] + bytes([f[-5] ^ 1]) + f[-4:], "CRC mismatch"),
    (lambda f: resealed(f[:-4] + b"junk"), "unexpected bytes after the last tensor"),
    (lambda f: resealed(f[:-40]), "truncated"),
])
def test_malformed_frames_are_named(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FrameError, match=message):
        decode(mangle(encode(sample_frame())))


def test_an_oversized_shape_is_refused_before_allocating() -> None:
    frame = Frame(bytes(16), 0, "m", "1", (Tensor("big", np.zeros((1, 1), np.int8)),))
    data = bytearray(encode(frame)[:-4])
    dims_at = data.index(b"big") + 3 + 3  # name, then dtype/codec/ndim
    data[dims_at:dims_at + 8] = struct.pack("<II", 65535, 65535)
    with pytest.raises(FrameError, match=f"the limit is {MAX_TENSOR_BYTES:,}"):
        decode(resealed(bytes(data)))


def test_a_zlib_bomb_is_refused() -> None:
    bomb = zlib.compress(bytes(10_000_000))
    frame = Frame(bytes(16), 0, "m", "1", (Tensor("t", np.zeros((1, 16), np.int8)),))
    data = encode(frame, "zlib")[:-4]
    length_at = len(data) - len(zlib.compress(bytes(16), 1)) - 4
    body = data[:length_at] + struct.pack("<I", len(bomb)) + bomb
    with pytest.raises(FrameError, match="does not inflate to 16 bytes"):
        decode(resealed(body))


def test_error_answers_carry_their_reason_and_no_tensors() -> None:
    answer = Frame(bytes(range(16)), 5, "m", "1", (), kind="error", error="deadline passed 12 ms ago")
    data = encode(answer)
    assert decode(data) == answer and peek_request_id(data) == bytes(range(16))
    assert decode(encode(Frame(bytes(16), 5, "m", "1", (), kind="error", error="é" * 200))).error == "é" * 127
    assert decode(encode(replace(sample_frame(), kind="response"))).kind == "response"
    assert peek_request_id(b"EKF\x01" + bytes(30)) is None and peek_request_id(b"junk") is None
    with pytest.raises(FrameError, match="an error frame has error text and no tensors"):
        encode(Frame(bytes(16), 0, "m", "1", (), kind="error"))
    with pytest.raises(FrameError, match="frame kind must be one of request, response, error, found 'reply'"):
        encode(Frame(bytes(16), 0, "m", "1", (), kind="reply"))


def test_encoder_refuses_what_the_frame_cannot_hold() -> None:
    with pytest.raises(FrameError, match="request id must be 16 bytes"):
        encode(Frame(b"short", 0, "m", "1", ()))
    with pytest.raises(FrameError, match="int64 .* cannot be framed"):
        encode(Frame(bytes(16), 0, "m", "1", (Tensor("t", np.zeros(3, np.int64)),)))
    with pytest.raises(FrameError, match="codec must be one of"):
        encode(Frame(bytes(16), 0, "m", "1", ()), "lz4")


@pytest.mark.parametrize("codec", ["raw", "zlib"])
def test_fuzzed_frames_fail_only_with_frame_error(codec: str) -> None:
    valid = encode(sample_frame(), codec)
    rng = random.Random(0)
    shapes = [t.array.shape for t in sample_frame().tensors]
    refused = 0
    for _ in range(3000):
        data = mutated(valid, rng)
        try:
            frame = decode(bytes(data))
        except FrameError:  # any other exception fails the test
            refused += 1
            continue
        # only a re-sealed payload, id or scale byte can survive: never a different tensor layout
        assert [t.array.shape for t in frame.tensors] == shapes
    assert refused > 1500
