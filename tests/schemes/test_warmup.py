"""The kernels' warm-up: every kind of weight a conversion meets is quantized once on a tiny
weight, through the path the converter takes, on a thread joined before ``convert`` returns;
it changes no byte of the output and a failure in it fails nothing."""

from __future__ import annotations

import hashlib
import sys
import threading

import ml_dtypes
import numpy as np
import pytest

from quantkit.convert import ConvertOptions, convert
from quantkit.dtypes import dtype_of
from quantkit.schemes import SCHEMES, SchemeSettings
from quantkit.schemes import warmup
from quantkit.schemes.warmup import Kind, tiny_weight, warm_up
from test_rowchunks import _llama_folder

NUMPY = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
CPU_SCHEMES = ["int8", "nf4", "fp4", "fp8", "fp8-block", "w8a16", "w4a16"]
converting = sys.modules["quantkit.convert"]  # the package exports the function under the same name


def _bytes(stored) -> list[tuple[str, bytes]]:
    return [(name, np.ascontiguousarray(array).tobytes()) for name, array in stored]


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
@pytest.mark.parametrize("dtype", list(NUMPY))
@pytest.mark.parametrize("chunked", [True, False])
def test_warm_up_quantizes_a_valid_weight_as_the_converter_would(scheme, dtype, chunked):
    kind = Kind(SCHEMES[scheme], dtype_of(np.dtype(NUMPY[dtype])), False, chunked)
    spec, data, step = tiny_weight(kind, SchemeSettings())
    assert (step is not None) == chunked and (step is None or spec.shape[0] == 2 * step)  # two chunks when chunked
    whole = SCHEMES[scheme].quantize_array(spec.name, data.view(NUMPY[dtype]).reshape(spec.shape), settings=SchemeSettings())
    assert _bytes(warm_up(kind, SchemeSettings())) == _bytes(whole)


@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_warm_up_of_a_transposed_weight(scheme):
    kind = Kind(SCHEMES[scheme], dtype_of(np.dtype(np.float32)), True, False)
    spec, data, _ = tiny_weight(kind, SchemeSettings())
    expected = SCHEMES[scheme].quantize_array(spec.name, data.view(np.float32).reshape(spec.shape), transpose=True, settings=SchemeSettings())
    assert _bytes(warm_up(kind, SchemeSettings())) == _bytes(expected)


@pytest.mark.parametrize("scheme,chunked", [("nf4", False), ("int8", False), ("fp8", True), ("w4a16", True)])
def test_convert_warms_the_kinds_it_meets_and_writes_the_same_bytes(tmp_path, monkeypatch, scheme, chunked):
    src = _llama_folder(tmp_path, nan=False)
    warmed, threads = [], []
    real = warmup._warm_all
    monkeypatch.setattr(warmup, "_warm_all", lambda kinds, settings: (warmed.append(kinds), threads.append(threading.current_thread()), real(kinds, settings)))
    result = convert(src, tmp_path / "warm", options=ConvertOptions(scheme))
    # float32 weights and one bfloat16 (down_proj), all [out, in]; bitsandbytes quantizes these small ones whole
    assert warmed == [[Kind(SCHEMES[scheme], dtype_of(np.dtype(d)), False, chunked) for d in (np.float32, ml_dtypes.bfloat16)]]
    assert threads[0] is not threading.current_thread() and not threads[0].is_alive()
    monkeypatch.setattr(converting._Converter, "kernel_kinds", lambda self: [])
    cold = convert(src, tmp_path / "cold", options=ConvertOptions(scheme))
    assert len(warmed) == 1
    files = [sorted(p.name for p in r.write.folder.iterdir()) for r in (result, cold)]
    assert files[0] == files[1]
    for name in files[0]:
        assert hashlib.sha256((result.write.folder / name).read_bytes()).digest() == hashlib.sha256((cold.write.folder / name).read_bytes()).digest(), name


def test_a_failing_warm_up_fails_nothing(tmp_path, monkeypatch):
    def fail(kind, settings):
        raise RuntimeError("no kernels here")

    monkeypatch.setattr(warmup, "warm_up", fail)
    result = convert(_llama_folder(tmp_path, nan=False), tmp_path / "out", options=ConvertOptions("nf4"))
    assert result.quantized


def test_no_warm_up_for_casts_or_off_the_cpu(tmp_path):
    src = _llama_folder(tmp_path, nan=False)
    from quantkit.assign import assign
    from quantkit.sources import open_checkpoint

    with open_checkpoint(src) as source:
        for scheme, device, expected in (("bf16", "cpu", 0), ("nf4", "cuda", 0), ("nf4", "cpu", 6)):  # 6 Linear weights (the output head is kept)
            options = ConvertOptions(scheme)
            converter = converting._Converter(source, assign(source, options), options.settings, device)
            assert len(converter.kernel_kinds()) == expected, (scheme, device)


def test_an_error_or_interrupt_does_not_wait_for_the_warm_up(monkeypatch):
    release, started = threading.Event(), threading.Event()
    monkeypatch.setattr(warmup, "_warm_all", lambda kinds, settings: (started.set(), release.wait(30)))
    kind = Kind(SCHEMES["nf4"], dtype_of(np.dtype(np.float32)), False, False)
    try:
        for error in (RuntimeError("failed"), KeyboardInterrupt()):
            with pytest.raises(type(error)):
                with warmup.warming([kind], SchemeSettings()):
                    assert started.wait(5)
                    raise error
            assert any(t.name == "quantkit-warm-up" and t.is_alive() for t in threading.enumerate())  # left running
    finally:
        release.set()
    for thread in threading.enumerate():
        if thread.name == "quantkit-warm-up":
            thread.join(5)
    with warmup.warming([kind], SchemeSettings()):
        assert started.wait(5)
    assert not any(t.name == "quantkit-warm-up" and t.is_alive() for t in threading.enumerate())  # joined
