"""Error figures on tensors with known error."""

from __future__ import annotations

import math

import pytest
import torch

from quantkit.reports import metrics
from quantkit.reports.accuracy import layer_of
from quantkit.reports.metrics import ErrorMoments, error_moments
from report_helpers import with_noise


def test_identical_tensors_are_exact():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    m = error_moments(x, x.clone())
    assert (m.cosine, m.rel_l2, m.max_abs, m.sqnr_db) == (1.0, 0.0, 0.0, math.inf)


def test_sign_flip_gives_cosine_minus_one():
    x = torch.randn(257, generator=torch.Generator().manual_seed(1))
    m = error_moments(x, -x)
    assert m.cosine == pytest.approx(-1.0, abs=1e-12)
    assert m.rel_l2 == pytest.approx(2.0)
    assert m.sqnr_db == pytest.approx(10 * math.log10(1 / 4))
    assert m.max_abs == pytest.approx(2 * float(x.abs().max()))


@pytest.mark.parametrize("snr_db", [10.0, 30.0, 60.0])
def test_sqnr_of_noise_with_exact_power(snr_db):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = error_moments(x, with_noise(x, snr_db))
    assert m.sqnr_db == pytest.approx(snr_db, abs=1e-6)
    assert m.rel_l2 == pytest.approx(10 ** (-snr_db / 20), rel=1e-6)
    assert m.cosine == pytest.approx(1 / math.sqrt(1 + 10 ** (-snr_db / 10)), abs=1e-3)


def test_sqnr_of_random_noise_at_given_std():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200_000, generator=gen)
    noisy = x + torch.randn(200_000, generator=gen) * 10 ** (-20 / 20)  # unit signal, 20 dB below
    assert error_moments(x, noisy).sqnr_db == pytest.approx(20.0, abs=0.1)


def test_chunked_sums_match_whole(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(10_001, generator=gen), torch.randn(10_001, generator=gen)
    whole = error_moments(x, y)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 1000)
    chunked = error_moments(x, y)
    for field in ("sum_ref_sq", "sum_approx_sq", "sum_cross", "sum_diff_sq"):
        assert getattr(chunked, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    assert chunked.max_abs == whole.max_abs


def test_pooled_moments_equal_concatenation():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(300, generator=gen), torch.randn(50, 4, generator=gen)
    a2, b2 = a + 0.1 * torch.randn(300, generator=gen), b * 0.9
    pooled = error_moments(a, a2)
    pooled.add(error_moments(b, b2))
    joined = error_moments(torch.cat([a, b.flatten()]), torch.cat([a2, b2.flatten()]))
    assert pooled.sqnr_db == pytest.approx(joined.sqnr_db)
    assert pooled.cosine == pytest.approx(joined.cosine)
    assert pooled.num_elements == 500


def test_low_precision_inputs_are_compared_in_float64():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(6))
    m = error_moments(x, x.to(torch.bfloat16))
    assert 45 < m.sqnr_db < 60  # bfloat16 keeps 8 significant bits: about 52 dB
    assert m.max_abs <= float(x.abs().max()) * 2**-8


def test_zero_tensors_and_nan():
    zero = torch.zeros(5)
    assert error_moments(zero, zero).cosine == 1.0
    one_zero = error_moments(zero, torch.ones(5))
    assert (one_zero.cosine, one_zero.rel_l2, one_zero.sqnr_db) == (0.0, math.inf, -math.inf)
    nan = error_moments(torch.ones(3), torch.tensor([1.0, math.nan, 1.0]))
    assert math.isnan(nan.max_abs) and math.isnan(nan.rel_l2)
    assert error_moments(torch.empty(0), torch.empty(0)).sqnr_db == math.inf


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        error_moments(torch.zeros(2, 3), torch.zeros(3, 2))


def test_empty_moments_are_exact():
    assert ErrorMoments().sqnr_db == math.inf and ErrorMoments().cosine == 1.0


@pytest.mark.parametrize(
    "name, layer",
    [
        ("model.layers.3.mlp.up_proj.weight", "model.layers.3"),
        ("encoder.layer.11.attention.self.query.weight", "encoder.layer.11"),
        ("transformer.h.0.attn.c_attn.weight", "transformer.h.0"),
        ("model.embed_tokens.weight", None),
        ("lm_head.weight", None),
    ],
)
def test_layer_of(name, layer):
    assert layer_of(name) == layer
