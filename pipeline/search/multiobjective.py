"""Multi-objective search over integer genomes with an expensive ``measure`` callback.

``run_search`` runs one of:

* ``linas`` -- the LINAS loop of DyNAS-T (Cummings et al., 2022): measure a random initial
  population; fit one cheap regressor per objective/constraint column (Ridge, RBF-SVR or
  gradient boosting, chosen per column by k-fold cross-validated MAE); run a pymoo evolutionary
  algorithm for many generations on the *predictions* only; pick the most promising
  not-yet-measured genomes of its final population (NSGA-II rank-and-crowding survival on the
  predicted values: predicted-feasible first, best front first, diverse by crowding distance,
  next fronts when the first is too small); measure them for real; refit; repeat until the
  measured budget is spent.  Each iteration records how well the predictors, fitted *before*
  the batch was measured, ranked it (Kendall tau) -- honest out-of-sample quality.  A column
  may come with a cheap estimate of its value per genome (``IntegerProblem.estimates``, e.g. a
  latency table): its predictor may then take the estimate as one more input, or be the estimate
  itself or an affine fit of it, whichever cross-validates best, and every batch records the
  estimate's own error beside the predictor's.
* ``nsga2`` / ``agemoea`` / ``nsga3`` -- the plain pymoo algorithm through its ask/tell
  interface on real measurements; genomes already measured are answered from the history.
* ``random`` -- random genomes, drawn like every algorithm's initial population
  (``IntegerProblem.sample``, uniform per gene by default).

Genomes are canonicalised first (``IntegerProblem.canonical``) so one candidate is measured at
most once and the budget counts distinct candidates.  The run is a deterministic function of
(problem, settings, measured values): a killed run resumes by replaying it with a ``measure``
that answers stored candidates from a database.

Left to libraries: evolutionary algorithms, integer operators, non-dominated sorting, crowding
distance, survival and hypervolume (pymoo); regressors and cross-validation (scikit-learn);
Kendall tau (scipy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.evaluator import Evaluator
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.optimize import minimize
from pymoo.problems.static import StaticProblem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.ref_dirs import get_reference_directions
from pymoo.util.reference_direction import get_partition_closest_to_points
from scipy.stats import kendalltau
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

# Generations (or random draws) in a row that bring nothing new before we conclude the space,
# or what the algorithm can still reach of it, is exhausted.
_MAX_FRUITLESS = 20


@dataclass(frozen=True)
class IntegerProblem:
    lower: np.ndarray  # inclusive bounds per gene
    upper: np.ndarray
    n_obj: int  # objectives, all minimised
    n_constr: int = 0  # constraints, feasible when value <= 0
    # Genomes with equal canonical forms are one candidate (e.g. genes of a skipped layer).
    canonical: Callable[[np.ndarray], np.ndarray] | None = None
    # sample(rng, k) -> (k, n_var) genomes: how random candidates are drawn (the initial population of every
    # algorithm and random search); default uniform per gene.
    sample: Callable[[np.random.Generator, int], np.ndarray] | None = None
    # estimates[column](X (k, n_var) canonical) -> (k,): a cheap estimate of a column's value, columns named "f0", "f1", ...
    # (objectives) then "g0", ... (constraints); see fit_predictor for how LINAS uses it.
    estimates: Mapping[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [f"f{i}" for i in range(self.n_obj)] + [f"g{j}" for j in range(self.n_constr)]


# measure(X (k, n_var) int, canonical, never measured) -> (F (k, n_obj), G (k, n_constr)); slow.
Measure = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: Literal["linas", "nsga2", "agemoea", "nsga3", "random"] = Field(
        "linas", description="linas (predictors in the loop), nsga2 / agemoea / nsga3 on real measurements, or random")
    budget: int = Field(ge=1, description="distinct candidates measured for real, the initial ones included")
    initial: int = Field(16, ge=2, description="random candidates measured first; the population of the plain evolutionary algorithms")
    batch: int = Field(8, ge=1, description="linas: candidates measured per iteration")
    inner_algorithm: Literal["nsga2", "agemoea", "nsga3"] = Field("nsga2", description="linas: the algorithm run on the predictors")
    inner_population: int = Field(100, ge=4, description="linas: population on the predictors")
    inner_generations: int = Field(60, ge=1, description="linas: generations on the predictors per iteration")
    seed: int = 0


@dataclass
class Iteration:
    index: int  # 0 = initial population
    measured: int  # cumulative distinct candidates
    new: list[int]  # history rows measured in this iteration
    # LINAS: per column ("f0", "g0", ...) model, cv_mae and batch_mape / batch_kendall_tau of the
    # predictions made before this batch was measured (None where undefined).
    predictors: dict[str, dict] = field(default_factory=dict)
    # per column with an estimate: batch_mape / batch_kendall_tau of the estimate alone on this batch
    estimates: dict[str, dict] = field(default_factory=dict)


@dataclass
class SearchHistory:
    X: np.ndarray  # (n, n_var) canonical genomes in measurement order
    F: np.ndarray  # (n, n_obj)
    G: np.ndarray  # (n, n_constr)
    iterations: list[Iteration]


def _feasible(G: np.ndarray | None, n: int) -> np.ndarray:
    if G is None or np.asarray(G).size == 0:
        return np.ones(n, bool)
    return np.all(np.asarray(G, float).reshape(n, -1) <= 0, axis=1)


def pareto_mask(F: np.ndarray, G: np.ndarray | None = None) -> np.ndarray:
    """Feasible non-dominated rows (equal points are both kept)."""
    F = np.asarray(F, float)
    mask, rows = np.zeros(len(F), bool), np.flatnonzero(_feasible(G, len(F)))
    if len(rows):
        mask[rows[NonDominatedSorting().do(F[rows], only_non_dominated_front=True)]] = True
    return mask


def hypervolume(F: np.ndarray, reference: np.ndarray, G: np.ndarray | None = None) -> float:
    """Hypervolume (minimisation) of the feasible points; 0.0 when none dominates the reference."""
    reference = np.asarray(reference, float)
    F = np.asarray(F, float).reshape(-1, len(reference))
    keep = _feasible(G, len(F)) & np.all(F < reference, axis=1)
    return float(HV(ref_point=reference)(F[keep])) if keep.any() else 0.0


def hypervolume_curve(history: SearchHistory, reference: np.ndarray) -> list[tuple[int, float]]:
    """(measured count, hypervolume of everything measured so far) after each candidate."""
    curve, value, feasible = [], 0.0, _feasible(history.G, len(history.F))
    for i in range(1, len(history.F) + 1):
        if feasible[i - 1] and np.all(history.F[i - 1] < reference):  # otherwise HV cannot change
            value = hypervolume(history.F[:i], reference, history.G[:i])
        curve.append((i, value))
    return curve


class _Estimate(RegressorMixin, BaseEstimator):
    """The estimate (the last input column) as the prediction: nothing to fit."""

    def fit(self, Z: np.ndarray, y: np.ndarray) -> "_Estimate":
        return self

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return np.asarray(Z, float)[:, -1]


def _regressors(seed: int) -> dict[str, Any]:
    return {
        "ridge": make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        # SVR's epsilon and C are in target units, so the target is standardised too.
        "svr": TransformedTargetRegressor(make_pipeline(StandardScaler(), SVR(C=10.0, epsilon=0.05)),
                                          transformer=StandardScaler()),
        "gbr": GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=seed),
    }


def _on(columns: Any, model: Any) -> Any:
    return make_pipeline(ColumnTransformer([("in", "passthrough", columns)]), model)


def fit_predictor(X: np.ndarray, y: np.ndarray, seed: int, estimate: np.ndarray | None = None) -> tuple[Any, dict]:
    """The regressor with the lowest k-fold MAE, refitted on all points; {"model", "cv_mae"}.

    With an ``estimate`` of y per row, the model takes ``[X, estimate]`` and the candidates are: each regressor on
    the genome alone, each on the genome and the estimate (``ridge+estimate``, ...), the estimate itself
    (``estimate``) and an affine fit of it (``estimate_affine``), so the measured points decide whether the
    estimate helps, replaces the genome, or is ignored."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    candidates = _regressors(seed)
    if estimate is not None:
        genome = slice(0, X.shape[1])
        candidates = {name: _on(genome, model) for name, model in candidates.items()} | {
            f"{name}+estimate": model for name, model in _regressors(seed).items()}
        candidates |= {"estimate": _Estimate(), "estimate_affine": _on([X.shape[1]], LinearRegression())}
        X = np.column_stack([X, np.asarray(estimate, float)])
    if len(y) < 4:  # too few points to tell models apart: the linear one overfits least, the estimate fits nothing
        candidates = {name: candidates[name] for name in ("ridge", "estimate") if name in candidates}
    scores = {name: float("nan") for name in candidates}
    if len(y) >= 2:
        cv = KFold(min(5, len(y)), shuffle=True, random_state=seed)
        scores = {name: -float(cross_val_score(model, X, y, cv=cv, scoring="neg_mean_absolute_error").mean())
                  for name, model in candidates.items()}
    best = min(scores, key=lambda name: (np.nan_to_num(scores[name], nan=np.inf)))  # ties: first listed
    return clone(candidates[best]).fit(X, y), {"model": best, "cv_mae": scores[best]}


