"""``backsolve`` / ``ridge_solve_on_support``: exact ridge least squares on a support."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import random_l0_regression
from combprune.solvers._kernels import ridge as backsolve_module  # the back-solve kernel (constants patched below)
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


# --- the Woodbury system by conjugate gradients (method="cg" / "auto") -------------------------
def _gaussian(n, p, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, p))
    w_bar = rng.standard_normal(p)
    return A, A @ w_bar + 0.1 * rng.standard_normal(n), w_bar


def test_auto_uses_cg_and_matches_direct(monkeypatch):
    n, p, k = 300, 20000, 6000
    A, b, w_bar = _gaussian(n, p, 0)
    prob = cp.L0Regression(A, b, k, ridge=0.1, w_bar=w_bar)
    assert cp.solve(prob, solver="backsolve").info["method"] == "direct"  # n < CG_MIN_N
    monkeypatch.setattr(backsolve_module, "CG_MIN_N", 256)
    auto = cp.solve(prob, solver="backsolve")
    direct = cp.solve(prob, solver="backsolve", method="direct")
    assert auto.info["method"] == "cg" and auto.info["cg_iterations"] <= 16
    assert direct.info["method"] == "direct" and "cg_iterations" not in direct.info
    assert auto.objective == pytest.approx(direct.objective, rel=1e-10, abs=0)
    assert auto.objective == pytest.approx(prob.objective(auto.x), rel=1e-10)
    assert rel(np.asarray(auto.x), np.asarray(direct.x)) < 1e-7


@pytest.mark.parametrize("ridge", [1e-3, 0.1, 10.0])
@pytest.mark.parametrize("n, p, s", [(20, 200, 150), (50, 400, 60), (60, 300, 300)])
def test_cg_matches_dense_reference(n, p, s, ridge):
    """Forced CG (with its fallback) is the exact solve, also near s = n where K is ill-conditioned."""
    A, b, w_bar = _gaussian(n, p, n + s)
    S = np.sort(np.random.default_rng(s).choice(p, s, replace=False))
    ref = dense_reference(A, b, w_bar, ridge, S)
    info: dict = {}
    w, e = ridge_solve_on_support(A, b, w_bar, ridge, S, method="cg", info=info, return_residual=True)
    assert info["method"] in ("cg", "direct") and "cg_iterations" in info
    assert rel(w, ref) < 1e-7
    assert np.allclose(e, A @ w - b, rtol=0, atol=1e-9 * np.linalg.norm(b))
    q = lambda x: 0.5 * np.sum((A @ x - b) ** 2) + 0.5 * ridge * np.sum((x - w_bar) ** 2)  # noqa: E731
    assert q(w) == pytest.approx(q(ref), rel=1e-10)


def test_cg_falls_back_on_ill_conditioned_systems():
    # s barely above n (K nearly singular) and correlated / rank-deficient columns
    A, b, w_bar = _gaussian(300, 400, 1)
    S = np.arange(301)
    info: dict = {}
    w = ridge_solve_on_support(A, b, w_bar, 1e-6, S, method="cg", info=info)
    assert info.get("cg_fallback") and info["method"] == "direct" and info["cg_iterations"] <= 30
    assert rel(w, dense_reference(A, b, w_bar, 1e-6, S)) < 1e-6
    for design in ("correlated", "rank_deficient"):
        prob = random_l0_regression(300, 900, 600, design=design, ridge=1e-3, seed=5)
        A2, b2, wb2 = (np.asarray(x) for x in (prob.A, prob.b, prob.w_bar))
        S2 = np.arange(0, 900, 2)[:600] if design == "correlated" else np.arange(600)
        info = {}
        w2 = ridge_solve_on_support(A2, b2, wb2, 1e-3, S2, info=info)
        ref = dense_reference(A2, b2, wb2, 1e-3, S2)
        q = lambda x: 0.5 * np.sum((A2 @ x - b2) ** 2) + 0.5 * 1e-3 * np.sum((x - wb2) ** 2)  # noqa: E731
        assert q(w2) == pytest.approx(q(ref), rel=1e-9)


def test_method_option_paths(monkeypatch):
    monkeypatch.setattr(backsolve_module, "CG_MIN_N", 256)
    A, b, w_bar = _gaussian(300, 8000, 2)
    S = np.arange(5000)  # beyond the gather budget: CG on all of A with a mask
    ref = ridge_solve_on_support(A, b, w_bar, 0.5, S, method="direct")
    # state requested (dfo, InnerIHT need K): auto takes the direct solve and fills it
    state: dict = {}
    info: dict = {}
    ridge_solve_on_support(A, b, w_bar, 0.5, S, state=state, info=info)
    assert info["method"] == "direct" and state["K"].shape == (300, 300)
    info = {}
    w = ridge_solve_on_support(A, b, w_bar, 0.5, S, info=info)
    assert info["method"] == "cg" and rel(w, ref) < 1e-7
    # float32 A: auto is direct; s <= n and ridge = 0 are direct whatever the method
    info = {}
    ridge_solve_on_support(A.astype(np.float32), b, w_bar, 0.5, S, info=info)
    assert info["method"] == "direct"
    for ridge, S2 in ((0.5, np.arange(200)), (0.0, S)):
        info = {}
        ridge_solve_on_support(A, b, w_bar, ridge, S2, method="cg", info=info)
        assert info["method"] == "direct"
    # torch float64 and the block variant with CG blocks
    info = {}
    wt = ridge_solve_on_support(torch.from_numpy(A), torch.from_numpy(b), torch.from_numpy(w_bar), 0.5, S, info=info)
    assert info["method"] == "cg" and rel(wt, ref) < 1e-7
    wblk = ridge_solve_on_support(A, b, w_bar, 0.5, S, block_size=2500, sweeps=1, method="cg")
    assert np.all(wblk[5000:] == 0) and np.isfinite(wblk).all()
    with pytest.raises(ValueError, match="method"):
        ridge_solve_on_support(A, b, w_bar, 0.5, S, method="lsqr")
    prob = cp.L0Regression(A, b, 5000, ridge=0.5, w_bar=w_bar)
    with pytest.raises(ValueError, match="method"):
        cp.solve(prob, solver="backsolve", method="bogus")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 30),
    extra=st.integers(1, 60),
    ridge=st.floats(1e-4, 10.0),
    design=st.sampled_from(["gaussian", "correlated", "rank_deficient"]),
    seed=st.integers(0, 10_000),
)
def test_cg_is_exact_property(n, extra, ridge, design, seed):
    """Whether CG converges or falls back, the objective is the direct solve's to 1e-10."""
    p = n + extra + 10
    prob = random_l0_regression(n, p, n + extra, design=design, ridge=ridge, seed=seed)
    A, b, wb = (np.asarray(x) for x in (prob.A, prob.b, prob.w_bar))
    S = np.arange(n + extra)
    q = lambda x: 0.5 * np.sum((A @ x - b) ** 2) + 0.5 * ridge * np.sum((x - wb) ** 2)  # noqa: E731
    ref = q(ridge_solve_on_support(A, b, wb, ridge, S, method="direct"))
    assert q(ridge_solve_on_support(A, b, wb, ridge, S, method="cg")) == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_threaded_gather_equals_take(monkeypatch):
    from combprune.solvers._kernels.columns import ColumnOperator

    monkeypatch.setattr(backsolve_module, "_GATHER_THREADED_BYTES", 0)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((37, 500))
    op = ColumnOperator(A)
    for idx in (np.arange(0, 500, 3), np.array([0, 499]), np.sort(rng.choice(500, 200, replace=False))):
        assert np.array_equal(backsolve_module._gather(op, idx), A[:, idx])
    # and the solve through it is unchanged
    b, w_bar = rng.standard_normal(37), rng.standard_normal(500)
    S = np.arange(0, 500, 4)
    assert rel(ridge_solve_on_support(A, b, w_bar, 0.3, S), dense_reference(A, b, w_bar, 0.3, S)) < 1e-8
