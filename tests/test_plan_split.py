"""Split planner: costs by hand, DAG-aware cuts, the decision map, and links that cannot carry tensors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers import TwoConvs, run, tiny_net

from edgekit.errors import SplitError
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES
from edgekit.graph import load_graph
from edgekit.plan.split import SplitPlan, check_cut, plan_split, request_cut
from edgekit.report.plans import render_split_plan, split_verdict
from edgekit.targets import load_link, load_target


def device(tmp_path: Path, name: str, int8: str, fp32: str, power: tuple[str, str] | None = None) -> Path:
    """A device profile with round numbers (no memory bandwidth: a layer takes MACs / rate); `power`: active, idle."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
kind = "device"
name = "{name}"
description = "test device with round numbers"
class = "sbc"
runtimes = ["litert"]
[cpu]
model = "test"
cores = 1
clock = {{ value = "1 GHz", estimate = "test" }}
[memory]
ram = {{ value = "1 GiB", estimate = "test" }}
[throughput]
int8 = {{ value = "{int8}", estimate = "test" }}
fp32 = {{ value = "{fp32}", estimate = "test" }}
""")
    if power is not None:
        with path.open("a") as f:
            f.write(f'[power]\nactive = {{ value = "{power[0]}", estimate = "test" }}\n'
                    f'idle = {{ value = "{power[1]}", estimate = "test" }}\n')
    return path


def link(tmp_path: Path, uplink: str, max_payload: str = "1 MB", tx_energy: str | None = None) -> Path:
    """A link with a 1 Gbit/s downlink and a 10 ms RTT; `tx_energy`: the device radio's energy per byte sent."""
    path = tmp_path / "link.toml"
    path.write_text(f"""
kind = "link"
name = "testlink"
description = "test link with round numbers"
uplink = {{ value = "{uplink}", estimate = "test" }}
downlink = {{ value = "1 Gbit/s", estimate = "test" }}
rtt = {{ value = "10 ms", estimate = "test" }}
max_payload = {{ value = "{max_payload}", estimate = "test" }}
""" + (f'tx_energy = {{ value = "{tx_energy}", estimate = "test" }}\n' if tx_energy else ""))
    return path


def test_cut_costs_by_hand(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())  # a: 1->4 3x3 on 16x16 (9,216 MACs); b: 4->4 3x3/2 on 8x8 (9,216 MACs)
    slow = load_target(device(tmp_path, "slow", "1 MMAC/s", "1 MMAC/s"))
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    plan = plan_split(graph, slow, fast, load_link(link(tmp_path, "1 Mbit/s")))
    after_a = plan.candidates[1]
    assert after_a.last_device_layer == "a" and after_a.payload_bytes == 4 * 16 * 16  # int8 tensor
    assert after_a.device_seconds == pytest.approx(9216 / 1e6)
    result = 2 * 4 * 8 / 1e9  # two fp32 logits back over the 1 Gbit/s downlink
    assert after_a.transfer_seconds == pytest.approx((1024 + PROTOCOL_OVERHEAD_BYTES) * 8 / 1e6 + 0.010 + result)
    raw = plan.all_server
    assert raw.payload_bytes == 16 * 16 and raw.device_seconds == 0.0
    # sending the 256 B input, 3.072 ms + 10 ms RTT, beats 18,696 MACs here (18.70 ms) and every cut between
    assert plan.chosen == raw and raw.total_seconds == pytest.approx(384 * 8 / 1e6 + 0.010 + result + 18_696 / 1e9)