def prediction_quality(predicted: np.ndarray, measured: np.ndarray) -> tuple[float | None, float | None]:
    """(MAPE, Kendall tau) of predictions against measurements; None where undefined (a zero or constant side)."""
    mape = tau = None
    if len(measured) and np.all(measured != 0):
        mape = float(np.mean(np.abs((predicted - measured) / measured)))
    if len(measured) >= 2 and np.ptp(measured) > 0 and np.ptp(predicted) > 0:
        tau = float(kendalltau(predicted, measured).statistic)
    return mape, (None if tau is None or np.isnan(tau) else tau)


class _PymooProblem(Problem):
    """The integer box for pymoo; evaluates through predictors when given (LINAS inner loop): per column a model
    and the estimate it takes as its last input, or None."""

    def __init__(self, problem: IntegerProblem, canon: Callable[[np.ndarray], np.ndarray],
                 models: list[tuple[Any, Callable[[np.ndarray], np.ndarray] | None]] | None = None) -> None:
        super().__init__(n_var=len(problem.lower), n_obj=problem.n_obj, n_ieq_constr=problem.n_constr,
                         xl=np.asarray(problem.lower), xu=np.asarray(problem.upper), vtype=int)
        self.canon, self.models = canon, models

    def predict(self, X: np.ndarray) -> np.ndarray:
        Xc = self.canon(X)  # the predictors only ever saw canonical genomes
        inputs = lambda estimate: Xc.astype(float) if estimate is None else np.column_stack([Xc, estimate(Xc)]).astype(float)  # noqa: E731
        return np.column_stack([model.predict(inputs(estimate)) for model, estimate in self.models])

    def _evaluate(self, x: np.ndarray, out: dict, *args: Any, **kwargs: Any) -> None:
        P = self.predict(x)
        out["F"] = P[:, :self.n_obj]
        if self.n_ieq_constr:
            out["G"] = P[:, self.n_obj:]


