"""``iht`` and ``chita``: exact line search (monotone), active set, back-solve; vs bruteforce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import random_l0_regression
from combprune.solvers._kernels.l0_data import L0Data
from combprune.solvers._kernels.projections import make_projector
from combprune.solvers._kernels.iht_engine import InnerIHT, first_breakpoint

pytest.importorskip("combprune.solvers.dual_sort")


def _instances():
    """Small instances for the bruteforce comparison (p <= 16; p <= 12 with a FLOP budget)."""
    out = []
    seed = 0
    for design in ("gaussian", "correlated", "planted", "rank_deficient"):
        for n, p, k in ((8, 14, 5), (30, 14, 4), (40, 16, 6)):
            out.append((f"{design}-n{n}-p{p}-k{k}", random_l0_regression(n, p, k, design=design, ridge=0.05, seed=seed)))
            seed += 1
        for n, p, k in ((6, 12, 5), (30, 12, 6)):
            prob = random_l0_regression(n, p, k, design=design, ridge=0.05, flop_layers=3, flop_fraction=0.35, seed=seed)
            out.append((f"{design}-flops-n{n}-p{p}-k{k}", prob))
            seed += 1
    return out


INSTANCES = _instances()


@pytest.fixture(scope="module")
def optima():
    return {name: cp.solve(prob, solver="bruteforce").objective for name, prob in INSTANCES}


def _gap(obj, opt):
    return max(obj - opt, 0.0) / max(abs(opt), 1e-12)


@pytest.mark.parametrize("solver, options", [("backsolve", {}), ("iht", {}), ("chita", {}), ("chita", {"swap": True})], ids=["backsolve", "iht", "chita", "chita+swap"])
def test_against_bruteforce(solver, options, optima, record_property):
    if options.get("swap"):
        pytest.importorskip("combprune.solvers.swap")
    gaps = []
    for name, prob in INSTANCES:
        res = cp.solve(prob, solver=solver, **options)
        assert not prob.check(res.x), (name, prob.check(res.x))
        assert res.objective == pytest.approx(prob.objective(res.x), rel=1e-9, abs=1e-12)
        assert res.objective >= optima[name] - 1e-9 * max(1.0, abs(optima[name]))
        gaps.append(_gap(res.objective, optima[name]))
    gaps = np.array(gaps)
    hit = float(np.mean(gaps <= 1e-9))
    label = solver + ("+swap" if options.get("swap") else "")
    summary = f"{label}: exact-hit rate {hit:.2f} over {len(gaps)} instances, median gap {np.median(gaps):.3g}, max gap {gaps.max():.3g}"
    print("\n" + summary)
    record_property(f"{label}_exact_hit_rate", hit)
    record_property(f"{label}_median_gap", float(np.median(gaps)))
    record_property(f"{label}_max_gap", float(gaps.max()))
    if solver != "backsolve":  # regression guard (IHT local optima on these tiny hard instances)
        assert np.median(gaps) < 0.25


def _engine(prob, seed=0):
    data = L0Data(prob)
    proj = make_projector(data)
    rng = np.random.default_rng(seed)
    w0 = np.zeros(prob.p)
    idx = rng.choice(prob.p, size=prob.k, replace=False) if prob.flop_costs is None else np.flatnonzero(proj.support(data.w_bar))
    w0[idx] = data.w_bar[idx]
    return data, InnerIHT(data.op, data.b, data.w_bar, data.ridge, proj, 0.0, w0, w0 != 0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 30),
    p=st.integers(4, 60),
    frac=st.floats(0.05, 0.9),
    ridge=st.sampled_from([0.0, 1e-3, 0.1, 2.0]),
    design=st.sampled_from(["gaussian", "correlated", "rank_deficient"]),
    flops=st.booleans(),
)
def test_line_search_never_increases_objective(seed, n, p, frac, ridge, design, flops):
    k = max(1, int(frac * p))
    kw = {"flop_layers": 3, "flop_fraction": 0.4} if flops else {}
    prob = random_l0_regression(n, p, k, design=design, ridge=ridge, seed=seed, **kw)
    data, inner = _engine(prob, seed)
    f = inner.f
    assert f == pytest.approx(prob.objective(inner.w), rel=1e-9, abs=1e-9)
    for _ in range(15):
        tau, _ = inner.step()
        assert inner.f <= f + 1e-10 * max(1.0, abs(f))
        # the tracked value is the true objective of a feasible iterate
        assert not prob.check(inner.w)
        assert inner.f == pytest.approx(prob.objective(inner.w), rel=1e-7, abs=1e-7)
        f = inner.f
        if tau == 0.0:
            break


def test_first_breakpoint_matches_brute_force():
    rng = np.random.default_rng(3)
    taus = np.linspace(0, 5, 50001)[1:]
    for _ in range(50):
        m, k = 12, 5
        w = np.zeros(m)
        T = np.zeros(m, bool)
        T[rng.choice(m, k, replace=False)] = True
        w[T] = rng.standard_normal(k)
        g = rng.standard_normal(m)
        tau1 = first_breakpoint(w, g, T)
        U = np.abs(w[None, :] - taus[:, None] * g[None, :])
        changed = U[:, T].min(axis=1) < U[:, ~T].max(axis=1)
        first = taus[np.argmax(changed)] if changed.any() else np.inf
        if np.isinf(first):
            assert tau1 > 5 - 1e-4
        else:
            assert tau1 == pytest.approx(first, abs=2e-4)


def test_iht_options_and_variants():
    prob = random_l0_regression(40, 400, 20, design="correlated", seed=7)
    base = cp.solve(prob, solver="iht")
    full = cp.solve(prob, solver="iht", active_factor=None)
    fixed = cp.solve(prob, solver="iht", line_search=False, max_iter=200)
    nob = cp.solve(prob, solver="iht", backsolve=False)
    for r in (base, full, fixed, nob):
        assert not prob.check(r.x)
        assert r.objective == pytest.approx(prob.objective(r.x), rel=1e-9)
    assert 40 <= base.info["active_size"] <= 400 and base.info["outer"] >= 1
    assert base.objective <= nob.objective + 1e-9
    # history is monotone and ends at the returned objective
    h = [v for _, v in base.history]
    assert all(b <= a for a, b in zip(h, h[1:])) and h[-1] == pytest.approx(base.objective)


def test_chita_stages_and_warm_starts():
    prob = random_l0_regression(30, 300, 15, seed=2)
    r = cp.solve(prob, solver="chita")
    names = [s["stage"] for s in r.info["stages"]]
    assert names[0].startswith("warm start") and "active-set IHT" in names and "backsolve" in names
    mag = cp.solve(prob, solver="backsolve")
    r2 = cp.solve(prob, solver="chita", warm_start="backsolve")
    assert r2.objective <= mag.objective + 1e-9
    r3 = cp.solve(prob, solver="chita", warm_start=mag)
    assert r3.objective <= mag.objective + 1e-9
    r4 = cp.solve(prob, solver="chita", warm_start=mag.support)
    assert not prob.check(r4.x)


def test_chita_with_swap_stage():
    pytest.importorskip("combprune.solvers.swap")
    prob = random_l0_regression(20, 60, 8, design="correlated", seed=4)
    r = cp.solve(prob, solver="chita", swap=True)
    plain = cp.solve(prob, solver="chita")
    assert not prob.check(r.x)
    assert r.objective <= plain.objective + 1e-9
    assert r.info["stages"][-1]["stage"] == "swap"


def test_flop_budget_feasible():
    prob = random_l0_regression(30, 200, 60, flop_layers=5, flop_fraction=0.2, seed=3)
    for solver in ("iht", "chita"):
        r = cp.solve(prob, solver=solver)
        assert not prob.check(r.x)


def test_float32_and_torch():
    prob = random_l0_regression(30, 200, 20, seed=9)
    A, b, wb = (np.array(x) for x in (prob.A, prob.b, prob.w_bar))
    ref = {solver: cp.solve(prob, solver=solver) for solver in ("iht", "chita")}
    p32 = cp.L0Regression(A.astype(np.float32), b.astype(np.float32), 20, ridge=prob.ridge, w_bar=wb.astype(np.float32))
    pt = cp.L0Regression(torch.from_numpy(A), torch.from_numpy(b), 20, ridge=prob.ridge, w_bar=torch.from_numpy(wb))
    pt32 = cp.L0Regression(torch.from_numpy(A).float(), torch.from_numpy(b).float(), 20, ridge=prob.ridge, w_bar=torch.from_numpy(wb).float())
    for problem, dtype in ((p32, np.float32), (pt, torch.float64), (pt32, torch.float32)):
        for solver in ("iht", "chita"):
            r = cp.solve(problem, solver=solver)
            assert r.x.dtype == dtype
            assert not problem.check(r.x)
            assert r.objective == pytest.approx(problem.objective(r.x), rel=1e-5)
            assert r.objective == pytest.approx(ref[solver].objective, rel=1e-2)


def test_edge_budgets_and_time_limit():
    for k in (0, 1, 12):
        prob = random_l0_regression(10, 12, k, seed=k)
        for solver in ("iht", "chita"):
            r = cp.solve(prob, solver=solver)
            assert not prob.check(r.x) and r.nnz <= k
    prob = random_l0_regression(10, 12, 12, seed=0)
    assert cp.solve(prob, solver="chita").objective == pytest.approx(cp.solve(prob, solver="bruteforce").objective, rel=1e-9)
    big = random_l0_regression(50, 3000, 200, seed=1)
    r = cp.solve(big, solver="chita", time_limit=1e-3)
    assert not big.check(r.x) and r.status in (cp.Status.TIME_LIMIT, cp.Status.FEASIBLE)


def test_bad_options_raise():
    prob = random_l0_regression(10, 30, 5, seed=0)
    with pytest.raises(ValueError, match="active_factor"):
        cp.solve(prob, solver="iht", active_factor=0.5)
    with pytest.raises(ValueError, match="max_iter"):
        cp.solve(prob, solver="iht", max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        cp.solve(prob, solver="chita", tol=-1.0)
    with pytest.raises(ValueError, match="warm_start"):
        cp.solve(prob, solver="chita", warm_start="nonsense")
    with pytest.raises(ValueError, match="warm_start"):
        cp.solve(prob, solver="iht", warm_start=np.ones(30))  # 30 nonzeros > k
    with pytest.raises(ValueError, match="swap_options"):
        cp.solve(prob, solver="chita", swap_options=3)
    with pytest.raises(TypeError, match="unknown option"):
        cp.solve(prob, solver="chita", stepsize=1.0)


@pytest.mark.skipif(not cp.backend.cupy_available(), reason="needs CuPy and a CUDA device")
def test_cupy_inputs():  # pragma: no cover - GPU only
    import cupy

    prob = random_l0_regression(30, 300, 20, flop_layers=3, flop_fraction=0.4, seed=12)
    A, b, wb, c = (np.array(x) for x in (prob.A, prob.b, prob.w_bar, prob.flop_costs))
    pc = cp.L0Regression(cupy.asarray(A, dtype=cupy.float32), cupy.asarray(b, dtype=cupy.float32), 20, ridge=prob.ridge,
                         w_bar=cupy.asarray(wb, dtype=cupy.float32), flop_costs=cupy.asarray(c), flop_budget=prob.flop_budget)
    for solver in ("backsolve", "iht", "chita", "dfo"):
        r = cp.solve(pc, solver=solver)
        assert isinstance(r.x, cupy.ndarray) and r.x.dtype == cupy.float32
        assert not pc.check(r.x)
        assert r.objective == pytest.approx(pc.objective(r.x), rel=1e-4)


@pytest.mark.parametrize("flops", [False, True])
@pytest.mark.parametrize("n, p, k, ridge", [(20, 300, 60, 0.1), (40, 120, 20, 0.5), (20, 100, 40, 0.0)])
def test_support_refinement_monotone_and_feasible(flops, n, p, k, ridge):
    from combprune.result import Deadline
    from combprune.solvers._kernels.refine import refine_support

    kw = {"flop_layers": 4, "flop_fraction": 0.3} if flops else {}
    prob = random_l0_regression(n, p, k, ridge=ridge, seed=n + p, **kw)
    start = cp.solve(prob, solver="backsolve")
    data = L0Data(prob)
    out = refine_support(data, np.asarray(start.x, dtype=float), make_projector(data), deadline=Deadline(None), keep_iterates=True)
    floor = 1e-12 * float(np.dot(prob.b, prob.b))  # round-off of an interpolating fit (ridge 0, k > n)
    assert out.objective <= start.objective + 1e-9 * abs(start.objective) + floor
    assert out.objective == pytest.approx(prob.objective(out.w), rel=1e-9, abs=floor)
    assert not prob.check(out.w)
    for S in out.iterates:  # every accepted support satisfies both budgets
        assert not prob.check(np.where(S, 1.0, 0.0))


@pytest.mark.parametrize("flops", [False, True])
def test_chita_refinement_on_active_block(flops):
    kw = {"flop_layers": 4, "flop_fraction": 0.3} if flops else {}
    prob = random_l0_regression(20, 400, 60, ridge=0.1, seed=21, **kw)  # |S| > n: Woodbury refinement
    r = cp.solve(prob, solver="chita")
    plain = cp.solve(prob, solver="chita", refine=False)
    assert not prob.check(r.x)
    assert r.objective == pytest.approx(prob.objective(r.x), rel=1e-9)
    assert r.objective <= plain.objective + 1e-9 * abs(plain.objective)
    assert any(s["stage"] == "support refinement" for s in r.info["stages"])


class _GeometricIHT:
    """A stand-in for InnerIHT whose objective falls by 3 % a step towards ``const``."""

    def __init__(self, f0: float, noise: float, const: float = 0.0):
        self.f, self.noise, self.const, self.mask = f0, noise, const, np.ones(3, bool)

    def step(self):
        self.f = self.const + (self.f - self.const) * 0.97
        return 1.0, False


@pytest.mark.parametrize("f0, noise, const, stops_at_once", [(1e-11, 1e-4, 0.0, True), (5.0 + 1e-11, 1e-4, -5.0, False),
                                                             (1.0, 1e-4, 0.0, False)])
def test_run_inner_stops_at_an_exact_fit_within_the_rounding_of_A(f0, noise, const, stops_at_once):
    """A (sub-)problem fitted exactly up to the rounding of A's products (Q - const below
    ``noise``) is converged: relative decreases there are rounding, which once ran a
    polishing stage of CHITA++ to max_iter. Above the floor the relative rule decides."""
    from combprune.result import Deadline
    from combprune.solvers._kernels.iht_engine import run_inner

    inner = _GeometricIHT(f0 + const, noise, const)
    it, _, converged = run_inner(inner, deadline=Deadline(None), max_iter=200, tol=1e-7, refresh_every=None)
    assert converged is stops_at_once
    assert (it == 1) is stops_at_once
