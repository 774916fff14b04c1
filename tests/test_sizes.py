"""Size strings: decimal and binary units, plain byte counts, clear errors."""

from __future__ import annotations

import doctest

import pytest

from quantkit import sizes
from quantkit.errors import UsageError
from quantkit.sizes import format_bytes, parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("500MiB", 500 * 2**20),
        ("1.5GB", 1_500_000_000), ("10kb", 10_000), ("4KiB", 4096), ("123", 123), ("123B", 123),
        (" 2 gb ", 2 * 10**9), ("1TB", 10**12), (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "2XB", "two GB", "2 G B", "-1GB", "0", "0MB", "1e9", "2GBs", 0, -5])
def test_bad_sizes_raise_usage_error(text):
    with pytest.raises(UsageError, match=r"size"):
        parse_size(text)


def test_bad_size_message_says_how_to_write_one():
    with pytest.raises(UsageError) as info:
        parse_size("lots")
    assert "cannot read size 'lots'" in str(info.value)
    assert "2GiB (binary)" in str(info.value)
    assert info.value.exit_code == 2


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1500) == "1.50 kB"
    assert format_bytes(2 * 10**9) == "2.00 GB"
    assert format_bytes(3 * 10**15) == "3000.00 TB"


def test_docstring_example():
    assert doctest.testmod(sizes).failed == 0
