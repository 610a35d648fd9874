"""Target profiles: numbers parse with their units, every shipped profile loads and is consistent, a few facts a
person can check by hand, and the strict loader rejects bad files with a message naming the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgekit.errors import ProfileError
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES
from edgekit.targets import Device, Link, list_targets, load_link, load_profile, load_target
from edgekit.units import format_bytes, format_count, parse_quantity

DEVICES = list_targets(kind="device")
LINKS = list_targets(kind="link")
KiB, MiB, GiB = 1024, 1024**2, 1024**3


# --- units: every number is written with one -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "dimension", "expected"), [
    ("216 MHz", "frequency", 216e6),
    ("1.5 GHz", "frequency", 1.5e9),
    ("320 KiB", "bytes", 320 * 1024),
    ("1 MiB", "bytes", 1024 * 1024),
    ("1 MB", "bytes", 1_000_000),  # decimal, as broker limits are written
    ("268435455 B", "bytes", 268_435_455),
    ("13.6 GMAC/s", "mac_rate", 13.6e9),
    ("4.8 kbit/s", "bit_rate", 4_800),  # bits, as links are quoted
    ("12.8 GB/s", "byte_rate", 12.8e9),  # bytes, as memory bandwidth is quoted
    ("500 us", "time", 0.0005),
    ("1e-3 s", "time", 0.001),
    ("10 mW", "power", 0.01),
    ("80 nJ/B", "energy_per_byte", 80e-9),
    ("  20ms ", "time", 0.02),  # spaces around and between are optional
])
def test_quantities_parse_to_si_base_units(text, dimension, expected):
    assert parse_quantity(text, dimension) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("text", "dimension", "message"), [
    ("10 MB/s", "bit_rate", "expected a bit_rate in one of bit/s, kbit/s, Mbit/s, Gbit/s; 'MB/s' in '10 MB/s' is a "
                            "byte_rate unit"),
    ("216 MHZ", "frequency", "'MHZ' in '216 MHZ' is an unknown unit"),
    ("fast", "time", "expected a time written as a number and a unit like '12 s', found 'fast'"),
    ("-5 MHz", "frequency", "found '-5 MHz'"),
    ("216", "frequency", "found '216'"),
    (216, "frequency", "found 216"),
])
def test_a_quantity_without_the_right_unit_says_why(text, dimension, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_quantity(text, dimension)


def test_sizes_and_counts_print_with_their_prefix():
    assert format_bytes(320 * KiB) == "320.0 KiB" and format_bytes(1_404_928) == "1.3 MiB"
    assert format_bytes(4 * GiB) == "4.0 GiB"
    assert format_bytes(512) == "512 B"
    assert format_count(300_774_272) == "300.8 M" and format_count(999) == "999"


# --- the shipped profiles ------------------------------------------------------------------------------------


def test_builtin_profiles_are_all_there():
    assert set(DEVICES) >= {"stm32f412", "stm32f746", "stm32h743", "nrf52840", "esp32s3", "rpi4", "rpi5",
                            "jetson-nano", "jetson-orin-nano", "x86-server", "gpu-server"}
    assert set(LINKS) >= {"ethernet", "wifi", "lte", "ble", "lora"}
    assert sorted(DEVICES + LINKS) == list_targets()
    assert list_targets("stm32*") == ["stm32f412", "stm32f746", "stm32h743"]
    assert list_targets("*", kind="link") == LINKS and list_targets("lora", kind="device") == []


@pytest.mark.parametrize("name", DEVICES)
def test_every_shipped_device_loads_and_is_consistent(name):
    dev = load_profile(name)
    assert isinstance(dev, Device) and dev == load_target(name)
    assert dev.name == name == Path(dev.path).stem and dev.description.strip()
    assert set(dev.links) <= set(LINKS), "every link a device names must be a built-in link profile"
    rates = dev.throughput
    assert rates["int8"].value >= rates.get("fp16", rates["fp32"]).value >= rates["fp32"].value  # int8 is never slower
    if dev.device_class == "mcu":
        assert dev.runtimes == ("tflite-micro",) and dev.ram is None
        assert dev.activation_budget_bytes == dev.sram.value  # activations live in SRAM, weights in flash
        # no MCU does more than a MAC per cycle per core: a slip of unit (GMAC/s for MMAC/s) shows here
        assert rates["int8"].value <= dev.clock.value * dev.cores
    else:
        assert "tflite-micro" not in dev.runtimes and dev.sram is None
        assert dev.activation_budget_bytes == dev.ram.value
    if dev.power_active is not None:
        assert dev.power_idle.value < dev.power_active.value


@pytest.mark.parametrize("name", LINKS)
def test_every_shipped_link_loads_and_is_consistent(name):
    link = load_profile(name)
    assert isinstance(link, Link) and link == load_link(name)
    assert link.name == name == Path(link.path).stem and link.description.strip()
    assert link.max_payload.value > PROTOCOL_OVERHEAD_BYTES  # room for a frame's header at least
    one_frame = PROTOCOL_OVERHEAD_BYTES * 8 / link.uplink.value + link.rtt.value
    assert 0 < one_frame < 10  # seconds: a bit/s slipped for a byte/s, or ms for s, would not stay in range


# a few facts a person can check against the datasheet or the paper the profile cites


def test_stm32f746_is_the_mcunetv2_board():
    dev = load_target("stm32f746")
    assert (dev.sram.value, dev.flash.value, dev.clock.value) == (320 * KiB, 1 * MiB, 216e6)
    assert dev.sram.text == "320 KiB" and "DS10916" in dev.sram.provenance
    assert dev.throughput["int8"].provenance.startswith("estimate: 216 MHz / ~2 cycles per MAC")


def test_rpi4_int8_matches_the_mobilenetv2_anchor():
    anchor = 300e6 / 0.022  # MobileNetV2-1.0@224, ~300 M MACs in ~22 ms with TFLite int8
    assert anchor / 2 <= load_target("rpi4").throughput["int8"].value <= anchor * 2


def test_every_shipped_device_names_its_instruction_set():
    arch = {name: load_target(name).arch for name in DEVICES}
    assert arch == {"esp32s3": "xtensa", "gpu-server": "x86_64", "jetson-nano": "aarch64",
                    "jetson-orin-nano": "aarch64", "nrf52840": "armv7e-m", "rpi4": "aarch64", "rpi5": "aarch64",
                    "stm32f412": "armv7e-m", "stm32f746": "armv7e-m", "stm32h743": "armv7e-m", "x86-server": "x86_64"}


def test_int8_throughput_grows_from_small_mcu_to_gpu_server():
    ladder = ["nrf52840", "stm32f412", "stm32f746", "stm32h743", "rpi4", "rpi5", "jetson-orin-nano", "gpu-server"]
    rates = [load_target(name).throughput["int8"].value for name in ladder]
    assert rates == sorted(rates)


def test_link_facts():
    lora, ble, lte = load_link("lora"), load_link("ble"), load_link("lte")
    assert lora.max_payload.value < 256 and ble.max_payload.value <= 512
    assert lte.uplink.value < lte.downlink.value
    assert 1e3 < lora.uplink.value <= 5.5e3  # SF7/125 kHz raw rate is ~5.47 kbit/s
    rtts = [load_link(name).rtt.value for name in ("ethernet", "wifi", "lte", "lora")]
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
    assert dev.path == str(dev_path) and (dev.name, dev.device_class, dev.cores) == ("mydev", "mcu", 1)
    assert (dev.clock.value, dev.sram.value, dev.flash.value) == (216e6, 320 * KiB, 1 * MiB)  # SI base units
    assert dev.throughput["int8"].value == pytest.approx(108e6) and "fp16" not in dev.throughput
    assert dev.sram.text == "320 KiB" and dev.sram.provenance == "datasheet"  # as written, and where from
    assert dev.throughput["int8"].provenance == "estimate: 216 MHz / 2 cycles per MAC"
    assert (dev.power_active, dev.ram, dev.links, dev.calibration, dev.arch) == (None, None, (), None, None)
    (tmp_path / "link").mkdir()
    link_path = write_profile(tmp_path / "link", VALID_LINK)
    link = load_link(str(link_path) if as_str else link_path)
    assert (link.uplink.value, link.downlink.value, link.max_payload.value) == (10e6, 20e6, 1e6)  # bit/s, B
    assert link.rtt.value == pytest.approx(0.02) and link.tx_energy is None
    assert load_profile(link_path) == link and load_profile(dev_path) == dev  # the file's kind decides


def test_a_custom_profile_may_name_its_instruction_set(tmp_path):
    path = write_profile(tmp_path, VALID_DEVICE, "cores = 1", 'cores = 1\narch = "armv7e-m"')
    assert load_target(path).arch == "armv7e-m"


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
        pytest.param("cores = 1", "cores = 1\narch = \"cortex-m7\"", ["'cpu.arch' must be one of x86_64, i686, "
                     "aarch64", "found 'cortex-m7'"], id="unknown-arch"),
        pytest.param("cores = 1", "cores = 1\narch = 64", ["'cpu.arch' must be str, found int 64"],
                     id="arch-not-a-string"),
        pytest.param("cores = 1", 'cores = "1"', ["'cpu.cores' must be int"], id="wrong-type"),
        pytest.param("cores = 1", "cores = true", ["'cpu.cores' must be int", "bool True"], id="bool-as-int"),
        pytest.param('["tflite-micro"]', '["tflite-micro", 3]', ["'runtimes' must be a list[str]"],
                     id="list-item-type"),
        pytest.param('"216 MHz"', '"-216 MHz"', ["'cpu.clock.value'", "'-216 MHz'"], id="negative-value"),
        pytest.param("[memory]", '[power]\nactive = { value = "1 W", source = "ds" }\n\n[memory]',
                     ["missing required key 'power.idle'"], id="power-without-idle"),
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
