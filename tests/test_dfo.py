"""``dfo``: FALCON's discrete first-order method (FLOP-NNZ ILP projection + back-solve)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import random_l0_regression
from combprune.problems.l0_regression import within_budget


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(4, 40),
    p=st.integers(8, 80),
    frac=st.floats(0.1, 0.8),
    flop_fraction=st.floats(0.0, 1.0),
    design=st.sampled_from(["gaussian", "correlated", "planted", "rank_deficient"]),
    step=st.sampled_from(["line_search", "lipschitz"]),
)
def test_budgets_hold_at_every_iterate(seed, n, p, frac, flop_fraction, design, step):
    k = max(1, int(frac * p))
    prob = random_l0_regression(n, p, k, design=design, flop_layers=4, flop_fraction=flop_fraction, seed=seed)
    res = cp.solve(prob, solver="dfo", step=step, max_iter=60)
    assert not prob.check(res.x)
    assert res.objective == pytest.approx(prob.objective(res.x), rel=1e-9, abs=1e-12)
    for it in res.info["iterates"]:
        assert it["nnz"] <= prob.k
        assert within_budget(it["flops"], prob.flop_budget)
    objs = [it["objective"] for it in res.info["iterates"] if it["objective"] is not None]
    assert res.objective <= objs[0] + 1e-9 * max(1.0, abs(objs[0]))


def test_against_bruteforce(record_property):
    gaps = []
    for seed, design in enumerate(["gaussian", "correlated", "planted", "rank_deficient"] * 2):
        n = 6 if seed % 2 else 30
        prob = random_l0_regression(n, 12, 5, design=design, ridge=0.05, flop_layers=3, flop_fraction=0.35, seed=100 + seed)
        opt = cp.solve(prob, solver="bruteforce").objective
        res = cp.solve(prob, solver="dfo")
        assert not prob.check(res.x)
        assert res.objective >= opt - 1e-9 * max(1.0, abs(opt))
        gaps.append(max(res.objective - opt, 0.0) / abs(opt))
    gaps = np.array(gaps)
    hit = float(np.mean(gaps <= 1e-9))
    print(f"\ndfo: exact-hit rate {hit:.2f} over {gaps.size} FLOP-budget instances, median gap {np.median(gaps):.3g}, max gap {gaps.max():.3g}")
    record_property("dfo_exact_hit_rate", hit)
    record_property("dfo_median_gap", float(np.median(gaps)))
    assert np.median(gaps) < 0.25


def test_improves_on_flop_aware_magnitude():
    prob = random_l0_regression(40, 600, 60, flop_layers=6, flop_fraction=0.15, seed=11)
    mag = cp.solve(prob, solver="backsolve")
    res = cp.solve(prob, solver="dfo")
    assert res.objective <= mag.objective + 1e-9
    assert res.info["rounds"] >= 1


def test_without_flop_budget_and_edge_cases():
    prob = random_l0_regression(20, 60, 6, seed=1)
    assert not prob.check(cp.solve(prob, solver="dfo").x)
    zero = random_l0_regression(10, 20, 0, flop_layers=2, seed=2)
    assert cp.solve(zero, solver="dfo").nnz == 0
    nobudget = random_l0_regression(10, 20, 5, flop_layers=2, flop_fraction=0.0, seed=3)
    r = cp.solve(nobudget, solver="dfo")
    assert not nobudget.check(r.x)


def test_float32_and_torch():
    prob = random_l0_regression(30, 120, 20, flop_layers=3, flop_fraction=0.3, seed=5)
    A, b, wb, c = (np.array(x) for x in (prob.A, prob.b, prob.w_bar, prob.flop_costs))
    ref = cp.solve(prob, solver="dfo")
    p32 = cp.L0Regression(A.astype(np.float32), b.astype(np.float32), 20, ridge=prob.ridge, w_bar=wb.astype(np.float32), flop_costs=c, flop_budget=prob.flop_budget)
    pt = cp.L0Regression(torch.from_numpy(A).float(), torch.from_numpy(b).float(), 20, ridge=prob.ridge, w_bar=torch.from_numpy(wb).float(), flop_costs=torch.from_numpy(c), flop_budget=prob.flop_budget)
    for problem in (p32, pt):
        r = cp.solve(problem, solver="dfo")
        assert not problem.check(r.x)
        assert r.objective == pytest.approx(problem.objective(r.x), rel=1e-5)
        assert r.objective == pytest.approx(ref.objective, rel=1e-2)
    assert isinstance(cp.solve(pt, solver="dfo").x, torch.Tensor)


def test_bad_options_raise():
    prob = random_l0_regression(10, 30, 5, flop_layers=2, seed=0)
    with pytest.raises(ValueError, match="step"):
        cp.solve(prob, solver="dfo", step="newton")
    with pytest.raises(ValueError, match="max_rounds"):
        cp.solve(prob, solver="dfo", max_rounds=0)
    with pytest.raises(ValueError, match="warm_start"):
        cp.solve(prob, solver="dfo", warm_start=np.ones(30))
