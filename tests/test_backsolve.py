"""``backsolve`` / ``ridge_solve_on_support``: exact ridge least squares on a support."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import combprune as cp
from combprune.problems import random_l0_regression
from combprune.solvers.backsolve import ridge_solve_on_support


def dense_reference(A, b, w_bar, ridge, S):
    """The textbook solve: (A_S^T A_S + ridge I) w_S = A_S^T b + ridge w_bar_S, in float64."""
    w = np.zeros(A.shape[1])
    AS = A[:, S]
    w[S] = np.linalg.solve(AS.T @ AS + ridge * np.eye(len(S)), AS.T @ b + ridge * w_bar[S])
    return w


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("n, p, s", [(50, 200, 20), (50, 200, 49), (50, 200, 51), (40, 300, 150), (30, 40, 40)])
@pytest.mark.parametrize("ridge", [1e-2, 0.1, 3.0])
def test_matches_dense_reference(n, p, s, ridge):
    rng = np.random.default_rng(n + p + s)
    A = rng.standard_normal((n, p))
    b = rng.standard_normal(n)
    w_bar = rng.standard_normal(p)
    S = np.sort(rng.choice(p, s, replace=False))
    ref = dense_reference(A, b, w_bar, ridge, S)
    assert rel(ridge_solve_on_support(A, b, w_bar, ridge, S), ref) < 1e-8
    # chunked Woodbury (tiny gather budget) and a boolean-mask support give the same answer
    mask = np.zeros(p, bool)
    mask[S] = True
    assert rel(ridge_solve_on_support(A, b, w_bar, ridge, mask, max_gather_fraction=1e-3), ref) < 1e-8


def test_correlated_and_rank_deficient():
    for design in ("correlated", "rank_deficient"):
        prob = random_l0_regression(30, 120, 60, design=design, ridge=0.5, seed=3)
        A, b, wb = (np.asarray(x) for x in (prob.A, prob.b, prob.w_bar))
        S = np.arange(0, 120, 2)
        assert rel(ridge_solve_on_support(A, b, wb, 0.5, S), dense_reference(A, b, wb, 0.5, S)) < 1e-8


def test_ridge_zero_is_closest_least_squares_solution():
    rng = np.random.default_rng(0)
    n, p = 20, 60
    A, b, w_bar = rng.standard_normal((n, p)), rng.standard_normal(n), rng.standard_normal(p)
    # |S| > n: interpolates b, and w_S - w_bar_S is the minimum-norm correction
    S = np.arange(40)
    w = ridge_solve_on_support(A, b, w_bar, 0.0, S)
    assert np.linalg.norm(A @ w - b) < 1e-10
    d = w[S] - w_bar[S]
    assert rel(d, np.linalg.pinv(A[:, S]) @ (b - A[:, S] @ w_bar[S])) < 1e-8
    # |S| < n: ordinary least squares
    S = np.arange(10)
    w = ridge_solve_on_support(A, b, w_bar, 0.0, S)
    assert rel(w[S], np.linalg.lstsq(A[:, S], b, rcond=None)[0]) < 1e-8


def test_block_gauss_seidel_monotone_and_convergent():
    prob = random_l0_regression(30, 200, 60, ridge=2.0, seed=5)
    A, b, wb = (np.asarray(x) for x in (prob.A, prob.b, prob.w_bar))
    S = np.argsort(-np.abs(wb))[:60]
    exact = ridge_solve_on_support(A, b, wb, 2.0, S)
    start = np.where(np.isin(np.arange(200), S), wb, 0.0)
    objs = [prob.objective(start)]
    for sweeps in (1, 2, 4, 8):
        w = ridge_solve_on_support(A, b, wb, 2.0, S, block_size=25, sweeps=sweeps)
        objs.append(prob.objective(w))
    assert all(b_ <= a_ + 1e-9 * abs(a_) for a_, b_ in zip(objs, objs[1:]))
    w = ridge_solve_on_support(A, b, wb, 2.0, S, blocks=np.arange(200) % 3, sweeps=300)
    assert rel(w, exact) < 1e-6
    assert prob.objective(exact) <= objs[-1] + 1e-9


def test_solver_default_support_and_options():
    prob = random_l0_regression(40, 100, 10, seed=1)
    res = cp.solve(prob, solver="backsolve")
    assert not prob.check(res.x)
    assert res.objective == pytest.approx(prob.objective(res.x), rel=1e-10)
    wb = np.asarray(prob.w_bar)
    assert set(np.flatnonzero(res.support)) <= set(np.argsort(-np.abs(wb))[:10])
    assert res.info["mode"] == "primal"
    S = np.arange(10)
    res2 = cp.solve(prob, solver="backsolve", support=S)
    assert res2.objective == pytest.approx(prob.objective(dense_reference(*(np.asarray(x) for x in (prob.A, prob.b, prob.w_bar)), prob.ridge, S)), rel=1e-10)
    res3 = cp.solve(prob, solver="backsolve", block_size=10, sweeps=3)
    assert res3.info["mode"] == "block" and not prob.check(res3.x)


def test_flop_budget_default_support_is_feasible():
    prob = random_l0_regression(30, 80, 20, flop_layers=4, flop_fraction=0.3, seed=2)
    res = cp.solve(prob, solver="backsolve")
    assert not prob.check(res.x)


def test_bad_options_raise():
    prob = random_l0_regression(20, 50, 5, seed=0)
    with pytest.raises(ValueError, match="support"):
        cp.solve(prob, solver="backsolve", support=np.arange(6))
    with pytest.raises(ValueError, match="support"):
        cp.solve(prob, solver="backsolve", support=np.array([0, 50]))
    with pytest.raises(ValueError, match="block_size"):
        cp.solve(prob, solver="backsolve", block_size=0)
    with pytest.raises(ValueError, match="sweeps"):
        cp.solve(prob, solver="backsolve", block_size=5, sweeps=0)
    with pytest.raises(ValueError, match="blocks"):
        cp.solve(prob, solver="backsolve", blocks=np.zeros(3, int))
    with pytest.raises(TypeError, match="unknown option"):
        cp.solve(prob, solver="backsolve", tau=1.0)
    with pytest.raises(ValueError, match="ridge"):
        ridge_solve_on_support(np.asarray(prob.A), np.asarray(prob.b), np.asarray(prob.w_bar), -1.0, np.arange(3))


def test_float32_and_torch_inputs():
    prob = random_l0_regression(40, 150, 60, seed=4)
    A, b, wb = (np.array(x) for x in (prob.A, prob.b, prob.w_bar))
    ref = cp.solve(prob, solver="backsolve")
    p32 = cp.L0Regression(A.astype(np.float32), b.astype(np.float32), 60, ridge=prob.ridge, w_bar=wb.astype(np.float32))
    r32 = cp.solve(p32, solver="backsolve")
    assert r32.x.dtype == np.float32
    assert r32.objective == pytest.approx(ref.objective, rel=1e-4)
    assert r32.objective == pytest.approx(p32.objective(r32.x), rel=1e-5)
    pt = cp.L0Regression(torch.from_numpy(A), torch.from_numpy(b), 60, ridge=prob.ridge, w_bar=torch.from_numpy(wb))
    rt = cp.solve(pt, solver="backsolve")
    assert isinstance(rt.x, torch.Tensor) and rt.x.dtype == torch.float64
    assert rt.objective == pytest.approx(ref.objective, rel=1e-10)
    w = ridge_solve_on_support(torch.from_numpy(A).float(), torch.from_numpy(b), torch.from_numpy(wb), prob.ridge, torch.arange(60))
    assert isinstance(w, np.ndarray) and w.dtype == np.float64


def test_k_zero_and_k_p():
    prob = random_l0_regression(10, 12, 0, seed=0)
    res = cp.solve(prob, solver="backsolve")
    assert res.nnz == 0 and res.objective == pytest.approx(prob.objective(np.zeros(12)))
    prob = random_l0_regression(10, 12, 12, seed=0)
    res = cp.solve(prob, solver="backsolve")
    A, b, wb = (np.asarray(x) for x in (prob.A, prob.b, prob.w_bar))
    assert rel(np.asarray(res.x), dense_reference(A, b, wb, prob.ridge, np.arange(12))) < 1e-8
