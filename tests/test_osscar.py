"""Tests of the ``osscar`` and ``group-magnitude`` solvers for ``StructuredMIQP``.

Quality against the exact solvers (``bruteforce``, and ``cvxpy`` + SCIP when registered) is
reported as a table (visible with ``pytest -s``) and as ``record_property`` entries.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import combprune
from combprune.problems import StructuredMIQP
from combprune.problems.generators import random_structured
from combprune.registry import get_solver, list_solvers
from combprune.result import Status
from combprune.solvers._kernels import structured as sl
from combprune.solvers import osscar as osscar_mod

REL = 1e-9


def rel_gap(value: float, best: float) -> float:
    return (value - best) / max(abs(best), 1e-12)


def random_instance(rng: np.random.Generator, seed: int, *, max_groups: int = 12, costs: bool = False) -> StructuredMIQP:
    """Correlated inputs, 2..max_groups groups of 1..4 rows, m in 1..8, N from d/2 to 3d."""
    n_groups = int(rng.integers(2, max_groups + 1))
    sizes = [int(x) for x in rng.integers(1, 5, size=n_groups)]
    d = sum(sizes)
    m = int(rng.integers(1, 9))
    n_samples = int(rng.integers(max(2, d // 2), 3 * d + 1))
    s = None if costs else int(rng.integers(0, n_groups + 1))
    return random_structured(d, m, s, group_size=sizes, n_samples=n_samples, correlated=True, with_costs=costs, seed=seed)


def assert_valid(problem: StructuredMIQP, result) -> None:
    assert problem.check(result.x) == []
    W = combprune.backend.to_numpy(result.x)
    assert np.all(np.isfinite(W))
    assert result.objective == pytest.approx(problem.objective(result.x), rel=1e-12, abs=1e-12)
    assert np.array_equal(problem.group_support(W) & ~result.support, np.zeros(problem.n_groups, bool))
    assert result.status in (Status.FEASIBLE, Status.TIME_LIMIT)


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------
# Quality against the exact optimum.
# ---------------------------------------------------------------------------------------------
def test_osscar_against_bruteforce(record_property):
    rng = np.random.default_rng(2024)
    stats = {"count": [], "cost": []}
    for i in range(48):
        kind = "cost" if i % 4 == 3 else "count"
        problem = random_instance(rng, seed=1000 + i, costs=kind == "cost")
        exact = combprune.solve(problem, "bruteforce")
        res = combprune.solve(problem, "osscar")
        mag = combprune.solve(problem, "group-magnitude")
        raw = combprune.solve(problem, "group-magnitude", refit=False)
        for r in (res, mag, raw):
            assert_valid(problem, r)
        assert res.objective >= exact.objective - REL * max(abs(exact.objective), 1.0)
        # never worse than the magnitude baseline (refit or not)
        assert res.objective <= mag.objective + REL * max(abs(mag.objective), 1.0)
        assert mag.objective <= raw.objective + REL * max(abs(raw.objective), 1.0)
        stats[kind].append(max(0.0, rel_gap(res.objective, exact.objective)))
    rows, all_gaps = [], []
    for kind, gaps in stats.items():
        g = np.array(gaps)
        all_gaps += gaps
        rows.append((kind, g.size, f"{np.mean(g <= 1e-9):.1%}", f"{np.median(g):.2e}", f"{g.max():.2e}"))
    g = np.array(all_gaps)
    exact_frac = float(np.mean(g <= 1e-9))
    rows.append(("all", g.size, f"{exact_frac:.1%}", f"{np.median(g):.2e}", f"{g.max():.2e}"))
    print("\nosscar vs bruteforce (relative gap to the optimum)\n" + table(rows, ("budget", "instances", "exact", "median gap", "max gap")))
    record_property("osscar_exact_fraction", exact_frac)
    record_property("osscar_median_gap", float(np.median(g)))
    record_property("osscar_max_gap", float(g.max()))
    assert exact_frac >= 0.9
    assert np.median(g) < 1e-6


def test_osscar_against_cvxpy(record_property):
    names = {row["name"] for row in list_solvers()}
    if "cvxpy" not in names or not get_solver("cvxpy").available:
        pytest.skip("cvxpy solver not registered / SCIP not installed")
    rng = np.random.default_rng(7)
    gaps = []
    for i in range(3):
        problem = random_instance(rng, seed=2000 + i, max_groups=5, costs=i == 2)
        ref = combprune.solve(problem, "cvxpy", time_limit=10)
        res = combprune.solve(problem, "osscar")
        assert_valid(problem, res)
        if ref.status is not Status.OPTIMAL:
            continue
        brute = combprune.solve(problem, "bruteforce")
        assert brute.objective == pytest.approx(ref.objective, rel=1e-6, abs=1e-9)
        assert res.objective >= ref.objective - 1e-6 * max(abs(ref.objective), 1.0)
        gaps.append(max(0.0, rel_gap(res.objective, ref.objective)))
    if not gaps:
        pytest.skip("cvxpy proved no instance optimal within its time limit")
    g = np.array(gaps)
    print(f"\nosscar vs cvxpy+SCIP: {g.size} instances, exact {np.mean(g <= 1e-6):.0%}, median gap {np.median(g):.2e}, max gap {g.max():.2e}")
    record_property("osscar_vs_cvxpy_exact_fraction", float(np.mean(g <= 1e-6)))
    assert np.median(g) < 1e-6


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_groups=st.integers(1, 8),
    m=st.integers(1, 8),
    costs=st.booleans(),
    n_factor=st.floats(0.3, 3.0),
    groups_per_round=st.sampled_from([None, 1, 2, 3]),
)
def test_osscar_property(seed, n_groups, m, costs, n_factor, groups_per_round):
    rng = np.random.default_rng(seed)
    sizes = [int(x) for x in rng.integers(1, 5, size=n_groups)]
    d = sum(sizes)
    s = None if costs else int(rng.integers(0, n_groups + 1))
    problem = random_structured(
        d, m, s, group_size=sizes, n_samples=max(1, int(n_factor * d)), correlated=bool(seed % 2),
        with_costs=costs, seed=seed,
    )
    res = combprune.solve(problem, "osscar", groups_per_round=groups_per_round)
    assert_valid(problem, res)
    exact = combprune.solve(problem, "bruteforce")
    mag = combprune.solve(problem, "group-magnitude")
    assert res.objective >= exact.objective - REL * max(abs(exact.objective), 1.0)
    assert res.objective <= mag.objective + REL * max(abs(mag.objective), 1.0)
    assert [h[1] for h in res.history] == sorted((h[1] for h in res.history), reverse=True)


# ---------------------------------------------------------------------------------------------
# Numerically hard inputs.
# ---------------------------------------------------------------------------------------------
def _from_X(X, W, groups, s, ridge=None):
    return StructuredMIQP.from_activations(X, W, groups, s, ridge=ridge)


@pytest.mark.parametrize("solver", ["osscar", "group-magnitude"])
def test_rank_deficient_N_less_than_d(solver):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 16))  # rank 6 < d = 16
    W = rng.standard_normal((16, 3))
    groups = np.repeat(np.arange(8), 2)
    problem = _from_X(X, W, groups, 4)  # default ridge: well posed
    res = combprune.solve(problem, solver)
    assert_valid(problem, res)
    exact = combprune.solve(problem, "bruteforce")
    assert res.objective >= exact.objective - 1e-9 * exact.objective
    singular = _from_X(X, W, groups, 4, ridge=0.0)
    with pytest.raises(ValueError, match="ridge"):
        combprune.solve(singular, solver)


def test_duplicated_features():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 6))
    X = np.hstack([X, X[:, :3], 2.0 * X[:, 3:4]])  # exact duplicates and a scaled copy
    W = rng.standard_normal((10, 4))
    groups = np.array([0, 1, 2, 3, 4, 5, 6, 6, 7, 8])
    problem = _from_X(X, W, groups, 4)
    res = combprune.solve(problem, "osscar")
    assert_valid(problem, res)
    exact = combprune.solve(problem, "bruteforce")
    assert res.objective == pytest.approx(exact.objective, rel=1e-8)
    with pytest.raises(ValueError, match="ridge"):
        combprune.solve(_from_X(X, W, groups, 4, ridge=0.0), "osscar")


@pytest.mark.parametrize("ridge", [None, 0.0])
def test_huge_scale_differences(ridge):
    rng = np.random.default_rng(3)
    scales = np.logspace(-6, 6, 12)
    X = rng.standard_normal((80, 12)) * scales
    W = rng.standard_normal((12, 3)) / scales[:, None]
    groups = np.arange(12) // 2
    problem = _from_X(X, W, groups, 3, ridge=ridge)
    res = combprune.solve(problem, "osscar")
    assert_valid(problem, res)
    # Reference: every support of s groups, each refit exactly in the scaled system (bruteforce's
    # unscaled lstsq loses digits at a 1e12 scale spread with ridge = 0).
    system = sl.ScaledSystem.from_problem(problem)
    best = math.inf
    for S in itertools.combinations(range(problem.n_groups), problem.s):
        rows = system.rows_of(np.array(S))
        best = min(best, problem.objective(system.unscale(sl.refit(system, rows))))
    assert res.objective == pytest.approx(best, rel=1e-7)
    assert res.objective <= combprune.solve(problem, "bruteforce").objective * (1 + 1e-9)
    mag = combprune.solve(problem, "group-magnitude")
    assert_valid(problem, mag)
    assert res.objective <= mag.objective * (1 + 1e-9)


def test_all_zero_feature_with_zero_ridge_is_an_error():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 5))
    X[:, 2] = 0.0
    problem = _from_X(X, rng.standard_normal((5, 2)), np.arange(5), 2, ridge=0.0)
    with pytest.raises(ValueError, match="ridge"):
        combprune.solve(problem, "osscar")
    ok = _from_X(X, rng.standard_normal((5, 2)), np.arange(5), 2)
    assert_valid(ok, combprune.solve(ok, "osscar"))


# ---------------------------------------------------------------------------------------------
# Budgets.
# ---------------------------------------------------------------------------------------------
def test_cost_budgets_against_bruteforce():
    rng = np.random.default_rng(5)
    for i in range(10):
        n_groups = int(rng.integers(3, 10))
        sizes = [int(x) for x in rng.integers(1, 4, size=n_groups)]
        d = sum(sizes)
        base = random_structured(d, 3, group_size=sizes, correlated=True, seed=300 + i)
        costs = rng.integers(0, 5, size=n_groups).astype(float)  # zero costs included
        budget = float(rng.uniform(0.0, 1.0) * costs.sum())
        s = None if i % 2 else int(rng.integers(1, n_groups + 1))
        problem = StructuredMIQP(base.H, base.W_hat, base.groups, s, ridge=base.ridge, group_costs=costs, cost_budget=budget)
        res = combprune.solve(problem, "osscar")
        assert_valid(problem, res)
        exact = combprune.solve(problem, "bruteforce")
        assert res.objective >= exact.objective - REL * abs(exact.objective)
        assert res.objective <= exact.objective * (1 + 0.05)
        mag = combprune.solve(problem, "group-magnitude")
        assert_valid(problem, mag)
        assert res.objective <= mag.objective * (1 + REL)


def test_zero_cost_budget_keeps_only_free_groups():
    base = random_structured(8, 2, group_size=1, seed=9)
    costs = np.array([0, 1, 0, 2, 3, 0, 1, 1], dtype=float)
    problem = StructuredMIQP(base.H, base.W_hat, base.groups, None, ridge=base.ridge, group_costs=costs, cost_budget=0.0)
    res = combprune.solve(problem, "osscar")
    assert_valid(problem, res)
    assert np.array_equal(res.support, costs == 0)  # adding a group never hurts


@pytest.mark.parametrize("solver", ["osscar", "group-magnitude"])
def test_extreme_budgets(solver):
    problem = random_structured(20, 4, group_size=[1, 2, 3, 4, 4, 3, 2, 1], correlated=True, seed=11)
    empty = StructuredMIQP(problem.H, problem.W_hat, problem.groups, 0, ridge=problem.ridge)
    res = combprune.solve(empty, solver)
    assert_valid(empty, res)
    assert res.nnz == 0 and not np.any(res.x)
    assert res.objective == pytest.approx(empty.objective(np.zeros((20, 4))))
    full = StructuredMIQP(problem.H, problem.W_hat, problem.groups, problem.n_groups, ridge=problem.ridge)
    res = combprune.solve(full, solver)
    assert_valid(full, res)
    assert res.nnz == full.n_groups
    np.testing.assert_allclose(res.x, problem.W_hat, rtol=1e-8, atol=1e-10)
    assert res.objective == pytest.approx(0.0, abs=1e-12 * empty.objective(np.zeros((20, 4))))


# ---------------------------------------------------------------------------------------------
# Interfaces: torch, dtype, time limit, options.
# ---------------------------------------------------------------------------------------------
def test_torch_input_returns_torch():
    torch = pytest.importorskip("torch")
    base = random_structured(12, 3, group_size=2, correlated=True, seed=12)
    problem = StructuredMIQP(
        torch.tensor(base.H, dtype=torch.float32), torch.tensor(base.W_hat, dtype=torch.float32),
        torch.tensor(base.groups), 3, ridge=base.ridge,
    )
    for solver in ("osscar", "group-magnitude"):
        res = combprune.solve(problem, solver)
        assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float32
        assert_valid(problem, res)
    ref = combprune.solve(base, "osscar")
    assert np.array_equal(combprune.solve(problem, "osscar").support, ref.support)


def test_float32_numpy_input():
    base = random_structured(12, 3, group_size=3, seed=13)
    problem = StructuredMIQP(base.H.astype(np.float32), base.W_hat.astype(np.float32), base.groups, 2, ridge=base.ridge)
    res = combprune.solve(problem, "osscar")
    assert res.x.dtype == np.float32
    assert_valid(problem, res)


@pytest.mark.parametrize("with_costs", [False, True])
def test_time_limit_returns_feasible(with_costs):
    problem = random_structured(160, 20, group_size=1, correlated=True, with_costs=with_costs, seed=14)
    res = combprune.solve(problem, "osscar", time_limit=1e-9)
    assert res.status is Status.TIME_LIMIT
    assert_valid(problem, res)
    assert res.info["phase_timed_out"] == "elimination"


def test_options_and_refresh_agree():
    problem = random_structured(60, 5, group_size=[3] * 10 + [1] * 30, correlated=True, seed=15)
    a = combprune.solve(problem, "osscar")
    b = combprune.solve(problem, "osscar", refresh_every=1)
    assert b.info["refreshes"] > 0
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    assert b.info["max_drift"] < 1e-8
    c = combprune.solve(problem, "osscar", groups_per_round=4, swap_size=3, add_chunks=1, swap_candidates=2)
    assert_valid(problem, c)
    none = combprune.solve(problem, "osscar", max_swap_rounds=0, compare_magnitude=False)
    assert none.objective == pytest.approx(none.info["objective_elimination"], rel=1e-9)
    assert a.objective <= none.objective * (1 + REL)
    assert [h[1] for h in a.history] == sorted((h[1] for h in a.history), reverse=True)
    for bad in ({"groups_per_round": 0}, {"swap_size": -1}, {"refresh_every": 1.5}, {"max_swap_rounds": -1}):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            combprune.solve(problem, "osscar", **bad)
    with pytest.raises(TypeError, match="refit"):
        combprune.solve(problem, "group-magnitude", refit="yes")


def test_group_magnitude_selection_rule():
    base = random_structured(10, 3, group_size=2, seed=16)
    values = np.bincount(base.group_index, weights=np.sum(base.W_hat**2, axis=1))
    problem = StructuredMIQP(base.H, base.W_hat, base.groups, 2, ridge=base.ridge)
    raw = combprune.solve(problem, "group-magnitude", refit=False)
    assert set(np.flatnonzero(raw.support)) == set(np.argsort(-values)[:2])
    rows = problem.rows_of(raw.support)
    np.testing.assert_array_equal(raw.x[rows], base.W_hat[rows])
    fitted = combprune.solve(problem, "group-magnitude")
    assert np.array_equal(fitted.support, raw.support)
    assert fitted.objective <= raw.objective


# ---------------------------------------------------------------------------------------------
# The low-rank machinery against from-scratch linear algebra.
# ---------------------------------------------------------------------------------------------
def test_sweep_updates_match_rebuild():
    problem = random_structured(30, 4, group_size=[1, 2, 3, 4, 5, 1, 2, 3, 4, 5], correlated=True, seed=17)
    system = sl.ScaledSystem.from_problem(problem)
    batches = sl.SizeBatches(system.rows)
    keep = np.zeros(problem.n_groups, dtype=bool)
    keep[[0, 3, 4, 8]] = True
    state = osscar_mod._SweepState(system, batches, keep)
    rng = np.random.default_rng(0)
    for _ in range(12):
        g = int(rng.integers(problem.n_groups))
        if state.keep[g]:
            drop = state.drop_costs()[g]
            before = state.obj
            state.sweep(np.array([g]), add=False)
            assert state.obj - before == pytest.approx(drop, rel=1e-9)
        else:
            gain = state.add_gains()[g]
            before = state.obj
            state.sweep(np.array([g]), add=True)
            assert before - state.obj == pytest.approx(gain, rel=1e-9)
        fresh = osscar_mod._SweepState(system, batches, state.keep)
        np.testing.assert_allclose(state.T, fresh.T, atol=1e-9)
        np.testing.assert_allclose(state.Y, fresh.Y, atol=1e-9 * np.abs(fresh.Y).max())
        assert state.obj == pytest.approx(fresh.obj, rel=1e-10)
        rows = system.rows_of(np.flatnonzero(state.keep))
        W = sl.refit(system, rows)
        assert state.obj == pytest.approx(sl.support_objective(system, rows, W), rel=1e-10)
        exact = problem.objective(system.unscale(W))
        assert state.obj == pytest.approx(exact, rel=1e-9, abs=1e-9)


def test_exchange_gains_match_real_moves():
    problem = random_structured(24, 3, group_size=[2, 3, 1, 4, 2, 3, 1, 4, 2, 2], correlated=True, seed=18)
    system = sl.ScaledSystem.from_problem(problem)
    batches = sl.SizeBatches(system.rows)
    keep = np.zeros(problem.n_groups, dtype=bool)
    keep[[1, 2, 5, 7, 9]] = True
    state = osscar_mod._SweepState(system, batches, keep)
    allowed = ~keep
    def exact(trial):
        rows = system.rows_of(np.flatnonzero(trial))
        return sl.support_objective(system, rows, sl.refit(system, rows))

    drops = [np.array([g]) for g in np.flatnonzero(keep)] + [np.array([1, 7]), np.array([2, 5])]
    for D in drops:
        drop, gains, context = state.exchange_gains(D, allowed)
        for a in np.flatnonzero(allowed):
            trial = keep.copy()
            trial[D], trial[a] = False, True
            assert state.obj + drop - gains[a] == pytest.approx(exact(trial), rel=1e-9)
            assert state.joint_gain(context, np.array([a])) == pytest.approx(gains[a], rel=1e-9)
        for A in (np.array([0, 3]), np.array([4, 8])):
            trial = keep.copy()
            trial[D], trial[A] = False, True
            assert state.obj + drop - state.joint_gain(context, A) == pytest.approx(exact(trial), rel=1e-9)


def test_elimination_downdates_match_refit():
    problem = random_structured(40, 5, group_size=[1, 2, 3, 4] * 4, correlated=True, seed=19)
    system = sl.ScaledSystem.from_problem(problem)
    elim = osscar_mod._Elimination(system, sl.SizeBatches(system.rows))
    for groups in ([3], [0, 7], [12, 5, 9]):
        costs = elim.costs()
        before = elim.obj
        elim.remove(np.array(groups))
        if len(groups) == 1:
            assert elim.obj - before == pytest.approx(costs[groups[0]], rel=1e-9)
        rows = system.rows_of(np.flatnonzero(elim.alive))
        W = sl.refit(system, rows)
        np.testing.assert_allclose(elim.W[elim.pos[rows]], W[rows], rtol=1e-8, atol=1e-10)
        assert elim.obj == pytest.approx(sl.support_objective(system, rows, W), rel=1e-10)
        assert math.isclose(elim.refresh(), 0.0, abs_tol=1e-10)
