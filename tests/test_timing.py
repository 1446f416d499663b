"""The interleaved latency measurement: every entry once per round, in an order that does not favour any entry."""
from collections import Counter

from tailorfit.targets.timing import measure_interleaved


def _recorded_order(seed: int, rounds: int = 30) -> list[str]:
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    measure_interleaved(runs, warmup=0, rounds=rounds, attempts=1, seed=seed)
    return calls


def test_each_round_runs_every_entry_once_and_no_entry_keeps_the_same_neighbour():
    calls = _recorded_order(seed=0)
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert all(sorted(r) == ["A", "B", "C"] for r in rounds)
    # a rotated cycle (A B C, B C A, C A B) only ever puts A before B; a shuffle puts each entry after each other
    followers = Counter((a, b) for a, b in zip(calls, calls[1:]) if a != b)
    assert all(followers[(a, b)] > 0 for a in "ABC" for b in "ABC" if a != b)
    assert len({tuple(r) for r in rounds}) > 3


def test_the_order_is_reproducible_from_the_seed():
    assert _recorded_order(seed=3) == _recorded_order(seed=3)
    assert _recorded_order(seed=3) != _recorded_order(seed=4)
