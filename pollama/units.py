"""Byte sizes and counts, formatted and parsed the way people write them."""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": KiB,
    "kib": KiB,
    "mi": MiB,
    "mib": MiB,
    "gi": GiB,
    "gib": GiB,
    "ti": TiB,
    "tib": TiB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``"24GiB"``, ``"512 MiB"``, ``"8GB"`` or ``"1048576"`` into bytes.

    Raises ValueError with the offending text when it does not parse.
    """
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (try e.g. 24GiB, 512MiB, 8GB)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(value):
        raise ValueError(f"not a size: {text!r}")
    return int(value)


def format_bytes(n: int) -> str:
    """Binary units, 3 significant figures: ``format_bytes(102_510_000)`` → ``'97.8 MiB'``."""
    if n < KiB:
        return f"{n} B"
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def format_parameter_count(n: int) -> str:
    """Parameter counts as Ollama shows them: ``134.52M``, ``8.0B``, ``1.2T``."""
    if n >= 1_000_000_000_000:
        return _decimal(n / 1e12, 1) + "T"
    if n >= 1_000_000_000:
        return _decimal(n / 1e9, 1) + "B"
    if n >= 1_000_000:
        return _decimal(n / 1e6, 2) + "M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}K"
    return str(n)


def _decimal(value: float, places: int) -> str:
    if value == math.floor(value):
        return f"{value:.0f}"
    return f"{value:.{places}f}"


_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``"5m"``, ``"1h30m"``, ``"-1m"``, ``"0"``) into seconds."""
    s = text.strip()
    if not s:
        raise ValueError("not a duration: empty")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if not match:
            raise ValueError(f"not a duration: {text!r} (try e.g. 5m, 1h30m, -1)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not s:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total
