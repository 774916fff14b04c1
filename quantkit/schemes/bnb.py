"""bitsandbytes: LLM.int8 (``int8``) and blockwise 4-bit (``nf4``, ``fp4``), stored as
transformers stores ``Linear8bitLt`` / ``Linear4bit`` layers.

This module declares the schemes and needs no torch (the byte-level facts they share with
the kernels are in ``bnb_layout``). On the CPU, numpy weights (``quantize_array``) go through
quantkit's fused kernels (``quantkit.kernels``, no torch unless a weight holds NaN); torch
tensors through the torch kernels (``int8``, ``fourbit``, ``fourbit_cpu``), imported when a
tensor is converted.

INT8, for a linear layer ``P``: ``P.weight`` I8 ``[out, in]``, ``P.SCB`` F32 ``[out]``,
``P.weight_format`` U8 scalar. 4-bit: ``P.weight`` U8 ``[ceil(numel/2), 1]`` and under
``P.weight.``: ``absmax``, ``quant_map``, with double quantization ``nested_absmax`` and
``nested_quant_map``, and ``quant_state.bitsandbytes__<type>`` (JSON bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..dtypes import FLOAT32, INT8 as I8, UINT8
from ..specs import OutSpec
from .base import QuantScheme, SchemeSettings, StoredWeight
from .bnb_layout import FOURBIT_PARTS, FOURBIT_STATE, LONGEST_FLOAT, NESTED_BLOCKSIZE, ROW_FORMAT, state_json

@dataclass(frozen=True)
class BitsAndBytesScheme(QuantScheme):
    family: ClassVar[str] = "bitsandbytes"
    quantizes_arrays: ClassVar[bool] = True
    warms_up: ClassVar[bool] = True
    mixes_within_family: ClassVar[bool] = False  # one load_in_8bit / load_in_4bit method per model
    load_in_8bit: ClassVar[bool] = False  # transformers' load_in_8bit, else load_in_4bit

    def update_hf_config(self, config, assignment, settings):
        eight = self.load_in_8bit
        config["quantization_config"] = {
            "_load_in_4bit": not eight,
            "_load_in_8bit": eight,
            "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.name if not eight else "fp4",
            "bnb_4bit_use_double_quant": settings.double_quant and not eight,
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": assignment.kept_modules() or None,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": not eight,
            "load_in_8bit": eight,
            "quant_method": "bitsandbytes",
        }


@dataclass(frozen=True)
class Int8Scheme(BitsAndBytesScheme):
    """LLM.int8 row-wise absmax."""

    load_in_8bit: ClassVar[bool] = True
    row_parts: ClassVar[frozenset[str]] = frozenset({"weight", "SCB"})

    def outputs(self, spec, *, transpose=False, settings=SchemeSettings()):
        rows, cols = (spec.shape[1], spec.shape[0]) if transpose else spec.shape
        p = spec.name.removesuffix(".weight")
        return [OutSpec(f"{p}.weight", I8, (rows, cols)), OutSpec(f"{p}.SCB", FLOAT32, (rows,)), OutSpec(f"{p}.weight_format", UINT8, ())]

    def quantize_array(self, name, array, *, transpose=False, settings=SchemeSettings()):
        from ..kernels import quantize_int8

        codes, scales = quantize_int8(array, transpose=transpose, name=name)
        p = name.removesuffix(".weight")
        return [(f"{p}.weight", codes), (f"{p}.SCB", scales), (f"{p}.weight_format", np.array(ROW_FORMAT, dtype=np.uint8))]

    def row_chunk_multiple(self, spec, settings):
        return 1  # one scale per row

    def quantize_rows(self, name, rows, settings):
        from ..kernels import quantize_int8

        codes, scales = quantize_int8(rows, name=name)
        return {"weight": codes, "SCB": scales}

    def stored_from_rows(self, spec, arrays, settings):
        p = spec.name.removesuffix(".weight")
        return [(f"{p}.weight", arrays["weight"]), (f"{p}.SCB", arrays["SCB"]), (f"{p}.weight_format", np.array(ROW_FORMAT, dtype=np.uint8))]

    def quantize(self, name, tensor, *, transpose=False, settings=SchemeSettings()):
        from .int8 import apply_int8

        return apply_int8(name, tensor, transpose=transpose)

    def stored_weights(self, specs):
        found = {}
        for name in specs:
            p = name.removesuffix(".SCB")
            if name.endswith(".SCB") and specs.get(f"{p}.weight") is not None and specs[f"{p}.weight"].dtype == I8:
                parts = [f"{p}.weight", name] + ([f"{p}.weight_format"] if f"{p}.weight_format" in specs else [])
                found[f"{p}.weight"] = StoredWeight(self.name, f"{p}.weight", tuple(parts))
        return found

    def dequantize(self, stored, parts):
        from .int8 import dequantize_int8

        return dequantize_int8(parts[stored.parts[0]], parts[stored.parts[1]])

    def logical_numel(self, stored, specs):
        return specs[stored.parts[0]].numel


@dataclass(frozen=True)
class FourBitScheme(BitsAndBytesScheme):
    """Blockwise 4-bit with a 16-value code table (NF4 or FP4)."""

    uses_settings: ClassVar[frozenset[str]] = frozenset({"blocksize", "double_quant"})
    row_parts: ClassVar[frozenset[str]] = frozenset({"codes", "absmax"})

    def outputs(self, spec, *, transpose=False, settings=SchemeSettings()):
        """With double quantization the quant state's JSON holds a data-dependent float, so its
        length is declared variable, bounded by the longest a float can print."""
        shape = (spec.shape[1], spec.shape[0]) if transpose else spec.shape
        n_blocks = math.ceil(spec.numel / settings.blocksize)
        w, double = spec.name, settings.double_quant
        outs = [OutSpec(w, UINT8, ((spec.numel + 1) // 2, 1)), OutSpec(f"{w}.quant_map", FLOAT32, (16,))]
        state = state_json(self.name, settings.blocksize, spec.dtype, shape, LONGEST_FLOAT if double else None)
        if double:
            outs += [
                OutSpec(f"{w}.absmax", UINT8, (n_blocks,)),
                OutSpec(f"{w}.nested_absmax", FLOAT32, (math.ceil(n_blocks / NESTED_BLOCKSIZE),)),
                OutSpec(f"{w}.nested_quant_map", FLOAT32, (256,)),
            ]
        else:
            outs.append(OutSpec(f"{w}.absmax", FLOAT32, (n_blocks,)))
        outs.append(OutSpec(f"{w}.quant_state.bitsandbytes__{self.name}", UINT8, (len(state),), variable=double))
        return outs

    def quantize_array(self, name, array, *, transpose=False, settings=SchemeSettings()):
        """The fused kernel's codes and absmax; with double quantization the absmax values are
        quantized again, as bitsandbytes does (``kernels.nested``, no torch)."""
        from ..kernels import quantize_4bit_codes

        packed, absmax = quantize_4bit_codes(array, blocksize=settings.blocksize, quant_type=self.name, transpose=transpose, name=name)
        shape = array.shape[::-1] if transpose else array.shape
        return self.stored_from_codes(name, packed, absmax, shape=shape, dtype_name=array.dtype.name, settings=settings)

    def row_chunk_multiple(self, spec, settings):
        """Rows holding whole blocks of the flattened values (only the last chunk's last block is partial)."""
        return settings.blocksize // math.gcd(spec.shape[1], settings.blocksize)

    def quantize_rows(self, name, rows, settings):
        """Codes and absmax only: double quantization and the quant state need the whole weight's absmax."""
        from ..kernels import quantize_4bit_codes

        packed, absmax = quantize_4bit_codes(rows, blocksize=settings.blocksize, quant_type=self.name, name=name)
        return {"codes": packed, "absmax": absmax}

    def stored_from_rows(self, spec, arrays, settings):
        return self.stored_from_codes(
            spec.name, arrays["codes"], arrays["absmax"], shape=spec.shape, dtype_name=spec.dtype.numpy.name, settings=settings
        )

    def stored_from_codes(self, name, packed, absmax, *, shape, dtype_name, settings):
        """The stored tensors of a weight from its whole codes and absmax (``quantize_array``'s
        last step, also taken after a weight was quantized in row chunks)."""
        from ..kernels import code_table, double_quant

        out = [(name, packed)]
        nested_offset = None
        if settings.double_quant:
            nested_offset, parts = double_quant(absmax)
            out += [(f"{name}.absmax", parts[0]), (f"{name}.quant_map", code_table(self.name))]
            out += [(f"{name}.nested_absmax", parts[1]), (f"{name}.nested_quant_map", parts[2])]
        else:
            out += [(f"{name}.absmax", absmax), (f"{name}.quant_map", code_table(self.name))]
        state = state_json(self.name, settings.blocksize, dtype_name, shape, nested_offset)
        out.append((f"{name}.quant_state.bitsandbytes__{self.name}", np.frombuffer(state, dtype=np.uint8).copy()))
        return out

    def quantize(self, name, tensor, *, transpose=False, settings=SchemeSettings()):
        from .fourbit import apply_fourbit

        return apply_fourbit(
            name, tensor, quant_type=self.name, blocksize=settings.blocksize, double_quant=settings.double_quant, transpose=transpose
        )

    def stored_weights(self, specs):
        found = {}
        for name in specs:
            if (m := FOURBIT_STATE.match(name)) and m["type"] == self.name:
                w = m["weight"]
                parts = [w] + [f"{w}.{k}" for k in FOURBIT_PARTS if f"{w}.{k}" in specs] + [name]
                found[w] = StoredWeight(self.name, w, tuple(parts))
        return found

    def dequantize(self, stored, parts):
        from .fourbit import dequantize_fourbit

        prefix = stored.weight + "."
        unprefixed = {"weight": parts[stored.weight]}
        unprefixed.update({k.removeprefix(prefix): v for k, v in parts.items() if k != stored.weight})
        return dequantize_fourbit(unprefixed)

    def logical_numel(self, stored, specs):
        return specs[stored.parts[0]].shape[0] * 2


INT8 = Int8Scheme("int8", "LLM.int8 row-wise, as transformers' load_in_8bit")
NF4 = FourBitScheme("nf4", "4-bit NormalFloat blockwise, as load_in_4bit")
FP4 = FourBitScheme("fp4", "4-bit float blockwise, as load_in_4bit")
