"""Helpers the tests share; fixtures live in conftest.py. Tiny models whose numbers can be checked by hand and
their exports, the in-process CLI, a frame mutator for fuzzing, the small int8 offload tail, waiting on a
condition, and a network lab of two namespaces. tools/ imports the offload tail and the lab from here.

Run as a script, `python tests/helpers.py device --broker URL --bundle PATH ...` is one device streaming
frames and printing one JSON line per answer (the network-namespace tests start it inside their lab).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

# --- tiny models ---------------------------------------------------------------------------------------------


class TinyBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU6, pointwise 1x1, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.dw(x))


class TinyNet(nn.Module):
    """3x32x32 -> stem conv 3x3/2 (8ch) -> residual block -> maxpool 2 -> global pool -> linear 10."""

    input_shape = (1, 3, 32, 32)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = TinyBlock()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def tiny_net() -> TinyNet:
    """TinyNet with non-trivial batch-norm statistics (as a trained model has), in eval mode."""
    torch.manual_seed(0)
    model = TinyNet()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


class TwoConvs(nn.Module):
    """1x16x16 -> conv3x3 (4ch) -> conv3x3 stride 2 (4ch) -> global pool -> linear.

    Layers a (9,216 MACs: 4 x 16 x 16 x 9) and b (9,216 MACs: 4 x 8 x 8 x 4 x 9), then head.0 (global pool,
    256 MACs: 4 x 8 x 8 adds), head.1 (flatten) and head.2 (linear 4 -> 2, 8 MACs): 18,696 MACs in all."""

    input_shape = (1, 1, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def trained_like(model: nn.Module) -> nn.Module:
    """`model` in eval mode with non-trivial batch-norm statistics, so a wrong halo or padding shows in the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export with torch's dynamo ONNX exporter, as a user would."""
    torch.onnx.export(model, (torch.zeros(model.input_shape),), str(path), dynamo=True, verbose=False)
    return path


def export_tflite(model: nn.Module, path: Path) -> Path:
    """Float TFLite with litert-torch, as a user would convert before quantizing."""
    import litert_torch

    litert_torch.convert(model, (torch.rand(model.input_shape),)).export(str(path))
    return path


# --- the CLI, frames, waiting ----------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`edgekit ARGV...` in-process: exit status, stdout, stderr."""
    from edgekit.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mutated(valid: bytes, rng: random.Random) -> bytes:
    """A valid frame with flipped bits, cut short, spliced with noise, or re-sealed with a correct CRC."""
    data = bytearray(valid)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        data[rng.randrange(len(data)):rng.randrange(len(data))] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        body = bytearray(valid[:-4])
        body[rng.randrange(len(body))] = rng.randrange(256)
        data = body + struct.pack("<I", zlib.crc32(bytes(body)))
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 300)))
    return bytes(data)


