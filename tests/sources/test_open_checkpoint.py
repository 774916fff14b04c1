"""open_checkpoint: which reader a path gets, and the corpus of bad inputs refused with clear messages."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from bad_files import BAD_INPUTS, build, marker_of
from quantkit.errors import InputError, QuantkitError
from quantkit.sources import open_checkpoint


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.id for b in BAD_INPUTS])
def test_bad_inputs_raise_with_the_exact_message(tmp_path, bad):
    path, named = build(bad, tmp_path / "in")
    with pytest.raises(QuantkitError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert bad.fragment in message
    assert message.startswith(f"{named}: ") or f"{named}:" in message
    assert "\n" not in message
    assert info.value.exit_code == bad.exit_code
    assert not marker_of(tmp_path / "in").exists()


@pytest.mark.parametrize("kind,expected_format", [
    ("safetensors", "safetensors"), ("safetensors-sharded", "safetensors-sharded"), ("pth-zip", "torch-zip"),
    ("pth-legacy", "torch-legacy"), ("bin-sharded", "torch-sharded"), ("hf-folder", "safetensors"), ("hf-folder-bin", "torch-zip"),
])
def test_format_detection(make_checkpoint, kind, expected_format):
    ckpt = make_checkpoint(kind)
    with open_checkpoint(ckpt.path) as source:
        assert source.info.format == expected_format
        assert source.aliases == ckpt.tied
        assert set(source.specs) == set(ckpt.expected) - set(ckpt.tied)


def test_folder_prefers_safetensors_over_bin(tmp_path):
    save_file({"st": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    torch.save({"bin": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path) as source:
        assert list(source.specs) == ["st"]


def test_folder_with_two_candidates_names_them(tmp_path):
    torch.save({"a": torch.ones(1)}, tmp_path / "a.pth")
    torch.save({"b": torch.ones(1)}, tmp_path / "b.pth")
    with pytest.raises(InputError, match=r"no checkpoint found to read \(a\.pth, b\.pth\); pass the file or index to use"):
        open_checkpoint(tmp_path)


def test_folder_config_dir_only_with_config_json(make_checkpoint, tmp_path):
    with open_checkpoint(make_checkpoint("hf-folder").path) as source:
        assert source.info.config_dir is not None
    save_file({"a": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    with open_checkpoint(tmp_path) as source:
        assert source.info.config_dir is None


def test_index_path_directly(make_checkpoint):
    ckpt = make_checkpoint("bin-sharded")
    with open_checkpoint(ckpt.path) as source:
        assert source.path.name == "pytorch_model.bin.index.json"
        assert len(source.info.files) == 3


def _mutate(data, raw: bytes) -> bytes:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            buf[position] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[position: position + data.draw(st.integers(1, 64))]
        else:
            buf[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        if not buf:
            break
    return bytes(buf)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_mutated_pth_files_only_raise_quantkit_errors(tmp_path, legacy):
    valid = tmp_path / "valid.pth"
    torch.save({"a": torch.randn(4, 4), "b": torch.arange(5), "c": {"d": torch.ones(2)}}, valid, _use_new_zipfile_serialization=not legacy)
    raw = valid.read_bytes()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
    @given(data=st.data())
    def check(data):
        path = tmp_path / "fuzz.pth"
        path.write_bytes(_mutate(data, raw))
        try:
            with open_checkpoint(path) as source:
                for name in source.specs:
                    source.get_tensor(name)
        except QuantkitError as exc:
            assert str(exc).startswith(str(path))

    check()
