"""Issue 11 property: a byte-mutated .pth or .safetensors is read exactly as torch / safetensors
read it, or refused with InputError (exit 3, or 4 for a refused pickle): never another
exception, never a hang, never different data."""

from __future__ import annotations

import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from quantkit.errors import InputError
from quantkit.sources import open_checkpoint
from quantkit.sources.torch_source import find_weights

SECONDS_PER_EXAMPLE = 20


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=gen)
    return {"w": base, "row": base[2], "t": torch.randn(4, 3, generator=gen).t(), "i": torch.arange(5, dtype=torch.int16),
            "h": torch.randn(7, generator=gen).half(), "tied": base}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    torch.save(_state(), folder / "m.pth")
    save_file({k: v.contiguous().clone() for k, v in _state().items() if k != "tied"}, str(folder / "m.safetensors"), metadata={"format": "pt"})
    return {kind: (folder / f"m.{kind}").read_bytes() for kind in ("pth", "safetensors")}


def _record_spans(raw: bytes) -> list[tuple[int, int]]:
    """Where the data of each zip member lies (for mutations aimed at tensor bytes)."""
    import io

    spans = []
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            if info.file_size:
                spans.append((start, start + info.file_size))
    return spans


@st.composite
def mutations(draw, raw: bytes, spans: list[tuple[int, int]]):
    kind = draw(st.sampled_from(["bytes", "truncate", "record", "append"]))
    data = bytearray(raw)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=64))
    if kind == "record" and spans:  # inside a stored record: the CRC must catch it
        start, end = draw(st.sampled_from(spans))
        position = draw(st.integers(start, end - 1))
        data[position] ^= draw(st.integers(1, 255))
        return bytes(data)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor by every name, read both whole and in chunks (the two paths converts use)."""
    out = {}
    with open_checkpoint(path) as source:
        for name, spec in source.specs.items():
            whole = source.get_tensor(name)
            chunked = bytearray(spec.nbytes)
            step = max(1, spec.nbytes // 3)
            for start in range(0, spec.nbytes, step):
                source.read_into(name, start, memoryview(chunked)[start : start + step])
            assert bytes(chunked) == whole.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes(), name
            out[name] = whole
        for alias, kept in source.aliases.items():
            out[alias] = out[kept]
    return out


def _reference(path: Path, kind: str) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        return load_file(str(path))
    return find_weights(torch.load(path, map_location="cpu", weights_only=True))[1]


def _check(tmp_path: Path, kind: str, mutated: bytes) -> None:
    path = tmp_path / f"x.{kind}"
    path.write_bytes(mutated)
    start = time.monotonic()
    try:
        got = _read_all(path)
    except InputError:
        return  # refused in one line (exit 3, or 4 for a pickle needing code)
    finally:
        assert time.monotonic() - start < SECONDS_PER_EXAMPLE
    expected = _reference(path, kind)  # quantkit read it: so must torch / safetensors, identically
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        raw = lambda t: t.contiguous().view(torch.uint8).reshape(-1)  # noqa: E731
        assert torch.equal(raw(got[name]), raw(tensor)), name


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_mutated_files_are_read_exactly_or_refused(valid_files, tmp_path, kind, data):
    raw = valid_files[kind]
    spans = _record_spans(raw) if kind == "pth" else [(8 + struct.unpack("<Q", raw[:8])[0], len(raw))]
    _check(tmp_path, kind, data.draw(mutations(raw, spans)))


# every flip of the .pth (2,337 reads) is marked slow; the safetensors sweep and the random
# mutations of both stay in the default run
@pytest.mark.parametrize("kind", [pytest.param("pth", marks=pytest.mark.slow), "safetensors"])
def test_every_single_byte_of_a_small_file_flipped(valid_files, tmp_path, kind):
    """Exhaustive over positions (one bit pattern each): the cheap structured sweep."""
    raw = valid_files[kind]
    tail = range(max(0, len(raw) - 300), len(raw)) if kind == "pth" else range(0)  # the zip directory: every byte
    for position in sorted({*range(0, len(raw), 7 if kind == "pth" else 3), *tail}):
        data = bytearray(raw)
        data[position] ^= 0xA5
        _check(tmp_path, kind, bytes(data))


def test_unmutated_files_read_back_exactly(valid_files, tmp_path):
    for kind in ("pth", "safetensors"):
        path = tmp_path / f"ok.{kind}"
        path.write_bytes(valid_files[kind])
        assert sorted(_read_all(path)) == sorted(_reference(path, kind))
