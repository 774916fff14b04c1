"""compressed-tensors kernels: the bytes of compressed-tensors' own quantizers, tensor by tensor.

The reference is llm-compressor's per-weight path of ``model_free_ptq`` (initialize the
quantized Linear, calibrate, ``compress_module``), and ``model_free_ptq`` itself end to end.
Tests that need it skip when llm-compressor is not installed (``pip install quantkit[ref]``).
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantkit.errors import InputError, UsageError
from quantkit.schemes.compressed import (
    FP8_MAX,
    PRESETS,
    SCHEMES,
    dequantize,
    pack_int32,
    quantize,
    stored_tensors,
    unpack_int32,
)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float64": np.float64}
_TORCH_VIEW = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16), torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn)}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype in _TORCH_VIEW:
        through, np_dtype = _TORCH_VIEW[t.dtype]
        return t.contiguous().view(through).numpy().view(np_dtype)
    return t.contiguous().numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
    for torch_dtype, (through, np_dtype) in _TORCH_VIEW.items():
        if a.dtype == np_dtype:
            return torch.from_numpy(a.view(np.dtype(str(through).removeprefix("torch.")))).view(torch_dtype)
    return torch.from_numpy(a)


@pytest.fixture(scope="module")
def reference():
    """Quantize one weight exactly as model_free_ptq does, returning {suffix: numpy array}."""
    pytest.importorskip("llmcompressor")
    from compressed_tensors.compressors import compress_module
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.entrypoints.model_free.lifecycle import calibrate_weight, initialize_quantized_linear, validate_weight_for_quantization

    def run(weight: np.ndarray, scheme: str, group_size: int | None = None) -> dict[str, np.ndarray]:
        preset = preset_name_to_scheme(PRESETS[scheme], ["Linear"])
        if group_size is not None:
            preset.weights.group_size = group_size
        w = to_torch(np.ascontiguousarray(weight)).clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_weight_for_quantization(w, preset, "w")
            module = initialize_quantized_linear(w, preset, "cpu")
            calibrate_weight(module)
            compress_module(module)
        return {k: to_numpy(v) for k, v in module.state_dict().items()}

    return run


def assert_same_bytes(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], *, nan_bits: bool = True) -> None:
    """Equal names, dtypes, shapes and bytes. With ``nan_bits=False`` NaNs must sit at the same
    places but may differ in their bit pattern (see NaN bit patterns in quantkit.schemes.compressed)."""
    assert sorted(ours) == sorted(theirs)
    for key, expected in theirs.items():
        actual = ours[key]
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), key
        if nan_bits or actual.dtype.kind in "iu":
            assert actual.tobytes() == expected.tobytes(), key
            continue
        nan_a, nan_e = np.isnan(actual.astype(np.float64)), np.isnan(expected.astype(np.float64))
        np.testing.assert_array_equal(nan_a, nan_e, err_msg=key)
        assert actual[~nan_a].tobytes() == expected[~nan_e].tobytes(), key


def random_weight(shape: tuple[int, int], dtype: str, seed: int, std: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * std).astype(NP_DTYPES[dtype])


SHAPES_FP8 = [(256, 512), (300, 384), (1, 128), (129, 257), (7, 200), (1, 1), (128, 130), (384, 128)]
SHAPES_INT = [(256, 512), (300, 384), (1, 128), (7, 256), (128, 128)]


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize("scheme", ["fp8", "fp8-block"])
@pytest.mark.parametrize("shape", SHAPES_FP8, ids=str)
def test_fp8_bytes_equal_reference(reference, dtype, scheme, shape):
    weight = random_weight(shape, dtype, seed=sum(shape))
    assert_same_bytes(quantize(weight, scheme), reference(weight, scheme))


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize("scheme", ["w8a16", "w4a16"])
@pytest.mark.parametrize("shape", SHAPES_INT, ids=str)
def test_int_bytes_equal_reference(reference, dtype, scheme, shape):
    weight = random_weight(shape, dtype, seed=sum(shape))
    assert_same_bytes(quantize(weight, scheme), reference(weight, scheme))


@pytest.mark.parametrize("scheme", ["w8a16", "w4a16"])
@pytest.mark.parametrize("group_size,cols", [(32, 96), (64, 256), (256, 256), (8, 24), (2, 6), (3, 9)])
def test_int_group_sizes_equal_reference(reference, scheme, group_size, cols):
    """Any group size dividing the input, ragged packed words (6 int8 = 1.5 words) included."""
    weight = random_weight((5, cols), "bfloat16", seed=cols)
    assert_same_bytes(quantize(weight, scheme, group_size=group_size), reference(weight, scheme, group_size))


def special_weight(dtype: str, shape: tuple[int, int] = (48, 256)) -> np.ndarray:
    """Rows of zeros, NaN, +-inf, the dtype's largest and smallest (subnormal) values, halves
    that round on the edge, and a row that is zero but for one tiny value."""
    info = ml_dtypes.finfo(NP_DTYPES[dtype])
    w = random_weight(shape, "float64", seed=7)
    w[0] = 0.0
    w[1, 3] = np.nan
    w[2, 0] = -np.nan
    w[3, 5] = np.inf
    w[4, 9] = -np.inf
    w[5, :] = float(info.max) * np.sign(w[5])
    w[6, :] = w[6] * float(info.smallest_subnormal) * 1e3
    w[7, :] = float(info.smallest_subnormal)
    w[8, :] = 0.0
    w[8, 200] = -float(info.smallest_normal)
    w[9, :] = np.arange(256) - 127.5  # quotients on exact halves
    w[10, 130:] = 0.0  # one zero group beside a non-zero one
    w[40:, 3] = np.nan  # NaN in the last rows as well (torch's scalar tail)
    with np.errstate(over="ignore"):
        return w.astype(NP_DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_special_values_match_reference(reference, dtype, scheme):
    weight = special_weight(dtype)
    ours, theirs = quantize(weight, scheme), reference(weight, scheme)
    assert_same_bytes(ours, theirs, nan_bits=False)
    eps = float(ml_dtypes.finfo(NP_DTYPES[dtype]).eps)
    if scheme == "fp8-block":  # a zero block: scale eps, as the reference
        weight = random_weight((256, 300), dtype, seed=2)
        weight[128:, 128:256] = 0
        assert quantize(weight, scheme)["weight_scale"].astype(np.float64)[1].tolist()[1] == eps
    else:  # the zero row
        assert ours["weight_scale"].astype(np.float64)[0].tolist() == [eps] * ours["weight_scale"].shape[1]
    if scheme in ("w8a16", "w4a16"):  # groups holding NaN / inf store 0 (offset to unsigned)
        codes = unpack_int32(ours["weight_packed"], 8 if scheme == "w8a16" else 4, weight.shape[1])
        assert not codes[1, :128].any() and not codes[3, :128].any() and codes[1, 128:].any()


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any32 = st.floats(width=32)


@settings(max_examples=40)
@given(
    weight=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 4).map(lambda k: 32 * k)), elements=any32),
    scheme=st.sampled_from(SCHEMES),
    dtype=st.sampled_from(list(NP_DTYPES)),
)
def test_property_equal_reference(reference, weight, scheme, dtype):
    with np.errstate(over="ignore"):
        weight = weight.astype(NP_DTYPES[dtype])
    group = 32 if scheme in ("w8a16", "w4a16") else None
    ours = quantize(weight, scheme, group_size=group or 128)
    assert_same_bytes(ours, reference(weight, scheme, group), nan_bits=False)


@settings(max_examples=60)
@given(weight=hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 300)), elements=finite32), scheme=st.sampled_from(["fp8", "fp8-block"]))
def test_fp8_cannot_overflow(weight, scheme):
    """Finite weights, however large or small, give finite FP8 codes within +-448."""
    codes = quantize(weight, scheme)["weight"].astype(np.float32)
    assert np.isfinite(codes).all()
    assert np.abs(codes).max() <= FP8_MAX


@pytest.mark.parametrize("scheme", ["fp8", "fp8-block"])
def test_fp8_clamp_holds_subnormal_scales(reference, scheme):
    """Where the clamp matters: a subnormal absmax whose scale rounds down. 667 * 2^-149 / 448
    rounds to 2^-149, so x / scale = 667, past FP8's largest value (NaN without the clamp);
    stored as 448, as the reference stores it. Normal scales keep the quotient below 464,
    which FP8 rounds to 448 anyway."""
    tiny = np.float32(2.0**-149)
    weight = np.array([[667 * tiny, -667 * tiny, 300 * tiny]], dtype=np.float32)
    assert weight[0, 0] / np.float32(weight[0, 0] / np.float32(FP8_MAX)) > 464
    ours = quantize(weight, scheme)
    assert ours["weight"].astype(np.float32).tolist() == [[448.0, -448.0, 288.0]]
    assert_same_bytes(ours, reference(weight, scheme))


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantize_equals_reference_decompress(dtype, scheme):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import NaiveQuantizationCompressor, PackedQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme

    weight = random_weight((130, 256), dtype, seed=3)
    stored = quantize(weight, scheme)
    compressor = PackedQuantizationCompressor if scheme.startswith("w") else NaiveQuantizationCompressor
    theirs = compressor.decompress({k: to_torch(v) for k, v in stored.items()}, preset_name_to_scheme(PRESETS[scheme], ["Linear"]))
    ours = dequantize(stored, scheme)
    assert ours.dtype == weight.dtype
    assert ours.tobytes() == to_numpy(theirs["weight"]).tobytes()


@pytest.mark.parametrize("scheme,step", [("fp8", 2**-3), ("fp8-block", 2**-3), ("w8a16", 0.5), ("w4a16", 0.5)])
def test_dequantize_error_is_bounded(scheme, step):
    """|w - dequantized| <= half a step of the scale (FP8: 2^-4 of the value, up to rounding)."""
    weight = random_weight((64, 256), "float32", seed=11)
    stored = quantize(weight, scheme)
    error = np.abs(dequantize(stored, scheme) - weight)
    if scheme.startswith("w"):
        per_element = np.repeat(stored["weight_scale"], 128, axis=1)
        assert (error <= per_element * step * 1.0001).all()
    else:
        assert (error <= np.abs(weight) * 2**-4 + 1e-9 + np.abs(weight).max() / FP8_MAX * 2**-9).all()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols", [1, 3, 8, 31, 32, 33, 128])
def test_pack_matches_compressed_tensors(bits, cols):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    low, high = -(1 << (bits - 1)), (1 << (bits - 1))
    codes = np.random.default_rng(cols).integers(low, high, size=(5, cols), dtype=np.int8)
    packed = pack_int32(codes, bits)
    assert packed.tobytes() == pack_to_int32(torch.from_numpy(codes), bits).numpy().tobytes()
    np.testing.assert_array_equal(unpack_int32(packed, bits, cols), codes)


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(256, 512), (129, 384), (1, 128)], ids=str)
def test_stored_tensors_describe_quantize_output(dtype, scheme, shape):
    weight = random_weight(shape, dtype, seed=1)
    planned = stored_tensors(shape, NP_DTYPES[dtype], scheme)
    produced = quantize(weight, scheme)
    assert [t.suffix for t in planned] == list(produced)
    for spec in planned:
        array = produced[spec.suffix]
        assert (spec.dtype.numpy, spec.shape, spec.nbytes) == (array.dtype, array.shape, array.nbytes)


def test_group_size_must_divide_input(reference):
    weight = random_weight((4, 200), "float32", seed=0)
    with pytest.raises(UsageError, match=r"layer\.w: w4a16 group size 128 does not divide the input dimension 200"):
        quantize(weight, "w4a16", name="layer.w")
    with pytest.raises(UsageError, match="does not divide"):
        stored_tensors((4, 200), "F32", "w8a16", name="layer.w")
    with pytest.raises(ValueError):  # llm-compressor refuses it too
        reference(weight, "w4a16")


@pytest.mark.parametrize(
    "weight,scheme,kwargs,error,message",
    [
        (np.zeros((4, 128), np.int8), "fp8", {}, InputError, "not int8"),
        (np.zeros(128, np.float32), "fp8", {}, InputError, r"2-D Linear weights"),
        (np.zeros((0, 128), np.float32), "w8a16", {}, InputError, r"non-empty"),
        (np.zeros((4, 128), ml_dtypes.float8_e4m3fn), "fp8", {}, InputError, "not float8_e4m3fn"),
        (np.zeros((4, 128), np.float32), "int3", {}, UsageError, "unknown compressed-tensors scheme 'int3'"),
        (np.zeros((4, 128), np.float32), "w4a16", {"group_size": 0}, UsageError, "positive integer"),
        (np.zeros((4, 128), np.float32), "w4a16", {"group_size": 12.5}, UsageError, "positive integer"),
    ],
)
def test_bad_input_is_refused(weight, scheme, kwargs, error, message):
    with pytest.raises(error, match=message) as raised:
        quantize(weight, scheme, name="model.bad.weight", **kwargs)
    assert "model.bad.weight" in str(raised.value)


def test_dequantize_refuses_incomplete_tensors():
    stored = quantize(random_weight((4, 128), "float32", seed=0), "w4a16")
    del stored["weight_shape"]
    with pytest.raises(InputError, match="lack weight_shape"):
        dequantize(stored, "w4a16", name="p.weight")


@pytest.mark.parametrize(
    "scheme,suffix,bad",
    [
        ("w4a16", "weight_packed", lambda a: a[:, :-1]),
        ("w8a16", "weight_shape", lambda a: np.array([4, 256], np.int64)),
        ("w8a16", "weight_scale", lambda a: a[:-1]),
        ("w4a16", "weight_packed", lambda a: a.view(np.float32)),
        ("fp8", "weight_scale", lambda a: a[:-1]),
        ("fp8-block", "weight_scale", lambda a: np.concatenate([a, a], axis=1)),
        ("fp8", "weight", lambda a: a.astype(np.float32)),
    ],
)
def test_dequantize_refuses_damaged_tensors(scheme, suffix, bad):
    stored = quantize(random_weight((4, 128), "float32", seed=0), scheme)
    stored[suffix] = bad(stored[suffix])
    with pytest.raises(InputError, match=r"^p\.weight: .*(damaged|does not describe)"):
        dequantize(stored, scheme, name="p.weight")


def test_fp8_encoder_equals_ml_dtypes_cast():
    """quantkit's table encoder against ml_dtypes' float32 -> FP8 cast (round to nearest even),
    on random bit patterns within +-448 and on every tie between FP8 values and its neighbours."""
    from quantkit.schemes.compressed_arith import encode_fp8 as _encode_fp8

    bits = np.random.default_rng(0).integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[np.abs(values) <= FP8_MAX]
    grid = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    grid = np.sort(grid[np.isfinite(grid)])
    ties = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)
    near = [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)), grid.astype(np.float32)]
    values = np.concatenate([values, *near, np.float32([2.0**-149, -(2.0**-149), 2.0**-10, 0.0, -0.0])])
    expected = values.astype(ml_dtypes.float8_e4m3fn)
    assert _encode_fp8(values).tobytes() == expected.tobytes()
    as_bf16 = values.astype(ml_dtypes.bfloat16)
    assert _encode_fp8(as_bf16).tobytes() == as_bf16.astype(ml_dtypes.float8_e4m3fn).tobytes()


def test_f16_rounding_equals_numpy_cast():
    """quantkit's FP16 rounding (integer arithmetic, subnormals on their grid) and its FP16 ->
    float32 lookup against numpy's own casts, ties and the subnormal range included."""
    from quantkit.schemes.compressed_arith import round_to as _round_to, widen as _widen

    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[np.isfinite(values) & (np.abs(values) < 65504)]
    grid = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    grid = np.sort(grid[np.isfinite(grid)])
    ties = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)
    scaled = rng.standard_normal(100_000).astype(np.float32) * np.float32(2.0**-16)  # around the subnormal edge
    values = np.concatenate([values, ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)), scaled])
    assert _round_to(values, np.float16).tobytes() == values.astype(np.float16).astype(np.float32).tobytes()
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    assert _widen(halves).tobytes() == halves.astype(np.float32).tobytes()
