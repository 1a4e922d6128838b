"""Tests of the ``swap`` local search (solvers/swap.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import L0Regression
from combprune.problems.generators import random_l0_regression
from combprune.registry import get_solver, UnknownSolverError
from combprune.result import Deadline
from combprune.solvers._kernels.columns import ColumnOperator
from combprune.solvers.backsolve import ridge_solve_on_support
from combprune.solvers.swap import SupportModel, swap_search


def _numpy_data(prob):
    return (
        np.asarray(cp.backend.to_numpy(prob.A), dtype=np.float64),
        np.asarray(cp.backend.to_numpy(prob.b), dtype=np.float64),
        np.asarray(cp.backend.to_numpy(prob.w_bar), dtype=np.float64),
    )


def _optimal_value(prob, idx) -> float:
    """Q*(S) by a fresh dense solve (the reference for the low-rank gains)."""
    A, b, w_bar = _numpy_data(prob)
    idx = np.asarray(sorted(idx), dtype=np.int64)
    w = np.zeros(prob.p)
    if idx.size:
        M = np.vstack([A[:, idx], math.sqrt(prob.ridge) * np.eye(idx.size)])
        rhs = np.concatenate([b, math.sqrt(prob.ridge) * w_bar[idx]])
        w[idx] = np.linalg.lstsq(M, rhs, rcond=None)[0]
    return prob.objective(w)


def _greedy_feasible_mask(prob, order) -> np.ndarray:
    """Coordinates in ``order`` added while both budgets hold."""
    mask = np.zeros(prob.p, dtype=bool)
    for i in order:
        mask[i] = True
        if prob.check(mask.astype(np.float64)):
            mask[i] = False
    return mask


def _magnitude_mask(prob) -> np.ndarray:
    return _greedy_feasible_mask(prob, np.argsort(-np.abs(cp.backend.to_numpy(prob.w_bar)), kind="stable"))


def _has(name: str) -> bool:
    try:
        get_solver(name)
    except UnknownSolverError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Low-rank gains equal fresh-solve gains
# ---------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 14),
    p=st.integers(3, 14),
    kfrac=st.floats(0.1, 1.0),
    design=st.sampled_from(["gaussian", "correlated", "planted", "rank_deficient"]),
    ridge=st.sampled_from([1e-2, 0.1, 1.0, 10.0]),
    n_moves=st.integers(0, 6),
    seed=st.integers(0, 10_000),
)
def test_low_rank_gains_equal_fresh_solves(n, p, kfrac, design, ridge, n_moves, seed):
    k = max(1, min(p - 1, round(kfrac * p)))
    prob = random_l0_regression(n, p, k, design=design, ridge=ridge, seed=seed)
    A, b, w_bar = _numpy_data(prob)
    rng = np.random.default_rng(seed)
    model = SupportModel(ColumnOperator(A), b, w_bar, ridge, np.sort(rng.choice(p, size=k, replace=False)), k, (A * A).sum(0))
    for _ in range(n_moves):  # gains must stay exact after rank-one updates, in both forms
        outside = np.setdiff1d(np.arange(p), model.support_idx)
        model.apply(int(rng.integers(model.m)), int(rng.choice(outside)))
    S = list(model.support_idx)
    base = _optimal_value(prob, S)
    scale = max(abs(base), 1e-12)
    assert abs(model.objective - base) <= 1e-8 * scale
    outside = np.setdiff1d(np.arange(p), S)
    swap_gain, add_gain = model.move_gains(outside)
    drop_gain = model.drop_costs()

    # 1e-8 relative (gains below 1e-3 Q* compared at 1e-11 Q*). Rank-deficient designs with a
    # small ridge have cond(G_S) ~ 1e4-1e6: explicit-inverse updates lose accuracy in
    # proportion (the search itself is safeguarded by recomputing Q exactly after each move).
    rtol = 1e-6 if design == "rank_deficient" else 1e-8

    def close(low_rank, fresh):
        return abs(low_rank - fresh) <= rtol * max(abs(fresh), 1e-3 * scale)

    for t, i in enumerate(S):
        fresh = _optimal_value(prob, [x for x in S if x != i]) - base
        assert close(drop_gain[t], fresh), (t, drop_gain[t], fresh)
        for l, j in enumerate(outside):
            fresh = _optimal_value(prob, [x for x in S if x != i] + [j]) - base
            assert close(swap_gain[t, l], fresh), (i, j, swap_gain[t, l], fresh)
    for l, j in enumerate(outside):
        fresh = _optimal_value(prob, S + [j]) - base
        assert close(add_gain[l], fresh), (j, add_gain[l], fresh)


def test_gains_in_woodbury_form_with_many_columns():
    """|S| > n (woodbury form) after many moves, including refactorisation-free stretches."""
    prob = random_l0_regression(6, 40, 25, design="correlated", ridge=0.3, seed=3)
    A, b, w_bar = _numpy_data(prob)
    rng = np.random.default_rng(1)
    model = SupportModel(ColumnOperator(A), b, w_bar, prob.ridge, np.arange(25), 25, (A * A).sum(0))
    assert model.mode == "woodbury"
    for _ in range(30):
        outside = np.setdiff1d(np.arange(40), model.support_idx)
        model.apply(int(rng.integers(model.m)), int(rng.choice(outside)))
    S = list(model.support_idx)
    base = _optimal_value(prob, S)
    outside = np.setdiff1d(np.arange(40), S)[:5]
    swap_gain, _ = model.move_gains(outside)
    for t in range(0, len(S), 5):
        for l, j in enumerate(outside):
            fresh = _optimal_value(prob, [x for x in S if x != S[t]] + [j]) - base
            assert abs(swap_gain[t, l] - fresh) <= 1e-8 * max(abs(fresh), 1e-6 * base)


# ---------------------------------------------------------------------------------------------
# Monotonicity and feasibility of the search
# ---------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 25),
    p=st.integers(4, 30),
    kfrac=st.floats(0.05, 1.0),
    design=st.sampled_from(["gaussian", "correlated", "planted", "rank_deficient"]),
    ridge=st.sampled_from([0.0, 1e-3, 0.1, 2.0]),
    flop_layers=st.sampled_from([None, 1, 3]),
    flop_fraction=st.floats(0.05, 0.9),
    start=st.sampled_from(["magnitude", "random", "empty"]),
    seed=st.integers(0, 10_000),
)
def test_swap_never_worsens_and_stays_feasible(n, p, kfrac, design, ridge, flop_layers, flop_fraction, start, seed):
    k = max(0, min(p, round(kfrac * p)))
    prob = random_l0_regression(n, p, k, design=design, ridge=ridge, flop_layers=flop_layers, flop_fraction=flop_fraction, seed=seed)
    rng = np.random.default_rng(seed)
    if start == "magnitude":
        mask = _magnitude_mask(prob)
    elif start == "random":
        mask = _greedy_feasible_mask(prob, rng.permutation(p))
    else:
        mask = np.zeros(p, dtype=bool)
    start_value = _optimal_value(prob, np.flatnonzero(mask))
    res = cp.solve(prob, "swap", warm_start=mask, candidates=8, drop_candidates=3)
    x = res.x
    assert np.all(np.isfinite(x))
    assert prob.check(x) == []
    assert res.objective == pytest.approx(prob.objective(x), rel=1e-12, abs=1e-12)
    assert res.objective <= start_value * (1 + 1e-10) + 1e-12
    assert res.status in (cp.Status.FEASIBLE, cp.Status.TIME_LIMIT)
    assert res.iterations == res.info["swaps"] + res.info["additions"]
    values = [h[1] for h in res.history]
    assert all(b2 < a2 for a2, b2 in zip(values, values[1:]))
    assert np.array_equal(res.support, x != 0)


def test_swap_improves_magnitude_and_reaches_optimum_on_easy_instance():
    prob = random_l0_regression(40, 15, 4, design="planted", noise=0.01, ridge=0.01, seed=5)
    res = cp.solve(prob, "swap", warm_start=_magnitude_mask(prob))
    opt = cp.solve(prob, "bruteforce")
    assert res.objective == pytest.approx(opt.objective, rel=1e-9)
    assert res.info["local_optimum"] and res.info["exhaustive"]
    assert res.iterations >= 1


def test_pure_additions_fill_an_empty_start():
    prob = random_l0_regression(20, 12, 5, ridge=0.1, seed=1)
    res = cp.solve(prob, "swap", warm_start=np.zeros(12, dtype=bool))
    assert res.nnz == 5
    assert res.info["additions"] == 5


def test_flop_budget_respected_and_additions_use_leftover_budget():
    prob = random_l0_regression(15, 14, 6, ridge=0.1, flop_layers=4, flop_fraction=0.15, seed=7)
    start = np.zeros(14, dtype=bool)
    res = cp.solve(prob, "swap", warm_start=start)
    assert prob.check(res.x) == []
    assert res.nnz >= 1
    opt = cp.solve(prob, "bruteforce")
    assert res.objective >= opt.objective * (1 - 1e-12)


def test_edge_budgets():
    prob0 = random_l0_regression(10, 8, 0, seed=0)
    res0 = cp.solve(prob0, "swap", warm_start=np.zeros(8, dtype=bool))
    assert res0.nnz == 0 and res0.objective == pytest.approx(prob0.objective(np.zeros(8)))
    probp = random_l0_regression(10, 8, 8, seed=0)
    resp = cp.solve(probp, "swap", warm_start=np.ones(8, dtype=bool))
    assert resp.nnz == 8
    assert resp.objective == pytest.approx(_optimal_value(probp, range(8)), rel=1e-10)


def test_zero_ridge_rank_deficient_no_nan():
    for n, p, k in [(6, 20, 10), (20, 12, 5)]:
        prob = random_l0_regression(n, p, k, design="rank_deficient", ridge=0.0, seed=4)
        res = cp.solve(prob, "swap", warm_start=_magnitude_mask(prob))
        assert np.all(np.isfinite(res.x))
        assert prob.check(res.x) == []
        assert res.objective <= _optimal_value(prob, np.flatnonzero(_magnitude_mask(prob))) + 1e-9


def test_many_swaps_with_periodic_refactorisation():
    prob = random_l0_regression(30, 300, 60, design="correlated", ridge=0.05, seed=11)
    mask = _magnitude_mask(prob)
    res = cp.solve(prob, "swap", warm_start=mask, refactor_every=3)
    ref = cp.solve(prob, "swap", warm_start=mask, refactor_every=1000)
    assert res.iterations > 3
    assert prob.check(res.x) == []
    assert res.objective == pytest.approx(_optimal_value(prob, np.flatnonzero(res.support)), rel=1e-9)
    assert ref.objective == pytest.approx(res.objective, rel=1e-6)


def test_woodbury_form_with_flop_budget_and_secondary_screen():
    prob = random_l0_regression(20, 400, 60, design="correlated", rho=0.6, ridge=0.2, flop_layers=5, flop_fraction=0.1, seed=12)
    mask = _magnitude_mask(prob)
    res = cp.solve(prob, "swap", warm_start=mask, candidates=8, drop_candidates=4)
    assert prob.check(res.x) == []
    assert res.iterations > 0 and not res.info["exhaustive"]
    assert res.objective < res.info["initial_objective"]
    assert res.objective == pytest.approx(_optimal_value(prob, np.flatnonzero(res.support)), rel=1e-9)


@pytest.mark.parametrize("n, k", [(30, 12), (8, 30)])
def test_float32_column_storage_matches_float64(monkeypatch, n, k):
    """Kept columns stored in A's float32 (memory rule) give the same gains and search."""
    import combprune.solvers.swap as swap_module

    prob = random_l0_regression(n, 120, k, design="correlated", ridge=0.3, dtype=np.float32, seed=4)
    op = ColumnOperator(cp.backend.to_numpy(prob.A))
    b, w_bar = (np.asarray(cp.backend.to_numpy(v), dtype=np.float64) for v in (prob.b, prob.w_bar))
    idx, J = np.arange(0, 2 * k, 2), np.arange(1, 40, 3)
    ref = SupportModel(op, b, w_bar, prob.ridge, idx, k, op.col_sqnorms())
    monkeypatch.setattr(swap_module, "F64_COLUMNS_MAX_FRACTION", 0.0)
    low = SupportModel(op, b, w_bar, prob.ridge, idx, k, op.col_sqnorms())
    assert low.AS.dtype == np.float32 and ref.AS.dtype == np.float64 and low.mode == ref.mode
    for model in (ref, low):
        model.apply(3, 101)
        model.apply(None if model.m < k else 0, 103)
    np.testing.assert_allclose(low.move_gains(J)[0], ref.move_gains(J)[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(low.drop_costs(), ref.drop_costs(), rtol=1e-9)
    low.refactor()
    assert low.objective == pytest.approx(ref.objective, rel=1e-10)
    res = cp.solve(prob, "swap", warm_start=np.isin(np.arange(120), idx))
    monkeypatch.setattr(swap_module, "F64_COLUMNS_MAX_FRACTION", 0.5)
    ref_res = cp.solve(prob, "swap", warm_start=np.isin(np.arange(120), idx))
    assert res.objective == pytest.approx(ref_res.objective, rel=1e-9)


def test_variable_depth_chains():
    prob = random_l0_regression(10, 20, 3, design="planted", ridge=0.01, seed=36)
    start = _magnitude_mask(prob)
    plain = cp.solve(prob, "swap", warm_start=start, depth=0)
    deep = cp.solve(prob, "swap", warm_start=start, depth=4, breadth=6)
    assert plain.info["chains"] == 0 and deep.info["chains"] >= 1
    assert deep.info["local_optimum"] and plain.info["local_optimum"]
    for res in (plain, deep):
        assert prob.check(res.x) == []
        assert res.iterations == res.info["swaps"] + res.info["additions"]
    # a chain is only kept when it ends lower, so the final point is a 1-swap local optimum too
    again = cp.solve(prob, "swap", warm_start=deep, depth=0)
    assert again.iterations == 0


def test_time_limit_and_max_swaps():
    prob = random_l0_regression(20, 200, 30, design="correlated", ridge=0.1, seed=2)
    mask = _magnitude_mask(prob)
    res = cp.solve(prob, "swap", warm_start=mask, time_limit=1e-9)
    assert res.status is cp.Status.TIME_LIMIT and res.iterations == 0
    assert prob.check(res.x) == []
    capped = cp.solve(prob, "swap", warm_start=mask, max_swaps=2)
    assert capped.iterations == 2


# ---------------------------------------------------------------------------------------------
# Warm starts, dtypes, namespaces
# ---------------------------------------------------------------------------------------------
def test_warm_start_forms_agree():
    prob = random_l0_regression(25, 30, 6, design="correlated", ridge=0.1, seed=3)
    mask = _magnitude_mask(prob)
    w_start = ridge_solve_on_support(prob.A, prob.b, prob.w_bar, prob.ridge, mask)
    start_result = cp.Result(x=w_start, support=mask, objective=prob.objective(w_start), status=cp.Status.FEASIBLE)
    outs = [
        cp.solve(prob, "swap", warm_start=mask),
        cp.solve(prob, "swap", warm_start=w_start),
        cp.solve(prob, "swap", warm_start=list(w_start)),
        cp.solve(prob, "swap", warm_start=start_result),
    ]
    for res in outs:
        assert res.objective == pytest.approx(outs[0].objective, rel=1e-12)
        assert np.array_equal(res.support, outs[0].support)
    assert outs[0].objective <= prob.objective(w_start)


def test_default_warm_start_is_magnitude():
    from combprune.solvers._kernels.l0_data import L0Data
    from combprune.solvers._kernels.projections import default_support

    for flops in (None, 3):
        prob = random_l0_regression(20, 25, 6, ridge=0.1, flop_layers=flops, flop_fraction=0.3, seed=8)
        start = default_support(prob, L0Data(prob))
        res = cp.solve(prob, "swap")
        assert prob.check(res.x) == []
        assert res.info["initial_objective"] == pytest.approx(_optimal_value(prob, np.flatnonzero(start)), rel=1e-10)
        assert res.objective <= res.info["initial_objective"] * (1 + 1e-12)
        if _has("magnitude"):
            assert res.objective <= cp.solve(prob, "magnitude").objective * (1 + 1e-12)


@pytest.mark.skipif(not _has("chita"), reason="chita solver not registered")
def test_after_chita():
    prob = random_l0_regression(30, 60, 10, design="correlated", ridge=0.1, seed=9)
    first = cp.solve(prob, "chita")
    res = cp.solve(prob, "swap", warm_start=first)
    assert res.objective <= first.objective * (1 + 1e-12)
    assert prob.check(res.x) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_and_float32_round_trip(dtype):
    torch = pytest.importorskip("torch")
    prob_np = random_l0_regression(20, 30, 6, ridge=0.1, dtype=dtype, seed=1)
    mask = _magnitude_mask(prob_np)
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    prob_t = L0Regression(
        torch.tensor(np.array(prob_np.A), dtype=tdtype), torch.tensor(np.array(prob_np.b), dtype=tdtype), 6,
        ridge=prob_np.ridge, w_bar=torch.tensor(np.array(prob_np.w_bar), dtype=tdtype),
    )
    res_np = cp.solve(prob_np, "swap", warm_start=mask)
    res_t = cp.solve(prob_t, "swap", warm_start=torch.as_tensor(mask))
    assert isinstance(res_t.x, torch.Tensor) and res_t.x.dtype == tdtype
    assert isinstance(res_np.x, np.ndarray) and res_np.x.dtype == dtype
    assert np.array_equal(res_t.support, res_np.support)
    assert res_t.objective == pytest.approx(res_np.objective, rel=1e-5 if dtype == np.float32 else 1e-12)
    assert prob_t.check(res_t.x) == []
    res_tw = cp.solve(prob_t, "swap", warm_start=res_t)
    assert res_tw.objective <= res_t.objective * (1 + 1e-6) and res_tw.iterations == 0


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, exc, match",
    [
        ({"candidates": 0}, ValueError, "candidates"),
        ({"candidates": True}, ValueError, "candidates"),
        ({"drop_candidates": -1}, ValueError, "drop_candidates"),
        ({"max_swaps": -2}, ValueError, "max_swaps"),
        ({"depth": -1}, ValueError, "depth"),
        ({"breadth": 0}, ValueError, "breadth"),
        ({"refactor_every": 0}, ValueError, "refactor_every"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"tol": float("nan")}, ValueError, "tol"),
        ({"warm_start": np.ones(5, dtype=bool)}, ValueError, "warm_start"),
        ({"warm_start": np.ones(12, dtype=bool)}, ValueError, "warm_start"),
        ({"warm_start": np.full(12, np.nan)}, ValueError, "warm_start"),
        ({"warm_start": "magnitude"}, TypeError, "warm_start"),
        ({"warm_start": np.array(["a"] * 12)}, ValueError, "warm_start"),
        ({"bogus": 1}, TypeError, "bogus"),
    ],
)
def test_bad_options(options, exc, match):
    prob = random_l0_regression(10, 12, 3, seed=0)
    options.setdefault("warm_start", np.zeros(12, dtype=bool))
    with pytest.raises(exc, match=match):
        cp.solve(prob, "swap", **options)


def test_infeasible_flop_warm_start_rejected():
    prob = random_l0_regression(10, 12, 12, flop_layers=2, flop_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="flop_budget"):
        cp.solve(prob, "swap", warm_start=np.ones(12, dtype=bool))
    with pytest.raises(ValueError, match="warm_start"):
        cp.solve(prob, "swap", warm_start=cp.Result(x=None, support=np.zeros(0, bool), objective=math.nan, status="infeasible"))


def test_swap_search_api_validation():
    prob = random_l0_regression(10, 12, 3, seed=0)
    with pytest.raises(TypeError, match="problem"):
        swap_search("nope", np.zeros(12, bool))
    with pytest.raises(ValueError, match="support"):
        swap_search(prob, np.array([0, 99]))
    out = swap_search(prob, np.array([0, 1]), deadline=Deadline(None))
    assert out.objective <= out.initial_objective
    assert out.support.sum() <= 3
