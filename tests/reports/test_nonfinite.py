"""Issue 11 item 4: values a scheme makes NaN or inf are counted, said loudly, and ranked worst by compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantkit.schemes import get_scheme


def _checkpoint(path: Path, weight: torch.Tensor) -> Path:
    g = torch.Generator().manual_seed(1)
    torch.save({"layers.0.fc.weight": weight, "layers.1.fc.weight": torch.randn(8, 64, generator=g),
                "layers.0.fc.bias": torch.zeros(8)}, path)
    return path


def _beyond_fp16() -> torch.Tensor:
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    weight[3, 5] = 1e6  # representable in bf16, beyond FP16's 65504: INT8 goes through FP16
    return weight


def test_int8_beyond_fp16_range_is_counted_and_warned(cli, tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pth", _beyond_fp16())
    result = cli("convert", ckpt, "--to", "int8", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0  # the data is what it is: loud, not a failure
    assert ("warning: 64 values became NaN or inf in 1 quantized tensor(s): layers.0.fc.weight (64); a value beyond "
            "the scheme's range or a NaN in the source poisons its whole row or block (see nonfinite_created in --json)") in result.stdout.splitlines()
    summary = json.loads(cli("convert", ckpt, "--to", "int8", "-o", tmp_path / "out2", "-q", "--json").stdout)
    assert summary["nonfinite_created"] == {"layers.0.fc.weight": 64}


@pytest.mark.parametrize(("scheme", "spread"), [("int8", 64 - 1), ("nf4", 64 - 1), ("fp4", 64 - 1)])
def test_a_nan_spreading_to_its_row_or_block_is_counted(cli, tmp_path, scheme, spread):
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    weight[2, 7] = float("nan")  # one NaN in the source: row 2 is one INT8 row and one 64-value 4-bit block
    summary = json.loads(cli("convert", _checkpoint(tmp_path / "m.pth", weight), "--to", scheme, "-o", tmp_path / "o", "-q", "--json").stdout)
    assert summary["nonfinite_created"] == {"layers.0.fc.weight": spread}


def test_finite_weights_report_nothing(cli, tmp_path):
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    result = cli("convert", _checkpoint(tmp_path / "m.pth", weight), "--to", "nf4", "--double-quant", "-o", tmp_path / "o", "-q", "--json")
    assert json.loads(result.stdout)["nonfinite_created"] == {}


def test_fp16_overflow_counts_as_created(cli, tmp_path):
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    weight[0, :3] = 1e6
    summary = json.loads(cli("convert", _checkpoint(tmp_path / "m.pth", weight), "--to", "fp16", "-o", tmp_path / "o", "-q", "--json").stdout)
    assert summary["fp16_overflow"] == summary["nonfinite_created"] == {"layers.0.fc.weight": 3}


def test_scheme_interface_counts_from_stored_tensors():
    int8 = get_scheme("int8")
    stored = int8.quantize("p.weight", _beyond_fp16())
    assert int8.nonfinite_values(stored) == 64
    assert int8.nonfinite_values(int8.quantize("p.weight", torch.ones(4, 8))) == 0


def test_compare_ranks_nonfinite_tensors_worst_and_says_so(cli, tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pth", _beyond_fp16())
    assert cli("convert", ckpt, "--to", "int8", "-o", tmp_path / "out", "-q").exit_code == 0
    result = cli("compare", ckpt, tmp_path / "out", "--json", "-q", "--no-outputs")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    worst = report["tensors"]["worst"][0]
    assert (worst["name"], worst["sqnr_db"]) == ("layers.0.fc.weight", None)
    assert report["notes"][0] == ("1 tensor(s) hold NaN or inf values that are finite in the original "
                                  "(listed first among the worst): layers.0.fc.weight (64)")
    text = cli("compare", ckpt, tmp_path / "out", "-q", "--no-outputs").stdout
    worst_lines = text.split("worst tensors (NaN/inf first, then lowest SQNR):\n")[1].splitlines()
    assert worst_lines[0].startswith("  layers.0.fc.weight") and worst_lines[0].endswith("64 values NaN/inf")


def test_compressed_tensors_count_the_source_nan_and_what_it_spreads_to(cli, tmp_path):
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    weight[2, 7] = float("nan")  # fp8: one scale per output row, so row 2's scale and its 64 values become NaN
    ckpt = _checkpoint(tmp_path / "m.pth", weight)
    result = cli("convert", ckpt, "--to", "fp8", "-o", tmp_path / "o", "-q")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert ("warning: 1 NaN / inf weight values in 1 tensor(s), stored as llm-compressor stores them "
            "(their group's scale becomes NaN / inf): layers.0.fc.weight") in lines
    summary = json.loads(cli("convert", ckpt, "--to", "fp8", "-o", tmp_path / "o2", "-q", "--json").stdout)
    assert summary["nonfinite"] == {"layers.0.fc.weight": 1}
    assert summary["nonfinite_created"] == {"layers.0.fc.weight": 64 - 1}
