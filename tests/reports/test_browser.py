"""The HTML report opened in a real headless browser (Debian's `chromium`): charts in the DOM,
no console errors, a non-blank screenshot. Skipped when chromium is not installed."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from quantkit.reports import build_report, write_report
from report_helpers import cast_floats, save, tiny_state_dict

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: install Debian's `chromium` (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0", "--window-size=900,1200"]
CONSOLE = re.compile(r":CONSOLE|Uncaught|Refused to", re.IGNORECASE)


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=profile.parent)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Rows of an 8-bit RGB/RGBA PNG (enough for a browser screenshot), filters undone."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(kind)
            if pred is None:  # Paeth
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html")
    sd = tiny_state_dict()
    original = save(sd, root / "orig.safetensors")
    converted = save(cast_floats(sd, torch.bfloat16), root / "bf16.safetensors")
    return write_report(build_report(original, converted, model_outputs=False), root / "report.html")


def test_console_errors_are_detected(tmp_path):
    """The check below would see an error: a page that logs one is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script></body></html>')
    result = chromium(page, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0
    assert CONSOLE.search(result.stderr) and "boom" in result.stderr


def test_report_renders_charts_without_console_errors(html_report, tmp_path):
    result = chromium(html_report, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert dom.count("<svg") == 3
    assert "<rect" in dom and "<polyline" in dom and "<circle" in dom
    assert "Conversion report" in dom and "Tensor accuracy" in dom
    console = [line for line in result.stderr.splitlines() if CONSOLE.search(line)]
    assert console == [], console


@pytest.mark.slow  # a third browser start; test_report_renders_charts_without_console_errors stays in the default run
def test_screenshot_is_not_blank(html_report, tmp_path):
    shot = tmp_path / "shot.png"
    result = chromium(html_report, tmp_path / "profile", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    width, height, rows = png_pixels(shot)
    assert (width, height) == (900, 1200)
    distinct = {row[i : i + 3] for row in rows[::8] for i in range(0, len(row), 3 * 7)}
    assert len(distinct) > 20  # text, bars in two colours, lines: far from a blank page
    bar_blue = bytes((0x4E, 0x79, 0xA7))  # the first series colour of the bar charts
    assert any(bar_blue in row for row in rows)
