"""convert --to auto: the targets hold when the result is measured with compare; the recorded
rules reproduce the same bytes by hand; --dry-run writes nothing; usage errors exit 2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from quantkit.auto import convert_auto
from quantkit.convert import ConvertOptions, convert
from quantkit.errors import UsageError
from quantkit.plan import Target
from quantkit.profile import profile_checkpoint, save_profile
from quantkit.reports.accuracy import compare_tensors
from quantkit.sources import open_checkpoint
from report_helpers import save

HIDDEN = 128  # a multiple of the w4a16 / w8a16 group size


def model(seed: int = 0) -> dict[str, torch.Tensor]:
    """Llama-shaped; layer 1's weights heavy-tailed, so the per-tensor choice is not uniform."""
    gen = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(64, HIDDEN, generator=gen)}
    for i in range(3):
        p = f"model.layers.{i}"
        sd[f"{p}.input_layernorm.weight"] = torch.ones(HIDDEN)
        for proj in ("q_proj", "o_proj"):
            w = torch.randn(HIDDEN, HIDDEN, generator=gen) / 4
            if i == 1:
                w = w * torch.distributions.StudentT(2.0).sample((HIDDEN, HIDDEN))
            sd[f"{p}.self_attn.{proj}.weight"] = w
        sd[f"{p}.mlp.down_proj.weight"] = torch.randn(HIDDEN, 2 * HIDDEN, generator=gen) / 4
    sd["model.norm.weight"] = torch.ones(HIDDEN)
    sd["lm_head.weight"] = torch.randn(64, HIDDEN, generator=gen)
    return sd


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    torch.manual_seed(0)
    return save(model(), tmp_path_factory.mktemp("auto") / "model.safetensors")


def measured(src, out):
    with open_checkpoint(src) as original, open_checkpoint(out) as converted:
        return compare_tensors(original, converted)


def decided_bits(accuracy, names) -> float:
    """Stored bits per weight of the decided tensors, their values counted from the source."""
    sd = model()
    rows = [r for r in accuracy.tensors if r.name in names]
    assert len(rows) == len(names)
    return 8 * sum(r.stored_bytes for r in rows) / sum(sd[r.name].numel() for r in rows)


@pytest.mark.parametrize("floor", [17.0, 30.0, 40.0])
def test_min_sqnr_floor_holds_for_every_tensor_in_compare(src, floor, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(min_sqnr_db=floor))
    accuracy = measured(src, r.write.folder)
    assert all(row.sqnr_db >= floor for row in accuracy.tensors), [(t.name, t.sqnr_db) for t in accuracy.tensors if t.sqnr_db < floor]
    assert r.output_bytes == r.auto["predicted_bytes"]
    assert math.isclose(accuracy.overall.sqnr_db, r.auto["predicted_sqnr_db"], rel_tol=1e-9)


def test_min_sqnr_choice_is_not_uniform(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(min_sqnr_db=17.0))
    chosen = {rule.rpartition("=")[2] for rule in r.auto["rules"]}
    assert len(chosen) >= 2, r.auto["rules"]


@pytest.mark.parametrize("bits", [4.5, 6.0, 9.0])
def test_target_bits_never_exceeded_and_equals_prediction(src, bits, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(bits=bits))
    names = {n for n in model() if n.endswith("proj.weight")}
    got = decided_bits(measured(src, r.write.folder), names)
    assert got <= bits
    assert math.isclose(got, r.auto["predicted_bits"], rel_tol=1e-12)


def test_target_size_never_exceeded_and_equals_prediction(src, tmp_path):
    uniform = convert(src, tmp_path / "w8", options=ConvertOptions("w8a16")).output_bytes
    size = uniform - 20_000
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(size_bytes=size))
    assert r.output_bytes <= size
    assert r.output_bytes == r.auto["predicted_bytes"]


def test_min_overall_sqnr_holds(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(min_overall_sqnr_db=30.0))
    assert measured(src, r.write.folder).overall.sqnr_db >= 30.0


