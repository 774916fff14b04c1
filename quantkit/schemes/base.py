"""What every scheme is: a frozen declaration the converter, the readers and the reports ask.

A scheme turns one tensor into the tensors it stores, known from the tensor's spec alone
(``outputs``), and back (``dequantize``). Casts (``CastScheme``) are element-wise and written
in chunks by the pipeline; quantizers (``QuantScheme``) take one whole tensor at a time and
recognize their own stored tensors when a checkpoint is read back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..dtypes import DType
from ..specs import OutSpec, TensorSpec

if TYPE_CHECKING:
    import torch

    from ..selection import Assignment


@dataclass(frozen=True)
class SchemeSettings:
    """The settings a quantizer may use (each scheme reads those it knows)."""

    blocksize: int = 64
    double_quant: bool = False
    group_size: int = 128  # compressed-tensors w8a16 / w4a16: values per scale along the input


@dataclass(frozen=True)
class StoredWeight:
    """One original weight as a quantizer stored it: several tensors behind one name."""

    scheme: str  # the registry name of the scheme that wrote it
    weight: str  # the original weight's name
    parts: tuple[str, ...]  # stored names, the weight's first


@dataclass(frozen=True)
class Scheme(ABC):
    """A conversion target. ``family``: the stored format it belongs to; schemes of a family
    that cannot express mixes (bitsandbytes: one method per model) are not mixed in one output."""

    name: str
    summary: str  # one line for --help
    family: ClassVar[str]
    quantizes: ClassVar[bool]
    mixes_within_family: ClassVar[bool] = True
    # the SchemeSettings fields it reads: the CLI warns when another one is given
    uses_settings: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def outputs(self, spec: TensorSpec, *, transpose: bool = False, settings: SchemeSettings = SchemeSettings()) -> list[OutSpec]:
        """The tensors ``spec`` becomes, from the spec alone."""

    def update_hf_config(self, config: dict, assignment: Assignment, settings: SchemeSettings) -> None:
        """Record the conversion in a copied ``config.json`` (a dict) as transformers would."""


@dataclass(frozen=True)
class CastScheme(Scheme):
    """An element-wise cast of every floating-point tensor, written in chunks."""

    dtype: DType = None  # type: ignore[assignment]
    config_dtype: str = ""  # its name in config.json
    family: ClassVar[str] = "cast"
    quantizes: ClassVar[bool] = False

    def outputs(self, spec, *, transpose=False, settings=SchemeSettings()):
        return [OutSpec(spec.name, self.dtype if spec.dtype.is_floating_point else spec.dtype, spec.shape)]

    def update_hf_config(self, config, assignment, settings):
        for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["dtype"]:
            config[key] = self.config_dtype


@dataclass(frozen=True)
class QuantScheme(Scheme):
    """A quantizer of 2-D linear weights: one whole tensor in, its stored tensors out."""

    quantizes: ClassVar[bool] = True
    # True where ``quantize_array`` runs on numpy arrays without torch (CPU only)
    quantizes_arrays: ClassVar[bool] = False
    # True where the CPU path runs compiled kernels (numba) worth loading ahead (``warmup``)
    warms_up: ClassVar[bool] = False
    # False where ``quantize`` runs numpy kernels on the CPU whatever the device: the weight is not moved
    quantizes_on_device: ClassVar[bool] = True
    # False where a weight stored transposed (GPT-2's Conv1D, [in, out]) is kept unquantized
    quantizes_transposed: ClassVar[bool] = True
    # True where a source's NaN / inf are stored as given (their scale becomes NaN / inf): the
    # source's count is then always taken and reported, not only when a stored float is not finite
    stores_source_nonfinite: ClassVar[bool] = False
    # Row chunks (``rowchunks``), for schemes whose ``row_chunk_multiple`` is not None:
    # the suffixes of ``quantize_rows``' arrays laid out by rows (the others are taken from the first chunk);
    row_parts: ClassVar[frozenset[str]] = frozenset()
    # whether a weight of one chunk is still quantized through the row chunks (numpy, no torch);
    chunks_single_chunk: ClassVar[bool] = False
    # whether a weight holding NaN or inf chunks to the whole weight's bytes (else it is quantized whole).
    chunks_nonfinite: ClassVar[bool] = False

    def row_chunk_multiple(self, spec: TensorSpec, settings: SchemeSettings) -> int | None:
        """Rows a chunk of the 2-D weight ``spec`` must hold a multiple of so that its chunks,
        quantized by ``quantize_rows`` and merged by ``stored_from_rows``, give exactly the
        whole weight's bytes; None (the default) where the scheme is not quantized in chunks."""
        return None

    def quantize_rows(self, name: str, rows, settings: SchemeSettings) -> dict:
        """One chunk of rows (a numpy ``[count, in]`` array) as numpy arrays by suffix; with
        ``chunks_nonfinite`` False, a NaN or inf in ``rows`` must make some stored float not finite."""
        raise NotImplementedError(f"{self.name} is not quantized in row chunks")

    def stored_from_rows(self, spec: TensorSpec, arrays: dict, settings: SchemeSettings) -> list[tuple[str, object]]:
        """The merged chunks' arrays (``quantize_rows``' suffixes, row parts laid end to end) as
        the stored tensors ``quantize_array`` gives for the whole weight, named and ordered alike."""
        raise NotImplementedError(f"{self.name} is not quantized in row chunks")

    def quantize_array(self, name: str, array, *, transpose: bool = False, settings: SchemeSettings = SchemeSettings()) -> list[tuple[str, object]]:
        """``quantize`` on the CPU for a numpy array (bfloat16 as ``ml_dtypes.bfloat16``), e.g. a
        ``read_into`` buffer; the stored tensors as numpy arrays, none a view of ``array``.
        Only schemes with ``quantizes_arrays`` have it."""
        raise NotImplementedError(f"{self.name} quantizes torch tensors only")

    def arrays_finite(self, stored: list[tuple[str, object]]) -> bool:
        """Whether every floating-point array ``quantize_array`` stored (scales, absmax) is
        finite; only then may ``nonfinite_values`` be skipped. A scheme whose stored values
        cannot be non-finite where its scales are finite checks less."""
        import numpy as np

        return all(bool(np.isfinite(a).all()) for _, a in stored if np.asarray(a).dtype.kind == "f")

    @abstractmethod
    def quantize(
        self, name: str, tensor: torch.Tensor, *, transpose: bool = False, settings: SchemeSettings = SchemeSettings()
    ) -> list[tuple[str, torch.Tensor]]:
        """The stored tensors of one weight (of its transpose with ``transpose``), on the CPU."""

    @abstractmethod
    def stored_weights(self, specs: dict[str, TensorSpec]) -> dict[str, StoredWeight]:
        """The weights this scheme stored among ``specs``, keyed by original weight name."""

    @abstractmethod
    def dequantize(self, stored: StoredWeight, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The floating-point weight behind ``stored`` (``parts`` by stored name)."""

    @abstractmethod
    def logical_numel(self, stored: StoredWeight, specs: dict[str, TensorSpec]) -> int:
        """How many values the original weight held, from the stored specs."""

    def nonfinite_values(self, stored: list[tuple[str, torch.Tensor]]) -> int:
        """How many values of one weight, as ``quantize`` stored it, dequantize to NaN or inf.

        A scale that overflowed (INT8 goes through FP16) or a NaN in a block poisons every
        value it scales. Finite stored values dequantize to finite ones in every linear
        scheme, so the weight is only dequantized when some stored float is not finite; a
        scheme where that does not hold overrides this."""
        import torch

        floats = [t for _, t in stored if t.is_floating_point()]
        if all(_all_finite(t) for t in floats):
            return 0
        from ..dtypes import dtype_of

        parts = dict(stored)
        specs = {n: TensorSpec(n, dtype_of(t.dtype), tuple(t.shape)) for n, t in parts.items()}
        found = self.stored_weights(specs)
        return sum(int((~torch.isfinite(self.dequantize(w, parts))).sum()) for w in found.values())


_WIDEN_ELEMENTS = 1 << 22  # float8 values widened at a time (16 MB as float32)


def _all_finite(tensor) -> bool:
    """Whether every value is finite. torch has no isfinite for float8 on the CPU: those are
    widened a slice at a time (a 7B model's FP8 MLP weight widened whole would be 180 MB)."""
    import torch

    if tensor.dtype.itemsize > 1:
        return bool(torch.isfinite(tensor).all())
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + _WIDEN_ELEMENTS].float()).all()) for i in range(0, flat.numel(), _WIDEN_ELEMENTS))
