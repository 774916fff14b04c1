"""The torch-free .pth reader (lazy_pth) against the torch path: same tensors, same outputs,
same refusals; torch left for what it does not understand."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from bad_files import BAD_INPUTS, build, flip_data_byte, marker_of
from conftest import make_state_dict
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import InputError, QuantkitError
from quantkit.sources import open_checkpoint
from quantkit.sources.lazy_pth import FORCE_TORCH_ENV, LazyPthSource
from quantkit.sources.torch_source import TorchSource, open_torch_file


def _chunked(source, name: str) -> bytes:
    out = bytearray(source.specs[name].nbytes)
    step = max(1, len(out) // 3)
    for start in range(len(out) - step, -1, -step) if out else ():  # backwards: any order passes the CRC
        source.read_into(name, start, memoryview(out)[start : start + step])
    if out:
        source.read_into(name, 0, memoryview(out)[: len(out) % step or step])
    return bytes(out)


def test_a_state_dict_is_read_without_torch_exactly_as_the_torch_path_reads_it(tmp_path):
    sd = make_state_dict(5)
    torch.save({"model": sd, "epoch": 7, "optimizer": {"state": {0: {"m": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}}, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as lazy, open_torch_file(tmp_path / "m.pth") as reference:
        assert isinstance(lazy, LazyPthSource)
        assert lazy.specs == reference.specs and lazy.aliases == reference.aliases
        assert (lazy.info.extras, lazy.info.extras_json, lazy.info.notes) == (reference.info.extras, reference.info.extras_json, reference.info.notes)
        for name in reference.specs:
            expected = reference.get_tensor(name).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            assert _chunked(lazy, name) == expected, name
            got = lazy.get_tensor(name)
            assert got.dtype == sd[name].dtype and got.shape == sd[name].shape, name
            assert got.reshape(-1).view(torch.uint8).numpy().tobytes() == expected, name


def test_a_sharded_bin_index_is_read_lazily(tmp_path):
    sd = make_state_dict(2)
    names = list(sd)
    half = len(names) // 2
    torch.save({n: sd[n] for n in names[:half]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({n: sd[n] for n in names[half:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {n: f"pytorch_model-0000{1 + (i >= half)}-of-00002.bin" for i, n in enumerate(names)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with open_checkpoint(tmp_path) as source:
        assert isinstance(source, LazyPthSource) and source.info.format == "torch-sharded"
        for name, spec in source.specs.items():
            assert _chunked(source, name) == sd[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), name


def _repacked_stored(path: Path) -> None:
    """The same records re-written by Python's zipfile, uncompressed: not laid out as torch.save
    writes (the torch path refuses it: torch finds its records elsewhere than the directory says)."""
    data = path.read_bytes()
    path.unlink()
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info.filename))


@pytest.mark.parametrize("case", ["torch.Size", "allow_globals", "legacy", "forced", "repacked-zip"])
def test_what_the_reader_does_not_take_is_read_by_torch_with_the_same_result(tmp_path, monkeypatch, case):
    import argparse

    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    extra = {"size": torch.Size([2, 3])} if case == "torch.Size" else {"args": argparse.Namespace(lr=1)} if case == "allow_globals" else {}
    torch.save({**sd, **extra}, tmp_path / "m.pth", _use_new_zipfile_serialization=case != "legacy")
    if case == "repacked-zip":
        _repacked_stored(tmp_path / "m.pth")
    if case == "forced":
        monkeypatch.setenv(FORCE_TORCH_ENV, "torch")
    options = {"allow_globals": ("argparse.Namespace",)} if case == "allow_globals" else {}
    if case == "repacked-zip":
        with pytest.raises(InputError, match="has no data record in the zip") as lazy_first:
            open_checkpoint(tmp_path / "m.pth")
        monkeypatch.setenv(FORCE_TORCH_ENV, "torch")
        with pytest.raises(InputError) as torch_only:
            open_checkpoint(tmp_path / "m.pth")
        assert str(lazy_first.value) == str(torch_only.value)
        return
    with open_checkpoint(tmp_path / "m.pth", **options) as source:
        assert isinstance(source, TorchSource)
        assert sorted(source.specs) == ["b", "w"]
        assert all(torch.equal(source.get_tensor(n), sd[n]) for n in sd)


_PTH_BAD = [b for b in BAD_INPUTS if b.id.startswith(("pth-", "unsafe-pickle", "truncated-pth", "legacy-", "lightning-", "zero-tensors-pth"))]


@pytest.mark.parametrize("bad", _PTH_BAD, ids=[b.id for b in _PTH_BAD])
def test_bad_pth_files_get_the_refusal_of_the_torch_path(tmp_path, monkeypatch, bad):
    path, _ = build(bad, tmp_path / "in")
    errors = []
    for reader in ("", "torch"):
        monkeypatch.setenv(FORCE_TORCH_ENV, reader)
        with pytest.raises(QuantkitError) as info:
            open_checkpoint(path)
        errors.append((str(info.value), info.value.exit_code))
    assert errors[0] == errors[1] and bad.fragment in errors[0][0] and errors[0][1] == bad.exit_code
    assert not marker_of(tmp_path / "in").exists()


def test_a_flipped_data_byte_fails_the_read_that_completes_its_record(tmp_path):
    torch.save({"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(0)), "b": torch.ones(4)}, tmp_path / "m.pth")
    flip_data_byte(tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as source:
        assert isinstance(source, LazyPthSource)
        buffer = bytearray(source.specs["w"].nbytes)
        source.read_into("w", 0, memoryview(buffer)[:100])  # not yet the whole record
        with pytest.raises(InputError, match="fails its CRC-32 check"):
            source.read_into("w", 100, memoryview(buffer)[100:])


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json") and p.name != "quantkit.json"}


@pytest.mark.parametrize("scheme", ["bf16", "int8", "nf4"])
def test_conversion_from_the_lazy_reader_is_byte_identical(tmp_path, monkeypatch, scheme):
    gen = torch.Generator().manual_seed(1)
    sd = {"fc1.weight": torch.randn(64, 128, generator=gen), "fc1.bias": torch.randn(64, generator=gen),
          "fc2.weight": torch.randn(32, 64, generator=gen).bfloat16(), "emb.weight": torch.randn(16, 64, generator=gen).t(),
          "steps": torch.arange(5)}
    torch.save(sd, tmp_path / "m.pth")
    convert(tmp_path / "m.pth", tmp_path / "lazy", options=ConvertOptions(scheme, device="cpu"))
    monkeypatch.setenv(FORCE_TORCH_ENV, "torch")
    convert(tmp_path / "m.pth", tmp_path / "torch", options=ConvertOptions(scheme, device="cpu"))
    lazy, reference = _outputs(tmp_path / "lazy"), _outputs(tmp_path / "torch")
    assert any(n.endswith(".safetensors") for n in lazy)
    assert lazy == reference
    with open_checkpoint(tmp_path / "m.pth") as source:
        assert isinstance(source, TorchSource)  # the env var did force the torch path
    monkeypatch.delenv(FORCE_TORCH_ENV)
    with open_checkpoint(tmp_path / "m.pth") as source:
        assert isinstance(source, LazyPthSource)


@pytest.mark.parametrize("scheme", ["bf16", "nf4"])
def test_pth_conversion_imports_no_torch(tmp_path, scheme):
    gen = torch.Generator().manual_seed(0)
    torch.save({"fc1.weight": torch.randn(64, 128, generator=gen), "fc1.bias": torch.randn(64, generator=gen),
                "fc2.weight": torch.randn(32, 64, generator=gen).bfloat16()}, tmp_path / "m.pth")
    code = textwrap.dedent(f"""
        import json, sys
        from quantkit.convert import ConvertOptions, convert
        result = convert({str(tmp_path / 'm.pth')!r}, {str(tmp_path / 'out')!r}, options=ConvertOptions({scheme!r}, device="cpu"))
        print(json.dumps([sorted(result.quantized), "torch" in sys.modules]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    quantized, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert quantized == ([] if scheme == "bf16" else ["fc1.weight", "fc2.weight"])
    assert imported is False


@pytest.mark.parametrize("edit", ["comment", "disk-number", "version-4", "folder"])
def test_a_zip_not_laid_out_as_torch_save_writes_is_left_to_torch(tmp_path, monkeypatch, edit):
    """Whatever torch's zip reader (miniz) does with it, the outcome is the torch path's."""
    torch.save({"w": torch.arange(6.0)}, tmp_path / "m.pth")
    raw = bytearray((tmp_path / "m.pth").read_bytes())
    if edit == "comment":  # a zip comment: Python's zipfile and miniz both read past it
        raw[-2:] = (4).to_bytes(2, "little")
        raw += b"note"
    elif edit == "disk-number":  # miniz: "unsupported multidisk archive"
        raw[-22 + 4] = 1
    elif edit == "version-4":  # same length, CRC-32 fixed up: only the value differs
        import zlib

        at = raw.index(b"m/version") + len(b"m/version")
        extra_len = int.from_bytes(raw[at - len(b"m/version") - 2 : at - len(b"m/version")], "little")
        data_at = at + extra_len
        assert raw[data_at : data_at + 2] == b"3\n"
        old_crc, new_crc = zlib.crc32(b"3\n").to_bytes(4, "little"), zlib.crc32(b"4\n").to_bytes(4, "little")
        raw[data_at : data_at + 2] = b"4\n"
        assert raw.count(old_crc) == 2  # the data descriptor and the central directory
        raw = bytearray(raw.replace(old_crc, new_crc))
    else:  # every record moved to another folder name than the first entry's
        raw = bytearray(raw.replace(b"m/data.pkl", b"n/data.pkl"))
    (tmp_path / "m.pth").write_bytes(bytes(raw))
    outcomes = []
    for reader in ("", "torch"):
        monkeypatch.setenv(FORCE_TORCH_ENV, reader)
        try:
            with open_checkpoint(tmp_path / "m.pth") as source:
                outcomes.append((type(source).__name__, source.get_tensor("w").tolist()))
        except QuantkitError as exc:
            outcomes.append((str(exc), exc.exit_code))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] != "LazyPthSource"


def test_the_crc_used_for_zip_records_is_zlibs_with_or_without_isal(tmp_path):
    import random
    import zlib

    from quantkit.sources.ziprecords import crc32

    data = random.Random(0).randbytes(3 * 2**20 + 7)
    view = memoryview(data)
    for piece, start in ((view, 0), (view[5:70_001], 0xDEADBEEF), (view[:0], 17), (bytearray(b"abc"), 1)):
        assert crc32(piece, start) == zlib.crc32(piece, start)
    code = "import sys; sys.modules['isal'] = None; from quantkit.sources.ziprecords import crc32; print(crc32.__module__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "zlib"
