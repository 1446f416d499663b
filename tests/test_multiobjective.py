"""Multi-objective search (tailorfit.pipeline.search.multiobjective) on cheap synthetic problems."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest

from tailorfit.pipeline.search.multiobjective import (
    IntegerProblem,
    SearchSettings,
    fit_predictor,
    hypervolume,
    hypervolume_curve,
    pareto_mask,
    run_search,
)

# A toy "supernet": 18 genes in 0..3 (say widths); latency grows with them (with neighbour
# interactions), error shrinks with them: two conflicting smooth objectives (never 0, like real
# latency and error), one constraint.
N_VAR = 18
_rs = np.random.default_rng(123)
W, V = _rs.uniform(0.5, 1.5, N_VAR), _rs.uniform(0.5, 1.5, N_VAR)
PROBLEM = IntegerProblem(np.zeros(N_VAR, int), np.full(N_VAR, 3), n_obj=2, n_constr=1)


def objectives(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, float)
    latency = 2.0 + X @ W[: X.shape[1]] + 0.15 * np.sum(X[:, :-1] * X[:, 1:], axis=1)
    error = 1.0 + np.sum(V[: X.shape[1]] * (3 - X) ** 2, axis=1) / 3 + 0.1 * np.sum(np.abs(np.diff(X, axis=1)), axis=1)
    return np.column_stack([latency, error])


REFERENCE = 1.05 * np.array([objectives(np.full((1, N_VAR), 3))[0, 0], objectives(np.zeros((1, N_VAR)))[0, 1]])


class Strict:
    """A measure that checks the module's promises: canonical, never-seen genomes, no repeats."""

    def __init__(self, problem: IntegerProblem = PROBLEM) -> None:
        self.problem, self.seen, self.calls = problem, set(), 0

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        assert X.ndim == 2 and X.shape[1] == len(self.problem.lower) and len(X) > 0
        for row in X:
            key = tuple(int(v) for v in row)
            assert key not in self.seen, "measured twice"
            if self.problem.canonical is not None:
                assert np.array_equal(self.problem.canonical(row), row), "not canonical"
            self.seen.add(key)
        G = (X[:, :6].sum(axis=1) - 12.0)[:, None]  # e.g. a memory cap on the first layers
        return objectives(X), G[:, : self.problem.n_constr]


def distinct(X: np.ndarray) -> int:
    return len({tuple(row) for row in X.tolist()})


def test_hypervolume_hand_checked() -> None:
    F = np.array([[1, 3], [2, 2], [3, 1], [3, 3], [5, 0.5]], float)  # (3,3) dominated, (5,.5) past the reference
    assert hypervolume(F, np.array([4.0, 4.0])) == pytest.approx(6.0)
    F2 = np.vstack([F, [[0, 0]]])
    G = np.array([[0], [-1], [0], [0], [0], [1]], float)  # (0,0) would cover everything but is infeasible
    assert hypervolume(F2, np.array([4.0, 4.0]), G) == pytest.approx(6.0)
    assert hypervolume(F2, np.array([4.0, 4.0])) == pytest.approx(16.0)
    assert hypervolume(F2[-1:], np.array([4.0, 4.0]), G[-1:]) == 0.0
    assert hypervolume(np.zeros((0, 2)), np.array([4.0, 4.0])) == 0.0


def test_pareto_mask_with_constraint() -> None:
    F = np.array([[1, 3], [2, 2], [3, 1], [3, 3], [0, 0], [2, 2]], float)
    G = np.array([[0], [-1], [0.5], [-1], [1], [-2]], float)
    assert pareto_mask(F, G).tolist() == [True, True, False, False, False, True]
    assert pareto_mask(F).tolist() == [False, False, False, False, True, False]


def test_hypervolume_curve() -> None:
    history = run_search(PROBLEM, Strict(), SearchSettings(algorithm="random", budget=20, seed=1))
    curve = hypervolume_curve(history, REFERENCE)
    assert [n for n, _ in curve] == list(range(1, 21))
    values = [v for _, v in curve]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(hypervolume(history.F, REFERENCE, history.G))


def test_fit_predictor_choice() -> None:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, size=(40, N_VAR))
    y = objectives(X)[:, 0]
    model, info = fit_predictor(X, y, seed=0)
    assert info["model"] in {"ridge", "svr", "gbr"} and 0 <= info["cv_mae"] < 0.2 * np.std(y)
    assert np.corrcoef(model.predict(X.astype(float)), y)[0, 1] > 0.95
    assert fit_predictor(X[:3], objectives(X[:3])[:, 0], seed=0)[1]["model"] == "ridge"
    with pytest.raises(pydantic.ValidationError):
        SearchSettings(budget=10, popsize=3)


SEEDS = (0, 1, 2)
BUDGET = 48


@pytest.fixture(scope="module")
def linas_runs():
    return [run_search(PROBLEM, Strict(), SearchSettings(budget=BUDGET, seed=s)) for s in SEEDS]


def test_linas_beats_random_at_equal_budget(linas_runs) -> None:
    randoms = [run_search(PROBLEM, Strict(), SearchSettings(algorithm="random", budget=BUDGET, seed=s)) for s in SEEDS]
    for history in linas_runs + randoms:
        assert len(history.X) == BUDGET and distinct(history.X) == BUDGET
    linas = np.mean([hypervolume(h.F, REFERENCE, h.G) for h in linas_runs])
    rand = np.mean([hypervolume(h.F, REFERENCE, h.G) for h in randoms])
    print(f"mean hypervolume at {BUDGET} measurements: linas {linas:.1f}, random {rand:.1f}")
    assert linas > 1.05 * rand


