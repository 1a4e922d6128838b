"""Tests of the ``dual-sort`` solver (FALCON's LP dual search for the FLOP-NNZ ILP)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import combprune
from combprune.backend import cupy_available
from combprune.problems import FlopNnzILP
from combprune.problems.generators import random_flop_ilp
from combprune.result import Status
from combprune.solvers._kernels import flop_nnz as ds  # the algorithm (its constants are patched below)
from combprune.solvers.dual_sort import DualSortSolution, flop_nnz_select, solve_flop_nnz_lp

highspy = pytest.importorskip("highspy")


def highs_lp(v: np.ndarray, f: np.ndarray, k: int, F: float, *, integer: bool = False) -> float:
    """max v.z s.t. sum z <= k, f.z <= F, 0 <= z <= 1 (integer z if asked), tight tolerances."""
    p = v.size
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("primal_feasibility_tolerance", 1e-10)
    h.setOptionValue("dual_feasibility_tolerance", 1e-10)
    if integer:
        h.setOptionValue("mip_rel_gap", 1e-12)
        h.setOptionValue("mip_abs_gap", 0.0)
        h.setOptionValue("mip_feasibility_tolerance", 1e-10)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = p, 2
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = v.astype(np.float64)
    lp.col_lower_, lp.col_upper_ = np.zeros(p), np.ones(p)
    lp.row_lower_ = np.array([-highspy.kHighsInf, -highspy.kHighsInf])
    lp.row_upper_ = np.array([float(k), float(F)])
    nz = np.flatnonzero(f)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = p, 2
    lp.a_matrix_.start_ = np.array([0, p, p + nz.size], dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate([np.arange(p), nz]).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate([np.ones(p), f[nz]]).astype(np.float64)
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * p
    h.passModel(lp)
    h.run()
    return float(h.getInfo().objective_function_value)


@pytest.fixture(params=["default", "tiny-blocks"])
def small_constants(request, monkeypatch):
    """Exercise the layered selection rounds, warm starts and block sums on small instances."""
    monkeypatch.setattr(ds, "_LAYERED_MIN_P", 1)
    if request.param == "tiny-blocks":
        monkeypatch.setattr(ds, "_GATHER", 4)
        monkeypatch.setattr(ds, "_SAMPLES", 6)
        monkeypatch.setattr(ds, "_PIVOTS", 3)
        monkeypatch.setattr(ds, "_BLOCK", 3)
        monkeypatch.setattr(ds, "_NARROW_MIN", 2)
        monkeypatch.setattr(ds, "_SAMPLE_P", 8)
        monkeypatch.setattr(ds, "_AUTO_RUN_LENGTH", 2)
    return request.param


@st.composite
def instances(draw, max_p: int = 24):
    p = draw(st.integers(1, max_p))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(p) ** 2
    if draw(st.booleans()):  # ties
        v = np.round(v * 2) / 2
    if draw(st.integers(0, 5)) == 0:
        v[rng.random(p) < 0.5] = 0.0  # zero values
    layered = draw(st.booleans())
    if layered:
        n_layers = draw(st.integers(1, 6))
        layer = rng.integers(0, n_layers, p)
        if draw(st.booleans()):
            layer = np.sort(layer)
        per = rng.integers(0, 6, n_layers).astype(float) if draw(st.booleans()) else rng.uniform(0, 5, n_layers)
        f = per[layer]
    else:
        layer = None
        f = rng.integers(0, 6, p).astype(float) if draw(st.booleans()) else rng.uniform(0.0, 5.0, p)
        f[rng.random(p) < draw(st.sampled_from([0.0, 0.3]))] = 0.0  # zero costs
    k = draw(st.sampled_from(["zero", "full", "rand"]))
    k = 0 if k == "zero" else p if k == "full" else int(rng.integers(0, p + 1))
    budget = draw(st.sampled_from(["zero", "loose", "rand", "rand", "rand"]))
    total = float(f.sum())
    F = 0.0 if budget == "zero" else 2.0 * total + 1.0 if budget == "loose" else float(rng.uniform(0, 1.1 * total))
    return v, f, k, F, layer


def _scale(v: np.ndarray, f: np.ndarray, nu: float, mu: float) -> float:
    return 1.0 + float(np.max(v, initial=0.0)) + nu * float(np.max(f, initial=0.0)) + mu


def _check_solution(sol: DualSortSolution, v, f, k, F) -> None:
    tol = 1e-9 * max(1.0, abs(sol.bound))
    z = sol.z
    # basic LP primal: in [0, 1], at most two fractional entries, feasible
    assert np.all((z >= 0) & (z <= 1))
    assert sol.fractional.size <= 2
    assert z.sum() <= k + 1e-9
    assert float(f @ z) <= F + 1e-9 * max(1.0, F)
    assert abs(float(v @ z) - sol.lp_value) <= tol
    assert sol.lp_value <= sol.bound + tol
    # integer solution: feasible, value consistent, within the dropped-value certificate
    s = sol.support
    assert s.dtype == bool and int(s.sum()) <= k
    assert float(f[s].sum()) <= F * (1 + 1e-12) + 1e-12
    assert abs(float(v[s].sum()) - sol.value) <= tol
    assert sol.value >= sol.lp_value - float(v[sol.dropped].sum()) - tol
    assert sol.value >= float(v[sol.lp_support].sum()) - tol  # fill and swaps only improve
    # duals: feasibility, complementary slackness, strong duality
    mu, nu = sol.mu, sol.nu
    assert mu >= 0 and nu >= 0
    a = v - nu * f
    eps = 1e-9 * _scale(v, f, nu, mu)
    assert np.all(a[z == 1] >= mu - eps)
    assert np.all(a[z == 0] <= mu + eps)
    assert np.all(np.abs(a[sol.fractional] - mu) <= eps)
    dual = k * mu + F * nu + float(np.maximum(a - mu, 0.0).sum())
    assert abs(dual - sol.lp_value) <= 1e-8 * _scale(v, f, nu, mu) * max(1, k)
    if mu > eps:
        assert abs(z.sum() - k) <= 1e-9
    if nu * float(np.max(f, initial=0.0)) > eps:
        assert abs(float(f @ z) - F) <= 1e-9 * max(1.0, F)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inst=instances())
def test_lp_matches_highs_and_rounding_is_certified(inst, small_constants):
    v, f, k, F, layer = inst
    sol = solve_flop_nnz_lp(v, f, k, F, layer)
    ref = highs_lp(v, f, k, F)
    tol = 1e-9 * max(1.0, abs(ref))
    assert abs(sol.bound - ref) <= tol
    assert abs(sol.lp_value - ref) <= tol
    _check_solution(sol, v, f, k, F)
    if layer is not None:  # both paths agree
        gen = solve_flop_nnz_lp(v, f, k, F)
        assert abs(gen.lp_value - sol.lp_value) <= tol


@settings(max_examples=40, deadline=None)
@given(inst=instances(max_p=12))
def test_integer_solution_within_certified_gap_of_milp(inst):
    v, f, k, F, layer = inst
    problem = FlopNnzILP(v, f, k, F, layer=layer)
    res = combprune.solve(problem, "dual-sort")
    assert problem.check(res.x) == []
    assert res.objective == pytest.approx(problem.objective(res.x), rel=1e-12, abs=1e-12)
    opt = highs_lp(v, f, k, F, integer=True)
    brute = combprune.solve(problem, "bruteforce").objective
    assert opt == pytest.approx(brute, rel=1e-9, abs=1e-9)
    tol = 1e-9 * max(1.0, abs(opt))
    assert res.objective <= opt + tol
    assert opt <= res.bound + tol  # the LP bound is valid
    assert opt - res.objective <= res.info["gap_abs"] + tol  # certified gap
    assert res.info["gap_abs"] <= res.info["dropped_value"] + tol
    if res.status is Status.OPTIMAL:
        assert res.objective == pytest.approx(opt, rel=1e-9, abs=1e-12)
    else:
        assert res.status is Status.FEASIBLE


@pytest.mark.parametrize("layers", [None, 7])
def test_larger_instance_layered_and_general(layers, small_constants):
    problem = random_flop_ilp(3000, 600, n_layers=layers, budget_fraction=0.15, seed=3)
    v, f = np.asarray(problem.values), np.asarray(problem.costs)
    layer = None if problem.layer is None else np.asarray(problem.layer)
    sol = solve_flop_nnz_lp(v, f, problem.k, problem.flop_budget, layer)
    ref = highs_lp(v, f, problem.k, problem.flop_budget)
    assert sol.bound == pytest.approx(ref, rel=1e-9)
    assert sol.lp_value == pytest.approx(ref, rel=1e-9)
    _check_solution(sol, v, f, problem.k, problem.flop_budget)
    assert sol.path == ("general" if layers is None else "layered")


def test_auto_layers_from_runs_of_equal_cost(monkeypatch):
    monkeypatch.setattr(ds, "_LAYERED_MIN_P", 1)
    monkeypatch.setattr(ds, "_AUTO_RUN_LENGTH", 50)
    problem = random_flop_ilp(2000, 500, n_layers=8, budget_fraction=0.1, seed=7)
    v, f = np.asarray(problem.values), np.asarray(problem.costs)
    auto = solve_flop_nnz_lp(v, f, problem.k, problem.flop_budget)
    assert auto.path == "layered"
    plain = solve_flop_nnz_lp(v, f, problem.k, problem.flop_budget, auto_layers=False)
    assert plain.path == "general"
    ref = highs_lp(v, f, problem.k, problem.flop_budget)
    assert auto.lp_value == pytest.approx(ref, rel=1e-9)
    assert plain.lp_value == pytest.approx(ref, rel=1e-9)
    _check_solution(auto, v, f, problem.k, problem.flop_budget)
    flat = FlopNnzILP(v, f, problem.k, problem.flop_budget)  # no layer index
    assert combprune.solve(flat, "dual-sort").info["path"] == "layered"
    assert combprune.solve(flat, "dual-sort", use_layers=False).info["path"] == "general"


def test_non_contiguous_layers_and_ties(monkeypatch):
    monkeypatch.setattr(ds, "_LAYERED_MIN_P", 1)
    rng = np.random.default_rng(5)
    p = 400
    layer = rng.integers(0, 9, p)
    per = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 0.0, 13.0])
    f = per[layer]
    v = np.round(rng.random(p) * 4) / 4  # many exact ties
    for k, F in [(50, 100.0), (400, 50.0), (10, 0.0), (0, 10.0), (399, 1e9)]:
        sol = solve_flop_nnz_lp(v, f, k, F, layer)
        ref = highs_lp(v, f, k, F)
        assert sol.lp_value == pytest.approx(ref, rel=1e-9, abs=1e-12)
        _check_solution(sol, v, f, k, F)
        assert np.array_equal(sol.support, flop_nnz_select(v, f, k, F, layer))


@pytest.mark.parametrize(
    "v, f, k, F, expected",
    [
        ([3.0, 2.0, 1.0], [1.0, 1.0, 1.0], 0, 10.0, 0.0),  # k = 0
        ([3.0, 2.0, 1.0], [1.0, 1.0, 1.0], 3, 10.0, 6.0),  # k = p, budget loose
        ([3.0, 2.0, 1.0], [1.0, 0.0, 1.0], 3, 0.0, 2.0),  # F = 0: zero-cost only
        ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], 2, 3.0, 0.0),  # zero values
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 2, 0.0, 2.0),  # zero costs
        ([5.0], [2.0], 1, 1.0, 0.0),  # single item does not fit
    ],
)
def test_edge_cases(v, f, k, F, expected):
    v, f = np.asarray(v), np.asarray(f)
    problem = FlopNnzILP(v, f, k, F)
    res = combprune.solve(problem, "dual-sort")
    assert problem.check(res.x) == []
    assert res.objective == pytest.approx(expected)
    _check_solution(solve_flop_nnz_lp(v, f, k, F), v, f, k, F)


def test_one_fractional_lp_and_status():
    # LP: take item 0 (v=10, f=10) fractionally with F = 5 -> LP value 5 + 4 (item 1), integer 4
    v, f = np.array([10.0, 4.0]), np.array([10.0, 1.0])
    problem = FlopNnzILP(v, f, 2, 6.0)
    res = combprune.solve(problem, "dual-sort")
    assert res.bound == pytest.approx(9.0)
    assert res.objective == pytest.approx(4.0)
    assert res.status is Status.FEASIBLE
    assert res.info["lp_value"] == pytest.approx(9.0)
    assert list(res.info["fractional"]) == [0]
    assert res.gap == pytest.approx(5.0 / 4.0)
    tight = FlopNnzILP(v, f, 1, 100.0)
    res = combprune.solve(tight, "dual-sort")
    assert res.status is Status.OPTIMAL and res.objective == pytest.approx(10.0)


def test_result_contract_and_info(monkeypatch):
    monkeypatch.setattr(ds, "_LAYERED_MIN_P", 1)
    problem = random_flop_ilp(200, 40, n_layers=5, budget_fraction=0.2, seed=1)
    res = combprune.solve(problem, "dual-sort")
    assert problem.check(res.x) == []
    assert res.objective == pytest.approx(problem.objective(res.x))
    for key in ("lp_value", "mu", "nu", "lp_x", "fractional", "dropped_value", "path", "gap_abs"):
        assert key in res.info
    assert res.info["path"] == "layered"
    assert res.bound >= res.objective
    assert res.iterations >= 1
    flat = combprune.solve(problem, "dual-sort", use_layers=False)
    assert flat.info["path"] == "general"
    assert flat.bound == pytest.approx(res.bound, rel=1e-12)


def test_torch_input_returns_torch():
    torch = pytest.importorskip("torch")
    base = random_flop_ilp(60, 15, n_layers=4, budget_fraction=0.3, seed=2)
    problem = FlopNnzILP(
        torch.tensor(np.asarray(base.values), dtype=torch.float32),
        torch.tensor(np.asarray(base.costs), dtype=torch.float32),
        base.k, base.flop_budget, layer=torch.tensor(np.asarray(base.layer)),
    )
    res = combprune.solve(problem, "dual-sort")
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float32
    assert isinstance(res.info["lp_x"], torch.Tensor)
    assert problem.check(res.x) == []
    ref = combprune.solve(base, "dual-sort")
    assert res.objective == pytest.approx(ref.objective, rel=1e-6)


@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a GPU")
def test_cupy_input_returns_cupy():  # pragma: no cover - GPU only
    import cupy

    base = random_flop_ilp(60, 15, n_layers=4, seed=2)
    problem = FlopNnzILP(cupy.asarray(np.asarray(base.values)), cupy.asarray(np.asarray(base.costs)),
                         base.k, base.flop_budget, layer=cupy.asarray(np.asarray(base.layer)))
    res = combprune.solve(problem, "dual-sort")
    assert isinstance(res.x, cupy.ndarray)
    assert problem.check(res.x) == []


def test_bad_inputs_and_options():
    problem = random_flop_ilp(20, 5, seed=0)
    with pytest.raises(ValueError, match="use_layers"):
        combprune.solve(problem, "dual-sort", use_layers="yes")
    with pytest.raises(TypeError, match="unknown option"):
        combprune.solve(problem, "dual-sort", tolerance=1e-3)
    v, f = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match="values"):
        flop_nnz_select(-v, f, 2, 1.0)
    with pytest.raises(ValueError, match="values"):
        flop_nnz_select(np.array([1.0, np.nan, 1.0, 1.0]), f, 2, 1.0)
    with pytest.raises(ValueError, match="costs"):
        flop_nnz_select(v, np.ones(3), 2, 1.0)
    with pytest.raises(ValueError, match="k"):
        flop_nnz_select(v, f, -1, 1.0)
    with pytest.raises(ValueError, match="flop_budget"):
        flop_nnz_select(v, f, 2, -1.0)
    with pytest.raises(ValueError, match="layer"):
        flop_nnz_select(v, f, 2, 1.0, layer=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="layer"):
        flop_nnz_select(v, np.array([1.0, 2.0, 1.0, 1.0]), 2, 1.0, layer=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="layer"):
        flop_nnz_select(v, f, 2, 1.0, layer=np.zeros(4))


def test_select_is_projection_support():
    # FALCON's Lemma 1: with v = u**2 the support gives the Euclidean projection
    rng = np.random.default_rng(0)
    u = rng.standard_normal(10)
    f = rng.integers(1, 4, 10).astype(float)
    S = flop_nnz_select(u**2, f, 4, 6.0)
    problem = FlopNnzILP(u**2, f, 4, 6.0)
    best = combprune.solve(problem, "bruteforce")
    kept = float((u[S] ** 2).sum())
    assert kept <= best.objective + 1e-12
    assert int(S.sum()) <= 4 and float(f[S].sum()) <= 6.0
