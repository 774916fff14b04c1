"""Size of a converted checkpoint against its original, from headers alone."""

from __future__ import annotations

from dataclasses import dataclass

from ..anatomy import Anatomy
from .accuracy import TensorComparison


@dataclass
class SideSize:
    """One checkpoint's sizes. ``file_bytes`` are the weight files on disk (headers included)."""

    path: str
    format: str
    files: dict[str, int]
    file_bytes: int
    tensor_bytes: int
    num_tensors: int
    num_parameters: int
    bits_per_weight: float
    bytes_by_dtype: dict[str, int]
    quantization: dict | None


@dataclass
class GroupSize:
    original_bytes: int
    converted_bytes: int
    ratio: float  # converted / original
    original_share: float  # of the original's tensor bytes
    converted_share: float  # of the converted's tensor bytes
    num_parameters: int


@dataclass
class TensorSize:
    name: str
    group: str
    original_dtype: str
    stored_dtype: str
    original_bytes: int
    stored_bytes: int


@dataclass
class SizeComparison:
    original: SideSize
    converted: SideSize
    tensor_ratio: float  # converted / original tensor bytes
    file_ratio: float  # converted / original file bytes
    saved_bytes: int  # original - converted file bytes
    groups: dict[str, GroupSize]
    largest: list[TensorSize]  # of the original, with what each became


def compare_sizes(original: Anatomy, converted: Anatomy, rows: list[TensorComparison], *, top: int = 10) -> SizeComparison:
    """Sizes overall, by dtype and by group; bits per weight use the original's parameter count."""
    num_parameters = original.num_parameters
    sides = [_side(a, num_parameters) for a in (original, converted)]
    groups = {}
    for name in [*original.groups, *(g for g in converted.groups if g not in original.groups)]:
        before, after = original.groups.get(name), converted.groups.get(name)
        b_bytes, a_bytes = (before.bytes if before else 0), (after.bytes if after else 0)
        groups[name] = GroupSize(
            original_bytes=b_bytes,
            converted_bytes=a_bytes,
            ratio=a_bytes / b_bytes if b_bytes else float("inf") if a_bytes else 1.0,
            original_share=before.byte_share if before else 0.0,
            converted_share=after.byte_share if after else 0.0,
            num_parameters=before.num_parameters if before else 0,
        )
    largest = sorted(rows, key=lambda r: r.original_bytes, reverse=True)[:top]
    return SizeComparison(
        original=sides[0],
        converted=sides[1],
        tensor_ratio=_ratio(converted.total_bytes, original.total_bytes),
        file_ratio=_ratio(sides[1].file_bytes, sides[0].file_bytes),
        saved_bytes=sides[0].file_bytes - sides[1].file_bytes,
        groups=groups,
        largest=[TensorSize(r.name, r.group, r.original_dtype, r.stored_dtype, r.original_bytes, r.stored_bytes) for r in largest],
    )


def _side(a: Anatomy, num_parameters: int) -> SideSize:
    return SideSize(
        path=a.path,
        format=a.format,
        files=dict(a.files),
        file_bytes=sum(a.files.values()),
        tensor_bytes=a.total_bytes,
        num_tensors=a.num_tensors,
        num_parameters=a.num_parameters,
        bits_per_weight=a.total_bytes * 8 / num_parameters if num_parameters else 0.0,
        bytes_by_dtype=dict(a.bytes_by_dtype),
        quantization=a.quantization,
    )


def _ratio(after: int, before: int) -> float:
    return after / before if before else 0.0
