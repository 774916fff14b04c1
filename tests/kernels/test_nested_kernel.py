"""quantkit.kernels.nested must give bitsandbytes' double quantization bit for bit, without
torch: torch's float32 mean on one thread, and bitsandbytes' CPU 8-bit blockwise codes."""

from __future__ import annotations

import contextlib

import bitsandbytes.functional as bnbf
import numpy as np
import pytest
import torch

from quantkit.kernels import nested

SPECIALS = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, 1.0, -1.0], np.float32)
SIZES = [1, 2, 3, 7, 8, 9, 31, 32, 33, 255, 256, 257, 1000, 4097, 32767, 32768, 32769, 65536 + 5, 102400, 262144 + 3]


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def values(n: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":  # absmax-like: positive, similar sizes
        return rng.random(n, dtype=np.float32)
    if kind == "spread":  # magnitudes from 1e-8 to 1e4: the summation order shows in the last bits
        return (rng.standard_normal(n) ** 2 * 10.0 ** rng.integers(-8, 5, n)).astype(np.float32)
    if kind == "signed":
        return (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32)  # "specials": a few of each special value
    where = rng.integers(0, n, max(1, n // 50))
    x[where] = rng.choice(SPECIALS, where.size)
    return x


def assert_same_bits(got, want) -> None:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    nan = np.isnan(got) & np.isnan(want)  # a NaN's payload is not part of what is stored
    np.testing.assert_array_equal(np.where(nan, 0, got.view(np.uint32)), np.where(nan, 0, want.view(np.uint32)))


def test_dynamic_map_is_bitsandbytes():
    want = bnbf.create_dynamic_map().numpy()
    np.testing.assert_array_equal(nested.dynamic_map().view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("kind", ["uniform", "spread", "signed", "specials"])
def test_mean_is_torch_on_one_thread(kind):
    with one_thread():
        for n in SIZES + list(range(10, 300, 7)):
            for seed in range(3):
                x = values(n, kind, seed)
                assert_same_bits(nested.torch_mean(x), torch.from_numpy(x).mean().numpy())


def test_mean_of_constants_zeros_and_one_value():
    with one_thread():
        for x in [np.zeros(40000, np.float32), np.full(40000, 0.1, np.float32), np.array([-0.0], np.float32), np.full(9, np.inf, np.float32)]:
            assert_same_bits(nested.torch_mean(x), torch.from_numpy(x).mean().numpy())


def assert_blockwise(y: np.ndarray) -> None:
    codes, state = bnbf.quantize_blockwise(torch.from_numpy(y.copy()), blocksize=256)
    got_codes, got_absmax, got_map = nested.quantize_blockwise_8bit(y)
    np.testing.assert_array_equal(got_codes, codes.numpy())
    np.testing.assert_array_equal(got_absmax.view(np.uint32), state.absmax.numpy().view(np.uint32))
    np.testing.assert_array_equal(got_map.view(np.uint32), state.code.numpy().view(np.uint32))


@pytest.mark.parametrize("kind", ["uniform", "spread", "signed", "specials"])
def test_blockwise_is_bitsandbytes(kind):
    for n in SIZES:
        for seed in range(2):
            assert_blockwise(values(n, kind, seed))


def test_blockwise_edge_blocks():
    for n in (1, 255, 256, 700):
        for x in (np.zeros(n), np.full(n, np.nan), np.full(n, -0.3), np.full(n, np.inf), np.full(n, 1e-45)):
            assert_blockwise(x.astype(np.float32))


def test_blockwise_on_table_points_and_code_midpoints():
    """Values on (and one float beside) the table's points and the code's midpoints, each
    block's absmax 1: where rounding and ties decide the code."""
    points = np.arange(65536, dtype=np.float32) * np.float32(2) / np.float32(65535) - np.float32(1)
    code = nested.dynamic_map()
    midpoints = (code[:-1] + code[1:]) * np.float32(0.5)
    for base in (points, np.tile(midpoints, 4)):
        for step in (-1, 0, 1):
            y = np.clip((base.view(np.int32) + step).view(np.float32), -1, 1).astype(np.float32)
            y[::256] = 1.0
            assert_blockwise(y)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_is_bitsandbytes_quantize_4bit(quant_type):
    """The whole nested state of ``quantize_4bit(compress_statistics=True)``, from its absmax."""
    for shape, seed in [((1280, 64), 0), ((513, 96), 1), ((4096, 1024), 2)]:  # the last: 65,536 absmax values
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
        with one_thread():
            _, plain = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type)
            _, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=True)
        offset, (codes, nested_absmax, nested_map) = nested.double_quant(plain.absmax.numpy())
        assert offset == state.offset.item()
        np.testing.assert_array_equal(codes, state.absmax.numpy())
        np.testing.assert_array_equal(nested_absmax.view(np.uint32), state.state2.absmax.numpy().view(np.uint32))
        np.testing.assert_array_equal(nested_map.view(np.uint32), state.state2.code.numpy().view(np.uint32))
