"""Choosing one scheme per tensor: a multiple-choice knapsack over (stored bytes, error).

Pure functions of small values; no tensor is read here. Each ``Item`` is a tensor with its
``Option``s (a scheme, the bytes it stores, the error it leaves). The error is additive:
quantkit uses the noise energy sum (x - y)^2, so the summed error of a choice, over the
signal energy, is compare's overall SQNR (``quantkit.plan``).

Two problems, one solver each way:

- ``min_error(items, max_bytes)``: the least summed error within a byte budget;
- ``min_bytes(items, max_error)``: the fewest bytes within an error budget.

Methods: ``"exact"``, a dynamic programme over the Pareto frontier of (bytes, error) of the
items taken so far (exact; its frontier is bounded by ``EXACT_STATE_LIMIT`` states), and
``"greedy"``, the Lagrangian relaxation's greedy: every item's options on their lower convex
hull, upgrades taken in order of error saved per byte while they fit, then single-item swaps
while one improves. ``"auto"``: exact when its frontier stays under the limit, else greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

EXACT_STATE_LIMIT = 200_000


@dataclass(frozen=True)
class Option:
    scheme: str
    stored_bytes: int
    error: float  # additive: the noise energy sum (x - y)^2


@dataclass(frozen=True)
class Item:
    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Solution:
    schemes: dict[str, str]  # item name -> chosen scheme
    stored_bytes: int
    error: float
    method: str  # "exact" or "greedy"


def _pick(items: list[Item], index: list[int], method: str) -> Solution:
    chosen = [item.options[i] for item, i in zip(items, index)]
    return Solution(
        {item.name: o.scheme for item, o in zip(items, chosen)},
        sum(o.stored_bytes for o in chosen), math.fsum(o.error for o in chosen), method,
    )


def bounds(items: list[Item]) -> tuple[int, int]:
    """The fewest and the most bytes any choice stores."""
    return sum(min(o.stored_bytes for o in i.options) for i in items), sum(max(o.stored_bytes for o in i.options) for i in items)


def min_error(items: list[Item], max_bytes: int, *, method: str = "auto") -> Solution:
    """The choice of least summed error whose bytes are at most ``max_bytes``.

    UsageError naming the smallest achievable size when even that exceeds ``max_bytes``."""
    smallest, _ = bounds(items)
    if smallest > max_bytes:
        raise UsageError(f"no choice fits {max_bytes:,} bytes: the smallest achievable is {smallest:,} bytes")
    if method in ("auto", "exact"):
        frontier = _frontier(items)
        if frontier is not None:
            best = min((s for s in frontier if s[0] <= max_bytes), key=lambda s: (s[1], s[0]))
            return _pick(items, list(best[2]), "exact")
        if method == "exact":
            raise UsageError(f"the exact solver's frontier exceeds {EXACT_STATE_LIMIT:,} states: use the greedy method")
    return _greedy(items, max_bytes=max_bytes)


def min_bytes(items: list[Item], max_error: float, *, method: str = "auto") -> Solution:
    """The choice of fewest bytes whose summed error is at most ``max_error``.

    UsageError naming the least achievable error when even that exceeds ``max_error``."""
    least = math.fsum(min(o.error for o in i.options) for i in items)
    if least > max_error:
        raise UsageError(f"no choice keeps the error within {max_error:.6g}: the least achievable is {least:.6g}")
    if method in ("auto", "exact"):
        frontier = _frontier(items)
        if frontier is not None:
            best = min((s for s in frontier if s[1] <= max_error), key=lambda s: (s[0], s[1]))
            return _pick(items, list(best[2]), "exact")
        if method == "exact":
            raise UsageError(f"the exact solver's frontier exceeds {EXACT_STATE_LIMIT:,} states: use the greedy method")
    return _greedy(items, max_error=max_error)


def _frontier(items: list[Item]) -> list[tuple[int, float, tuple[int, ...]]] | None:
    """Every Pareto-optimal (bytes, error, option indices) of the whole choice, or None past the limit.

    Adding items one at a time, a state dominated by another (no fewer bytes and no less
    error) can never become optimal, so dropping it keeps the result exact."""
    states: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for item in items:
        merged = [(b + o.stored_bytes, e + o.error, idx + (k,)) for b, e, idx in states for k, o in enumerate(item.options)]
        merged.sort(key=lambda s: (s[0], s[1]))
        states, best_error = [], math.inf
        for s in merged:
            if s[1] < best_error:
                states.append(s)
                best_error = s[1]
        if len(states) > EXACT_STATE_LIMIT:
            return None
    return states


def _hull(options: tuple[Option, ...]) -> list[int]:
    """Indices of the options on the lower convex hull of (bytes, error), by increasing bytes."""
    order = sorted(range(len(options)), key=lambda k: (options[k].stored_bytes, options[k].error))
    pareto, best = [], math.inf
    for k in order:
        if options[k].error < best:
            pareto.append(k)
            best = options[k].error
    hull: list[int] = []
    for k in pareto:
        while len(hull) >= 2 and _not_convex(options[hull[-2]], options[hull[-1]], options[k]):
            hull.pop()
        hull.append(k)
    return hull


def _not_convex(a: Option, b: Option, c: Option) -> bool:
    # b lies on or above the segment a-c: the saving per byte from a to b is no better than b to c
    return (a.error - b.error) * (c.stored_bytes - b.stored_bytes) <= (b.error - c.error) * (b.stored_bytes - a.stored_bytes)


def _greedy(items: list[Item], *, max_bytes: int | None = None, max_error: float | None = None) -> Solution:
    """Lagrangian greedy: from each item's smallest hull option, take upgrades in order of error
    saved per byte (the hull makes each item's own upgrades come in that order). Under a byte
    budget an upgrade that does not fit stops its item; under an error budget the upgrades stop
    once it holds. Then single-item swaps while one improves the objective."""
    hulls = [_hull(item.options) for item in items]
    index = [h[0] for h in hulls]
    total_b = sum(i.options[k].stored_bytes for i, k in zip(items, index))
    total_e = math.fsum(i.options[k].error for i, k in zip(items, index))
    steps = []
    for n, (item, hull) in enumerate(zip(items, hulls)):
        for a, b in zip(hull, hull[1:]):
            oa, ob = item.options[a], item.options[b]
            steps.append(((oa.error - ob.error) / max(ob.stored_bytes - oa.stored_bytes, 1), n, b))
    steps.sort(key=lambda s: -s[0])
    blocked: set[int] = set()
    for _, n, b in steps:
        if max_error is not None and total_e <= max_error:
            break
        old, new = items[n].options[index[n]], items[n].options[b]
        nb = total_b - old.stored_bytes + new.stored_bytes
        if n in blocked or (max_bytes is not None and nb > max_bytes):
            blocked.add(n)
            continue
        index[n], total_b, total_e = b, nb, total_e - old.error + new.error

    def feasible(b: int, e: float) -> bool:
        return (max_bytes is None or b <= max_bytes) and (max_error is None or e <= max_error)

    key = (lambda b, e: (e, b)) if max_bytes is not None else (lambda b, e: (b, e))
    return _improve(items, index, feasible, key)


PAIR_SEARCH_LIMIT = 256  # options in all: pair swaps are tried up to this many (quadratic cost)


def _improve(items: list[Item], index: list[int], feasible, key) -> Solution:
    """Single-item swaps, best first, while one keeps the choice feasible and improves ``key``;
    on small instances then two-item swaps (a downgrade that pays for an upgrade).

    A swap is found with running totals, then confirmed on the exact totals of the choice it
    makes (bytes summed as integers, errors by ``math.fsum``): running float totals drift by a
    rounding at each swap, and a swap and its reverse could then both seem to lower the error,
    for ever. Exact totals are one value per choice, so each accepted swap strictly improves
    ``key`` over a finite set of choices, and the search ends."""
    totals = _exact_totals(items, index)
    moves = [(n, k) for n, item in enumerate(items) for k in range(len(item.options))]
    pairs = len(moves) <= PAIR_SEARCH_LIMIT
    while True:
        best = _best_single(items, index, moves, totals, feasible, key)
        if best is None and pairs:
            best = _best_pair(items, index, moves, totals, feasible, key)
        if best is None:
            return _pick(items, index, "greedy")
        for n, k in best[0]:
            index[n] = k
        totals = best[1]


def _exact_totals(items: list[Item], index: list[int], swaps=()) -> tuple[int, float]:
    """Bytes and error of the choice ``index`` with ``swaps`` ((item, option) pairs) made."""
    choice = list(index)
    for n, k in swaps:
        choice[n] = k
    chosen = [item.options[k] for item, k in zip(items, choice)]
    return sum(o.stored_bytes for o in chosen), math.fsum(o.error for o in chosen)


def _better(items, index, swaps, running, best, totals, feasible, key):
    """``best`` replaced by ``swaps`` where its running totals beat it and its exact ones do too."""
    target = best[1] if best else totals
    if not (feasible(*running) and key(*running) < key(*target)):
        return best
    exact = _exact_totals(items, index, swaps)
    return (swaps, exact) if feasible(*exact) and key(*exact) < key(*target) else best


def _best_single(items, index, moves, totals, feasible, key):
    best = None
    total_b, total_e = totals
    for n, k in moves:
        if k == index[n]:
            continue
        old, o = items[n].options[index[n]], items[n].options[k]
        running = (total_b - old.stored_bytes + o.stored_bytes, total_e - old.error + o.error)
        best = _better(items, index, ((n, k),), running, best, totals, feasible, key)
    return best


def _best_pair(items, index, moves, totals, feasible, key):
    best = None
    total_b, total_e = totals
    for a, (n1, k1) in enumerate(moves):
        if k1 == index[n1]:
            continue
        o1, p1 = items[n1].options[k1], items[n1].options[index[n1]]
        b1, e1 = total_b - p1.stored_bytes + o1.stored_bytes, total_e - p1.error + o1.error
        for n2, k2 in moves[a + 1:]:
            if n2 == n1 or k2 == index[n2]:
                continue
            o2, p2 = items[n2].options[k2], items[n2].options[index[n2]]
            running = (b1 - p2.stored_bytes + o2.stored_bytes, e1 - p2.error + o2.error)
            best = _better(items, index, ((n1, k1), (n2, k2)), running, best, totals, feasible, key)
    return best
