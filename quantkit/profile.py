"""How much each scheme costs each tensor: ``quantkit profile``, one streamed pass.

For every weight a quantizer takes (convert's own selection policy) and every candidate
scheme, the weight is quantized as convert quantizes it, dequantized through the scheme as
``load_state_dict`` and ``compare`` dequantize it, and measured with ``compare``'s own
``error_moments``: the figures are the ones ``compare`` reports after that conversion. One
tensor (and one candidate's stored tensors) is in memory at a time.

The result is a value (``Profile``) that renders to JSON (``PROFILE_VERSION``) and reads back
(``load_profile``); it records the source's identity so a profile of another checkpoint, or
of this one since changed, is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .dtypes import short_name
from .errors import InputError, UsageError
from .groups import group_of
from .reports.accuracy import layer_of
from .reports.metrics import CHUNK_ELEMENTS, ErrorMoments, error_moments, finite_or_none
from .schemes import QuantScheme, Scheme, SchemeSettings, get_scheme, quantizers
from .selection import Kept, layout_for, select
from .sources import CheckpointSource, opened
from .specs import TensorSpec

PROFILE_VERSION = 2
KEEP = "keep"  # the candidate every decided tensor has: written as stored, exact
CAST = "bf16"  # the narrower "kept": a cast candidate wherever the source is wider (compressed-tensors mixes it)
SETTINGS = ("blocksize", "double_quant", "group_size")  # every setting that changes a scheme's bytes


@dataclass(frozen=True)
class SourceIdentity:
    """Which checkpoint a profile measured: path, tensor bytes and a hash of every tensor's
    name, dtype and shape (in stored order)."""

    path: str
    total_bytes: int
    specs_sha256: str

    @classmethod
    def of(cls, source: CheckpointSource) -> "SourceIdentity":
        lines = "".join(f"{n}\t{short_name(s.dtype)}\t{list(s.shape)}\n" for n, s in source.specs.items())
        return cls(str(source.path), source.total_bytes, hashlib.sha256(lines.encode()).hexdigest())


@dataclass(frozen=True)
class Candidate:
    """One scheme applied to one tensor: the bytes convert writes for it and the error left."""

    scheme: str
    stored_bytes: int
    noise_energy: float  # sum (x - dequantized)^2, float64
    rel_l2: float
    sqnr_db: float  # inf: exact
    max_abs: float
    cosine: float


@dataclass
class TensorProfile:
    """A weight a quantizer may take, and what each candidate scheme does to it."""

    name: str
    shape: list[int]
    dtype: str
    group: str
    layer: str | None
    numel: int
    original_bytes: int
    signal_energy: float  # sum x^2
    transpose: bool
    candidates: dict[str, Candidate]  # by scheme name; "keep" first

    def candidate(self, scheme: str) -> Candidate:
        """The scheme's candidate, or "keep" where the scheme cannot store this weight (a
        Conv1D weight or a non-dividing group size for compressed-tensors: convert keeps it)."""
        return self.candidates.get(scheme) or self.candidates[KEEP]


@dataclass
class Profile:
    """Every decided tensor's candidates, and the tensors convert keeps whatever the choice."""

    source: SourceIdentity
    schemes: list[str]
    settings: dict
    tensors: list[TensorProfile]
    kept_bytes: int  # every tensor not in ``tensors``, as stored
    kept_signal_energy: float  # sum x^2 over the kept floating-point tensors
    kept: dict[str, str] = field(default_factory=dict)  # name -> why convert keeps it
    castable: list[TensorProfile] = field(default_factory=list)  # kept, wider than bf16: candidates keep and bf16
    outputs: dict | None = None  # profile --outputs: each tensor alone, its effect on the model's outputs (profile_outputs)
    elapsed_s: float = 0.0
    version: int = PROFILE_VERSION

    @property
    def total_signal_energy(self) -> float:
        """sum x^2 over every floating-point tensor: the signal of compare's overall SQNR."""
        return self.kept_signal_energy + sum(t.signal_energy for t in self.tensors)

    @property
    def castable_bytes(self) -> int:
        return sum(t.original_bytes for t in self.castable)

    def to_dict(self) -> dict:
        """The documented JSON shape (README, "quantkit profile"); infinities become null."""
        return {
            "profile_version": self.version,
            "source": asdict(self.source),
            "schemes": self.schemes,
            "settings": self.settings,
            "kept_bytes": self.kept_bytes,
            "kept_signal_energy": self.kept_signal_energy,
            "kept": self.kept,
            "elapsed_s": self.elapsed_s,
            "tensors": [_row(t) for t in self.tensors],
            "castable": [_row(t) for t in self.castable],
            "outputs": self.outputs,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        version = data.get("profile_version")
        if version != PROFILE_VERSION:
            raise InputError(f"profile_version {version!r} is not one this quantkit reads ({PROFILE_VERSION}): profile the checkpoint again")
        return cls(
            source=SourceIdentity(**data["source"]), schemes=list(data["schemes"]), settings=dict(data["settings"]),
            tensors=[_tensor(row) for row in data["tensors"]], kept_bytes=int(data["kept_bytes"]),
            kept_signal_energy=float(data["kept_signal_energy"]), kept=dict(data.get("kept", {})),
            castable=[_tensor(row) for row in data["castable"]], outputs=data.get("outputs"), elapsed_s=float(data.get("elapsed_s", 0.0)), version=version,
        )


def _row(t: TensorProfile) -> dict:
    row = {k: v for k, v in asdict(t).items() if k != "candidates"}
    row["candidates"] = {s: {**asdict(c), "sqnr_db": finite_or_none(c.sqnr_db)} for s, c in t.candidates.items()}
    for c in row["candidates"].values():
        del c["scheme"]
    return row


def _tensor(row: dict) -> TensorProfile:
    candidates = {s: Candidate(scheme=s, **{**c, "sqnr_db": math.inf if c["sqnr_db"] is None else c["sqnr_db"]})
                  for s, c in row["candidates"].items()}
    return TensorProfile(**{**row, "candidates": candidates})


def candidate_schemes(names: list[str] | None = None) -> list[Scheme]:
    """The schemes to try: ``names`` (each a registered quantizer, or ``bf16``), or every
    quantizer and ``bf16`` (the narrower "kept" of a wider source)."""
    if names is None:
        return [*quantizers(), get_scheme(CAST)]
    chosen = []
    for name in names:
        scheme = get_scheme(name)
        if not isinstance(scheme, QuantScheme) and scheme.name != CAST:
            choices = ", ".join(s.name for s in quantizers())
            raise UsageError(f"--schemes {name}: not a quantizing scheme or bf16 (a profile compares quantizers: {choices})")
        chosen.append(scheme)
    return chosen


def measure(scheme: QuantScheme, name: str, tensor, *, transpose: bool, settings: SchemeSettings) -> Candidate:
    """Quantize ``tensor`` as convert does, dequantize as the reader does, and measure.

    ``stored_bytes`` is the sum of the stored tensors' bytes (for a 4-bit quant state of
    variable length, its length as written)."""
    return _measure(scheme, name, tensor, transpose=transpose, settings=settings)[0]


def _measure(scheme: Scheme, name: str, tensor, *, transpose: bool, settings: SchemeSettings) -> tuple[Candidate, ErrorMoments]:
    approx, stored_bytes = reconstruct(scheme, name, tensor, transpose=transpose, settings=settings)
    moments = error_moments(tensor, approx)  # compare's own figures
    return _candidate(scheme.name, stored_bytes, moments), moments


def reconstruct(scheme: Scheme, name: str, tensor, *, transpose: bool, settings: SchemeSettings):
    """``(values, stored_bytes)``: ``tensor`` written by ``scheme`` as convert writes it and read
    back as ``load_state_dict`` reads it (in ``tensor``'s shape), and the bytes stored."""
    if not isinstance(scheme, QuantScheme):  # bf16: the cast convert writes
        approx = tensor.to(scheme.dtype.torch)
        return approx, approx.numel() * approx.element_size()
    stored = scheme.quantize(name, tensor, transpose=transpose, settings=settings)
    parts = dict(stored)
    specs = {n: TensorSpec.of(n, t) for n, t in stored}
    # The specs alone may name a sibling (w8a16 at a group size other than 128 reads as w4a16);
    # the reader dequantizes through whichever scheme recognizes it, and so does this.
    readers = [scheme, *(s for s in quantizers() if s.family == scheme.family and s is not scheme)]
    reader = next((r for r in readers if name in r.stored_weights(specs)), None)
    if reader is None:
        raise InputError(f"{name}: {scheme.name} did not recognize what it stored (a bug in the scheme)")
    stored_bytes = sum(t.numel() * t.element_size() for _, t in stored)
    approx = reader.dequantize(reader.stored_weights(specs)[name], parts)
    del stored, parts
    return (approx.t().contiguous() if transpose else approx), stored_bytes


def _candidate(scheme: str, stored_bytes: int, m: ErrorMoments) -> Candidate:
    return Candidate(scheme, stored_bytes, m.sum_diff_sq, m.rel_l2, m.sqnr_db, m.max_abs, m.cosine)


def profile_checkpoint(
    src: str | Path | CheckpointSource,
    *,
    schemes: list[str] | None = None,
    settings: SchemeSettings = SchemeSettings(),
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
    progress: Callable[[int], None] | None = None,
) -> Profile:
    """Measure every candidate scheme on every weight a quantizer takes, one tensor at a time.

    Args:
        src: any checkpoint quantkit reads, or an opened ``CheckpointSource``.
        schemes: quantizing schemes to try (default: every registered quantizer).
        settings: the quantizers' settings (block size, double quantization), as convert's.
        skip, only: as convert's ``--skip`` / ``--only``.
        progress: called with each tensor's bytes once it is measured.

    Example:
        >>> p = profile_checkpoint("model.safetensors", schemes=["int8", "nf4"])  # doctest: +SKIP
        >>> p.tensors[0].candidates["nf4"].sqnr_db  # doctest: +SKIP
    """
    started = time.perf_counter()
    tried = candidate_schemes(schemes)
    workers = max(1, min(len(tried), os.cpu_count() or 1))
    with opened(src) as source, _shared_cores(workers), ThreadPoolExecutor(workers, thread_name_prefix="profile") as pool:
        selection = select(source, skip=skip, only=only, layout=layout_for(source.info.config_dir))
        casts = [s for s in tried if s.name == CAST]
        tensors, castable, kept_bytes, kept_signal = [], [], 0, 0.0
        for name, spec in source.specs.items():
            tensor = source.get_tensor(name)
            if name in selection.quantize:
                tensors.append(_profile_tensor(name, spec, tensor, tried, selection.quantize[name], settings, pool))
                continue
            kept_bytes += spec.nbytes
            if casts and _castable(spec, selection.kept.get(name)):
                castable.append(_profile_tensor(name, spec, tensor, casts, False, settings, pool))
                kept_signal += castable[-1].signal_energy
            elif spec.dtype.is_floating_point:
                kept_signal += signal_energy(tensor)
            del tensor
            if progress is not None:
                progress(spec.nbytes)
        return Profile(
            source=SourceIdentity.of(source), schemes=[s.name for s in tried],
            settings={k: getattr(settings, k) for k in SETTINGS},
            tensors=tensors, kept_bytes=kept_bytes, kept_signal_energy=kept_signal, castable=castable,
            kept={n: str(why) for n, why in selection.kept.items()}, elapsed_s=time.perf_counter() - started,
        )


def _castable(spec: TensorSpec, why: Kept | None) -> bool:
    """A kept floating-point tensor wider than bf16 that convert may cast (a --rule '...=bf16'):
    not one --skip / --only leaves exactly as stored, nor a tied alias."""
    return spec.dtype.is_floating_point and spec.dtype.itemsize > 2 and why is not None and not why.by_user and why is not Kept.TIED


def _profile_tensor(name, spec, tensor, tried, transpose, settings, pool) -> TensorProfile:
    """The candidates of one weight, measured side by side on the pool's threads."""
    candidates = {KEEP: Candidate(KEEP, spec.nbytes, 0.0, 0.0, math.inf, 0.0, 1.0)}
    signal = None
    tried = [scheme for scheme in tried if _takes(scheme, spec, transpose, settings)]
    measured = pool.map(lambda scheme: _measure(scheme, name, tensor, transpose=transpose, settings=settings), tried)
    for scheme, (candidate, moments) in zip(tried, measured):
        candidates[scheme.name] = candidate
        signal = moments.sum_ref_sq
    return TensorProfile(
        name=name, shape=list(spec.shape), dtype=short_name(spec.dtype), group=group_of(name, spec.shape),
        layer=layer_of(name), numel=spec.numel, original_bytes=spec.nbytes,
        signal_energy=signal_energy(tensor) if signal is None else signal, transpose=transpose, candidates=candidates,
    )


def _takes(scheme: Scheme, spec: TensorSpec, transpose: bool, settings: SchemeSettings) -> bool:
    """Whether convert could store ``spec`` with ``scheme`` (a compressed-tensors scheme refuses a
    Conv1D weight and a group size that does not divide the input dimension; bf16 takes only a
    wider floating-point tensor): the others are not candidates of that tensor, so a plan never
    chooses them."""
    if not isinstance(scheme, QuantScheme):
        return spec.dtype.is_floating_point and spec.dtype.itemsize > scheme.dtype.itemsize
    try:
        scheme.outputs(spec, transpose=transpose, settings=settings)
    except (UsageError, InputError):
        return False
    return True


@contextmanager
def _shared_cores(workers: int) -> Iterator[None]:
    """Give each worker thread its share of torch's intra-op threads: oversubscribed, torch's
    pools spin against each other (on a busy 2-core machine, 8x slower measured here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def signal_energy(tensor) -> float:
    """sum x^2 in float64, summed chunk by chunk as ``error_moments`` sums it (the same value)."""
    import torch

    flat, total = tensor.reshape(-1), 0.0
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        x = flat[start : start + CHUNK_ELEMENTS].to(torch.float64)
        total += float(torch.dot(x, x))
    return total


def save_profile(profile: Profile, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(profile.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def load_profile(path: str | Path, *, source: CheckpointSource | None = None) -> Profile:
    """A profile written by ``save_profile``; with ``source``, refused unless it measured that checkpoint."""
    path = Path(path)
    try:
        profile = Profile.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a quantkit profile ({exc.__class__.__name__}: {exc})") from None
    if source is not None:
        check_profile_matches(profile, source, path)
    return profile


def check_profile_matches(profile: Profile, source: CheckpointSource, where: str | Path = "profile") -> None:
    """InputError unless ``profile`` measured ``source`` as it is now (same tensors, dtypes, shapes, bytes)."""
    now = SourceIdentity.of(source)
    if (now.specs_sha256, now.total_bytes) != (profile.source.specs_sha256, profile.source.total_bytes):
        raise InputError(
            f"{where}: profiled {profile.source.path}, whose tensors differ from {source.path}'s now: run quantkit profile again"
        )