def test_energy_objective_picks_the_cut_that_spends_the_fewest_device_joules(tmp_path: Path) -> None:
    """A slow device on a costly radio: sending the frame is fastest, computing it here costs the least energy."""
    graph = load_graph(TwoConvs())  # a and b: 9,216 MACs each, the global pool 256, the linear 8: 18,696 MACs
    cam = load_target(device(tmp_path, "cam", "1 MMAC/s", "1 MMAC/s", power=("1 W", "100 mW")))
    server = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    radio = load_link(link(tmp_path, "1 Mbit/s", tx_energy="100 uJ/B"))
    fastest = plan_split(graph, cam, server, radio)
    frugal = plan_split(graph, cam, server, radio, objective="energy")
    assert frugal.candidates == fastest.candidates and frugal.objective == "energy"

    # all on the server: the 256 B frame + 128 B of protocol take 3.072 ms at 1 Mbit/s, then the 10 ms RTT;
    # the device pays the radio (384 B x 100 uJ) and idles at 100 mW meanwhile: 38.4 + 1.3072 mJ
    send = (256 + PROTOCOL_OVERHEAD_BYTES) * 8 / 1e6 + 0.010
    assert fastest.chosen == fastest.all_server
    assert fastest.all_server.total_seconds == pytest.approx(send + 2 * 4 * 8 / 1e9 + 18_696 / 1e9)  # 13.09 ms
    assert fastest.all_server.device_joules == pytest.approx(384 * 100e-6 + 0.1 * send)  # 39.7 mJ
    # all on the device: 18.70 ms at 1 W, 18.70 mJ, nothing sent; slower than 13.09 ms, but less than 39.7 mJ
    assert frugal.chosen == frugal.all_device
    assert frugal.all_device.total_seconds == pytest.approx(18_696 / 1e6)
    assert frugal.all_device.device_joules == pytest.approx(18_696 / 1e6 * 1.0)
    # after a: 9.216 mJ of compute, then 1,024 + 128 B on the radio (115.2 mJ) and idle for 9.216 + 10 ms
    after_a = frugal.candidates[1]
    assert after_a.device_joules == pytest.approx(9_216 / 1e6 + 1_152 * 100e-6 + 0.1 * (1_152 * 8 / 1e6 + 0.010))
    assert frugal.chosen.device_joules == min(c.device_joules for c in frugal.candidates)
    # the radio's joules per byte do not shrink with bandwidth: no link speed makes offloading pay for energy,
    # while a fast enough link keeps it the faster choice
    assert frugal.decision_map == ((1e3, 1e9, len(graph.layers)),)
    assert fastest.decision_map[-1][2] == 0
    assert SplitPlan.from_dict(json.loads(json.dumps(frugal.to_dict()))) == frugal
    with pytest.raises(SplitError, match="objective must be one of latency, energy, found 'cost'"):
        plan_split(graph, cam, server, radio, objective="cost")


def test_jpeg_baseline_swaps_the_raw_message_and_is_never_chosen(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())
    slow = load_target(device(tmp_path, "slow", "1 MMAC/s", "1 MMAC/s"))
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    plan = plan_split(graph, slow, fast, load_link(link(tmp_path, "1 Mbit/s")), jpeg_bytes=40)
    jpeg, raw = plan.jpeg, plan.all_server
    assert jpeg.payload_bytes == 40 and jpeg.server_seconds == raw.server_seconds and jpeg.device_seconds == 0.0
    assert raw.transfer_seconds - jpeg.transfer_seconds == pytest.approx((256 - 40) * 8 / 1e6)
    assert jpeg.total_seconds < plan.chosen.total_seconds and plan.chosen is not jpeg  # reported, never chosen
    assert SplitPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert "all server, JPEG*" in render_split_plan(plan)
    with pytest.raises(SplitError, match="jpeg_bytes must be a positive size"):
        plan_split(graph, slow, fast, load_link(link(tmp_path, "1 Mbit/s")), jpeg_bytes=0)


def test_a_residual_branch_crosses_the_cut_too() -> None:
    graph = load_graph(tiny_net())  # stem -> [dw -> pw] + stem -> add
    plan = plan_split(graph, load_target("rpi4"), load_target("x86-server"), load_link("wifi"))
    inside = next(c for c in plan.candidates if c.last_device_layer == "block.dw.0")
    assert len(inside.tensors) == 2 and inside.payload_bytes == 2 * 8 * 16 * 16  # stem output and dw output


def test_decision_map_spans_slow_to_fast_links() -> None:
    graph = load_graph("mobilenet_v2")
    plan = plan_split(graph, load_target("rpi4"), load_target("gpu-server"), load_link("wifi"))
    first, last = plan.decision_map[0], plan.decision_map[-1]
    assert first[2] == len(graph.layers)  # at 1 kbit/s everything stays on the device
    assert last[2] < first[2]  # at 1 Gbit/s offloading wins
    assert all(a[1] < b[0] for a, b in zip(plan.decision_map, plan.decision_map[1:]))
    assert SplitPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_lora_carries_results_only() -> None:
    lora = load_link("lora")
    plan = plan_split(load_graph("digits_cnn"), load_target("stm32f746"), load_target("x86-server"), lora)
    assert plan.chosen == plan.all_device  # LoRa's 1.1 s RTT makes any offload slower
    too_big = [c.payload_bytes + PROTOCOL_OVERHEAD_BYTES > lora.max_payload.value for c in plan.candidates[:-1]]
    assert [not c.valid for c in plan.candidates[:-1]] == too_big and any(too_big) and not all(too_big)
    assert all("maximum payload" in c.why_invalid for c, big in zip(plan.candidates, too_big) if big)
    with pytest.raises(SplitError, match="smallest message .* What would work: a link that carries"):
        plan_split(load_graph("mobilenet_v2"), load_target("stm32h743"), load_target("gpu-server"), lora)


