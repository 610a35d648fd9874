"""Bytes per frame and accuracy effect of sending a boundary tensor as int8 (raw or zlib) instead of fp32.

For each model and cut (the output of a top-level block), the boundary activation is quantized per
tensor to int8 with a scale from calibration data (min/max), framed with `edgekit.formats.frame`,
decoded, dequantized and fed to the rest of the float model (a forward hook replaces the block's
output). Reported: frame bytes for fp32 / int8 / int8+zlib, the ratio, and top-1 agreement with the
unmodified float model (and accuracy, for the digits CNN's held-out labels). Beside zlib (the frame's
codec), zstd and lz4 (the `zstandard` and `lz4` packages, when installed) compress the same int8 payloads at
their fastest levels: their frame bytes and the microseconds to compress plus decompress one payload, so
a codec is added to the frame only if it wins.

Run: python tools/bench_codec.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
import torch

from edgekit.formats.frame import Frame, Tensor, decode, encode
from edgekit.models import create_model
from edgekit.models.digits import load_digits_split
from edgekit.report.table import table

CUTS = {"digits_cnn": ("features.0", "features.1", "features.2"),
        "mobilenet_v2_035_96": ("features.3", "features.6", "features.13")}
Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def codecs() -> dict[str, Codec]:
    """Compress and decompress functions, fastest level, of zlib and of zstd / lz4 where installed."""
    found: dict[str, Codec] = {"zlib": (lambda b: zlib.compress(b, 1), zlib.decompress)}
    try:
        import zstandard

        found["zstd"] = (zstandard.ZstdCompressor(level=1).compress, zstandard.ZstdDecompressor().decompress)
    except ImportError:
        pass
    try:
        import lz4.frame

        found["lz4"] = (lz4.frame.compress, lz4.frame.decompress)
    except ImportError:
        pass
    return found


def timed_size(codec: Codec, raw: bytes) -> tuple[int, float]:
    """Compressed size of `raw` and the seconds to compress and decompress it (checked to round-trip)."""
    start = time.perf_counter()
    packed = codec[0](raw)
    back = codec[1](packed)
    took = time.perf_counter() - start
    assert back == raw
    return len(packed), took


def data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(calibration, evaluation, labels): digits' own split, or uniform noise for the random-weight MobileNet."""
    if name == "digits_cnn":
        x_train, _, x_test, y_test = load_digits_split()
        return x_train[:200], x_test, y_test
    rng = np.random.default_rng(0)
    return rng.random((32, 3, 96, 96), dtype=np.float32), rng.random((200, 3, 96, 96), dtype=np.float32), None


def measure(name: str, cut: str) -> dict:
    """Frame sizes and agreement when the output of `cut` travels as int8."""
    model = create_model(name, **({"pretrained": True} if name == "digits_cnn" else {}))
    block = model.get_submodule(cut)
    calib, inputs, labels = data(name)
    seen: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    with torch.no_grad():
        model(torch.from_numpy(calib))
        reference = model(torch.from_numpy(inputs)).argmax(1).numpy()
    handle.remove()
    low, high = float(seen[0].min()), float(seen[0].max())
    scale = max(high - low, 1e-8) / 255.0
    zero = int(round(-128 - low / scale))
    sizes = {"fp32": 0, "int8": 0, "int8+zlib": 0}
    compressors = codecs()
    packed = {name: [0, 0.0] for name in compressors}  # payload bytes, seconds

    def through_frame(_m: torch.nn.Module, _a: tuple, out: torch.Tensor) -> torch.Tensor:
        rows = []
        for sample in out:
            q = np.clip(np.round(sample.numpy() / scale) + zero, -128, 127).astype(np.int8)[None]
            meta = (bytes(16), 0, name, "1")
            sizes["fp32"] += len(encode(Frame(*meta, (Tensor(cut, sample.numpy()[None]),))))
            sizes["int8+zlib"] += len(encode(Frame(*meta, (Tensor(cut, q, scale, zero),)), "zlib"))
            wire = encode(Frame(*meta, (Tensor(cut, q, scale, zero),)))
            sizes["int8"] += len(wire)
            for codec_name, codec in compressors.items():
                size, took = timed_size(codec, q.tobytes())
                packed[codec_name][0] += len(wire) - q.nbytes + size  # the frame around a payload of that size
                packed[codec_name][1] += took
            got = decode(wire).tensors[0]
            rows.append(torch.from_numpy((got.array.astype(np.float32) - got.zero_point) * got.scale))
        return torch.cat(rows)

    handle = block.register_forward_hook(through_frame)
    with torch.no_grad():
        predicted = model(torch.from_numpy(inputs)).argmax(1).numpy()
    handle.remove()
    count = len(inputs)
    row = {"model": name, "cut": cut, "shape": list(seen[0].shape[1:]),
           **{f"{k}_bytes": v // count for k, v in sizes.items()},
           "ratio_int8": sizes["fp32"] / sizes["int8"], "ratio_int8_zlib": sizes["fp32"] / sizes["int8+zlib"],
           "top1_agreement": float(np.mean(predicted == reference)),
           "codecs": {k: {"frame_bytes": v[0] // count, "us": 1e6 * v[1] / count} for k, v in packed.items()}}
    if labels is not None:
        row["accuracy_fp32"] = float(np.mean(reference == labels))
        row["accuracy_int8"] = float(np.mean(predicted == labels))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, cuts in CUTS.items():
        for cut in cuts:
            sys.stderr.write(f"[bench_codec] {name} after {cut}\n")
            rows.append(measure(name, cut))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(table(("model", "cut after", "tensor", "fp32 B", "int8 B", "int8+zlib B", "fp32/int8", "fp32/int8+zlib",
                 "top-1 agreement", "accuracy fp32 -> int8"),
                [(r["model"], r["cut"], "x".join(map(str, r["shape"])), f"{r['fp32_bytes']:,}", f"{r['int8_bytes']:,}",
                  f"{r['int8+zlib_bytes']:,}", f"{r['ratio_int8']:.2f}x", f"{r['ratio_int8_zlib']:.2f}x",
                  f"{100 * r['top1_agreement']:.2f}%",
                  f"{100 * r['accuracy_fp32']:.2f}% -> {100 * r['accuracy_int8']:.2f}%"
                  if "accuracy_fp32" in r else "-")
                 for r in rows]))
    names = list(rows[0]["codecs"])
    print()
    print(table(("model", "cut after", "int8 B", *(f"{n} B / us" for n in names)),
                [(r["model"], r["cut"], f"{r['int8_bytes']:,}",
                  *(f"{r['codecs'][n]['frame_bytes']:,} / {r['codecs'][n]['us']:.0f}" for n in names))
                 for r in rows]))


if __name__ == "__main__":
    main()
