"""Exact solvers (highs, pulp, cvxpy) against brute force on tiny instances.

Every exact solver must find the brute-force optimum to 1e-6 relative, return a point that
passes ``check`` and report ``objective == problem.objective(x)``; a time limit returns the
best feasible point with status ``time_limit``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import FlopNnzILP, L0Regression
from combprune.problems import random_flop_ilp, random_l0_regression, random_structured
from combprune.registry import get_solver
from combprune.result import Status

ILP_SOLVERS = ["highs", "pulp"]
QP_SOLVERS = ["cvxpy"]


def _available(name: str) -> bool:
    return get_solver(name).available


def _skip_missing(name: str) -> None:
    if not _available(name):
        pytest.skip(f"{name} not installed")


def assert_valid(problem, res) -> None:
    assert problem.check(res.x) == [], problem.check(res.x)
    assert res.objective == pytest.approx(problem.objective(res.x), rel=1e-12, abs=1e-12)
    if res.bound is not None:  # a proven bound is never on the wrong side of a feasible point
        slack = 1e-7 * max(abs(res.objective), 1.0)
        if problem.sense == "max":
            assert res.bound >= res.objective - slack
        else:
            assert res.bound <= res.objective + slack


def assert_agrees(problem, res, ref) -> None:
    assert_valid(problem, res)
    assert res.status is Status.OPTIMAL, res
    tol = 1e-6 * max(abs(ref.objective), 1e-9)
    assert abs(res.objective - ref.objective) <= tol, (res, ref)


# --- FlopNnzILP -------------------------------------------------------------------------------

@st.composite
def ilp_instances(draw):
    p = draw(st.integers(1, 9))
    k = draw(st.integers(0, p))
    ties = draw(st.booleans())
    if ties:
        values = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=p, max_size=p))
        costs = draw(st.lists(st.sampled_from([0.0, 1.0, 3.0]), min_size=p, max_size=p))
    else:
        values = draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=p, max_size=p))
        costs = draw(st.lists(st.floats(0, 100, allow_nan=False).map(round), min_size=p, max_size=p))
    frac = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]))
    return FlopNnzILP(np.array(values), np.array(costs, float), k, frac * float(sum(costs)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=ilp_instances())
def test_highs_matches_bruteforce(problem):
    _skip_missing("highs")
    assert_agrees(problem, cp.solve(problem, "highs"), cp.solve(problem, "bruteforce"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=ilp_instances())
def test_pulp_matches_bruteforce(problem):  # CBC runs as a subprocess: fewer examples
    _skip_missing("pulp")
    assert_agrees(problem, cp.solve(problem, "pulp"), cp.solve(problem, "bruteforce"))


@pytest.mark.parametrize("name", ILP_SOLVERS)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(p=10, k=0),
        dict(p=10, k=10),
        dict(p=10, k=4, budget_fraction=0.0),
        dict(p=10, k=4, budget_fraction=0.0, zero_costs=0.5),
        dict(p=12, k=6, n_layers=3, budget_fraction=0.3),
        dict(p=12, k=6, ties=True, n_layers=2),
    ],
)
def test_ilp_edge_cases(name, kwargs):
    _skip_missing(name)
    problem = random_flop_ilp(seed=3, **kwargs)
    assert_agrees(problem, cp.solve(problem, name), cp.solve(problem, "bruteforce"))


@settings(max_examples=40, deadline=None)
@given(problem=ilp_instances())
def test_lp_relaxation_is_a_certified_bound(problem):
    _skip_missing("highs")
    from combprune.solvers.highs import solve_lp_relaxation

    ref = cp.solve(problem, "bruteforce")
    for method in ("ipm", "simplex"):
        lp = solve_lp_relaxation(problem, method)
        assert lp.status == "optimal"
        assert lp.value >= ref.objective - 1e-7 * max(1.0, ref.objective)
        assert lp.mu >= 0 and lp.nu >= 0
        assert lp.dual_objective(problem) == pytest.approx(lp.value, rel=1e-6, abs=1e-6)
        assert np.all((lp.x >= -1e-9) & (lp.x <= 1 + 1e-9))
    res = cp.solve(problem, "highs", lp_relaxation=True)
    assert_valid(problem, res)
    assert res.bound is not None and res.bound >= ref.objective - 1e-7 * max(1.0, ref.objective)
    assert res.objective <= ref.objective + 1e-9
    assert "lp_x" in res.info and "mu" in res.info
    # an optimal basic solution has at most two fractional coordinates
    basic = solve_lp_relaxation(problem, "simplex")
    assert int(np.sum((basic.x > 1e-9) & (basic.x < 1 - 1e-9))) <= 2


def _hard_knapsack(p: int = 3000, seed: int = 0) -> FlopNnzILP:
    """Strongly correlated knapsack (values ~ costs): hard for branch and bound."""
    rng = np.random.default_rng(seed)
    f = rng.integers(100_000, 1_000_000, p).astype(float)
    v = f + rng.integers(0, 10_000, p)
    return FlopNnzILP(v, f, p // 2, f.sum() / 2 + 0.5)


@pytest.mark.parametrize("name", ILP_SOLVERS)
def test_ilp_time_limit_returns_feasible_point(name):
    _skip_missing(name)
    problem = _hard_knapsack()
    res = cp.solve(problem, name, time_limit=0.3)
    assert_valid(problem, res)
    assert res.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    if res.status is Status.TIME_LIMIT:
        assert res.bound is None or res.bound >= res.objective


@settings(max_examples=60, deadline=None)
@given(problem=ilp_instances())
def test_greedy_start_point_is_feasible(problem):
    from combprune.solvers._kernels.exact import greedy_ilp

    z = greedy_ilp(problem).astype(float)
    assert problem.check(z) == []
    assert problem.objective(z) <= cp.solve(problem, "bruteforce").objective + 1e-12


@pytest.mark.parametrize("name", ILP_SOLVERS)
def test_time_limited_ilp_is_at_least_greedy(name):
    _skip_missing(name)
    from combprune.solvers._kernels.exact import greedy_ilp

    problem = _hard_knapsack(4000, seed=1)
    res = cp.solve(problem, name, time_limit=0.2)
    assert res.objective >= problem.objective(greedy_ilp(problem).astype(float))


def test_highs_threads_can_change_between_solves():
    _skip_missing("highs")
    problem = random_flop_ilp(20, 6, seed=4)
    ref = cp.solve(problem, "highs").objective
    for threads in (1, 2, None):
        assert cp.solve(problem, "highs", threads=threads).objective == pytest.approx(ref, rel=1e-12)
    res = cp.solve(problem, "highs", lp_relaxation=True, lp_solver="pdlp")
    assert_valid(problem, res)


def test_highs_options_validated():
    problem = random_flop_ilp(8, seed=0)
    for bad in (dict(mip_rel_gap=-1), dict(threads=0), dict(lp_solver="barrier"), dict(presolve="maybe")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cp.solve(problem, "highs", **bad)
    with pytest.raises(ValueError, match="gap_rel"):
        cp.solve(problem, "pulp", gap_rel=2)


def test_ilp_torch_input_comes_back_as_torch():
    problem = random_flop_ilp(8, seed=1)
    tp = FlopNnzILP(torch.tensor(np.array(problem.values)), torch.tensor(np.array(problem.costs)),
                    problem.k, problem.flop_budget)
    for name in ILP_SOLVERS:
        res = cp.solve(tp, name)
        assert isinstance(res.x, torch.Tensor)
        assert res.objective == pytest.approx(cp.solve(problem, "bruteforce").objective, rel=1e-9)


# --- L0Regression and StructuredMIQP (cvxpy + SCIP) ------------------------------------------

@st.composite
def l0_instances(draw):
    n = draw(st.integers(2, 8))
    p = draw(st.integers(1, 7))
    k = draw(st.integers(0, p))
    design = draw(st.sampled_from(["gaussian", "correlated", "planted", "rank_deficient"]))
    flops = draw(st.booleans())
    return random_l0_regression(
        n, p, k, design=design, ridge=draw(st.sampled_from([1e-3, 0.1, 1.0])),
        flop_layers=draw(st.integers(1, 3)) if flops else None, flop_fraction=draw(st.sampled_from([0.0, 0.3, 0.7])),
        ties=draw(st.booleans()), seed=draw(st.integers(0, 10_000)),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=l0_instances())
def test_cvxpy_l0_matches_bruteforce(problem):
    _skip_missing("cvxpy")
    assert_agrees(problem, cp.solve(problem, "cvxpy"), cp.solve(problem, "bruteforce"))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=6, p=6, k=0),
        dict(n=6, p=6, k=6),
        dict(n=6, p=6, k=3, flop_layers=2, flop_fraction=0.0),
        dict(n=10, p=6, k=2, ridge=0.0),  # full column rank: big-M from sigma_min(A)
        dict(n=4, p=7, k=3, design="rank_deficient", ridge=0.01),
        dict(n=8, p=6, k=3, design="correlated", rho=0.95),
    ],
)
def test_cvxpy_l0_edge_cases(kwargs):
    _skip_missing("cvxpy")
    problem = random_l0_regression(seed=5, **kwargs)
    assert_agrees(problem, cp.solve(problem, "cvxpy"), cp.solve(problem, "bruteforce"))


def test_cvxpy_refuses_unbounded_big_m():
    _skip_missing("cvxpy")
    problem = random_l0_regression(4, 8, 2, ridge=0.0, seed=0)
    with pytest.raises(ValueError, match="big_m"):
        cp.solve(problem, "cvxpy")
    res = cp.solve(problem, "cvxpy", big_m=1e3)  # user-asserted bound
    assert_valid(problem, res)
    assert res.info["big_m_source"] == "user"


def test_big_m_is_valid_on_the_optimum():
    from combprune.solvers.cvxpy_scip import l0_big_m, structured_big_m

    for seed in range(5):
        problem = random_l0_regression(6, 6, 3, ridge=0.05, design="correlated", seed=seed)
        w = np.asarray(cp.solve(problem, "bruteforce").x)
        assert np.all(np.abs(w) <= l0_big_m(problem))
        sp = random_structured(6, 2, group_size=2, seed=seed)
        W = np.asarray(cp.solve(sp, "bruteforce").x)
        assert np.all(np.abs(W) <= structured_big_m(sp))


@st.composite
def structured_instances(draw):
    d = draw(st.integers(1, 6))
    group_size = draw(st.integers(1, 3))
    n_groups = -(-d // group_size)
    with_costs = draw(st.booleans())
    s = draw(st.one_of(st.none(), st.integers(0, n_groups))) if with_costs else draw(st.integers(0, n_groups))
    return random_structured(
        d, draw(st.integers(1, 3)), s, group_size=group_size, correlated=draw(st.booleans()),
        with_costs=with_costs, n_samples=draw(st.sampled_from([None, 2])), seed=draw(st.integers(0, 10_000)),
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=structured_instances())
def test_cvxpy_structured_matches_bruteforce(problem):
    _skip_missing("cvxpy")
    assert_agrees(problem, cp.solve(problem, "cvxpy"), cp.solve(problem, "bruteforce"))


def test_cvxpy_torch_input_and_time_limit():
    _skip_missing("cvxpy")
    problem = random_l0_regression(6, 5, 2, seed=2)
    tp = L0Regression(torch.tensor(np.array(problem.A)), torch.tensor(np.array(problem.b)), 2,
                      ridge=problem.ridge, w_bar=torch.tensor(np.array(problem.w_bar)))
    res = cp.solve(tp, "cvxpy")
    assert isinstance(res.x, torch.Tensor)
    assert res.objective == pytest.approx(cp.solve(problem, "bruteforce").objective, rel=1e-6)
    big = random_l0_regression(30, 60, 10, seed=1)
    res = cp.solve(big, "cvxpy", time_limit=0.5)
    assert_valid(big, res)
    assert res.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    sbig = random_structured(24, 3, 6, seed=1)
    res = cp.solve(sbig, "cvxpy", time_limit=0.5)
    assert_valid(sbig, res)


def test_cvxpy_options_validated():
    problem = random_l0_regression(4, 4, 2, seed=0)
    for bad in (dict(gap_rel=1.5), dict(big_m=-1.0), dict(big_m=math.inf), dict(scip_params=[1]), dict(verbose="yes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cp.solve(problem, "cvxpy", **bad)