def test_a_requested_cut_that_cannot_work_says_why() -> None:
    plan = plan_split(load_graph("mobilenet_v2"), load_target("stm32h743"), load_target("gpu-server"),
                      load_link("wifi"))
    with pytest.raises(SplitError, match="head activations .* exceed stm32h743's 524,288 B; the planner's choice"):
        check_cut(plan, "features.3.add")
    with pytest.raises(SplitError, match="has no layer 'nope'"):
        check_cut(plan, "nope")


# --- verdicts: the user's cut against the best plan, the planner's pick against both ends ----------------------


def test_your_cut_is_reported_with_its_ratio_to_the_best_plan(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())
    slow = load_target(device(tmp_path, "slow", "1 MMAC/s", "1 MMAC/s"))
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    plan = plan_split(graph, slow, fast, load_link(link(tmp_path, "1 Mbit/s")))
    mine = request_cut(plan, "a")
    # after a: 9.216 ms on the device + 1,152 B at 1 Mbit/s (9.216 ms) + 10 ms RTT + 9,480 MACs on the server
    # = 28.44 ms; the best plan sends the raw frame: 3.072 + 10 ms + 18,696 MACs = 13.09 ms; 28.44 / 13.09 = 2.17
    assert mine.requested and mine.chosen == plan.candidates[1] and mine.best == plan.chosen == plan.all_server
    assert mine.verdict.label == "your cut" and mine.verdict.best_device_layers == 0
    assert mine.verdict.ratio_to_best == pytest.approx(28.441544 / 13.09076)
    text = render_split_plan(mine)
    assert "\nyour cut    a " in text and "\nchosen" not in text
    assert ("\nyour cut after 'a': 28.44 ms per frame, 2.17x the best plan (all server, 13.09 ms) at 1 Mbit/s\n"
            in text)
    data = json.loads(json.dumps(mine.to_dict()))
    assert data["requested"] is True and data["verdict"]["label"] == "your cut"
    assert data["verdict"]["ratio_to_best"] == pytest.approx(2.1726, abs=1e-4)
    assert SplitPlan.from_dict(data) == mine
    everything = request_cut(plan, "head.2")  # the last layer: all on the device
    assert split_verdict(everything) == ("your cut after 'head.2' (all device): 18.70 ms per frame, 1.43x the best "
                                         "plan (all server, 13.09 ms) at 1 Mbit/s")


def test_the_planners_pick_is_compared_with_both_ends(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())
    slow = load_target(device(tmp_path, "slow", "1 MMAC/s", "1 MMAC/s"))
    fast = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    plan = plan_split(graph, slow, fast, load_link(link(tmp_path, "1 Mbit/s")))
    assert not plan.requested and plan.verdict.label == "chosen" and plan.verdict.ratio_to_best == 1.0
    # 13.09 ms all on the server against 18.70 ms (18,696 MACs at 1 MMAC/s) all on the device
    assert split_verdict(plan) == "chosen: all server: 13.09 ms per frame, 0.7x all device (18.70 ms) at 1 Mbit/s"
    assert "\nchosen      (raw input)" in render_split_plan(plan)


def test_on_a_slow_uplink_the_demos_cut_beats_both_ends() -> None:
    """tools/demo.sh: MCUNet-VWW from an STM32F746 over a 3 Mbit/s uplink; the cut sends 6,400 B (20x20x16 int8)."""
    plan = plan_split(load_graph("mcunet_vww"), load_target("stm32f746"), load_target("x86-server"),
                      load_link("wifi"), uplink_bps=3e6)
    cut = plan.chosen
    assert 0 < cut.device_layers < len(plan.candidates) - 1 and cut.payload_bytes == 20 * 20 * 16
    assert cut.total_seconds < min(plan.all_device.total_seconds, plan.all_server.total_seconds)
    assert split_verdict(plan) == ("chosen: cut after 'features.2.block.2.0': 35.97 ms per frame, 0.638x all device "
                                   "(56.34 ms), 0.658x all server (54.64 ms) at 3 Mbit/s")
    mine = request_cut(plan, "features.6.block.2.0")
    assert split_verdict(mine) == ("your cut after 'features.6.block.2.0': 47.16 ms per frame, 1.31x the best plan "
                                   "(cut after 'features.2.block.2.0', 35.97 ms) at 3 Mbit/s")
    assert "\nbest plan   features.2.block.2.0  6 " in render_split_plan(mine)
    assert split_verdict(request_cut(plan, "features.2.block.2.0")) == (
        "your cut after 'features.2.block.2.0': 35.97 ms per frame, the planner's best too at 3 Mbit/s")


