"""Cost-model calibration: ORT profiles and LiteRT prefixes map onto the graph's layers, calibrated profiles load
strictly, the cost model prefers measured > fitted > estimated seconds, and prediction errors are plain arithmetic."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from onnx import helper

from edgekit.cli import main
from edgekit.cost import calibrate as calibrate_module
from edgekit.cost.calibrate import arch_mismatch, calibrate, machine_arch, measure, measured_name, render_profile
from edgekit.cost.fit import fit_roofline, nonnegative_lstsq, prediction_error
from edgekit.cost.measure_litert import compute_cuts, isotonic
from edgekit.cost.measure_ort import LayerTimings, attribute, kernel_layers, kernel_medians
from edgekit.cost.model import layer_cost, layer_seconds
from edgekit.errors import CalibrationError, ProfileError
from edgekit.graph import load_graph
from edgekit.graph.ir import Graph, Layer
from edgekit.targets import DeviceCalibration, MeasuredModel, Quantity, load_target
from edgekit.units import parse_quantity


def conv(name: str, macs: int, params: int = 0) -> Layer:
    """A layer with round numbers: 1x4x8x8 in and out (256 elements each)."""
    return Layer(name=name, op="conv2d", inputs=("x",), output=name, input_shapes=((1, 4, 8, 8),),
                 output_shape=(1, 4, 8, 8), dtype="fp32", macs=macs, params=params)


def measured(text: str, dimension: str) -> Quantity:
    """A quantity as the profile loader parses it (so that a written profile reads back equal)."""
    return Quantity(parse_quantity(text, dimension), text, source="measured: test")


def calibration(**overrides: object) -> DeviceCalibration:
    """A calibration with round numbers: 1 GMAC/s, 2 GB/s, 1 us per layer; model 'm' has layers a (1 ms), b (0)."""
    fields = dict(backend="onnxruntime 1.31.1", threads=1, dtype="fp32", date="2026-01-01T00:00:00Z",
                  machine="test machine", command="edgekit calibrate m --target rpi4", repeats=5,
                  throughput=measured("1 GMAC/s", "mac_rate"), overhead=measured("100 us", "time"),
                  bandwidth=measured("2 GB/s", "byte_rate"), layer_overhead=measured("1 us", "time"),
                  models={"m": MeasuredModel((1, 4, 8, 8), measured("5 ms", "time"),
                                             {"a": parse_quantity("1000 us", "time"), "b": 0.0}, "measured: test")})
    fields.update(overrides)
    return DeviceCalibration(**fields)  # type: ignore[arg-type]


# --- measurement and mapping ---------------------------------------------------------------------------


def test_kernel_medians_reads_node_events_and_skips_warmup(tmp_path):
    events = [{"cat": "Session", "name": "model_run", "dur": 999}]
    for dur in [100, 7, 3, 5]:  # the first run is warm-up
        events.append({"cat": "Node", "name": "conv_kernel_time", "dur": dur, "ph": "X"})
        events.append({"cat": "Node", "name": "conv_fence_before", "dur": 50})
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(events))
    assert kernel_medians(trace, warmup=1) == {"conv": pytest.approx(5e-6)}


def test_kernel_medians_rejects_a_trace_that_is_not_a_list(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text('{"traceEvents": []}')
    with pytest.raises(CalibrationError, match="expected a JSON list of trace events, found dict"):
        kernel_medians(trace, warmup=0)


def test_fused_and_relaid_kernels_cover_the_layers_they_replace():
    # Source: conv + relu (layer L1 in the IR, relu folded), conv (L2), add with the input (L3), relu (L4).
    source = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                                helper.make_node("Relu", ["c"], ["r"], name="relu"),
                                helper.make_node("Conv", ["r", "w"], ["d"], name="conv2"),
                                helper.make_node("Add", ["d", "x"], ["a"], name="add"),
                                helper.make_node("Relu", ["a"], ["y"], name="last")], "src", [], [])
    # What ORT ran: NCHWc convs named after the value they replace (the second fused the add), reorders
    # around them, then the last relu.
    optimized = helper.make_graph([helper.make_node("ReorderInput", ["x"], ["t0"], name="reorder_in"),
                                   helper.make_node("Conv", ["t0", "w"], ["t1"], name="r_nchwc"),
                                   helper.make_node("Conv", ["t1", "w", "t0"], ["t2"], name="a_nchwc"),
                                   helper.make_node("ReorderOutput", ["t2"], ["a"], name="reorder_out"),
                                   helper.make_node("Relu", ["a"], ["y"], name="last")], "opt", [], [])
    owners = {"c": "L1", "r": "L1", "d": "L2", "a": "L3", "y": "L4"}
    covered = kernel_layers(helper.make_model(optimized), helper.make_model(source), owners)
    assert covered == {"r_nchwc": {"L1"}, "a_nchwc": {"L2", "L3"}, "reorder_out": {"L2", "L3"},
                       "reorder_in": {"L1", "L2", "L3"}, "last": {"L4"}}


def test_a_kernel_covering_several_layers_is_split_by_weight_and_unknown_kernels_are_reported():
    layers, unmapped = attribute({"fused": 4e-3, "solo": 1e-3, "stray": 2e-3},
                                 {"fused": {"L1", "L2"}, "solo": {"L3"}},
                                 {"L1": 3.0, "L2": 1.0, "L3": 5.0}, ["L1", "L2", "L3", "L4"])
    assert layers == pytest.approx({"L1": 3e-3, "L2": 1e-3, "L3": 1e-3, "L4": 0.0})
    assert unmapped == {"stray": 2e-3}


@pytest.mark.parametrize("model", ["digits_cnn", pytest.param("mobilenet_v2_035_96", marks=pytest.mark.slow)])
def test_every_onnxruntime_kernel_maps_to_a_graph_layer(model):
    graph, timings = measure(model, model, load_target("rpi4"), repeats=3)
    assert timings.unmapped == {}
    assert list(timings.layers) == [layer.name for layer in graph.layers]
    charged = {layer for layers in timings.kernels.values() for layer in layers}
    compute = {layer.name for layer in graph.layers if layer.macs > 0}
    assert compute and compute <= charged
    assert sum(timings.layers.values()) + timings.overhead == pytest.approx(timings.total)


def test_measure_refuses_an_unknown_backend():
    with pytest.raises(CalibrationError, match="backend must be one of onnxruntime, litert .*found 'tensorrt'"):
        measure("digits_cnn", "digits_cnn", load_target("rpi4"), backend="tensorrt")


# --- fit and prediction error ----------------------------------------------------------------------------


def test_fit_recovers_the_rates_that_generated_the_times():
    layers = [conv("a", 1_000_000), conv("b", 5_000_000, params=4096), conv("c", 200_000, params=100),
              conv("d", 0, params=20_000)]
    seconds = {}
    for layer in layers:
        moved = (256 + 256 + layer.params) * 4
        seconds[layer.name] = layer.macs / 2e9 + moved / 5e9 + 3e-6
    fit = fit_roofline(layers, seconds, "fp32")
    assert fit.mac_rate == pytest.approx(2e9, rel=1e-6)
    assert fit.byte_rate == pytest.approx(5e9, rel=1e-6)
    assert fit.layer_overhead == pytest.approx(3e-6, rel=1e-6)


def test_noisy_timings_that_favour_bytes_still_give_a_compute_rate():
    # times that follow the weights (bytes moved), not the MACs: the full fit gives compute no weight
    layers = [conv(f"l{i}", macs=1000 * (5 - i), params=4000 * i) for i in range(5)]
    seconds = {layer.name: (512 + layer.params) * 4 / 1e9 for layer in layers}
    fit = fit_roofline(layers, seconds, "fp32")
    assert fit.byte_rate is None and fit.mac_rate > 0  # bytes dropped, MACs (and per-layer cost) kept
    with pytest.raises(CalibrationError, match="gave compute no weight"):
        fit_roofline([conv("zero", macs=0)], {"zero": 1e-3}, "fp32")


def test_nonnegative_fit_drops_a_term_instead_of_going_negative():
    a = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    b = np.array([1.0, 2.0, 3.5])  # unconstrained: slope 1.25, intercept -0.33
    x = nonnegative_lstsq(a, b)
    assert x[1] == 0.0 and x[0] == pytest.approx((1 + 4 + 10.5) / 14)


def test_prediction_error_arithmetic():
    measured = {"a": 1.0, "b": 2.0, "c": 4.0, "folded": 0.0}
    predicted = {"a": 1.1, "b": 1.0, "c": 5.2, "folded": 9.0}  # 10 %, 50 %, 30 %; 'folded' has no relative error
    error = prediction_error("fitted", "m", predicted, measured, predicted_total=8.0, measured_total=10.0)
    assert error.median_abs_pct == pytest.approx(30.0)
    assert error.total_pct == pytest.approx(-20.0)
    assert error.layers == 3


# --- calibrated profiles ---------------------------------------------------------------------------------


def test_calibrated_profile_round_trips_through_load_target(tmp_path):
    base = load_target("rpi4")
    written = tmp_path / "rpi4-calibrated.toml"
    written.write_text(render_profile(base, calibration()))
    loaded = load_target(written)
    assert loaded.calibration == calibration()
    assert str(loaded.calibration) == ("fp32 on onnxruntime 1.31.1, 1 thread(s), 2026-01-01T00:00:00Z: 1 GMAC/s, "
                                       "2 GB/s, 1 us per layer; overhead 100 us; measured layers of m")
    assert dataclasses.replace(loaded, path="", calibration=None) == dataclasses.replace(base, path="")
    again = tmp_path / "again.toml"  # calibrating a calibrated profile replaces its calibration
    again.write_text(render_profile(loaded, calibration(threads=2)))
    assert load_target(again).calibration == calibration(threads=2)


def test_a_profile_measured_elsewhere_is_written_under_a_name_that_says_where(tmp_path):
    written = tmp_path / "rpi4-on-host.toml"
    written.write_text(render_profile(load_target("rpi4"), calibration(machine_arch="x86_64"), "rpi4@x86_64"))
    loaded = load_target(written)
    assert (loaded.name, loaded.arch, loaded.calibration.machine_arch) == ("rpi4@x86_64", "aarch64", "x86_64")
    assert 'name = "rpi4@x86_64"\n' in written.read_text() and 'name = "rpi4"' not in written.read_text()


# --- which machine measured ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reported, arch", [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("arm64", "aarch64"),
                                            ("aarch64", "aarch64"), ("armv7l", "armv7l")])
def test_machine_arch_uses_the_linux_names(monkeypatch, reported, arch):
    monkeypatch.setattr("platform.machine", lambda: reported)
    assert machine_arch() == arch


def test_a_machine_that_is_not_the_device_is_named_in_a_warning_and_the_profile_name():
    rpi4 = load_target("rpi4")
    assert arch_mismatch(rpi4, "x86_64") == (
        "measured on this machine (x86_64), not on rpi4 (aarch64): these are x86_64 timings, so the profile is named "
        "rpi4@x86_64; calibrate on the device for its own figures")
    assert measured_name(rpi4, "x86_64") == "rpi4@x86_64"
    assert arch_mismatch(rpi4, "aarch64") is None and measured_name(rpi4, "aarch64") == "rpi4"
    # a profile measured on the host and calibrated again on the board gets its own name back
    assert measured_name(dataclasses.replace(rpi4, name="rpi4@x86_64"), "aarch64") == "rpi4"
    unknown = dataclasses.replace(rpi4, name="myboard", arch=None)
    assert arch_mismatch(unknown, "aarch64") == ("myboard's profile names no cpu.arch, so this machine (aarch64) may "
                                                 "not be the device: the profile is named myboard@aarch64")


def synthetic_measure(graph_name: str) -> Callable[..., tuple[Graph, LayerTimings]]:
    """A stand-in for `measure`: the graph's layers timed as 1 GMAC/s + 1 us each, 10 us overhead."""
    graph = load_graph(graph_name)
    layers = {layer.name: layer.macs / 1e9 + 1e-6 for layer in graph.layers}

    def fake(model, name, device, backend="onnxruntime", threads=1, repeats=20, artifact=None):
        return graph, LayerTimings(graph.name, "onnxruntime (synthetic)", "fp32", threads, repeats, layers,
                                   sum(layers.values()) + 1e-5, 1e-5, 1.0, {}, {}, "synthetic", "synthetic")
    return fake