def test_linas_predictors_are_recorded_and_rank_well(linas_runs) -> None:
    for history in linas_runs:
        first = history.iterations[0]
        assert first.index == 0 and first.measured == 16 and first.new == list(range(16)) and not first.predictors
        assert [it.measured for it in history.iterations] == list(range(16, BUDGET + 1, 8))
        quality = history.iterations[1].predictors
        assert set(quality) == {"f0", "f1", "g0"}
        for name, entry in quality.items():
            assert entry["model"] in {"ridge", "svr", "gbr"} and np.isfinite(entry["cv_mae"])
            assert entry["batch_kendall_tau"] > 0.3
            # MAPE is undefined when a measured value is 0, as the integer constraint value can be.
            assert name == "g0" or entry["batch_mape"] >= 0


def test_resume_replays_the_same_trajectory() -> None:
    settings = SearchSettings(budget=32, initial=8, batch=8, inner_population=40, inner_generations=20, seed=3)
    seen_by_callback: list[int] = []
    full = run_search(PROBLEM, Strict(), settings, on_iteration=lambda h: seen_by_callback.append(len(h.X)))
    assert seen_by_callback == [it.measured for it in full.iterations] == [8, 16, 24, 32]

    stored: dict[tuple, tuple] = {}
    inner = Strict()

    def killed(X: np.ndarray):
        if inner.calls == 2:
            raise KeyboardInterrupt  # the run dies while measuring its second LINAS batch
        F, G = inner(X)
        stored.update({tuple(row): (f, g) for row, f, g in zip(X.tolist(), F, G)})
        return F, G

    with pytest.raises(KeyboardInterrupt):
        run_search(PROBLEM, killed, settings)
    assert len(stored) == 16

    fresh = Strict()

    def replay(X: np.ndarray):
        known = [tuple(row) in stored for row in X.tolist()]
        if not all(known):
            assert not any(known), "a call mixes stored and new candidates"
            return fresh(X)
        return np.array([stored[tuple(r)][0] for r in X.tolist()]), np.array([stored[tuple(r)][1] for r in X.tolist()])

    resumed = run_search(PROBLEM, replay, settings)
    assert len(fresh.seen) == 32 - 16 and not fresh.seen & set(stored)
    np.testing.assert_array_equal(resumed.X, full.X)
    np.testing.assert_array_equal(resumed.F, full.F)
    np.testing.assert_array_equal(resumed.G, full.G)
    assert [it.new for it in resumed.iterations] == [it.new for it in full.iterations]
    assert [it.predictors for it in resumed.iterations] == [it.predictors for it in full.iterations]


def _skip_layer(genome: np.ndarray) -> np.ndarray:
    """Gene 3k says whether layer k runs (0 = skipped); a skipped layer's two genes do not matter."""
    out = np.array(genome, copy=True)
    for k in range(0, len(out), 3):
        if out[k] == 0:
            out[k + 1 : k + 3] = 0
    return out


@pytest.mark.parametrize("algorithm", ["linas", "nsga2", "random"])
def test_canonical_dedup(algorithm: str) -> None:
    problem = IntegerProblem(np.zeros(9, int), np.array([1, 3, 3] * 3), n_obj=2, canonical=_skip_layer)
    measure = Strict(problem)
    # 3 layers of (1 + 16) canonical forms = 4913 candidates, but many raw genomes collapse onto few.
    history = run_search(problem, measure, SearchSettings(algorithm=algorithm, budget=30, initial=10, batch=5,
                                                          inner_population=40, inner_generations=15))
    assert len(history.X) == 30 and distinct(history.X) == 30 and len(measure.seen) == 30
    assert all(np.array_equal(_skip_layer(row), row) for row in history.X)


@pytest.mark.parametrize("algorithm", ["nsga2", "agemoea", "nsga3", "random"])
def test_other_algorithms_spend_the_budget_exactly(algorithm: str) -> None:
    if algorithm == "agemoea":
        pytest.importorskip("numba", reason="pymoo's AGE-MOEA needs numba")
    measure = Strict()
    history = run_search(PROBLEM, measure, SearchSettings(algorithm=algorithm, budget=40, seed=1))
    # 40 = 16 + 16 + 8: the third generation is cut to fit the budget.
    assert len(history.X) == 40 and distinct(history.X) == 40 and len(measure.seen) == 40
    assert history.iterations[-1].measured == 40 and sum(len(it.new) for it in history.iterations) == 40
    assert hypervolume(history.F, REFERENCE, history.G) > 0


@pytest.mark.parametrize("algorithm", ["linas", "nsga2", "nsga3", "random"])
def test_exhausted_space_stops(algorithm: str) -> None:
    problem = IntegerProblem(np.zeros(3, int), np.ones(3, int), n_obj=2)  # only 8 genomes exist
    settings = SearchSettings(algorithm=algorithm, budget=20, initial=4, batch=2, inner_population=12, inner_generations=5)
    history = run_search(problem, Strict(problem), settings)
    assert len(history.X) == 8 and distinct(history.X) == 8
