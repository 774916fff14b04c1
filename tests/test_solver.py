"""The knapsack solver against brute force on small random instances."""

from __future__ import annotations

import itertools
import math
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantkit.errors import UsageError
from quantkit.solver import Item, Option, bounds, min_bytes, min_error

options = st.lists(
    st.builds(Option, st.sampled_from(["keep", "int8", "nf4", "fp4", "w4a16"]), st.integers(1, 1000), st.floats(0, 100)),
    min_size=1, max_size=4,
)
instances = st.lists(options, min_size=1, max_size=6).map(lambda opts: [Item(f"t{i}", tuple(o)) for i, o in enumerate(opts)])


def brute(items: list[Item]):
    for combo in itertools.product(*(range(len(i.options)) for i in items)):
        chosen = [i.options[k] for i, k in zip(items, combo)]
        yield sum(o.stored_bytes for o in chosen), math.fsum(o.error for o in chosen)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=300)
@given(instances, st.floats(0, 1))
def test_exact_min_error_equals_brute_force(items, fraction):
    low, high = bounds(items)
    budget = int(low + fraction * (high - low))
    best = min(e for b, e in brute(items) if b <= budget)
    solution = min_error(items, budget, method="exact")
    assert solution.method == "exact" and solution.stored_bytes <= budget
    assert close(solution.error, best)


@settings(max_examples=300)
@given(instances, st.floats(0, 1))
def test_exact_min_bytes_equals_brute_force(items, fraction):
    least = math.fsum(min(o.error for o in i.options) for i in items)
    most = math.fsum(max(o.error for o in i.options) for i in items)
    budget = least + fraction * (most - least)
    best = min(b for b, e in brute(items) if e <= budget + 1e-9 * max(1, budget))
    solution = min_bytes(items, budget + 1e-9 * max(1, budget), method="exact")
    assert solution.stored_bytes == best


@settings(max_examples=300)
@given(instances, st.floats(0, 1))
def test_greedy_is_feasible_and_near_brute_force(items, fraction):
    """The greedy's choices respect the budget; its gap to the optimum is measured in
    test_greedy_gap_statistics (printed with -s)."""
    low, high = bounds(items)
    budget = int(low + fraction * (high - low))
    solution = min_error(items, budget, method="greedy")
    assert solution.stored_bytes <= budget
    assert solution.error >= min(e for b, e in brute(items) if b <= budget) - 1e-9


@pytest.mark.slow  # 2,000 instances solved both ways: a measurement; the brute-force properties stay in the default run
def test_greedy_gap_statistics():
    """Measured on 2,000 seeded random instances of 8 tensors x 4 options (weights of realistic
    shape: bytes fall and error rises with the bits): how far the greedy is from the optimum."""
    import random

    rng = random.Random(0)
    gaps_error, gaps_bytes, exact = [], [], 0
    for _ in range(2000):
        items = []
        for t in range(8):
            numel, scale = rng.choice([4096, 16384, 65536]), rng.uniform(0.1, 10)
            opts = [Option("keep", numel * 2, 0.0)]
            for name, bits, snr in (("int8", 8.1, 40), ("nf4", 4.5, 20), ("fp4", 4.5, 18), ("w4a16", 4.25, 19)):
                opts.append(Option(name, int(numel * bits / 8), scale * numel * 10 ** (-(snr + rng.uniform(-3, 3)) / 10)))
            items.append(Item(f"t{t}", tuple(opts)))
        low, high = bounds(items)
        budget = int(low + rng.random() * (high - low))
        best = min_error(items, budget, method="exact")
        greedy = min_error(items, budget, method="greedy")
        gaps_error.append((greedy.error - best.error) / best.error if best.error else 0.0)
        target = best.error * (1 + rng.random())
        gaps_bytes.append(min_bytes(items, target, method="greedy").stored_bytes / min_bytes(items, target, method="exact").stored_bytes - 1)
        exact += greedy.error <= best.error * (1 + 1e-12)
    gaps_error.sort()
    gaps_bytes.sort()
    print(f"\ngreedy optimal on {exact}/2000; error gap median {gaps_error[1000]:.4%}, p99 {gaps_error[1980]:.4%}, max {gaps_error[-1]:.4%}; "
          f"bytes gap median {gaps_bytes[1000]:.4%}, p99 {gaps_bytes[1980]:.4%}, max {gaps_bytes[-1]:.4%}")
    # measured (seed 0): optimal on 1543/2000; error gap median 0, p99 238%, max 729% (when the
    # optimum keeps nearly everything, one tensor's error is the whole sum); bytes gap median 0,
    # p99 16%, max 41%. Why ``auto`` uses the exact frontier whenever it fits.
    assert exact >= 1500 and gaps_error[1000] == 0 and gaps_bytes[1000] == 0
    assert gaps_error[1980] < 3 and gaps_bytes[1980] < 0.2


def test_infeasible_budgets_name_the_bound():
    items = [Item("a", (Option("keep", 100, 0.0), Option("nf4", 30, 2.0)))]
    with pytest.raises(UsageError, match="smallest achievable is 30 bytes"):
        min_error(items, 29)
    with pytest.raises(UsageError, match="least achievable is 0"):
        min_bytes(items, -1.0)


def test_exact_falls_back_to_greedy_past_the_state_limit(monkeypatch):
    import quantkit.solver as solver

    monkeypatch.setattr(solver, "EXACT_STATE_LIMIT", 2)
    items = [Item(f"t{i}", (Option("keep", 100, 0.0), Option("int8", 50, 1.0 + i), Option("nf4", 25, 5.0 + i))) for i in range(4)]
    assert min_error(items, 250).method == "greedy"
    with pytest.raises(UsageError, match="frontier exceeds"):
        min_error(items, 250, method="exact")


def test_greedy_ends_where_running_totals_would_cycle():
    """Two identical items: swapping their options (a pair swap) leaves the choice's exact error
    as it is, but a running float total lost a rounding at each swap, so the swap and its
    reverse both seemed to lower it and the greedy swapped them for ever (found by hypothesis)."""
    twin = Item("t0", (Option("fp4", 564, 43.497417055134314), Option("w4a16", 15, 88.63025379411185)))
    middle = Item("t1", (Option("nf4", 161, 21.308954171704848), Option("nf4", 216, 70.84249409620912),
                         Option("keep", 564, 70.46004126854125), Option("nf4", 108, 89.26824860220792)))
    items = [twin, middle, Item("t2", twin.options)]

    def hung(signum, frame):
        raise AssertionError("the greedy did not end in 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a regression fails here instead of hanging the suite
    try:
        solution = min_error(items, 1028, method="greedy")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert solution.stored_bytes <= 1028
    assert solution.error >= min(e for b, e in brute(items) if b <= 1028) - 1e-9
