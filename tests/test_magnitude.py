"""Tests of the ``magnitude`` solver (global / per-layer / FLOP-aware magnitude pruning)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune
from combprune.problems import FlopNnzILP, L0Regression
from combprune.problems.generators import random_flop_ilp, random_l0_regression
from combprune.result import Status
from combprune.solvers._kernels import flop_nnz as dual_sort  # the algorithm (its constants are patched below)
from combprune.solvers.dual_sort import solve_flop_nnz_lp
from combprune.solvers.magnitude import per_layer_budgets, topk_mask


def _reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Full stable sort: largest first, ties to the smaller index."""
    order = np.lexsort((np.arange(scores.size), -scores))
    mask = np.zeros(scores.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def _problem(w_bar: np.ndarray, k: int, **kw) -> L0Regression:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, w_bar.size))
    return L0Regression(A, A @ w_bar, k, ridge=0.1, w_bar=w_bar, **kw)


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 40), seed=st.integers(0, 10_000), ties=st.booleans(), data=st.data())
def test_topk_mask_matches_sorted_reference(p, seed, ties, data):
    rng = np.random.default_rng(seed)
    scores = np.abs(rng.standard_normal(p))
    if ties:
        scores = np.round(scores * 2) / 2
    k = data.draw(st.integers(0, p))
    assert np.array_equal(topk_mask(scores, k), _reference_topk(scores, k))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), ties=st.booleans(), data=st.data())
def test_global_magnitude(seed, ties, data):
    rng = np.random.default_rng(seed)
    p = data.draw(st.integers(1, 30))
    w_bar = rng.standard_normal(p)
    if ties:
        w_bar = np.round(w_bar * 2) / 2 * rng.choice([-1.0, 1.0], p)
    k = data.draw(st.integers(0, p))
    problem = _problem(w_bar, k)
    res = combprune.solve(problem, "magnitude")
    expected = _reference_topk(np.abs(w_bar), k)
    assert np.array_equal(res.support, expected)
    assert np.array_equal(np.asarray(res.x), np.where(expected, w_bar, 0.0))
    assert problem.check(res.x) == []
    assert res.objective == pytest.approx(problem.objective(res.x))
    assert res.status is Status.FEASIBLE


def test_all_equal_weights_are_deterministic():
    problem = _problem(np.ones(10), 4)
    res = combprune.solve(problem, "magnitude")
    assert np.flatnonzero(res.support).tolist() == [0, 1, 2, 3]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6), data=st.data())
def test_per_layer_budgets(sizes, data):
    sizes = np.array(sizes)
    k = data.draw(st.integers(0, int(sizes.sum())))
    b = per_layer_budgets(sizes, k)
    assert int(b.sum()) == k
    assert np.all(b <= sizes) and np.all(b >= 0)
    assert np.all(np.abs(b - sizes * k / sizes.sum()) < 1.0 + 1e-12)


def test_per_layer_magnitude_keeps_density_in_each_layer():
    rng = np.random.default_rng(1)
    layers = np.repeat([2, 0, 1], [10, 20, 30])  # labels need not be sorted or start at 0
    rng.shuffle(layers)
    w_bar = rng.standard_normal(60) * np.where(layers == 1, 10.0, 1.0)  # layer 1 dominates globally
    problem = _problem(w_bar, 30)
    res = combprune.solve(problem, "magnitude", per_layer=True, layers=layers)
    kept = {lab: int(res.support[layers == lab].sum()) for lab in (0, 1, 2)}
    assert kept == {0: 10, 1: 15, 2: 5}
    for lab in (0, 1, 2):
        idx = np.flatnonzero(layers == lab)
        assert np.array_equal(res.support[idx], _reference_topk(np.abs(w_bar[idx]), kept[lab]))
    assert problem.check(res.x) == []
    glob = combprune.solve(problem, "magnitude")
    assert int(glob.support[layers == 1].sum()) > 15  # global MP concentrates on layer 1