def test_calibrating_rpi4_on_x86_warns_and_renames_the_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibrate_module, "measure", synthetic_measure("digits_cnn"))
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    out = tmp_path / "rpi4-digits.toml"
    code, text, err = run(capsys, "calibrate", "digits_cnn", "--target", "rpi4", "--repeats", "3", "--out", str(out))
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0] == ("warning: measured on this machine (x86_64), not on rpi4 (aarch64): these are x86_64 "
                        "timings, so the profile is named rpi4@x86_64; calibrate on the device for its own figures")
    assert lines[2].startswith("  measured on ") and ", x86_64, " in lines[2]
    assert lines[-1] == f"calibrated profile rpi4@x86_64 written to {out}"
    assert load_target(out).name == "rpi4@x86_64"
    code, text, err = run(capsys, "calibrate", "digits_cnn", "--target", str(out), "--repeats", "3", "--json")
    data = json.loads(text)
    assert (data["name"], data["device_arch"], data["machine_arch"]) == ("rpi4@x86_64", "aarch64", "x86_64")
    assert data["warning"].startswith("measured on this machine (x86_64), not on rpi4 (aarch64)")


def test_calibrating_on_the_device_itself_keeps_its_name_and_says_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate_module, "measure", synthetic_measure("digits_cnn"))
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    result = calibrate("digits_cnn", "digits_cnn", "rpi4", repeats=3, out=tmp_path / "rpi4.toml")
    assert result.warning is None and result.device.name == "rpi4"
    assert result.device.calibration.machine_arch == "aarch64"


