"""safetensors sources: lazy reads, one file open at a time, aliases from metadata."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_bit_equal
from quantkit.errors import InputError
from quantkit.sources.safetensors_source import ALIASES_KEY, open_safetensors_file, open_safetensors_index


def test_reads_each_tensor_bit_exact_in_any_order(make_checkpoint):
    ckpt = make_checkpoint("safetensors-sharded")
    with open_safetensors_index(ckpt.path) as source:
        assert len(source.info.files) == 3
        for name in sorted(source.specs, reverse=True):
            assert_bit_equal(source.get_tensor(name), ckpt.expected[name], name)


def test_aliases_from_metadata(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "m.safetensors"), metadata={"format": "pt", ALIASES_KEY: json.dumps({"b": "a"})})
    assert open_safetensors_file(tmp_path / "m.safetensors").aliases == {"b": "a"}


@pytest.mark.parametrize("raw,fragment", [("{nope", "is not JSON"), ('["a"]', "must map dropped names to kept names")])
def test_bad_aliases_metadata(tmp_path, raw, fragment):
    save_file({"a": torch.ones(2)}, str(tmp_path / "m.safetensors"), metadata={ALIASES_KEY: raw})
    with pytest.raises(InputError, match=fragment):
        open_safetensors_file(tmp_path / "m.safetensors")