def test_recorded_rules_reproduce_the_same_bytes_by_hand(src, tmp_path, cli):
    out = cli("convert", src, "--to", "auto", "--target-bits", "5.5", "-o", tmp_path / "auto", "-q", "--json")
    assert out.exit_code == 0, out.stderr
    summary = json.loads(out.stdout)
    manifest = json.loads((tmp_path / "auto" / "quantkit.json").read_text())
    assert manifest["auto"]["rules"] == summary["auto"]["rules"]
    assert manifest["auto"]["target"] == {"bits": 5.5} and manifest["auto"]["family"] == "compressed-tensors"
    rules = [a for r in manifest["auto"]["rules"] for a in ("--rule", r)]
    by_hand = cli("convert", src, "--to", summary["scheme"], *rules, "-o", tmp_path / "hand", "-q")
    assert by_hand.exit_code == 0, by_hand.stderr
    shards = sorted(p.name for p in (tmp_path / "auto").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "hand").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "hand" / name).read_bytes()


def test_dry_run_shows_the_choice_and_writes_nothing(src, tmp_path, cli):
    before = sorted(p.name for p in src.parent.iterdir())
    out = cli("convert", src, "--to", "auto", "--min-sqnr", "30", "--dry-run", "-o", tmp_path / "out")
    assert out.exit_code == 0, out.stderr
    assert "equivalent rules:" in out.stdout and "--rule '" in out.stdout and "predicted" in out.stdout
    assert not (tmp_path / "out").exists() and sorted(p.name for p in src.parent.iterdir()) == before
    js = cli("convert", src, "--to", "auto", "--min-sqnr", "30", "--dry-run", "--json")
    assert js.exit_code == 0
    plan = json.loads(js.stdout)
    assert plan["auto"]["predicted_bytes"] == plan["output_bytes"]
    assert not (src.parent / "model-auto").exists()


def test_report_carries_the_choice(src, tmp_path, cli):
    out = cli("convert", src, "--to", "auto", "--min-sqnr", "30", "-o", tmp_path / "out", "-q", "--report", tmp_path / "r.json")
    assert out.exit_code == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["auto"]["target"] == {"min_sqnr_db": 30.0} and report["auto"]["rules"]


def test_saved_profile_reused_and_refused_when_stale(src, tmp_path, cli):
    path = save_profile(profile_checkpoint(src), tmp_path / "p.json")
    ok = cli("convert", src, "--to", "auto", "--target-bits", "6", "--profile", path, "--dry-run")
    assert ok.exit_code == 0, ok.stderr
    changed = model()
    changed["model.norm.weight"] = changed["model.norm.weight"].to(torch.bfloat16)  # a dtype changed since profiling
    other = save(changed, tmp_path / "other" / "model.safetensors")
    stale = cli("convert", other, "--to", "auto", "--target-bits", "6", "--profile", path, "--dry-run")
    assert stale.exit_code != 0 and "profile" in (stale.stderr + stale.stdout)


def test_schemes_narrow_the_candidates(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto"), target=Target(bits=6.0), schemes=["w4a16", "w8a16"])
    assert {rule.rpartition("=")[2] for rule in r.auto["rules"]} <= {"w4a16", "w8a16", "keep"}


@pytest.mark.parametrize("args", [
    ["--to", "auto"],  # no target
    ["--to", "auto", "--target-bits", "6", "--min-sqnr", "20"],  # two
    ["--to", "int8", "--target-bits", "6"],  # a target without auto
    ["--to", "auto", "--target-bits", "6", "--family", "gguf"],
    ["--to", "auto", "--target-bits", "6", "--schemes", "nf4"],  # not compressed-tensors
    ["--to", "auto", "--target-bits", "6", "--rule", "q_proj=int8"],
    ["--to", "auto", "--target-bits", "6", "--rest-dtype", "bf16"],
    ["--to", "auto", "--target-bits", "0.5"],  # below the smallest achievable
])
def test_usage_errors_exit_2(src, tmp_path, cli, args):
    out = cli("convert", src, *args, "-o", tmp_path / "out", "--dry-run")
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert not (tmp_path / "out").exists()


def test_bitsandbytes_family_uses_one_method(src, tmp_path):
    r = convert_auto(src, tmp_path / "out", options=ConvertOptions("auto", device="cpu"), target=Target(bits=6.0), family="bitsandbytes")
    assert len({rule.rpartition("=")[2] for rule in r.auto["rules"]} - {"keep"}) == 1
    assert r.auto["family"] == "bitsandbytes"