def _with_calibration(tmp_path: Path, edit: tuple[str, str]) -> Path:
    text = render_profile(load_target("rpi4"), calibration())
    old, new = edit
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("edit, message", [
    (('dtype = "fp32"', 'dtype = "int4"'), "'calibration.dtype' must be one of int8, fp16, fp32, found 'int4'"),
    (("threads = 1", "threads = 0"), "'calibration.threads' must be a positive integer, found 0"),
    (("threads = 1", "threads = 1\nspeed = 3"), "unknown key 'calibration.speed'"),
    (('throughput = { value = "1 GMAC/s"', 'throughput = { value = "1 GB/s"'), "'calibration.throughput.value'"),
    (('throughput = {', 'throughputs = {'), "unknown key 'calibration.throughputs'"),
    (('"a" = "1000 us"', '"a" = "fast"'), "'calibration.models.m.layers.a': expected a time"),
    (('"a" = "1000 us"', '"a" = 0.001'), "'calibration.models.m.layers.a': expected a time"),
    (("input_shape = [1, 4, 8, 8]", 'input_shape = ["1"]'), "'calibration.models.m.input_shape' must be a list[int]"),
    (('source = "measured: test"\n', ''), "missing required key 'calibration.models.m.source'"),
])
def test_malformed_calibration_table_is_rejected_naming_the_field(tmp_path, edit, message):
    with pytest.raises(ProfileError, match=f"bad.toml: .*{message.replace('[', '.').replace(']', '.')}"):
        load_target(_with_calibration(tmp_path, edit))


