"""Physical quantities written with their unit ("1.5 GHz", "320 KiB"), parsed to SI base values.

Profiles write every number with a unit so that a clock given in bytes, or a bandwidth given in
bytes instead of bits, is caught at load time instead of skewing a cost model silently.
"""

from __future__ import annotations

import re

# dimension -> {unit: factor to the base unit}
UNITS: dict[str, dict[str, float]] = {
    "frequency": {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
    "bytes": {"B": 1.0, "kB": 1e3, "KiB": 1024.0, "MB": 1e6, "MiB": 1024.0**2, "GB": 1e9, "GiB": 1024.0**3},
    "mac_rate": {"MAC/s": 1.0, "kMAC/s": 1e3, "MMAC/s": 1e6, "GMAC/s": 1e9, "TMAC/s": 1e12},
    "bit_rate": {"bit/s": 1.0, "kbit/s": 1e3, "Mbit/s": 1e6, "Gbit/s": 1e9},
    "byte_rate": {"B/s": 1.0, "kB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6},
    "power": {"W": 1.0, "mW": 1e-3},
    "energy_per_byte": {"J/B": 1.0, "mJ/B": 1e-3, "uJ/B": 1e-6, "nJ/B": 1e-9},
}

BASE_UNIT = {dim: next(u for u, f in table.items() if f == 1.0) for dim, table in UNITS.items()}

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]+)\s*$")


def dimension_of(unit: str) -> str | None:
    """The dimension a unit symbol belongs to, or None when it is unknown."""
    return next((dim for dim, table in UNITS.items() if unit in table), None)


def parse_quantity(text: str, dimension: str) -> float:
    """Parse '216 MHz' into 216e6, checking the unit belongs to `dimension`; ValueError says why not."""
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if match is None:
        example = f"12 {BASE_UNIT[dimension]}"
        raise ValueError(f"expected a {dimension} written as a number and a unit like '{example}', found {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    table = UNITS[dimension]
    if unit not in table:
        found = dimension_of(unit)
        what = f"a {found} unit" if found else "an unknown unit"
        raise ValueError(f"expected a {dimension} in one of {', '.join(table)}; {unit!r} in {text!r} is {what}")
    return number * table[unit]


def format_bytes(n: float) -> str:
    """Human size in binary units, e.g. 1404928 -> '1372.0 KiB'."""
    for unit, factor in (("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


def format_count(n: float) -> str:
    """Human count with SI prefix, e.g. 300_774_272 -> '300.8 M'."""
    for unit, factor in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)}"
