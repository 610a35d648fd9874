"""Built-in target profiles hold the facts a person can check by hand; the strict loader rejects bad files
with a message naming the file and the offending key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edgekit.errors import ProfileError
from edgekit.targets import (
    DEVICE_CLASSES,
    RUNTIMES,
    Device,
    Link,
    Quantity,
    list_targets,
    load_link,
    load_target,
)

DEVICES = list_targets(kind="device")
LINKS = list_targets(kind="link")
KiB, MiB, GiB = 1024, 1024**2, 1024**3


def load(name: str) -> Device | Link:
    """Load a built-in profile with the loader for its kind."""
    return load_target(name) if name in DEVICES else load_link(name)


def quantities(profile: Device | Link) -> dict[str, Quantity]:
    """Every quantity in a loaded profile, keyed by field name ('throughput.int8' for per-dtype figures)."""
    found: dict[str, Quantity] = {}
    for field in dataclasses.fields(profile):
        value = getattr(profile, field.name)
        if isinstance(value, Quantity):
            found[field.name] = value
        elif isinstance(value, dict):
            found.update({f"{field.name}.{k}": v for k, v in value.items()})
    return found


def value_of(name: str, field: str) -> float:
    """A profile field as a plain number: quantities in SI base units, 'throughput.int8' style for dtypes."""
    attr, _, dtype = field.partition(".")
    value = getattr(load(name), attr)
    value = value[dtype] if dtype else value
    return value.value if isinstance(value, Quantity) else value


# --- built-in profiles -------------------------------------------------------------------------------


def test_builtin_profiles_are_all_there():
    assert set(DEVICES) >= {"stm32f412", "stm32f746", "stm32h743", "nrf52840", "esp32s3", "rpi4", "rpi5",
                            "jetson-nano", "jetson-orin-nano", "x86-server", "gpu-server"}
    assert set(LINKS) >= {"ethernet", "wifi", "lte", "ble", "lora"}
    assert sorted(DEVICES + LINKS) == list_targets()


@pytest.mark.parametrize("name", DEVICES + LINKS)
def test_profile_loads_and_is_named_after_its_file(name):
    profile = load(name)
    assert profile.name == name == Path(profile.path).stem
    assert profile.description.strip()


@pytest.mark.parametrize("name", DEVICES + LINKS)
def test_every_quantity_has_exactly_one_of_source_or_estimate(name):
    found = quantities(load(name))
    assert found
    for key, q in found.items():
        assert (q.source is None) != (q.estimate is None), f"{name}: {key}"
        assert q.provenance.strip(), f"{name}: {key}"
        assert q.value > 0, f"{name}: {key}"


@pytest.mark.parametrize("name", DEVICES)
def test_device_is_consistent(name):
    dev = load_target(name)
    assert dev.device_class in DEVICE_CLASSES
    assert dev.runtimes and set(dev.runtimes) <= set(RUNTIMES)
    assert set(dev.links) <= set(LINKS), "every link a device names must be a built-in link profile"
    assert {"int8", "fp32"} <= set(dev.throughput)
    assert dev.cores >= 1
    if dev.device_class == "mcu":
        assert dev.sram is not None and dev.flash is not None
        assert dev.runtimes == ("tflite-micro",)
        assert dev.activation_budget_bytes == dev.sram.value
    else:
        assert dev.ram is not None
        assert dev.activation_budget_bytes == dev.ram.value
    if dev.power_active is not None:
        assert dev.power_idle is not None and dev.power_idle.value < dev.power_active.value


@pytest.mark.parametrize(
    ("name", "field", "expected"),
    [
        ("stm32f746", "sram", 320 * KiB),
        ("stm32f746", "clock", 216e6),
        ("stm32f412", "sram", 256 * KiB),
        ("stm32f412", "flash", 1 * MiB),
        ("stm32f412", "clock", 100e6),
        ("stm32h743", "sram", 512 * KiB),
        ("stm32h743", "flash", 2 * MiB),
        ("stm32h743", "clock", 480e6),
        ("nrf52840", "sram", 256 * KiB),
        ("nrf52840", "flash", 1 * MiB),
        ("nrf52840", "clock", 64e6),
        ("esp32s3", "sram", 512 * KiB),
        ("esp32s3", "clock", 240e6),
        ("esp32s3", "cores", 2),
        ("rpi4", "ram", 4 * GiB),
        ("rpi4", "cores", 4),
        ("rpi5", "clock", 2.4e9),
        ("jetson-nano", "ram", 4 * GiB),
        ("jetson-nano", "memory_bandwidth", 25.6e9),
        ("jetson-nano", "clock", 1.43e9),
        ("jetson-orin-nano", "ram", 8 * GiB),
        ("jetson-orin-nano", "memory_bandwidth", 68e9),
        ("jetson-orin-nano", "cores", 6),
        ("jetson-orin-nano", "power_active", 15.0),
        ("ethernet", "max_payload", 268435455),
        ("wifi", "max_payload", 268435455),
        ("lte", "max_payload", 268435455),
    ],
)
def test_hand_checkable_fact(name, field, expected):
    assert value_of(name, field) == pytest.approx(expected, rel=1e-9)


def test_rpi4_int8_matches_the_mobilenetv2_anchor():
    anchor = 300e6 / 0.022  # MobileNetV2-1.0@224, ~300 M MACs in ~22 ms with TFLite int8
    assert anchor / 2 <= value_of("rpi4", "throughput.int8") <= anchor * 2


@pytest.mark.parametrize(("name", "cycles_per_mac"), [("stm32f746", 2), ("stm32h743", 2), ("stm32f412", 3),
                                                      ("nrf52840", 3), ("esp32s3", 2)])
def test_mcu_int8_is_clock_over_optimised_kernel_cycles_per_mac(name, cycles_per_mac):
    expected = value_of(name, "clock") / cycles_per_mac
    assert value_of(name, "throughput.int8") == pytest.approx(expected, rel=0.05)


def test_int8_throughput_grows_from_small_mcu_to_gpu_server():
    ladder = ["nrf52840", "stm32f412", "stm32f746", "stm32h743", "rpi4", "rpi5", "jetson-orin-nano", "gpu-server"]
    rates = [value_of(name, "throughput.int8") for name in ladder]
    assert rates == sorted(rates)


def test_jetson_nano_has_no_int8_speedup_over_fp16():
    assert value_of("jetson-nano", "throughput.int8") == value_of("jetson-nano", "throughput.fp16")


def test_link_facts():
    assert value_of("lora", "max_payload") < 256
    assert value_of("ble", "max_payload") <= 512
    assert value_of("lte", "uplink") < value_of("lte", "downlink")
    assert 1e3 < value_of("lora", "uplink") <= 5.5e3  # SF7/125 kHz raw rate is ~5.47 kbit/s
    rtts = [value_of(name, "rtt") for name in ("ethernet", "wifi", "lte", "lora")]
    assert rtts == sorted(rtts)


# --- the strict loader --------------------------------------------------------------------------------

VALID_DEVICE = """\
kind = "device"
name = "mydev"
description = "test device"
class = "mcu"
runtimes = ["tflite-micro"]