# --- which figure the cost model uses -----------------------------------------------------------------------


def test_layer_cost_prefers_measured_then_fitted_then_estimate():
    base = load_target("rpi4")
    device = dataclasses.replace(base, calibration=calibration())
    a, other = conv("a", 1_000_000), conv("other", 1_000_000, params=100)
    assert layer_seconds(a, device, "fp32", "m") == (pytest.approx(1e-3), "measured")
    assert layer_seconds(conv("b", 5), device, "fp32", "m") == (0.0, "measured")  # folded away: measured 0
    fitted = 1_000_000 / 1e9 + (256 + 256 + 100) * 4 / 2e9 + 1e-6
    assert layer_seconds(other, device, "fp32", "m") == (pytest.approx(fitted), "fitted")  # layer not in the table
    assert layer_seconds(a, device, "fp32", "another-model")[1] == "fitted"
    assert layer_seconds(a, device, "fp32")[1] == "fitted"  # no model named: no table lookup
    estimate = layer_seconds(a, base, "int8")
    assert estimate[1] == "estimate"
    assert layer_seconds(a, device, "int8", "m") == estimate  # calibrated for fp32 only
    assert base.power_active is not None
    assert layer_cost(a, device, "fp32", "m").joules == pytest.approx(1e-3 * base.power_active.value)


