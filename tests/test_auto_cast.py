"""convert --to auto with bf16 as the narrower "kept" (compressed-tensors) and the profile's
recorded settings: a profile measured with another --group-size is refused."""

from __future__ import annotations

import json

import pytest
import torch

from quantkit.auto import convert_auto
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import UsageError
from quantkit.plan import Target
from quantkit.profile import profile_checkpoint, save_profile
from quantkit.schemes import SchemeSettings
from quantkit.sources import open_checkpoint
from report_helpers import save
from test_auto import measured, model

CASTABLE = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {f"model.layers.{i}.input_layernorm.weight" for i in range(3)}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return save(model(), tmp_path_factory.mktemp("cast") / "model.safetensors")


def dtypes(folder) -> dict[str, str]:
    with open_checkpoint(folder) as c:
        return {n: str(s.dtype) for n, s in c.specs.items()}


def test_profile_measures_bf16_on_every_wider_kept_tensor(src):
    p = profile_checkpoint(src, schemes=["w4a16", "bf16"])
    assert {t.name for t in p.castable} == CASTABLE
    assert all(set(t.candidates) == {"keep", "bf16"} and t.candidates["bf16"].stored_bytes == t.numel * 2 for t in p.castable)
    assert all("bf16" in t.candidates for t in p.tensors)


def test_a_bf16_source_has_no_bf16_candidate(tmp_path):
    bf16 = save({n: t.to(torch.bfloat16) for n, t in model().items()}, tmp_path / "m.safetensors")
    p = profile_checkpoint(bf16, schemes=["w4a16", "bf16"])
    assert p.castable == [] and all("bf16" not in t.candidates for t in p.tensors)


def test_floor_below_bf16s_sqnr_casts_the_kept_tensors_and_holds_in_compare(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(min_sqnr_db=30.0))
    assert any(rule.endswith("=bf16") for rule in r.auto["rules"]), r.auto["rules"]
    written = dtypes(r.write.folder)
    assert all(written[n] == "torch.bfloat16" for n in CASTABLE), written
    accuracy = measured(src, r.write.folder)
    assert all(row.sqnr_db >= 30.0 for row in accuracy.tensors)
    assert r.output_bytes == r.auto["predicted_bytes"]


def test_floor_above_bf16s_sqnr_keeps_them(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(min_sqnr_db=70.0))
    written = dtypes(r.write.folder)
    assert written["model.embed_tokens.weight"] == written["lm_head.weight"] == "torch.float32"  # bf16: about 50 dB
    assert written["model.norm.weight"] == "torch.bfloat16"  # ones: exact in bf16, so the cast is free
    assert r.output_bytes == r.auto["predicted_bytes"]


def test_target_size_below_every_fp32_kept_choice_is_reached(src, tmp_path):
    """Uniform w4a16 keeps the embeddings FP32; auto may cast them, so it fits under that size."""
    w4 = convert(src, tmp_path / "w4", options=ConvertOptions("w4a16")).output_bytes
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(size_bytes=w4 - 1))
    assert r.output_bytes == r.auto["predicted_bytes"] <= w4 - 1


def test_bitsandbytes_never_casts(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto", device="cpu"), target=Target(min_sqnr_db=10.0), family="bitsandbytes")
    assert not any(rule.endswith("=bf16") for rule in r.auto["rules"])


def test_profile_with_another_group_size_is_refused(src, tmp_path, cli):
    path = save_profile(profile_checkpoint(src, schemes=["w4a16", "w8a16"], settings=SchemeSettings(group_size=64)), tmp_path / "p.json")
    assert json.loads(path.read_text())["settings"]["group_size"] == 64
    with pytest.raises(UsageError, match="measured with --group-size 64, this conversion uses 128"):
        convert_auto(src, tmp_path / "no", options=ConvertOptions("auto"), target=Target(bits=6.0), profile=path)
    assert not (tmp_path / "no").exists()
    out = cli("convert", src, "--to", "auto", "--target-bits", "6", "--profile", path, "-o", tmp_path / "cli", "--dry-run")
    assert out.exit_code == 2 and "--group-size 64" in out.stderr
    r = convert_auto(src, tmp_path / "ok", options=ConvertOptions("auto", group_size=64), target=Target(bits=6.0), profile=path)
    assert r.output_bytes == r.auto["predicted_bytes"]
    # a setting no profiled scheme uses is not compared: w4a16 / w8a16 ignore the 4-bit block size
    convert_auto(src, tmp_path / "bs", options=ConvertOptions("auto", group_size=64, blocksize=128), target=Target(bits=6.0), profile=path)


def test_profile_cli_records_the_group_size(src, tmp_path, cli):
    out = cli("profile", src, "--schemes", "w4a16", "--group-size", "32", "-o", tmp_path / "p.json", "-q")
    assert out.exit_code == 0, out.stderr
    assert json.loads((tmp_path / "p.json").read_text())["settings"]["group_size"] == 32
