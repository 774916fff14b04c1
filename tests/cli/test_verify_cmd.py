"""`quantkit verify`: one OK line and exit 0, or the problems and exit 6."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file


def test_ok_line_for_a_written_folder(cli, small_pth, tmp_path):
    out = tmp_path / "out"
    assert cli("reshard", small_pth, "-o", out, "--max-size", "300B", "-q").exit_code == 0
    result = cli("verify", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"OK {out}: ")
    assert result.stdout.rstrip().endswith("checksums verified (SHA-256)")
    assert result.stderr == ""


def test_plain_folder_says_checksums_not_recorded(cli, tmp_path):
    save_file({"w": torch.ones(3)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    result = cli("verify", tmp_path)
    assert result.exit_code == 0
    assert result.stdout == f"OK {tmp_path}: 1 tensors in 1 file(s), 12 B of tensor data, checksums not recorded\n"


def test_damage_is_listed_and_exits_6(cli, small_pth, tmp_path):
    out = tmp_path / "out"
    cli("reshard", small_pth, "-o", out, "-q")
    shard = out / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-2] ^= 1
    shard.write_bytes(bytes(data))
    result = cli("verify", out)
    assert result.exit_code == 6
    lines = result.stdout.splitlines()
    assert lines[0] == f"FAILED {out}:"
    assert lines[1].startswith(f"  - {shard}: SHA-256 ") and "quantkit.json" in lines[1]
    assert result.stderr == f"quantkit: error: {out}: 1 problem found\n"


def test_json_report(cli, small_pth, tmp_path):
    out = tmp_path / "out"
    cli("reshard", small_pth, "-o", out, "-q")
    result = cli("verify", out, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["checksums"] == "verified" and report["problems"] == []


def test_missing_path_is_bad_input(cli, tmp_path):
    result = cli("verify", tmp_path / "nope")
    assert result.exit_code == 3
    assert result.stderr == f"quantkit: error: {tmp_path / 'nope'}: no such file or folder\n"


def test_converted_outputs_verify(cli, tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {"model.layers.0.mlp.up_proj.weight": torch.randn(128, 64, generator=gen), "model.layers.0.mlp.up_proj.bias": torch.randn(128, generator=gen),
          "model.embed_tokens.weight": torch.randn(100, 64, generator=gen)}
    torch.save(sd, tmp_path / "m.pth")
    for target in ("int8", "nf4"):
        out = tmp_path / target
        assert cli("convert", tmp_path / "m.pth", "--to", target, "-o", out, "--max-size", "10KB", "-q").exit_code == 0
        result = cli("verify", out)
        assert result.exit_code == 0, result.stdout
        assert result.stdout.startswith(f"OK {out}: ") and "checksums verified" in result.stdout