@pytest.mark.parametrize("with_layers", [False, True])
def test_flop_aware_magnitude_is_the_dual_sort_ilp(with_layers, monkeypatch):
    monkeypatch.setattr(dual_sort, "_LAYERED_MIN_P", 1)  # layered path even for small p
    rng = np.random.default_rng(2)
    layers = np.repeat(np.arange(4), 15)
    costs = np.array([1.0, 4.0, 9.0, 30.0])[layers]
    w_bar = rng.standard_normal(60)
    problem = _problem(w_bar, 25, flop_costs=costs, flop_budget=120.0)
    res = combprune.solve(problem, "magnitude", layers=layers if with_layers else None)
    assert problem.check(res.x) == []
    sol = solve_flop_nnz_lp(w_bar**2, costs, 25, 120.0, layers if with_layers else None)
    assert np.array_equal(res.support, sol.support)
    assert res.info["mode"] == "flop"
    assert res.info["ilp_bound"] == pytest.approx(sol.bound)
    assert res.info["path"] == ("layered" if with_layers else "general")
    plain = combprune.solve(_problem(w_bar, 25), "magnitude")
    assert float(costs[plain.support].sum()) > 120.0  # plain MP would break the FLOP budget


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_flop_aware_magnitude_within_certified_gap_of_bruteforce(seed, data):
    rng = np.random.default_rng(seed)
    p = data.draw(st.integers(1, 10))
    w_bar = rng.standard_normal(p)
    costs = rng.integers(0, 5, p).astype(float)
    k = data.draw(st.integers(0, p))
    F = float(rng.uniform(0, costs.sum() + 1))
    problem = _problem(w_bar, k, flop_costs=costs, flop_budget=F)
    res = combprune.solve(problem, "magnitude")
    assert problem.check(res.x) == []
    ilp = FlopNnzILP(w_bar**2, costs, k, F)
    best = combprune.solve(ilp, "bruteforce").objective
    kept = float((w_bar[res.support] ** 2).sum())
    assert kept <= best + 1e-12
    assert best - kept <= res.info["ilp_gap_abs"] + 1e-9


def test_flop_ilp_value_greedy():
    problem = random_flop_ilp(50, 10, n_layers=5, budget_fraction=0.05, seed=4)
    res = combprune.solve(problem, "magnitude")
    assert problem.check(res.x) == []
    assert res.status is Status.FEASIBLE
    assert res.objective <= combprune.solve(problem, "dual-sort").bound + 1e-9
    loose = FlopNnzILP(np.asarray(problem.values), np.asarray(problem.costs), 10, float(np.sum(problem.costs)))
    res = combprune.solve(loose, "magnitude")
    assert np.array_equal(res.support, _reference_topk(np.asarray(loose.values), 10))


def test_torch_input_returns_torch():
    torch = pytest.importorskip("torch")
    base = random_l0_regression(8, 20, 6, seed=3)
    problem = L0Regression(torch.tensor(np.asarray(base.A), dtype=torch.float32),
                           torch.tensor(np.asarray(base.b), dtype=torch.float32), 6,
                           w_bar=torch.tensor(np.asarray(base.w_bar), dtype=torch.float32))
    res = combprune.solve(problem, "magnitude", layers=torch.arange(20) // 5, per_layer=True)
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float32
    assert int(res.support.sum()) == 6
    assert problem.check(res.x) == []


def test_bad_options():
    problem = _problem(np.arange(1.0, 7.0), 3)
    with pytest.raises(ValueError, match="layers"):
        combprune.solve(problem, "magnitude", per_layer=True)
    with pytest.raises(ValueError, match="layers"):
        combprune.solve(problem, "magnitude", per_layer=True, layers=np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="layers"):
        combprune.solve(problem, "magnitude", per_layer=True, layers=np.full(6, 0.5))
    with pytest.raises(ValueError, match="per_layer"):
        combprune.solve(problem, "magnitude", per_layer="yes")
    flop = _problem(np.arange(1.0, 7.0), 3, flop_costs=np.ones(6), flop_budget=2.0)
    with pytest.raises(ValueError, match="per_layer"):
        combprune.solve(flop, "magnitude", per_layer=True, layers=np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="per_layer"):
        combprune.solve(random_flop_ilp(10, 3, seed=0), "magnitude", per_layer=True)
    with pytest.raises(TypeError, match="unknown option"):
        combprune.solve(problem, "magnitude", sparsity=0.5)