def _evaluated(problem: _PymooProblem, pop: Population, F: np.ndarray, G: np.ndarray) -> Population:
    values = {"F": F, "G": G} if problem.n_ieq_constr else {"F": F}
    Evaluator().eval(StaticProblem(problem, **values), pop)  # pymoo's ask/tell way; also sets CV
    return pop


def _algorithm(name: str, pop_size: int, n_obj: int, sampling: Any = None):
    # pymoo's recipe for integer variables: real-valued SBX/PM, then round.
    ops = dict(sampling=IntegerRandomSampling() if sampling is None else sampling, eliminate_duplicates=True,
               crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
               mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()))
    if name == "nsga2":
        return NSGA2(pop_size=pop_size, **ops)
    if name == "agemoea":
        from pymoo.algorithms.moo.age import AGEMOEA  # imports numba, which only AGE-MOEA needs

        return AGEMOEA(pop_size=pop_size, **ops)
    partitions = max(1, get_partition_closest_to_points(pop_size, n_obj))  # at most pop_size directions
    return NSGA3(ref_dirs=get_reference_directions("das-dennis", n_obj, n_partitions=partitions),
                 pop_size=pop_size, **ops)


class _Search:
    def __init__(self, problem: IntegerProblem, measure: Measure, settings: SearchSettings,
                 on_iteration: Callable[[SearchHistory], None] | None) -> None:
        self.p, self.measure, self.s, self.on_iteration = problem, measure, settings, on_iteration
        self.rng = np.random.default_rng(settings.seed)
        n_var = len(problem.lower)
        self.h = SearchHistory(np.zeros((0, n_var), np.int64), np.zeros((0, problem.n_obj)),
                               np.zeros((0, problem.n_constr)), [])
        self.index: dict[tuple[int, ...], int] = {}

    def canon(self, X: np.ndarray) -> np.ndarray:
        X = np.rint(np.asarray(X, float)).astype(np.int64).reshape(-1, len(self.p.lower))
        if self.p.canonical is None:
            return X
        return np.array([self.p.canonical(row) for row in X], np.int64).reshape(X.shape)

    def fresh(self, X: np.ndarray, limit: int, taken: set | None = None) -> list[np.ndarray]:
        """The first ``limit`` canonical rows of X neither measured nor already taken."""
        taken, out = set() if taken is None else taken, []
        for row in self.canon(X):
            key = tuple(row.tolist())
            if len(out) < limit and key not in self.index and key not in taken:
                taken.add(key)
                out.append(row)
        return out

    def random_new(self, k: int, taken: set | None = None) -> list[np.ndarray]:
        taken, out = set() if taken is None else taken, []
        for _ in range(_MAX_FRUITLESS):
            if len(out) >= k:
                break
            draw = self.draw(k)
            out += self.fresh(draw, k - len(out), taken)
        return out

    def draw(self, k: int) -> np.ndarray:
        if self.p.sample is not None:
            return self.p.sample(self.rng, k)
        return self.rng.integers(self.p.lower, np.asarray(self.p.upper) + 1, size=(k, len(self.p.lower)))

    def measure_rows(self, rows: list[np.ndarray]) -> list[int]:
        X = np.array(rows, np.int64)
        F, G = self.measure(X.copy())
        start, h = len(self.h.X), self.h
        h.X = np.vstack([h.X, X])
        h.F = np.vstack([h.F, np.asarray(F, float).reshape(len(X), self.p.n_obj)])
        h.G = np.vstack([h.G, np.asarray(G, float).reshape(len(X), self.p.n_constr)])
        for i, row in enumerate(X, start):
            self.index[tuple(row.tolist())] = i
        return list(range(start, len(h.X)))

    def record(self, new: list[int], predictors: dict | None = None) -> None:
        measured, estimates = np.hstack([self.h.F, self.h.G])[new], {}
        for c, name in enumerate(self.p.columns):
            if name in self.p.estimates:
                mape, tau = prediction_quality(np.asarray(self.p.estimates[name](self.h.X[new]), float), measured[:, c])
                estimates[name] = {"batch_mape": mape, "batch_kendall_tau": tau}
        self.h.iterations.append(Iteration(len(self.h.iterations), len(self.h.X), new, predictors or {}, estimates))
        if self.on_iteration is not None:
            self.on_iteration(self.h)

    def left(self) -> int:
        return self.s.budget - len(self.h.X)

    def random(self) -> None:
        size = self.s.initial
        while self.left() > 0 and (rows := self.random_new(min(size, self.left()))):
            self.record(self.measure_rows(rows))
            size = self.s.batch

    def evolve(self) -> None:
        pp = _PymooProblem(self.p, self.canon)
        # the same initial distribution as the other algorithms, when the problem has its own sampler
        start = None if self.p.sample is None else np.array(self.random_new(self.s.initial), float)
        algo = _algorithm(self.s.algorithm, self.s.initial, self.p.n_obj, start)
        algo.setup(pp, termination=NoTermination(), seed=self.s.seed)
        fruitless = 0
        while self.left() > 0 and fruitless < _MAX_FRUITLESS:
            pop = algo.ask()
            if pop is None or len(pop) == 0:
                fruitless += 1
                continue
            rows = self.fresh(pop.get("X"), self.left())
            fruitless = 0 if rows else fruitless + 1
            if rows:
                self.record(self.measure_rows(rows))
            if self.left() <= 0:  # the budget may have cut this generation short: nothing to tell
                break
            known = [self.index[tuple(row.tolist())] for row in self.canon(pop.get("X"))]
            algo.tell(infills=_evaluated(pp, pop, self.h.F[known], self.h.G[known]))

    def linas(self) -> None:
        self.record(self.measure_rows(self.random_new(min(self.s.initial, self.s.budget))))  # >= 1 exists
        names = self.p.columns
        estimates = [self.p.estimates.get(name) for name in names]
        while self.left() > 0:
            Y = np.hstack([self.h.F, self.h.G])
            fits = [fit_predictor(self.h.X, Y[:, c], self.s.seed, None if e is None else e(self.h.X)) for c, e in enumerate(estimates)]
            pp = _PymooProblem(self.p, self.canon, [(model, e) for (model, _), e in zip(fits, estimates)])
            rows = self.propose(pp, min(self.s.batch, self.left()))
            if not rows:
                break
            predicted = pp.predict(np.array(rows))
            new = self.measure_rows(rows)
            measured = np.hstack([self.h.F, self.h.G])[new]
            stats = {}
            for c, (name, (_, info)) in enumerate(zip(names, fits)):
                mape, tau = prediction_quality(predicted[:, c], measured[:, c])
                stats[name] = {**info, "batch_mape": mape, "batch_kendall_tau": tau}
            self.record(new, stats)

    def propose(self, pp: _PymooProblem, k: int) -> list[np.ndarray]:
        inner = _algorithm(self.s.inner_algorithm, self.s.inner_population, self.p.n_obj)
        res = minimize(pp, inner, ("n_gen", self.s.inner_generations), seed=int(self.rng.integers(2**31)))
        taken: set = set()
        pool = self.fresh(res.pop.get("X"), len(res.pop), taken)
        chosen: list[np.ndarray] = []
        if pool:
            P = pp.predict(np.array(pool))
            pop = _evaluated(pp, Population.new(X=np.array(pool)), P[:, :pp.n_obj], P[:, pp.n_obj:])
            best = RankAndCrowding().do(pp, pop, n_survive=k, random_state=self.rng, return_indices=True)
            chosen = [pool[i] for i in best]
        # The inner population may have collapsed onto already-measured genomes: top up at random.
        taken = {tuple(row.tolist()) for row in chosen}
        return chosen + self.random_new(k - len(chosen), taken)


def run_search(problem: IntegerProblem, measure: Measure, settings: SearchSettings,
               on_iteration: Callable[[SearchHistory], None] | None = None) -> SearchHistory:
    """Search until ``settings.budget`` distinct candidates are measured (or the space is spent);
    ``on_iteration`` sees the history after each batch of measurements."""
    if unknown := set(problem.estimates) - set(problem.columns):
        raise ValueError(f"estimates for columns {sorted(unknown)} the problem does not have (it has {problem.columns})")
    search = _Search(problem, measure, settings, on_iteration)
    if settings.algorithm == "linas":
        search.linas()
    elif settings.algorithm == "random":
        search.random()
    else:
        search.evolve()
    return search.h
