"""compressed-tensors: ``fp8``, ``fp8-block``, ``w8a16``, ``w4a16``, stored as llm-compressor's
``model_free_ptq`` stores them, with the ``quantization_config`` vLLM, SGLang and transformers read.

This module declares the schemes; the kernels are in ``compressed`` (numpy reference, and the
fused numba kernels of ``quantkit.kernels.ct`` it calls) and the config
builder in ``compressed_config``. The tensors of a Linear ``P`` are listed in ``compressed``.

Only ``Linear`` weights ``[out, in]`` are quantized: transformers' compressed-tensors
integration replaces ``nn.Linear`` modules only, so a quantized GPT-2 ``Conv1D`` weight
(stored ``[in, out]``) would not load; quantkit keeps Conv1D weights unquantized in these
formats (``Kept.CONV1D``) and lists them in ``ignore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..dtypes import BY_ST
from ..errors import UsageError
from ..specs import OutSpec
from .base import QuantScheme, SchemeSettings, StoredWeight
from . import compressed
from .compressed_config import ConfigGroup, quantization_config

FAMILY = "compressed-tensors"


def to_numpy(tensor):
    """A CPU torch tensor as a numpy array of the same bytes (BF16 / FP8 through ml_dtypes)."""
    import ml_dtypes
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if tensor.dtype == torch.float8_e4m3fn:
        return tensor.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    return tensor.numpy()


def to_torch(array):
    """A numpy array as a torch tensor of the same bytes."""
    import ml_dtypes
    import numpy as np
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    if array.dtype == ml_dtypes.float8_e4m3fn:
        return torch.from_numpy(array.view(np.uint8)).view(torch.float8_e4m3fn)
    return torch.from_numpy(array)


@dataclass(frozen=True)
class CompressedTensorsScheme(QuantScheme):
    """One compressed-tensors preset (``compressed.PRESETS``, by its name). ``packs_integers``:
    INT8 / INT4 codes packed in ``weight_packed`` with a ``weight_shape`` (else FP8 in
    ``weight``); ``rows_per_scale``: the rows one scale spans (FP8_BLOCK's 128-row tiles)."""

    packs_integers: bool = False
    rows_per_scale: int = 1
    family: ClassVar[str] = FAMILY
    mixes_within_family: ClassVar[bool] = True  # one config group per scheme, "mixed-precision"
    quantizes_arrays: ClassVar[bool] = True
    warms_up: ClassVar[bool] = True
    quantizes_on_device: ClassVar[bool] = False  # numpy kernels on the CPU
    quantizes_transposed: ClassVar[bool] = False  # transformers loads compressed-tensors Linear layers only
    stores_source_nonfinite: ClassVar[bool] = True  # a NaN / inf makes its group's scale NaN / inf, as the reference
    # row chunks: every scale spans whole rows (or tiles of rows), NaN / inf included; no torch for one chunk either
    row_parts: ClassVar[frozenset[str]] = frozenset({"weight", "weight_packed", "weight_scale"})
    chunks_single_chunk: ClassVar[bool] = True
    chunks_nonfinite: ClassVar[bool] = True

    @property
    def uses_settings(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"group_size"}) if self.packs_integers else frozenset()

    def outputs(self, spec, *, transpose=False, settings=SchemeSettings()):
        if transpose:
            raise UsageError(f"{spec.name}: {self.name} stores Linear weights [out, in]; a Conv1D weight is kept unquantized")
        module = spec.name.removesuffix(".weight")
        try:
            stored = compressed.stored_tensors(spec.shape, spec.dtype, self.name, group_size=settings.group_size, name=spec.name)
        except UsageError as error:
            raise UsageError(f"{error}, or give it another scheme: --rule '^{_escape(module)}\\.weight$=bf16'") from None
        return [OutSpec(f"{module}.{t.suffix}", t.dtype, t.shape) for t in stored]

    def quantize_array(self, name, array, *, transpose=False, settings=SchemeSettings()):
        """The fused kernels (``quantkit.kernels.ct``) on a numpy weight; no torch."""
        if transpose:
            raise UsageError(f"{name}: {self.name} stores Linear weights [out, in]; a Conv1D weight is kept unquantized")
        module = name.removesuffix(".weight")
        stored = compressed.quantize(array, self.name, group_size=settings.group_size, name=name)
        return [(f"{module}.{suffix}", value) for suffix, value in stored.items()]

    def row_chunk_multiple(self, spec, settings):
        return self.rows_per_scale

    def quantize_rows(self, name, rows, settings):
        return compressed.quantize(rows, self.name, group_size=settings.group_size, name=name)

    def stored_from_rows(self, spec, arrays, settings):
        import numpy as np

        module = spec.name.removesuffix(".weight")
        shape = {"weight_shape": np.array(spec.shape, dtype=np.int64)} if "weight_shape" in arrays else {}  # the whole weight's
        return [(f"{module}.{suffix}", shape.get(suffix, array)) for suffix, array in arrays.items()]

    def arrays_finite(self, stored):
        """The scales alone (by full name or by suffix): FP8 codes are NaN only where their scale is not finite."""
        from ..kernels.finite import all_finite

        return all(all_finite(a) for n, a in stored if n.endswith("weight_scale"))

    def quantize(self, name, tensor, *, transpose=False, settings=SchemeSettings()):
        module = name.removesuffix(".weight")
        stored = compressed.quantize(to_numpy(tensor), self.name, group_size=settings.group_size, name=name)
        return [(f"{module}.{suffix}", to_torch(array)) for suffix, array in stored.items()]

    def stored_weights(self, specs):
        found = {}
        for name, spec in specs.items():
            if not name.endswith(".weight_scale") or len(spec.shape) != 2:
                continue
            module = name.removesuffix(".weight_scale")
            if _stored_scheme(module, specs) == self.name:
                parts = (f"{module}.weight_packed", name, f"{module}.weight_shape") if self.packs_integers else (f"{module}.weight", name)
                found[f"{module}.weight"] = StoredWeight(self.name, f"{module}.weight", parts)
        return found

    def dequantize(self, stored, parts):
        import numpy as np

        arrays = {p.rpartition(".")[2]: to_numpy(t) for p, t in parts.items()}
        scheme = self.name
        if self.packs_integers:  # the stored shape tells the bits exactly (the specs alone cannot)
            cols = int(np.asarray(arrays["weight_shape"]).reshape(-1)[-1]) if arrays["weight_shape"].size == 2 else 0
            packed_cols = arrays["weight_packed"].shape[-1]
            scheme = "w4a16" if cols and -(-cols // 8) == packed_cols and -(-cols // 4) != packed_cols else "w8a16"
        return to_torch(compressed.dequantize(arrays, scheme, name=stored.weight))

    def logical_numel(self, stored, specs):
        first = specs[stored.parts[0]]
        if not self.packs_integers:
            return first.numel
        return first.shape[0] * first.shape[1] * (32 // compressed._INT_BITS[self.name])

    def update_hf_config(self, config, assignment, settings):
        config["quantization_config"] = ct_quantization_config(assignment, settings)


def _escape(text: str) -> str:
    return text.replace(".", "\\.")


def _stored_scheme(module: str, specs) -> str | None:
    """Which of the four schemes stored ``module``'s weight, from the specs alone.

    FP8 per channel stores a scale ``[out, 1]``, in blocks ``[ceil(out/128), ceil(in/128)]``
    (per channel wins where both fit: a single row of at most 128 columns, the same values).
    Packed integers: a ``[out, in/8]`` word array is INT4 and ``[out, in/4]`` INT8, but ``in``
    is in ``weight_shape``'s values, not its spec; the group count settles it where one
    reading gives the default group size of 128, else INT4 is assumed for the label (the
    values are always dequantized with the bits ``weight_shape`` implies)."""
    scale = specs[f"{module}.weight_scale"]
    weight, packed = specs.get(f"{module}.weight"), specs.get(f"{module}.weight_packed")
    if weight is not None and weight.dtype == BY_ST["F8_E4M3"] and len(weight.shape) == 2:
        out, cols = weight.shape
        if scale.shape == (out, 1):
            return "fp8"
        if scale.shape == (-(-out // compressed.FP8_BLOCK), -(-cols // compressed.FP8_BLOCK)):
            return "fp8-block"
        return None
    shape = specs.get(f"{module}.weight_shape")
    if packed is None or shape is None or packed.dtype != BY_ST["I32"] or len(packed.shape) != 2 or shape.shape != (2,):
        return None
    groups = scale.shape[1] or 1
    if packed.shape[1] * 4 == groups * compressed.DEFAULT_GROUP_SIZE:
        return "w8a16"
    return "w4a16"


def ct_quantization_config(assignment, settings: SchemeSettings) -> dict:
    """``quantization_config`` for an assignment: one config group per compressed-tensors
    scheme used; a single scheme targets ``Linear``, several target their modules by name
    (disjoint targets, so the groups' order does not matter: the reference sorts them);
    ``ignore`` lists every other 2-D weight's module."""
    by_scheme: dict[str, list[str]] = {}
    for name, scheme in assignment.schemes.items():
        if scheme in compressed.SCHEMES:
            by_scheme.setdefault(scheme, []).append(name.removesuffix(".weight"))
    single = len(by_scheme) == 1
    groups = [
        ConfigGroup(s, targets=("Linear",) if single else tuple(sorted(modules)), group_size=settings.group_size)
        for s, modules in sorted(by_scheme.items(), key=lambda kv: compressed.SCHEMES.index(kv[0]))
    ]
    return quantization_config(groups, ignore=list(assignment.ignore))


FP8 = CompressedTensorsScheme("fp8", "compressed-tensors FP8_DYNAMIC: FP8 E4M3 per output channel (vLLM, SGLang)")
FP8_BLOCK = CompressedTensorsScheme("fp8-block", "compressed-tensors FP8_BLOCK: FP8 E4M3 in 128x128 blocks", rows_per_scale=compressed.FP8_BLOCK)
W8A16 = CompressedTensorsScheme("w8a16", "compressed-tensors W8A16: int8 weights in groups of --group-size", packs_integers=True)
W4A16 = CompressedTensorsScheme("w4a16", "compressed-tensors W4A16: int4 weights in groups of --group-size", packs_integers=True)
