"""Shard planning: a pure function of sizes and a byte limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_SHARD_BYTES = 2 * 10**9


@dataclass(frozen=True)
class ShardPlan:
    """Which units (tensors, or a quantized tensor's group of outputs) go in which shard."""

    shards: tuple[tuple[str, ...], ...]
    shard_bytes: tuple[int, ...]

    @property
    def total_bytes(self) -> int:
        return sum(self.shard_bytes)

    def file_names(self, stem: str = "model", suffix: str = "safetensors") -> list[str]:
        """``model.safetensors`` for one shard, else ``model-00001-of-00003.safetensors``..."""
        count = len(self.shards)
        if count == 1:
            return [f"{stem}.{suffix}"]
        return [f"{stem}-{i:05d}-of-{count:05d}.{suffix}" for i in range(1, count + 1)]


def plan_shards(units: Sequence[tuple[str, int]], max_shard_bytes: int) -> ShardPlan:
    """Split ``(name, nbytes)`` units into shards of at most ``max_shard_bytes``.

    Rule (the one huggingface_hub and transformers follow): walk the units in the given
    order, adding each to the current shard; when it would overflow, close the shard and
    start a new one. A unit larger than the limit gets a shard of its own: the current shard
    is closed first, so the shards list the units in exactly the given order (huggingface_hub
    instead leaves the current shard open and puts the large unit before it). No shard is
    empty; an empty input gives one empty shard.

    Example:
        >>> plan_shards([("a", 4), ("b", 4), ("c", 10), ("d", 1)], 8).shards
        (('a', 'b'), ('c',), ('d',))
    """
    if max_shard_bytes <= 0:
        raise ValueError("max_shard_bytes must be positive")
    shards: list[tuple[str, ...]] = []
    sizes: list[int] = []
    current: list[str] = []
    current_bytes = 0
    for name, nbytes in units:
        if nbytes > max_shard_bytes:
            if current:
                shards.append(tuple(current))
                sizes.append(current_bytes)
                current, current_bytes = [], 0
            shards.append((name,))
            sizes.append(nbytes)
            continue
        if current and current_bytes + nbytes > max_shard_bytes:
            shards.append(tuple(current))
            sizes.append(current_bytes)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += nbytes
    if current or not shards:
        shards.append(tuple(current))
        sizes.append(current_bytes)
    return ShardPlan(tuple(shards), tuple(sizes))
