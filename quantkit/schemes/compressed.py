"""compressed-tensors weight layouts (FP8, FP8 in blocks, INT8 / INT4 in groups), in numpy.

The four schemes write, for a Linear weight ``[out, in]`` of a module ``P``, the tensors that
llm-compressor's ``model_free_ptq`` writes for the matching preset (compressed-tensors 0.19),
byte for byte:

============  ============  ==================================================================
scheme        preset        stored tensors (names relative to ``P``)
============  ============  ==================================================================
``fp8``       FP8_DYNAMIC   ``weight`` F8_E4M3 ``[out, in]``, ``weight_scale`` ``[out, 1]``
``fp8-block`` FP8_BLOCK     ``weight`` F8_E4M3 ``[out, in]``,
                            ``weight_scale`` ``[ceil(out/128), ceil(in/128)]``
``w8a16``     W8A16         ``weight_packed`` I32 ``[out, in/4]``, ``weight_scale``
                            ``[out, in/group]``, ``weight_shape`` I64 ``[2]``
``w4a16``     W4A16         ``weight_packed`` I32 ``[out, in/8]``, the same two others
============  ============  ==================================================================

Scales are in the weight's own dtype (F32, F16, BF16 or F64). The arithmetic is the
reference's, step by step, in the weight's dtype:

1. ``absmax = max(|min(x.min, 0)|, |max(x.max, 0)|)`` over each row / block / group
   (compressed_tensors/quantization/utils/helpers.py:71-81, calculate_qparams);
2. ``scale = absmax / (range / 2)``: 448 for FP8, 127.5 for INT8 (range 255), 7.5 for INT4
   (range 15) (helpers.py:87); a zero scale becomes ``finfo(dtype).eps`` (helpers.py:116-127,
   375-383);
3. ``x / scale``, clamped to ``[q_min, q_max]`` (FP8 +-448, INT8 [-128, 127], INT4 [-8, 7]),
   then cast to FP8 (round to nearest even) or rounded half to even for the integers
   (compressed_tensors/quantization/lifecycle/forward_helpers.py:530 and quant_args.py:449-458);
4. integers are offset to unsigned (+128 / +8) and packed little end first along the row, 32
   bits a word (compressors/pack_quantized/helpers.py, pack_to_int32).

BF16 and FP16 arithmetic is torch's on the CPU: each operation in float32, its result rounded
once to the weight's dtype; quantkit does the same with float32 numpy and ``ml_dtypes``.
Float64 weights are cast to FP8 through float32, as torch casts them.

Special values. A zero row / block / group gets scale ``eps`` and zero codes. An infinite
weight makes its group's scale infinite: its finite values store 0, the infinity itself NaN
(FP8) or 0 (integers). A NaN makes its group's scale NaN and every FP8 code in it NaN; integer
codes of such a group are 0 (torch casts NaN to int8 as 0 on the CPU). FP8 codes never
overflow: the quotient is clamped to +-448, FP8's largest finite value, before the cast.

NaN bit patterns: the reference's depend on where a row lies in torch's SIMD loops (rows in a
vectorized body get NaN scales with all bits set and FP8 codes 0xFF, a scalar tail the
canonical quiet NaN and 0x7F, and block scales other patterns again), so they change with the
CPU's vector width and the tensor's shape. quantkit writes the canonical quiet NaN for every
NaN scale and 0x7F for every NaN FP8 code: the NaN *positions* are the reference's, bit for
bit everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..dtypes import BY_ST, DType, dtype_of
from ..errors import InputError, UsageError
from .compressed_arith import FP8_MAX, absmax, divide, encode_fp8, round_to, scale_from_absmax, times_scale, widen

SCHEMES = ("fp8", "fp8-block", "w8a16", "w4a16")
PRESETS = {"fp8": "FP8_DYNAMIC", "fp8-block": "FP8_BLOCK", "w8a16": "W8A16", "w4a16": "W4A16"}
DEFAULT_GROUP_SIZE = 128
FP8_BLOCK = 128  # FP8_BLOCK's block_structure [128, 128]
_INT_BITS = {"w8a16": 8, "w4a16": 4}
_SCALE_DTYPES = ("F32", "F16", "BF16", "F64")
_FP8_NAN = np.uint8(0x7F)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor a scheme stores for a weight: its name relative to the module, dtype, shape."""

    suffix: str  # "weight", "weight_scale", "weight_packed" or "weight_shape"
    dtype: DType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def stored_tensors(
    shape: tuple[int, ...], dtype: object, scheme: str, *, group_size: int = DEFAULT_GROUP_SIZE, name: str = "weight"
) -> list[StoredTensor]:
    """The tensors ``scheme`` stores for a weight of this shape and dtype, from the spec alone.

    Args:
        shape: the weight's shape, ``[out, in]``.
        dtype: its dtype (a ``DType``, torch or numpy dtype, or a name such as ``"BF16"``).
        scheme: one of ``SCHEMES``.
        group_size: elements per scale along the input dimension (``w8a16`` / ``w4a16``).
        name: the weight's name, for error messages.

    Returns:
        The stored tensors in the order the quantizer returns them.

    Raises:
        UsageError: unknown scheme, or a group size that does not divide the input dimension.
        InputError: a weight that is not a non-empty 2-D floating-point tensor.

    Example:
        >>> [(t.suffix, t.dtype.st, t.shape) for t in stored_tensors((256, 512), "BF16", "w4a16")]
        [('weight_packed', 'I32', (256, 64)), ('weight_scale', 'BF16', (256, 4)), ('weight_shape', 'I64', (2,))]
    """
    out, cols, scale_dtype = _check_weight(shape, dtype, scheme, group_size, name)
    if scheme == "fp8":
        return [StoredTensor("weight", BY_ST["F8_E4M3"], (out, cols)), StoredTensor("weight_scale", scale_dtype, (out, 1))]
    if scheme == "fp8-block":
        blocks = (-(-out // FP8_BLOCK), -(-cols // FP8_BLOCK))
        return [StoredTensor("weight", BY_ST["F8_E4M3"], (out, cols)), StoredTensor("weight_scale", scale_dtype, blocks)]
    bits = _INT_BITS[scheme]
    return [
        StoredTensor("weight_packed", BY_ST["I32"], (out, -(-cols * bits // 32))),
        StoredTensor("weight_scale", scale_dtype, (out, cols // group_size)),
        StoredTensor("weight_shape", BY_ST["I64"], (2,)),
    ]


def quantize(weight: np.ndarray, scheme: str, *, group_size: int = DEFAULT_GROUP_SIZE, name: str = "weight") -> dict[str, np.ndarray]:
    """Quantize one Linear weight ``[out, in]`` into the tensors ``scheme`` stores.

    Args:
        weight: a 2-D float32, float16, float64 or ``ml_dtypes.bfloat16`` array.
        scheme: one of ``SCHEMES``.
        group_size: elements per scale along the input dimension (``w8a16`` / ``w4a16``).
        name: the weight's name, for error messages.

    Returns:
        ``{suffix: array}``, as ``stored_tensors`` lists them (same order, dtypes, shapes).

    Example:
        >>> w = np.arange(-64, 64, dtype=np.float32).reshape(1, 128)
        >>> q = quantize(w, "fp8")
        >>> q["weight_scale"]
        array([[0.14285715]], dtype=float32)
    """
    weight = np.asarray(weight)
    _check_weight(weight.shape, weight.dtype, scheme, group_size, name)
    weight = np.ascontiguousarray(weight)
    from ..kernels import ct as ct_kernels  # numba: imported by the schemes that run it, when they do

    fused = ct_kernels.quantize(weight, scheme, group_size=group_size, block=FP8_BLOCK)
    if fused is not None:  # the same bytes as the numpy reference below (tests/kernels/test_ct_kernel.py)
        return fused[0]
    if scheme == "fp8":
        return quantize_fp8_channel(weight)
    if scheme == "fp8-block":
        return quantize_fp8_block(weight)
    return quantize_int_group(weight, bits=_INT_BITS[scheme], group_size=group_size)


def dequantize(stored: Mapping[str, np.ndarray], scheme: str, *, name: str = "weight") -> np.ndarray:
    """The weight back from the tensors ``quantize`` returned (``{suffix: array}``).

    The result is in the scale's dtype (the original weight's dtype), computed as
    compressed-tensors' ``dequantize`` does it: ``q.to(scale.dtype) * scale``, one rounding
    to that dtype (forward_helpers.py:554-559). The group size is read from the shapes.
    """
    if scheme not in SCHEMES:
        raise UsageError(f"{name}: unknown compressed-tensors scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    _check_stored(stored, scheme, name)
    if scheme == "fp8":
        return dequantize_fp8(stored["weight"], stored["weight_scale"])
    if scheme == "fp8-block":
        return dequantize_fp8(stored["weight"], stored["weight_scale"], block=FP8_BLOCK)
    return dequantize_int_group(stored["weight_packed"], stored["weight_scale"], stored["weight_shape"], bits=_INT_BITS[scheme], name=name)


def _check_stored(stored: Mapping[str, np.ndarray], scheme: str, name: str) -> None:
    """The stored tensors are those ``quantize`` writes for some weight: names, dtypes, shapes."""
    missing = [t for t in _suffixes(scheme) if t not in stored]
    if missing:
        raise InputError(f"{name}: stored {scheme} tensors lack {', '.join(missing)}; the checkpoint is incomplete")
    scale = np.asarray(stored["weight_scale"])
    if scheme.startswith("fp8"):
        shape, group_size = np.shape(stored["weight"]), DEFAULT_GROUP_SIZE
    else:
        shape = tuple(int(v) for v in np.asarray(stored["weight_shape"]).reshape(-1))
        groups = scale.shape[-1] if scale.ndim == 2 and scale.shape[-1] else 1
        group_size = shape[-1] // groups if len(shape) == 2 and shape[-1] >= groups else DEFAULT_GROUP_SIZE
    try:
        expected = stored_tensors(shape, scale.dtype, scheme, group_size=group_size, name=name)
    except (InputError, UsageError) as error:
        raise InputError(f"{error}; the stored tensors do not describe a {scheme} weight") from None
    for spec in expected:
        array = np.asarray(stored[spec.suffix])
        if (array.dtype, array.shape) != (spec.dtype.numpy, spec.shape):
            raise InputError(
                f"{name}: stored {spec.suffix} is {array.dtype} {list(array.shape)}, "
                f"a {scheme} weight of shape {list(shape)} stores {spec.dtype.numpy} {list(spec.shape)}; the checkpoint is damaged"
            )


# -- FP8 -------------------------------------------------------------------------------------


def quantize_fp8_channel(weight: np.ndarray) -> dict[str, np.ndarray]:
    """FP8_DYNAMIC's weights: one scale per output row (``weight_scale`` ``[out, 1]``)."""
    wide = widen(weight)
    scale = scale_from_absmax(absmax(wide, axis=1), FP8_MAX, weight.dtype)
    codes = _fp8_codes(wide, widen(scale)[:, None], weight.dtype)
    return {"weight": codes, "weight_scale": scale[:, None]}


def quantize_fp8_block(weight: np.ndarray, *, block: int = FP8_BLOCK) -> dict[str, np.ndarray]:
    """FP8_BLOCK's weights: one scale per ``block x block`` tile. Ragged edge tiles are scaled
    from the values they hold: the reference zero-pads the weight to whole tiles
    (helpers.py:412-440), and zeros cannot change a symmetric absmax."""
    rows, cols = weight.shape
    starts = np.arange(0, cols, block)
    wide = widen(weight)
    tile_absmax = np.empty((len(range(0, rows, block)), len(starts)), dtype=wide.dtype)
    for i, r in enumerate(range(0, rows, block)):
        tile_absmax[i] = np.maximum.reduceat(absmax(wide[r : r + block], axis=0), starts)
    scale = scale_from_absmax(tile_absmax, FP8_MAX, weight.dtype)
    codes = np.empty((rows, cols), dtype=ml_dtypes.float8_e4m3fn)
    wide_scale = widen(scale)
    for i, r in enumerate(range(0, rows, block)):
        per_column = np.repeat(wide_scale[i], block)[:cols]
        codes[r : r + block] = _fp8_codes(wide[r : r + block], per_column[None, :], weight.dtype)
    return {"weight": codes, "weight_scale": scale}


def dequantize_fp8(codes: np.ndarray, scale: np.ndarray, *, block: int | None = None) -> np.ndarray:
    """FP8 codes times their scales (per row, or per ``block x block`` tile), in the scale's dtype."""
    if block is not None:
        rows, cols = codes.shape
        scale = np.repeat(np.repeat(scale, block, axis=0), block, axis=1)[:rows, :cols]
    return times_scale(codes.astype(np.float32), scale)


def _fp8_codes(wide: np.ndarray, wide_scale: np.ndarray, dtype: np.dtype) -> np.ndarray:
    q = divide(wide, wide_scale)
    # The reference clamps x / scale (in the weight's dtype) to +-448, then casts. Clamping the
    # float32 quotient before its rounding to BF16 / FP16 gives the same values: rounding is
    # monotonic and 448 is exact in both.
    np.clip(q, -FP8_MAX, FP8_MAX, out=q)
    if dtype == np.float64:  # torch casts float64 to FP8 through float32
        q = q.astype(np.float32)
    elif dtype == ml_dtypes.bfloat16:
        q = q.astype(dtype)
    elif dtype == np.float16:
        q = round_to(q, dtype)
    codes = encode_fp8(q)
    if not np.isfinite(wide_scale).all():  # NaN codes only come from a NaN or infinite scale
        codes.view(np.uint8)[np.isnan(q)] = _FP8_NAN
    return codes


# -- INT8 / INT4 -----------------------------------------------------------------------------


def quantize_int_group(weight: np.ndarray, *, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> dict[str, np.ndarray]:
    """W8A16 / W4A16 weights: symmetric integers, one scale per ``group_size`` inputs, packed
    into int32 (``weight_packed``), with ``weight_scale`` and ``weight_shape``."""
    rows, cols = weight.shape
    q_min, q_max = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    wide = widen(weight).reshape(rows, cols // group_size, group_size)
    scale = scale_from_absmax(absmax(wide, axis=2), (q_max - q_min) / 2, weight.dtype)
    q = divide(wide, widen(scale)[:, :, None])
    np.clip(q, q_min, q_max, out=q)  # before the rounding, as the reference clamps then rounds
    q = round_to(q, weight.dtype)
    np.rint(q, out=q)
    with np.errstate(invalid="ignore"):
        codes = q.astype(np.int8)
    bad = ~np.isfinite(scale)
    if bad.any():
        # A NaN or infinite scale makes every x / scale in its group 0 or NaN; torch casts
        # NaN to int8 as 0 on the CPU, so the whole group stores 0.
        codes[bad] = 0
    return {
        "weight_packed": pack_int32(codes.reshape(rows, cols), bits),
        "weight_scale": scale,
        "weight_shape": np.array([rows, cols], dtype=np.int64),
    }


def dequantize_int_group(packed: np.ndarray, scale: np.ndarray, shape: np.ndarray, *, bits: int, name: str = "weight") -> np.ndarray:
    """Unpack ``weight_packed`` and multiply each group by its scale, in the scale's dtype."""
    rows, cols = (int(v) for v in np.asarray(shape).reshape(-1)[:2])
    if scale.ndim != 2 or scale.shape[0] != rows or scale.shape[1] == 0 or cols % scale.shape[1]:
        raise InputError(f"{name}: weight_scale shape {list(scale.shape)} does not fit weight_shape [{rows}, {cols}]")
    codes = unpack_int32(packed, bits, cols).astype(np.float32)
    groups = scale.shape[1]
    return times_scale(codes.reshape(rows, groups, cols // groups), scale[:, :, None]).reshape(rows, cols)


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed ``bits``-bit integers (int8 ``[rows, cols]``) into int32 words, as
    compressed-tensors' ``pack_to_int32`` does: offset by ``2**(bits-1)`` to unsigned, element
    ``k`` of every 32 at bit ``k*bits``; a ragged row end is padded with zero bits."""
    rows, cols = codes.shape
    per_word = 32 // bits
    words = -(-cols * bits // 32)
    unsigned = np.zeros((rows, words * per_word), dtype=np.uint8)
    np.add(codes.view(np.uint8), np.uint8(1 << (bits - 1)), out=unsigned[:, :cols], casting="unsafe")
    if bits == 4:
        unsigned = unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)
    elif bits != 8:
        raise UsageError(f"packing {bits}-bit integers is not supported; quantkit packs 4 and 8 bits")
    return np.ascontiguousarray(unsigned).view("<i4").astype(np.int32, copy=False)


def unpack_int32(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """The int8 values ``pack_int32`` packed (the first ``cols`` of each row)."""
    raw = np.ascontiguousarray(packed.astype("<i4", copy=False)).view(np.uint8)
    if bits == 4:
        raw = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(raw.shape[0], -1)
    return (raw[:, :cols].astype(np.int16) - (1 << (bits - 1))).astype(np.int8)


def _suffixes(scheme: str) -> tuple[str, ...]:
    return ("weight", "weight_scale") if scheme.startswith("fp8") else ("weight_packed", "weight_scale", "weight_shape")


def _check_weight(shape: tuple[int, ...], dtype: object, scheme: str, group_size: int, name: str) -> tuple[int, int, DType]:
    if scheme not in SCHEMES:
        raise UsageError(f"{name}: unknown compressed-tensors scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    try:
        scale_dtype = dtype_of(dtype)
    except ValueError:
        scale_dtype = None
    if scale_dtype is None or scale_dtype.st not in _SCALE_DTYPES:
        raise InputError(f"{name}: {scheme} quantizes float32, float16, bfloat16 or float64 weights, not {dtype}; keep this tensor (--skip) or cast it first")
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"{name}: {scheme} quantizes non-empty 2-D Linear weights [out, in], not shape {list(shape)}; leave it out with --skip")
    out, cols = (int(v) for v in shape)
    if scheme in _INT_BITS:
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
            raise UsageError(f"{name}: group size must be a positive integer, not {group_size!r}")
        if cols % group_size:
            raise UsageError(
                f"{name}: {scheme} group size {group_size} does not divide the input dimension {cols} "
                f"(llm-compressor refuses it too); pick a group size that divides {cols}, or --skip this tensor"
            )
    return out, cols, scale_dtype
