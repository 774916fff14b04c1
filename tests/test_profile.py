"""quantkit profile: figures equal compare's after the same conversion; the file round-trips and
refuses another checkpoint; plans and rules reproduce the choice."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from quantkit.convert import ConvertOptions, convert
from quantkit.errors import InputError, UsageError
from quantkit.plan import Target, apply_rules, choice_as_rules, choose, plan_auto
from quantkit.profile import KEEP, load_profile, profile_checkpoint, save_profile
from quantkit.reports.accuracy import compare_tensors
from quantkit.schemes import SchemeSettings
from quantkit.sources import open_checkpoint
from report_helpers import save, tiny_state_dict


def gpt2_like(seed: int = 0) -> dict[str, torch.Tensor]:
    """Conv1D weights stored [in, out]: quantized transposed, as convert does."""
    gen = torch.Generator().manual_seed(seed)
    sd = {"transformer.wte.weight": torch.randn(64, 16, generator=gen)}
    for i in range(2):
        sd[f"transformer.h.{i}.attn.c_attn.weight"] = torch.randn(16, 48, generator=gen) / 4
        sd[f"transformer.h.{i}.mlp.c_fc.weight"] = torch.randn(16, 64, generator=gen) / 4
        sd[f"transformer.h.{i}.ln_1.weight"] = torch.ones(16)
    return sd


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def checkpoint(request, tmp_path_factory):
    sd = tiny_state_dict() if request.param == "llama" else gpt2_like()
    return save(sd, tmp_path_factory.mktemp("profile") / "model.safetensors")


@pytest.fixture(scope="module")
def profile(checkpoint):
    return profile_checkpoint(checkpoint)


@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_profile_figures_equal_compare_after_convert(checkpoint, profile, scheme, tmp_path):
    out = convert(checkpoint, tmp_path / scheme, options=ConvertOptions(scheme, device="cpu"))
    with open_checkpoint(checkpoint) as original, open_checkpoint(out.write.folder) as converted:
        rows = {r.name: r for r in compare_tensors(original, converted).tensors if r.quantized}
    assert sorted(rows) == sorted(t.name for t in profile.tensors)
    for t in profile.tensors:
        c, r = t.candidates[scheme], rows[t.name]
        assert c.stored_bytes == r.stored_bytes, t.name
        assert math.isclose(c.sqnr_db, r.sqnr_db, rel_tol=1e-12), t.name
        assert math.isclose(c.rel_l2, r.rel_l2, rel_tol=1e-12), t.name
        assert math.isclose(c.max_abs, r.max_abs, rel_tol=1e-12), t.name
    total = sum(t.candidates[scheme].stored_bytes for t in profile.tensors) + profile.kept_bytes
    assert total == out.output_bytes


def test_double_quant_stored_bytes_equal_what_convert_writes(checkpoint, tmp_path):
    settings = SchemeSettings(double_quant=True)
    p = profile_checkpoint(checkpoint, schemes=["nf4"], settings=settings)
    out = convert(checkpoint, tmp_path / "dq", options=ConvertOptions("nf4", double_quant=True, device="cpu"))
    assert sum(t.candidates["nf4"].stored_bytes for t in p.tensors) + p.kept_bytes == out.output_bytes


def test_overall_sqnr_prediction_equals_compare(checkpoint, profile, tmp_path):
    """The plan's overall SQNR is compare's overall SQNR of the uniform conversion."""
    plan = plan_auto(profile, Target(min_sqnr_db=0.0), "bitsandbytes")  # every tensor takes its smallest scheme
    scheme = next(iter(set(plan.schemes.values())))
    out = convert(checkpoint, tmp_path / "c", options=ConvertOptions(scheme, device="cpu"))
    with open_checkpoint(checkpoint) as original, open_checkpoint(out.write.folder) as converted:
        overall = compare_tensors(original, converted).overall
    assert math.isclose(plan.predicted_sqnr_db, overall.sqnr_db, rel_tol=1e-9)
    assert plan.predicted_bytes == out.output_bytes


def test_profile_file_round_trips_and_refuses_another_checkpoint(checkpoint, profile, tmp_path):
    path = save_profile(profile, tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["profile_version"] == 2
    assert set(data) >= {"source", "schemes", "settings", "kept_bytes", "kept_signal_energy", "tensors"}
    assert set(data["tensors"][0]["candidates"][KEEP]) == {"stored_bytes", "noise_energy", "rel_l2", "sqnr_db", "max_abs", "cosine"}
    with open_checkpoint(checkpoint) as source:
        again = load_profile(path, source=source)
    assert again.to_dict() == profile.to_dict()
    other = save(tiny_state_dict(seed=1) | {"extra.weight": torch.ones(2, 2)}, tmp_path / "other.safetensors")
    with open_checkpoint(other) as source, pytest.raises(InputError, match="run quantkit profile again"):
        load_profile(path, source=source)


def test_bad_profile_file_is_an_input_error(tmp_path):
    (tmp_path / "bad.json").write_text('{"profile_version": 9}')
    with pytest.raises(InputError, match="profile_version 9"):
        load_profile(tmp_path / "bad.json")


def test_unknown_or_cast_scheme_is_refused(checkpoint):
    with pytest.raises(UsageError, match="not a quantizing scheme or bf16"):
        profile_checkpoint(checkpoint, schemes=["fp16"])
    with pytest.raises(UsageError, match="unknown scheme"):
        profile_checkpoint(checkpoint, schemes=["int3"])


def test_per_tensor_floor_holds_and_is_smallest(profile):
    plan = plan_auto(profile, Target(min_sqnr_db=30.0), "bitsandbytes")
    for t in profile.tensors:
        chosen = t.candidates[plan.schemes[t.name]]
        assert chosen.sqnr_db >= 30.0
    assert plan.predicted_min_sqnr_db >= 30.0


def test_bitsandbytes_choice_uses_one_method(profile):
    low = 8 * min(sum(t.candidates[s].stored_bytes for t in profile.tensors) for s in ("int8", "nf4", "fp4")) / sum(t.numel for t in profile.tensors)
    for bits in (low, low + 1, 12.0, 32.0):
        plan = plan_auto(profile, Target(bits=bits), "bitsandbytes")
        assert len(set(plan.schemes.values()) - {KEEP}) <= 1
        assert plan.predicted_bits <= bits + 1e-9


def test_target_size_counts_kept_tensors_and_infeasible_names_smallest(profile):
    from quantkit.schemes import SCHEMES

    def bnb(scheme: str) -> bool:
        return scheme == KEEP or SCHEMES[scheme].family == "bitsandbytes"

    smallest = profile.kept_bytes + min(  # one bitsandbytes method per model
        sum(min(c.stored_bytes for s, c in t.candidates.items() if s in (KEEP, method)) for t in profile.tensors)
        for method in profile.schemes if bnb(method))
    plan = plan_auto(profile, Target(size_bytes=smallest), "bitsandbytes")
    assert plan.predicted_bytes <= smallest
    with pytest.raises(UsageError, match=f"smallest achievable, {smallest:,} bytes"):
        plan_auto(profile, Target(size_bytes=smallest - 1), "bitsandbytes")
    with pytest.raises(UsageError, match=r"smallest achievable, \d+\.\d+ bits"):
        plan_auto(profile, Target(bits=2.0), "bitsandbytes")


def test_unknown_family_is_refused(checkpoint):
    bnb_only = profile_checkpoint(checkpoint, schemes=["int8", "nf4"])
    with pytest.raises(UsageError, match="no compressed-tensors scheme"):
        choose(bnb_only, Target(bits=5.0), family="compressed-tensors")


def test_rules_reproduce_the_choice_exactly():
    names = [f"model.layers.{i}.{m}.weight" for i in range(12) for m in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")]
    others = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    schemes = {n: "w4a16" for n in names}
    schemes |= {"model.layers.0.mlp.down_proj.weight": "w8a16", "model.layers.11.mlp.down_proj.weight": "w8a16",
                "model.layers.5.self_attn.q_proj.weight": KEEP}
    rules = choice_as_rules(schemes, names + others)
    assert len(rules) <= 6
    for name in names:
        assert apply_rules(rules, name) == schemes[name]
    for name in others:
        assert apply_rules(rules, name) is None
    for rule in rules:  # anchored: fullmatch agrees with search
        pattern = rule.rpartition("=")[0]
        assert all(bool(re.fullmatch(pattern, n)) == bool(re.search(pattern, n)) for n in names + others)


def test_rules_list_names_when_a_class_pattern_would_catch_a_kept_tensor():
    schemes = {"h.0.attn.weight": "nf4", "h.1.attn.weight": "nf4"}
    rules = choice_as_rules(schemes, [*schemes, "h.2.attn.weight"])  # h.2 kept (e.g. --skip)
    assert rules == [r"^h\.0\.attn\.weight$=nf4", r"^h\.1\.attn\.weight$=nf4"]
    assert apply_rules(rules, "h.2.attn.weight") is None


def test_plan_rules_reproduce_profile_choice(profile):
    plan = plan_auto(profile, Target(bits=14.0), "bitsandbytes")
    for t in profile.tensors:
        assert apply_rules(plan.rules, t.name) == plan.schemes[t.name]
    for name in profile.kept:
        assert apply_rules(plan.rules, name) is None


def test_a_newly_registered_quantizer_joins_by_default(checkpoint, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "schemes"))
    from toy_scheme import TOY

    from quantkit.schemes import SCHEMES, register

    register(TOY)
    try:
        p = profile_checkpoint(checkpoint)
        assert p.schemes == [s.name for s in SCHEMES.values() if s.quantizes] + ["bf16"] and p.schemes[-2] == "toy-int8"
        plan = plan_auto(p, Target(min_overall_sqnr_db=30.0), "toy")
        assert set(plan.schemes.values()) <= {KEEP, "toy-int8", "bf16"} and plan.predicted_sqnr_db >= 30.0
    finally:
        SCHEMES.pop(TOY.name)


@pytest.mark.parametrize("target", [Target(min_overall_sqnr_db=30.0), Target(bits=12.0), Target(min_sqnr_db=25.0)])
def test_bitsandbytes_plan_measured_afterwards(checkpoint, profile, target, tmp_path):
    """A bitsandbytes choice is one method plus kept tensors: convert --to METHOD --skip KEPT
    writes it today; compare then measures exactly the predicted size and overall SQNR."""
    plan = plan_auto(profile, target, "bitsandbytes")
    methods = set(plan.schemes.values()) - {KEEP}
    assert len(methods) == 1
    kept = tuple(f"^{re.escape(n)}$" for n, s in plan.schemes.items() if s == KEEP)
    out = convert(checkpoint, tmp_path / "mix", options=ConvertOptions(methods.pop(), skip=kept, device="cpu"))
    with open_checkpoint(checkpoint) as original, open_checkpoint(out.write.folder) as converted:
        accuracy = compare_tensors(original, converted)
    assert out.output_bytes == plan.predicted_bytes
    assert math.isclose(accuracy.overall.sqnr_db, plan.predicted_sqnr_db, rel_tol=1e-9)
    if target.min_overall_sqnr_db is not None:
        assert accuracy.overall.sqnr_db >= target.min_overall_sqnr_db
    if target.min_sqnr_db is not None:
        assert min(r.sqnr_db for r in accuracy.tensors if r.quantized) >= target.min_sqnr_db
    if target.bits is not None:
        assert plan.predicted_bits <= target.bits
