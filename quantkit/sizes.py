"""Size strings: decimal units (KB, MB, GB = powers of 10) and binary (KiB, MiB, GiB = powers of 2)."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse ``"2GB"`` (2 * 10**9), ``"2GiB"`` (2 * 2**30), ``"500MB"`` or a plain byte count.

    Example:
        >>> parse_size("2GB"), parse_size("1GiB"), parse_size(4096)
        (2000000000, 1073741824, 4096)
    """
    if isinstance(text, int):
        value = text
    else:
        match = _PATTERN.match(text)
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise UsageError(
                f"cannot read size {text!r}: use a number with a unit such as 500MB, 2GB (decimal) or 2GiB (binary)"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return value


def format_bytes(num_bytes: int | float) -> str:
    """Human size in decimal units, as file managers and the hub show them."""
    value = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_size_option(num_bytes: int) -> str:
    """The shortest size string ``parse_size`` reads back as exactly ``num_bytes``: ``2GB``.

    Example:
        >>> format_size_option(2 * 10**9), format_size_option(2**30), format_size_option(1000001)
        ('2GB', '1GiB', '1000001')
    """
    for unit in ("TB", "TIB", "GB", "GIB", "MB", "MIB", "KB", "KIB"):
        if num_bytes % _UNITS[unit] == 0:
            return f"{num_bytes // _UNITS[unit]}{unit.replace('I', 'i')}"
    return str(num_bytes)