def set_at(*path: Any, value: Any) -> Callable[[dict], None]:
    """An edit of a parsed JSON document: set the value at `path` (keys and list indices)."""
    def change(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def drop_at(*path: Any) -> Callable[[dict], None]:
    """An edit of a parsed JSON document: delete the entry at `path`."""
    def change(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it is truthy and return its value; AssertionError naming `what` after `timeout_s`.

    For things that take milliseconds: the timeout only bounds a failure, so make it generous."""
    give_up = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.01)
    return value


# --- the offload tail ----------------------------------------------------------------------------------------

SHAPE, SCALE, ZERO_POINT = (1, 8, 4, 4), 0.05, -3


def mosquitto_missing() -> str | None:
    """Why no Mosquitto can be started here (tests that need one skip with it), or None."""
    from edgekit.errors import BrokerError
    from edgekit.offload.broker import find_mosquitto

    try:
        find_mosquitto()
    except BrokerError as exc:
        return str(exc)
    return None


def needs_mosquitto() -> pytest.MarkDecorator:
    """A module's `pytestmark`: skip it where Mosquitto is missing."""
    missing = mosquitto_missing()
    return pytest.mark.skipif(missing is not None, reason=missing or "")


def tiny_tail_bundle(root: Path, int8: bool = True, channels: int = 8, int8_output: bool = False,
                     out_features: int = 10) -> Path:
    """A one-stage ONNX tail: (int8 with scale 0.05, zero point -3, or float32) 1xCx4x4 -> flatten -> linear
    `out_features` (float32, or int8 with scale 0.1, zero point 2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.formats.bundle import Manifest, Stage, TensorInfo, write_bundle

    rng = np.random.default_rng(0)
    shape = (1, channels, 4, 4)
    inits = [numpy_helper.from_array(rng.standard_normal((channels * 16, out_features)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(out_features).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, channels * 16], np.int64), "flat_shape")]
    nodes, source = [], "x"
    if int8:
        inits += [numpy_helper.from_array(np.array(SCALE, np.float32), "s"),
                  numpy_helper.from_array(np.array(ZERO_POINT, np.int8), "z")]
        nodes.append(helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]))
        source = "xf"
    nodes += [helper.make_node("Reshape", [source, "flat_shape"], ["flat"]),
              helper.make_node("Gemm", ["flat", "w", "b"], ["yf" if int8_output else "y"])]
    if int8_output:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s_out"),
                  numpy_helper.from_array(np.array(2, np.int8), "z_out")]
        nodes.append(helper.make_node("QuantizeLinear", ["yf", "s_out", "z_out"], ["y"]))
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info(
        "x", TensorProto.INT8 if int8 else TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT8 if int8_output else TensorProto.FLOAT,
                                       [1, out_features])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source_dir = root / "tail.src"
    source_dir.mkdir(parents=True)
    onnx.save(model, source_dir / "tail.onnx")
    quant = (SCALE, ZERO_POINT) if int8 else (None, None)
    x = TensorInfo("x", shape, "int8" if int8 else "float32", None, *quant)
    y = TensorInfo("y", (1, out_features), "int8", None, 0.1, 2) if int8_output else \
        TensorInfo("y", (1, out_features), "float32")
    stage = Stage("tail", "onnxruntime", "tail.onnx", (x,), (y,))
    return write_bundle(source_dir, Manifest("tiny_tail", "rpi4", (stage,)), root / "tail")


def activation(seed: int, shape: tuple[int, ...] = SHAPE) -> Any:
    """A random int8 boundary tensor with the tail's quantization (an edgekit.formats.frame.Tensor)."""
    from edgekit.formats.frame import Tensor

    array = np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)
    return Tensor("x", array, SCALE, ZERO_POINT)


def stream_device(broker: str, bundle: str, device_id: str, count: int, interval_s: float, deadline_s: float,
                  reserve_s: float) -> None:
    """One device: `count` frames, `interval_s` apart, each answered by the tail or by the local fallback within
    `deadline_s` (giving up on the tail `reserve_s` before it); one JSON line per answer on stdout."""
    from edgekit.offload.auth import bundle_key
    from edgekit.offload.client import OffloadClient
    from edgekit.runtime.session import load

    client = OffloadClient(broker, "tiny_tail", device_id, fallback_reserve_s=reserve_s, connect_timeout_s=10,
                           reconnect_s=(0.2, 1.0), answer_key=bundle_key(bundle))  # the key serve keeps beside it
    session = load(bundle)
    print(json.dumps({"event": "connected", "connected": client.connected}), flush=True)
    for i in range(count):
        reply = client.request(activation(i, session.input.shape), deadline_s, lambda t: session.run(t.array))
        estimate = client.link_estimate()
        print(json.dumps({"i": i, "source": reply.source, "latency_s": reply.latency_s, "detail": reply.detail,
                          "uplink_bps": estimate.uplink_bps, "connected": estimate.connected}), flush=True)
        time.sleep(interval_s)
    print(json.dumps({"event": "done", "counts": client.counts}), flush=True)
    client.close()


# --- a network lab: two namespaces joined by a veth pair -------------------------------------------------------


class NetLabError(RuntimeError):
    """The lab could not be built: not root, iproute2 missing, or a command failed."""


def netlab_unavailable() -> str | None:
    """None when a NetLab can be built here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found (iproute2)" if missing else None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetLabError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class NetLab:
    """netns `{prefix}-dev` and `{prefix}-srv`, a veth pair between them, one private /24 for the prefix.

        with NetLab("ekt") as lab:                   # netns ekt-dev and ekt-srv, 10.X.Y.1 <-> 10.X.Y.2
            broker = lab.popen("srv", ["mosquitto", "-c", conf])
            lab.shape(2.0)                           # tc tbf, 2 Mbit/s each way; None removes it
            lab.down(); lab.up()                     # the device's end of the cable pulled and plugged back

    Needs root and iproute2 (`ip`, `tc`). The /24 is derived from the prefix, so labs with different prefixes
    can coexist; `close()` deletes both namespaces (and with them the veth pair) and is safe to call twice.
    """

    def __init__(self, prefix: str) -> None:
        why = netlab_unavailable()
        if why:
            raise NetLabError(why)
        if len(prefix) > 10 or not prefix.replace("-", "").isalnum():
            raise NetLabError(f"prefix must be at most 10 letters, digits or '-', found {prefix!r}")
        self.prefix = prefix
        self.device_ns, self.server_ns = f"{prefix}-dev", f"{prefix}-srv"
        self._veth = {"dev": f"{prefix}-d", "srv": f"{prefix}-s"}  # interface names, 15 characters at most
        digest = hashlib.sha256(prefix.encode()).digest()
        net = f"10.{200 + digest[0] % 50}.{digest[1]}"
        self.device_ip, self.server_ip = f"{net}.1", f"{net}.2"
        self._closed = False
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def _ns(self, side: str) -> str:
        if side not in self._veth:
            raise NetLabError(f"side must be 'dev' or 'srv', found {side!r}")
        return self.device_ns if side == "dev" else self.server_ns

    def _build(self) -> None:
        for ns in (self.device_ns, self.server_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", self._veth["dev"], "netns", self.device_ns, "type", "veth",
            "peer", "name", self._veth["srv"], "netns", self.server_ns)
        for side, address in (("dev", self.device_ip), ("srv", self.server_ip)):
            _ip("-n", self._ns(side), "addr", "add", f"{address}/24", "dev", self._veth[side])
            _ip("-n", self._ns(side), "link", "set", self._veth[side], "up")

    def shape(self, rate_mbit: float | None) -> None:
        """Limit both directions to `rate_mbit` Mbit/s with a token bucket (tc tbf); None removes the limit."""
        for side in ("dev", "srv"):
            ns, dev = self._ns(side), self._veth[side]
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True)
            if rate_mbit is not None:
                burst = max(1600, int(rate_mbit * 1e6 / 8 / 100))  # about 10 ms worth of bytes
                done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                                       "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "400ms"],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise NetLabError(f"tc tbf on {dev}: {done.stderr.strip()}")

    def down(self) -> None:
        """Take the device's end of the link down (packets are lost; TCP notices only by timeout)."""
        _ip("-n", self.device_ns, "link", "set", self._veth["dev"], "down")

    def up(self) -> None:
        """Bring the device's end back up."""
        _ip("-n", self.device_ns, "link", "set", self._veth["dev"], "up")

    def popen(self, side: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start `argv` inside the 'dev' or 'srv' namespace (Popen keyword arguments pass through)."""
        return subprocess.Popen(["ip", "netns", "exec", self._ns(side), *argv], **kwargs)

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them); idempotent."""
        if self._closed:
            return
        self._closed = True
        for ns in (self.device_ns, self.server_ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _main() -> None:
    parser = argparse.ArgumentParser(description="test helpers run as a process")
    sub = parser.add_subparsers(dest="mode", required=True)
    device = sub.add_parser("device", help="stream frames as one device, one JSON line per answer")
    device.add_argument("--broker", required=True)
    device.add_argument("--bundle", required=True)
    device.add_argument("--device-id", default="lab-device")
    device.add_argument("--count", type=int, default=40)
    device.add_argument("--interval", type=float, default=0.05)
    device.add_argument("--deadline", type=float, default=0.3)
    device.add_argument("--reserve", type=float, default=0.15, help="seconds the fallback keeps for itself")
    args = parser.parse_args()
    stream_device(args.broker, args.bundle, args.device_id, args.count, args.interval, args.deadline, args.reserve)


if __name__ == "__main__":
    _main()


def sample_files(folder: Path, sample_shape: tuple[int, ...], calibration: int, held_out: int) -> tuple[Path, Path]:
    """calib.npy and eval.npz (unlabelled) of seeded uniform [0, 1) samples of `sample_shape`, in `folder`."""
    rng = np.random.default_rng(0)
    np.save(folder / "calib.npy", rng.random((calibration, *sample_shape), dtype=np.float32))
    np.savez(folder / "eval.npz", x=rng.random((held_out, *sample_shape), dtype=np.float32))
    return folder / "calib.npy", folder / "eval.npz"


def vtest_video() -> Path:
    """OpenCV's sample clip vtest.avi (tools/setup.sh extracts it from Debian's opencv-doc), or skip saying so."""
    from bench_stream import vtest_path  # tools/, on the path through conftest

    path = vtest_path()
    if path is None:
        pytest.skip("vtest.avi not found: tools/setup.sh extracts it from Debian's opencv-doc into "
                    "~/.cache/edgekit/samples (or set EDGEKIT_SAMPLES to a folder holding it)")
    return path