def test_a_baseline_that_cannot_run_is_named_not_compared() -> None:
    plan = plan_split(load_graph("mobilenet_v2"), load_target("stm32h743"), load_target("gpu-server"),
                      load_link("wifi"))  # 1.4 MB of activations: all on the 512 KiB board is invalid
    assert plan.verdict.ratio_to_all_device is None and plan.verdict.ratio_to_all_server == 1.0
    assert split_verdict(plan) == "chosen: all server: 15.89 ms per frame, all device not possible at 100 Mbit/s"


def test_energy_verdicts_read_in_millijoules(tmp_path: Path) -> None:
    graph = load_graph(TwoConvs())
    cam = load_target(device(tmp_path, "cam", "1 MMAC/s", "1 MMAC/s", power=("1 W", "100 mW")))
    server = load_target(device(tmp_path, "fast", "1 GMAC/s", "1 GMAC/s"))
    plan = plan_split(graph, cam, server, load_link(link(tmp_path, "1 Mbit/s", tx_energy="100 uJ/B")),
                      objective="energy")
    # all on the device 18.70 mJ; all on the server 38.4 mJ of radio + 1.31 mJ idle = 39.71 mJ
    assert split_verdict(plan) == "chosen: all device: 18.70 mJ per frame, 0.471x all server (39.71 mJ) at 1 Mbit/s"


def _calibrated(tmp_path: Path, dtype: str) -> Path:
    """rpi4 with a calibration for `dtype` (1 GMAC/s fitted), as `edgekit calibrate --out` writes it."""
    from edgekit.cost.calibrate import render_profile
    from edgekit.targets import DeviceCalibration, MeasuredModel, Quantity

    other = MeasuredModel((1, 3, 8, 8), Quantity(1e-3, "1 ms", source="measured: test"), {"a": 1e-3}, "measured: test")
    calibration = DeviceCalibration(backend="onnxruntime 1.31.1", threads=1, dtype=dtype, date="2026-01-01T00:00:00Z",
                                    machine="test machine", command="edgekit calibrate other --target rpi4",
                                    repeats=5, throughput=Quantity(1e9, "1 GMAC/s", source="measured: test"),
                                    models={"other": other})
    path = tmp_path / "rpi4-calibrated.toml"
    path.write_text(render_profile(load_target("rpi4"), calibration))
    return path


def test_a_calibration_for_another_dtype_is_named_in_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    profile = _calibrated(tmp_path, "fp32")
    argv = ("plan", "split", "digits_cnn", "--device", str(profile), "--server", "x86-server", "--link", "wifi")
    warning = (f"device profile 'rpi4' ({profile}) is calibrated for fp32, but the head runs int8: the plan used the "
               "profile's int8 estimates instead; `edgekit plan split --dtype fp32` plans with the calibration")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert f"\nwarning: {warning}\n" in out and "layer times: device estimate, server estimate" in out
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0 and json.loads(out)["warnings"] == [warning]
    code, out, _ = run(capsys, *argv, "--dtype", "fp32", "--json")  # the calibrated dtype: used, no warning
    data = json.loads(out)
    assert code == 0 and data["warnings"] == [] and data["figures"] == ["fitted", "estimate"]
    server = dataclasses.replace(load_target("x86-server"), calibration=load_target(_calibrated(tmp_path, "int8"))
                                 .calibration, path="x86.toml")
    plan = plan_split(load_graph("digits_cnn"), load_target("rpi4"), server, load_link("wifi"))
    assert plan.warnings == ("server profile 'x86-server' (x86.toml) is calibrated for int8, but the tail runs fp32: "
                             "the plan used the profile's fp32 estimates instead; plan_split(server_dtype='int8') "
                             "plans with the calibration",)


def test_plan_split_cli_reports_your_cut(capsys: pytest.CaptureFixture) -> None:
    argv = ("plan", "split", "mcunet_vww", "--device", "stm32f746", "--server", "x86-server", "--link", "wifi",
            "--bandwidth", "3 Mbit/s", "--split", "features.6.block.2.0")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert ("\nyour cut after 'features.6.block.2.0': 47.16 ms per frame, 1.31x the best plan (cut after "
            "'features.2.block.2.0', 35.97 ms) at 3 Mbit/s\n") in out
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert data["requested"] is True and data["chosen"]["last_device_layer"] == "features.6.block.2.0"
    assert data["verdict"]["best_device_layers"] == 6 and round(data["verdict"]["ratio_to_best"], 2) == 1.31
    code, _, err = run(capsys, *argv[:-1], "nope")
    assert code == 2 and "mcunet_vww has no layer 'nope'" in err
