"""Split computing artifacts: head/tail cutting is exact, bad cuts say what would work, split bundles run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run, tiny_net

from edgekit.convert.compile_split import compile_split
from edgekit.convert.split_export import split_model
from edgekit.errors import SplitError
from edgekit.models import create_model
from edgekit.models.digits import load_digits_split
from edgekit.plan.split import SplitCandidate, SplitPlan, choose_cut
from edgekit.runtime import load
from edgekit.targets import load_link, load_target


@pytest.mark.parametrize("boundary, shape", [("conv2d", (16, 8, 8)), ("conv2d_1", (32, 4, 4)),
                                             ("adaptive_avg_pool2d", (32, 1, 1))])
def test_digits_head_then_tail_is_the_model(boundary: str, shape: tuple[int, ...]) -> None:
    model = create_model("digits_cnn", pretrained=True)
    x = torch.from_numpy(load_digits_split()[2][:32])
    head, tail = split_model(model, torch.zeros(model.input_shape), boundary)
    with torch.no_grad():
        middle = head(x)
        assert torch.allclose(tail(middle), model(x), atol=1e-5)
    assert tuple(middle.shape[1:]) == shape and tail.input_shape == (1, *shape)
    if boundary != "adaptive_avg_pool2d":  # the graph IR's conv layers include their batch norm and ReLU
        assert middle.min() >= 0.0


def test_residual_net_cut_at_block_boundary_is_exact() -> None:
    model = tiny_net()
    head, tail = split_model(model, torch.zeros(model.input_shape), "add")  # after the residual add
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tail(head(x)), model(x), atol=1e-5)
    assert tail.input_shape == (1, 8, 16, 16)


def test_cut_inside_a_residual_block_names_the_tensors_and_the_cuts_that_work() -> None:
    model = tiny_net()
    with pytest.raises(SplitError) as error:  # after the depthwise conv the stem output is still needed by the add
        split_model(model, torch.zeros(model.input_shape), "conv2d_1")
    message = str(error.value)
    assert "2 tensors crossing" in message and "(conv2d_1, conv2d)" in message
    assert "before: 'conv2d' (after layer 'stem.0')" in message and "after: 'add' (after layer 'block.add')" in message


@pytest.mark.parametrize("boundary, says", [("stem.0", "its output tensor is 'conv2d'"),
                                            ("linear", "the model's output"), ("nope", "no layer output 'nope'")])
def test_a_boundary_that_is_not_a_cut_lists_the_ones_that_are(boundary: str, says: str) -> None:
    model = tiny_net()
    with pytest.raises(SplitError, match="one of: conv2d, add, max_pool2d") as error:
        split_model(model, torch.zeros(model.input_shape), boundary)
    assert says in str(error.value)


def test_auto_deploys_the_best_cut_that_one_tensor_crosses() -> None:
    def cut(k: int, tensors: tuple[str, ...], seconds: float) -> SplitCandidate:
        return SplitCandidate(k, f"layer{k}" if k else None, tensors, 100, seconds, 0.0, 0.0, 0.0, True)

    candidates = (cut(0, ("x",), 5.0), cut(1, ("a", "b"), 1.0), cut(2, ("c",), 2.0), cut(3, (), 9.0))
    plan = SplitPlan("m", "dev", "srv", "link", 1e6, "latency", candidates, candidates[1], ())
    assert choose_cut(plan, "auto") == candidates[2]  # the planner's best (inside a block) has two tensors


def test_auto_split_that_keeps_everything_on_the_device_says_which_compile_to_run(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match=r"all on the device .* `edgekit compile digits_cnn --target rpi4 --int8"):
        compile_split(create_model("digits_cnn", pretrained=True), "digits_cnn", load_target("rpi4"),  # 64 B of
                      load_target("x86-server"), load_link("wifi"), tmp_path / "out", None)  # input: no cut pays
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("split, says", [("block.dw.0", "2 tensors crossing to the server (conv2d_1, conv2d)"),
                                         ("block.nope", "TinyNet has no layer 'block.nope'")])
def test_a_requested_split_that_cannot_be_deployed_says_why(tmp_path: Path, split: str, says: str) -> None:
    with pytest.raises(SplitError) as error:
        compile_split(tiny_net(), "TinyNet", load_target("rpi4"), load_target("x86-server"), load_link("wifi"),
                      tmp_path / "out", None, split=split)
    assert says in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sbc_split_bundle_runs_int8_head_then_tail_end_to_end(tmp_path: Path, digits_data) -> None:  # type: ignore[no-untyped-def]
    calib, held_out = digits_data
    model = create_model("digits_cnn", pretrained=True)
    report = compile_split(model, "digits_cnn", load_target("rpi4"), load_target("x86-server"), load_link("wifi"),
                           tmp_path / "split", calib, held_out, split="features.1.0", tail_dtype="int8")
    assert report.fidelity is not None and report.fidelity.top1_agreement >= 0.98
    assert report.plan.requested and report.to_dict()["plan"]["verdict"]["label"] == "your cut"
    assert report.plan.best == report.plan.all_device and report.plan.verdict.ratio_to_best > 100  # 0.02 ms a frame

    session = load(tmp_path / "split")
    head, tail = session.manifest.stages
    assert (head.name, tail.name, session.backends) == ("head", "tail", ("litert", "onnxruntime"))
    boundary = head.outputs[0]  # the int8 message sent over the link, dequantized for the float32 tail
    assert (boundary.dtype, boundary.shape, boundary.layout) == ("int8", (1, 32, 4, 4), "NCHW")
    assert boundary.scale > 0 and -128 <= boundary.zero_point <= 127
    assert (tail.inputs[0].dtype, tail.inputs[0].shape, tail.inputs[0].scale) == ("float32", (1, 32, 4, 4), None)
    plan = session.manifest.plan.to_dict()  # the JSON the manifest holds
    assert (plan["kind"], plan["device_stages"], plan["server_stages"]) == ("split", ["head"], ["tail"])
    assert plan["boundary"]["scale"] == boundary.scale and plan["boundary"]["tensor"] == "conv2d_1"
    assert (plan["boundary"]["payload_bytes"], plan["boundary"]["fp32_bytes"]) == (32 * 4 * 4, 4 * 32 * 4 * 4)
    assert plan["split"]["chosen"]["last_device_layer"] == plan["split"]["requested"] == "features.1.0"
    assert plan["split"]["all_device"]["device_layers"] == 6 and plan["model_version"].startswith("sha256:")

    x, _ = np.load(held_out).values()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).argmax(1).numpy()
    split = np.array([session.run(frame).argmax() for frame in x])  # head -> dequantize -> tail, per frame
    assert (split == expected).mean() >= 0.98


@pytest.mark.slow
def test_mcu_split_from_the_cli_sends_nhwc_and_the_tail_takes_it(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                 digits_data) -> None:  # type: ignore[no-untyped-def]
    calib, held_out = digits_data
    code, out, err = run(capsys, "compile", "digits_cnn", "--pretrained", "--target", "stm32f746", "--int8",
                         "--calib", str(calib), "--eval", str(held_out), "--split", "features.1.0",
                         "--server", "x86-server", "--link", "wifi", "-o", str(tmp_path / "mcu_split"))
    assert code == 0, err
    assert "cut after 'features.1.0'" in out and "payload per frame: 512 B as sent (2,048 B in float32)" in out
    assert "all device" in out and "all server" in out  # the baselines
    # the cut was named, so it is "your cut", against the planner's best: all on the board, 2.14 ms a frame
    assert "\nyour cut    features.1.0 " in out and "\nchosen " not in out
    assert ("\nyour cut after 'features.1.0': 3.82 ms per frame, 1.79x the best plan (all device, 2.14 ms) at "
            "100 Mbit/s\n") in out

    session = load(tmp_path / "mcu_split")
    head, tail = session.manifest.stages
    assert head.outputs[0].shape == tail.inputs[0].shape == (1, 4, 4, 32)
    assert head.outputs[0].layout == tail.inputs[0].layout == "NHWC" and session.backends[0] == "tflite-micro"
    x, y = np.load(held_out).values()
    predictions = np.array([session.run(np.ascontiguousarray(frame.transpose(1, 2, 0))).argmax() for frame in x])
    assert (predictions == y).mean() >= 0.97


def test_split_flags_go_together(capsys: pytest.CaptureFixture, tmp_path: Path, digits_data) -> None:  # type: ignore[no-untyped-def]
    calib, _ = digits_data
    base = ["compile", "digits_cnn", "--target", "rpi4", "--int8", "--calib", str(calib), "-o", str(tmp_path / "o")]
    code, _, err = run(capsys, *base, "--link", "wifi")
    assert code == 2 and "pass them with --split auto|LAYER" in err
    code, _, err = run(capsys, *base, "--split", "auto", "--server", "x86-server")
    assert code == 2 and "--split needs --server SERVER (runs the tail) and --link LINK" in err