[cpu]
model = "Arm Cortex-M7"
cores = 1
clock = { value = "216 MHz", source = "datasheet" }

[memory]
sram = { value = "320 KiB", source = "datasheet" }
flash = { value = "1 MiB", source = "datasheet" }

[throughput]
int8 = { value = "108 MMAC/s", estimate = "216 MHz / 2 cycles per MAC" }
fp32 = { value = "21.6 MMAC/s", estimate = "216 MHz / 10 cycles per MAC" }
"""

VALID_LINK = """\
kind = "link"
name = "mylink"
description = "test link"
uplink = { value = "10 Mbit/s", estimate = "guess" }
downlink = { value = "20 Mbit/s", estimate = "guess" }
rtt = { value = "20 ms", estimate = "guess" }
max_payload = { value = "1 MB", source = "broker limit" }
"""

CLOCK = 'clock = { value = "216 MHz", source = "datasheet" }'


def write_profile(tmp_path: Path, text: str, old: str = "", new: str = "") -> Path:
    """Write `text` (with `old` replaced by `new`) to a .toml file in tmp_path and return its path."""
    if old:
        assert old in text, f"test setup: {old!r} not in the base profile"
        text = text.replace(old, new)
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def expect_error(loader, path: Path, *fragments: str) -> None:
    """`loader(path)` raises ProfileError whose message names the file and then each fragment, in order."""
    pattern = ".*".join(re.escape(part) for part in (str(path), *fragments))
    with pytest.raises(ProfileError, match=f"(?s){pattern}"):
        loader(path)


@pytest.mark.parametrize("as_str", [True, False])
def test_custom_profiles_load_by_path(tmp_path, as_str):
    dev_path = write_profile(tmp_path, VALID_DEVICE)
    dev = load_target(str(dev_path) if as_str else dev_path)
    assert dev.sram.value == 320 * KiB and dev.path == str(dev_path)
    link_path = write_profile(tmp_path, VALID_LINK)
    assert load_link(str(link_path) if as_str else link_path).rtt.value == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        pytest.param('runtimes =', 'runtime =', ["unknown key 'runtime'"], id="unknown-top-level-key"),
        pytest.param("cores = 1", "cores = 1\nthreads = 2", ["unknown key 'cpu.threads'"], id="unknown-nested-key"),
        pytest.param('source = "datasheet" }\n\n[memory]', 'sorce = "datasheet" }\n\n[memory]',
                     ["unknown key 'cpu.clock.sorce'"], id="unknown-quantity-key"),
        pytest.param('description = "test device"\n', "", ["missing required key 'description'"],
                     id="missing-top-level-key"),
        pytest.param('fp32 = { value = "21.6 MMAC/s", estimate = "216 MHz / 10 cycles per MAC" }\n', "",
                     ["missing required key 'throughput.fp32'"], id="missing-fp32-throughput"),
        pytest.param(CLOCK, 'clock = { source = "datasheet" }', ["missing required key 'cpu.clock.value'"],
                     id="missing-value"),
        pytest.param('"216 MHz"', '"4 GB"', ["'cpu.clock.value'", "'4 GB'", "bytes unit"], id="wrong-unit"),
        pytest.param('"216 MHz"', '"216 MHZ"', ["'cpu.clock.value'", "unknown unit"], id="misspelt-unit"),
        pytest.param('"216 MHz"', '"fast"', ["'cpu.clock.value'", "'fast'"], id="no-number"),
        pytest.param('"216 MHz"', '"0 MHz"', ["'cpu.clock.value' must be positive"], id="zero-value"),
        pytest.param(CLOCK, "clock = 216", ["'cpu.clock' must be a table", "216"], id="bare-number"),
        pytest.param(CLOCK, 'clock = { value = "216 MHz" }', ["'cpu.clock' needs exactly one of"],
                     id="missing-source-or-estimate"),
        pytest.param(CLOCK, 'clock = { value = "216 MHz", source = "ds", estimate = "guess" }',
                     ["'cpu.clock' needs exactly one of"], id="both-source-and-estimate"),
        pytest.param(CLOCK, 'clock = { value = "216 MHz", source = " " }', ["'cpu.clock' source/estimate"],
                     id="blank-source"),
        pytest.param("cores = 1", 'cores = "1"', ["'cpu.cores' must be int"], id="wrong-type"),
        pytest.param('sram = { value = "320 KiB", source = "datasheet" }\n', "",
                     ["missing required key 'memory.sram'", "'mcu'"], id="mcu-without-sram"),
        pytest.param('class = "mcu"\nruntimes = ["tflite-micro"]', 'class = "sbc"\nruntimes = ["litert"]',
                     ["missing required key 'memory.ram'", "'sbc'"], id="sbc-without-ram"),
        pytest.param('class = "mcu"', 'class = "phone"', ["'class' must be one of", "'phone'"], id="unknown-class"),
        pytest.param('["tflite-micro"]', '["tflite-micro", "pytorch"]', ["'runtimes'", "'pytorch'"],
                     id="unknown-runtime"),
        pytest.param("[memory]", "[memory", ["not valid TOML", "line 12"], id="malformed-toml"),
    ],
)
def test_bad_device_profile(tmp_path, old, new, fragments):
    expect_error(load_target, write_profile(tmp_path, VALID_DEVICE, old, new), *fragments)


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        pytest.param('"10 Mbit/s"', '"10 MB/s"', ["'uplink.value'", "byte_rate unit"], id="bytes-instead-of-bits"),
        pytest.param('rtt = { value = "20 ms", estimate = "guess" }\n', "", ["missing required key 'rtt'"],
                     id="missing-rtt"),
        pytest.param('"20 ms"', '"20 MHz"', ["'rtt.value'", "frequency unit"], id="wrong-unit"),
        pytest.param('kind = "link"\n', 'kind = "link"\nclass = "mcu"\n', ["unknown key 'class'"],
                     id="device-key-in-link"),
    ],
)
def test_bad_link_profile(tmp_path, old, new, fragments):
    expect_error(load_link, write_profile(tmp_path, VALID_LINK, old, new), *fragments)


@pytest.mark.parametrize(
    ("loader", "text", "fragments"),
    [
        pytest.param(load_target, VALID_LINK, ["'kind' must be \"device\"", "'link'"], id="link-as-device"),
        pytest.param(load_link, VALID_DEVICE, ["'kind' must be \"link\"", "'device'"], id="device-as-link"),
        pytest.param(load_target, VALID_DEVICE.replace('kind = "device"\n', ""), ["'kind'", "None"],
                     id="no-kind"),
    ],
)
def test_wrong_kind(tmp_path, loader, text, fragments):
    expect_error(loader, write_profile(tmp_path, text), *fragments)


def test_builtin_link_as_device_is_rejected():
    with pytest.raises(ProfileError, match=r"wifi\.toml.*'kind' must be \"device\""):
        load_target("wifi")


def test_missing_file_and_unknown_name(tmp_path):
    expect_error(load_target, tmp_path / "absent.toml", "no such profile file")
    with pytest.raises(ProfileError, match="unknown profile 'no-such-board'.*rpi4"):
        load_target("no-such-board")