def test_without_a_bandwidth_or_layer_overhead_the_fit_is_compute_only():
    device = dataclasses.replace(load_target("rpi4"),
                                 calibration=calibration(bandwidth=None, layer_overhead=None))
    assert layer_seconds(conv("x", 3_000_000), device, "fp32") == (pytest.approx(3e-3), "fitted")


# --- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_calibrates_writes_a_profile_that_plan_split_uses(tmp_path, capsys):
    out = tmp_path / "rpi4-digits.toml"
    code, text, err = run(capsys, "calibrate", "digits_cnn", "--target", "rpi4", "--repeats", "5", "--out", str(out))
    assert code == 0, err
    assert "estimate" in text and "fitted" in text and "measured table" in text
    device = load_target(out)
    assert device.name == measured_name(load_target("rpi4"), machine_arch())  # rpi4@x86_64 unless run on a Pi
    assert device.calibration is not None and set(device.calibration.models) == {"digits_cnn"}
    assert device.calibration.command.startswith("edgekit calibrate digits_cnn --target rpi4")
    assert main(["plan", "split", "digits_cnn", "--device", str(out), "--server", "x86-server", "--link", "wifi",
                 "--dtype", "fp32", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    graph = load_graph("digits_cnn")
    table = device.calibration.models["digits_cnn"].layers  # as the written profile holds it
    assert list(table) == [layer.name for layer in graph.layers]  # a measured time for every layer
    assert plan["figures"] == ["measured", "estimate"]
    # all on the device: the model's own measured table, summed here, plus one call's overhead
    assert plan["candidates"][-1]["device_seconds"] == pytest.approx(sum(table.values()) +
                                                                     device.calibration.overhead.value)


# --- LiteRT: timed prefixes ---------------------------------------------------------------------------------


def test_isotonic_pools_adjacent_violators():
    assert isotonic([1.0, 3.0, 2.0, 4.0]) == pytest.approx([1.0, 2.5, 2.5, 4.0])
    assert isotonic([5.0, 1.0, 0.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert isotonic([1.0, 2.0]) == [1.0, 2.0]


def test_prefix_cuts_refuse_a_tflite_with_other_compute_layers():
    graph = load_graph("digits_cnn")
    other = dataclasses.replace(graph, name="other", layers=graph.layers[1:])
    with pytest.raises(CalibrationError, match="other: expected the compute layers of digits_cnn"):
        compute_cuts(graph, other)


@pytest.mark.slow
def test_litert_prefix_timings_cover_every_layer():
    graph, timings = measure("digits_cnn", "digits_cnn", load_target("rpi4"), backend="litert", repeats=3)
    assert timings.dtype == "fp32" and timings.backend.startswith("litert")
    segments = list(timings.kernels.values())
    covered = [name for names in segments for name in names]  # operators after the last layer are charged to it
    assert list(dict.fromkeys(covered)) == [layer.name for layer in graph.layers]
    assert sum(timings.layers.values()) + timings.overhead == pytest.approx(timings.total)
    assert all(seconds >= 0 for seconds in timings.layers.values())
