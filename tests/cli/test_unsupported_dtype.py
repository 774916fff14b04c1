"""A tensor safetensors cannot store (complex) is a bad input (exit 3) naming file and tensor, not a crash."""

from __future__ import annotations

import pytest
import torch

from quantkit.errors import InputError
from quantkit.sources import open_checkpoint


@pytest.fixture
def complex_pth(tmp_path):
    path = tmp_path / "complex.pth"
    torch.save({"w": torch.randn(4, 4), "freqs_cis": torch.zeros(3, dtype=torch.complex64)}, path)
    return path


def test_opening_names_the_file_and_tensor(complex_pth):
    with pytest.raises(InputError, match=r"complex\.pth: tensor 'freqs_cis' has dtype torch\.complex64"):
        open_checkpoint(complex_pth)


@pytest.mark.parametrize("command", [["inspect"], ["convert", "--to", "bf16", "-q"]])
def test_cli_exits_3(cli, complex_pth, command):
    result = cli(*command[:1], str(complex_pth), *command[1:])
    assert result.exit_code == 3
    assert "internal error" not in result.stderr
    assert f"{complex_pth}: tensor 'freqs_cis' has dtype torch.complex64" in result.stderr
