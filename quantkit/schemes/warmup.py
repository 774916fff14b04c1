"""A quantizing scheme's CPU kernels loaded before the first weight needs them.

Where the kernels are built ahead of time (``quantkit.kernels.build``, run by ``make
setup``), their first call costs about a millisecond and this is nearly free. Where numba's
JIT runs them, a CPU quantizer's first call in a process imports numba and loads its
compiled kernels from numba's cache: 0.6-1.1 s on the development machine (the import
0.3-0.8 s, the first call of a kernel 0.3 s), during which every converter worker that
reaches a weight waits. ``warming`` makes those first calls on a thread of its own, on a tiny
seeded weight of each kind the conversion will meet (scheme, dtype, stored transposed or
not, row chunks or whole), while the converter plans, opens its output and copies the
tensors that come before the first quantized one. The tiny weight is built as the readers
build theirs (bytes viewed as the dtype, C order, writable), so that numba dispatches to the
same compiled specialisation. Nothing here changes a byte of output; a failure here is
ignored (the conversion meets and reports it itself).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..dtypes import DType
from ..specs import TensorSpec
from .base import QuantScheme, SchemeSettings
from .rowchunks import floats_finite, quantize_in_chunks, rows_multiple

_COLS = 256  # a multiple of every block, group and tile width the schemes use


@dataclass(frozen=True)
class Kind:
    """One way a weight reaches a quantizer: ``chunked`` through ``quantize_in_chunks``, else
    whole through ``quantize_array``."""

    scheme: QuantScheme
    dtype: DType
    transpose: bool
    chunked: bool


@contextmanager
def warming(kinds: Iterable[Kind], settings: SchemeSettings) -> Iterator[None]:
    """Run ``warm_up`` for ``kinds`` on a daemon thread during the block. A block that ends
    normally waits for it (nothing then runs on after ``convert`` returns; its kernels were
    needed anyway); one left by an error or an interrupt does not (on a machine without
    numba's cache the thread may still be compiling, for seconds)."""
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        yield
        return
    thread = threading.Thread(target=_warm_all, args=(kinds, settings), name="quantkit-warm-up", daemon=True)
    thread.start()
    yield
    thread.join()


def _warm_all(kinds: list[Kind], settings: SchemeSettings) -> None:
    for kind in kinds:
        try:
            warm_up(kind, settings)
        except Exception:  # noqa: BLE001 - only a head start: the conversion itself reports any failure
            pass


def warm_up(kind: Kind, settings: SchemeSettings) -> list[tuple[str, object]]:
    """Quantize ``kind``'s tiny weight the way ``kind`` says; returns what was stored."""
    spec, data, step = tiny_weight(kind, settings)
    if step is not None:
        row_bytes = spec.shape[1] * spec.dtype.itemsize

        def read_rows(first: int, count: int, buffer: np.ndarray) -> np.ndarray:
            rows = buffer[: count * row_bytes]
            rows[:] = data[first * row_bytes : (first + count) * row_bytes]
            return rows.view(spec.dtype.numpy).reshape(count, spec.shape[1])

        stored, _ = quantize_in_chunks(kind.scheme, spec, read_rows, step, settings=settings)
    else:
        weight = data.view(spec.dtype.numpy).reshape(spec.shape)
        stored = kind.scheme.quantize_array(spec.name, weight, transpose=kind.transpose, settings=settings)
    floats_finite(stored)
    return stored


def tiny_weight(kind: Kind, settings: SchemeSettings) -> tuple[TensorSpec, np.ndarray, int | None]:
    """``kind``'s tiny weight: its spec, its bytes (seeded normal values) and, for a chunked
    kind, the rows per chunk (two chunks in all)."""
    multiple = rows_multiple(kind.scheme, TensorSpec("warm-up.weight", kind.dtype, (1024, _COLS)), settings) if kind.chunked else None
    spec = TensorSpec("warm-up.weight", kind.dtype, (2 * multiple if multiple else _COLS, _COLS))
    values = np.random.default_rng(0).standard_normal(spec.numel, dtype=np.float32).astype(kind.dtype.numpy)
    return spec, values.view(np.uint8), multiple  # bytes, as a reader's buffer holds them
