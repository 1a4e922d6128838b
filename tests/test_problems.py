"""The formulations as data objects: validation, conventions, immutability, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import (
    FlopNnzILP,
    L0Regression,
    StructuredMIQP,
    load_problem,
    osscar_default_ridge,
    random_flop_ilp,
    random_l0_regression,
    random_problem,
    random_structured,
)

rng = np.random.default_rng(0)
A4 = rng.standard_normal((3, 4))
B3 = rng.standard_normal(3)


# --- L0Regression -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, kwargs, exc, field",
    [
        ((A4[0], B3, 2), {}, ValueError, "A"),  # 1-D A
        ((np.zeros((3, 0)), B3, 0), {}, ValueError, "A"),  # p = 0
        ((A4, B3[:2], 2), {}, ValueError, "b"),
        ((np.where(A4 > 1, np.nan, A4), B3, 2), {}, ValueError, "A"),
        ((A4, np.array([np.inf, 0, 0]), 2), {}, ValueError, "b"),
        ((A4.astype(complex), B3, 2), {}, TypeError, "A"),
        ((np.array([["a"] * 4] * 3), B3, 2), {}, TypeError, "A"),
        ((A4, B3, -1), {}, ValueError, "k"),
        ((A4, B3, 5), {}, ValueError, "k"),
        ((A4, B3, 2.5), {}, TypeError, "k"),
        ((A4, B3, True), {}, TypeError, "k"),
        ((A4, B3, 2), {"ridge": -1.0}, ValueError, "ridge"),
        ((A4, B3, 2), {"ridge": float("nan")}, ValueError, "ridge"),
        ((A4, B3, 2), {"w_bar": np.zeros(3)}, ValueError, "w_bar"),
        ((A4, B3, 2), {"flop_costs": np.ones(4)}, ValueError, "flop_budget"),
        ((A4, B3, 2), {"flop_budget": 2.0}, ValueError, "flop_costs"),
        ((A4, B3, 2), {"flop_costs": -np.ones(4), "flop_budget": 2.0}, ValueError, "flop_costs"),
        ((A4, B3, 2), {"flop_costs": np.ones(4), "flop_budget": -2.0}, ValueError, "flop_budget"),
        ((A4, B3, 2), {"flop_costs": np.ones(3), "flop_budget": 2.0}, ValueError, "flop_costs"),
        ((A4, torch.tensor(B3), 2), {}, TypeError, "b"),
        ((A4, B3, 2), {"w_bar": torch.zeros(4, dtype=torch.float64)}, TypeError, "w_bar"),
    ],
)
def test_l0_validation(args, kwargs, exc, field):
    with pytest.raises(exc, match=f"^{field}"):
        L0Regression(*args, **kwargs)


def test_l0_defaults_and_dtypes():
    prob = L0Regression(np.arange(12).reshape(3, 4), [1, 2, 3], 2)
    assert prob.A.dtype == np.float64 and prob.b.dtype == np.float64
    assert np.all(prob.w_bar == 0) and prob.ridge == 0.0 and not prob.has_flop_budget
    assert (prob.n, prob.p, prob.sparsity) == (3, 4, 0.5)
    f32 = L0Regression(A4.astype(np.float32), B3.astype(np.float32), 1)
    assert f32.A.dtype == np.float32 and f32.w_bar.dtype == np.float32


def test_l0_objective_formula_and_check():
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    w_bar = np.array([1.0, -1.0, 0.5, 0.0])
    prob = L0Regression(A4, B3, 2, ridge=0.3, w_bar=w_bar, flop_costs=costs, flop_budget=4.0)
    w = np.array([0.5, 0.0, 2.0, 0.0])
    expect = 0.5 * np.sum((B3 - A4 @ w) ** 2) + 0.15 * np.sum((w - w_bar) ** 2)
    assert prob.objective(w) == pytest.approx(expect, rel=1e-14)
    assert prob.check(w) == []
    assert any(v.startswith("nnz") for v in prob.check(np.array([1.0, 1.0, 1.0, 0.0])))
    assert any(v.startswith("flops") for v in prob.check(np.array([0.0, 0.0, 1.0, 1.0])))
    assert prob.check(np.zeros(3))[0].startswith("shape")
    assert prob.check(np.array([np.nan, 0, 0, 0]))[0].startswith("finite")
    with pytest.raises(ValueError, match="^w"):
        prob.objective(np.zeros(3))
    # budget slack is summation-order only: a total exactly at the budget is fine
    assert prob.check(np.array([1.0, 0.0, 1.0, 0.0])) == []


def test_from_gradients_conventions():
    G = rng.standard_normal((5, 4))
    w_bar = rng.standard_normal(4)
    p0 = L0Regression.from_gradients(G, w_bar, 2, l2=1e-3)
    assert p0.ridge == pytest.approx(5 * 1e-3)
    np.testing.assert_allclose(p0.b, G @ w_bar)
    p1 = L0Regression.from_gradients(G, w_bar, 2, l2=1e-3, first_order=True)
    np.testing.assert_allclose(p1.b, G @ w_bar - 1.0)
    # Q(w) - Q(w_bar) = n * [g^T d + 1/2 d^T H d + l2/2 |d|^2],  g = G^T 1 / n,  H = G^T G / n
    w = rng.standard_normal(4)
    d = w - w_bar
    g, H = G.sum(0) / 5, G.T @ G / 5
    model = g @ d + 0.5 * d @ H @ d + 0.5e-3 * d @ d
    assert p1.objective(w) - p1.objective(w_bar) == pytest.approx(5 * model, rel=1e-10)
    with pytest.raises(ValueError, match="^l2"):
        L0Regression.from_gradients(G, w_bar, 2, l2=-1.0)
    with pytest.raises(ValueError, match="^w_bar"):
        L0Regression.from_gradients(G, w_bar[:3], 2, l2=0.1)


def test_from_gradients_torch():
    G = torch.randn(6, 3, dtype=torch.float64)
    w_bar = torch.randn(3, dtype=torch.float64)
    prob = L0Regression.from_gradients(G, w_bar, 1, l2=0.01)
    assert isinstance(prob.b, torch.Tensor)
    assert prob.objective(torch.zeros(3, dtype=torch.float64)) == pytest.approx(
        0.5 * float(((G @ w_bar) ** 2).sum()) + 0.5 * 0.06 * float((w_bar**2).sum())
    )


def test_immutability():
    prob = random_l0_regression(5, 6, 2, seed=0)
    with pytest.raises(AttributeError, match="immutable"):
        prob.k = 3
    with pytest.raises(AttributeError):
        del prob.k
    with pytest.raises(ValueError):
        prob.A[0, 0] = 1.0  # read-only view
    ilp = random_flop_ilp(6, seed=0)
    with pytest.raises(ValueError):
        ilp.values[0] = 1.0
    sp = random_structured(4, 2, seed=0)
    with pytest.raises(AttributeError):
        sp.s = 1


# --- FlopNnzILP -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, kwargs, exc, field",
    [
        ((np.array([-1.0, 1.0]), np.ones(2), 1, 1.0), {}, ValueError, "values"),
        ((np.zeros(0), np.zeros(0), 0, 1.0), {}, ValueError, "values"),
        ((np.ones(2), np.ones(3), 1, 1.0), {}, ValueError, "costs"),
        ((np.ones(2), np.array([1.0, -1.0]), 1, 1.0), {}, ValueError, "costs"),
        ((np.ones(2), np.array([1.0, np.nan]), 1, 1.0), {}, ValueError, "costs"),
        ((np.ones(2), np.ones(2), 3, 1.0), {}, ValueError, "k"),
        ((np.ones(2), np.ones(2), 1, -1.0), {}, ValueError, "flop_budget"),
        ((np.ones(2), np.ones(2), 1, float("inf")), {}, ValueError, "flop_budget"),
        ((np.ones(2), np.array([1.0, 2.0]), 1, 1.0), {"layer": np.array([0, 0])}, ValueError, "layer"),
        ((np.ones(2), np.ones(2), 1, 1.0), {"layer": np.array([0.5, 0])}, TypeError, "layer"),
        ((np.ones(2), np.ones(2), 1, 1.0), {"layer": np.array([-1, 0])}, ValueError, "layer"),
        ((np.ones(2), torch.ones(2, dtype=torch.float64), 1, 1.0), {}, TypeError, "costs"),
    ],
)
def test_ilp_validation(args, kwargs, exc, field):
    with pytest.raises(exc, match=f"^{field}"):
        FlopNnzILP(*args, **kwargs)


def test_ilp_objective_and_check():
    prob = FlopNnzILP([3.0, 1.0, 2.0], [2.0, 0.0, 5.0], 2, 5.0, layer=[0, 1, 2])
    assert prob.objective(np.array([1, 1, 0])) == 4.0
    assert prob.check(np.array([1, 1, 0])) == []
    assert prob.check(np.array([1, 1, 1]))[0].startswith("nnz")
    assert prob.check(np.array([1, 0, 1]))[0].startswith("flops")
    assert prob.check(np.array([0.5, 0, 0]))[0].startswith("binary")
    assert prob.check(np.array([1, 0]))[0].startswith("shape")
    assert prob.sense == "max"


# --- StructuredMIQP -------------------------------------------------------------------------

X = rng.standard_normal((8, 4))
H4 = X.T @ X
W4 = rng.standard_normal((4, 2))
G4 = np.array([0, 0, 1, 2])


@pytest.mark.parametrize(
    "args, kwargs, exc, field",
    [
        ((H4[:3], W4, G4, 1), {}, ValueError, "H"),
        ((H4 + np.triu(np.ones((4, 4)), 1), W4, G4, 1), {}, ValueError, "H"),
        ((np.where(H4 > 5, np.inf, H4), W4, G4, 1), {}, ValueError, "H"),
        ((H4, W4[:3], G4, 1), {}, ValueError, "W_hat"),
        ((H4, W4, G4[:3], 1), {}, ValueError, "groups"),
        ((H4, W4, G4 + 0.5, 1), {}, TypeError, "groups"),
        ((H4, W4, G4, 4), {}, ValueError, "s"),
        ((H4, W4, G4, -1), {}, ValueError, "s"),
        ((H4, W4, G4), {}, ValueError, "s"),
        ((H4, W4, G4, 1), {"ridge": -0.1}, ValueError, "ridge"),
        ((H4, W4, G4, 1), {"group_costs": np.ones(3)}, ValueError, "cost_budget"),
        ((H4, W4, G4, 1), {"cost_budget": 1.0}, ValueError, "group_costs"),
        ((H4, W4, G4, 1), {"group_costs": np.ones(4), "cost_budget": 1.0}, ValueError, "group_costs"),
        ((H4, W4, G4, 1), {"group_costs": -np.ones(3), "cost_budget": 1.0}, ValueError, "group_costs"),
        ((H4, W4, G4, 1), {"group_costs": np.ones(3), "cost_budget": -1.0}, ValueError, "cost_budget"),
    ],
)
def test_structured_validation(args, kwargs, exc, field):
    with pytest.raises(exc, match=f"^{field}"):
        StructuredMIQP(*args, **kwargs)


def test_structured_conventions_objective_and_check():
    lam = osscar_default_ridge(H4)
    assert lam == pytest.approx(1e-2 * np.mean(np.diag(H4)))
    prob = StructuredMIQP.from_activations(X, W4, np.array([5, 5, 9, 7]), 2)
    assert prob.ridge == pytest.approx(lam)
    assert list(prob.group_labels) == [5, 7, 9] and list(prob.group_index) == [0, 0, 2, 1]
    assert [list(r) for r in prob.group_rows()] == [[0, 1], [3], [2]]
    assert list(prob.rows_of([True, False, True])) == [True, True, True, False]
    W = W4.copy()
    W[3] = 0
    expect = 0.5 * np.sum((X @ (W - W4)) ** 2) + 0.5 * lam * np.sum((W - W4) ** 2)
    assert prob.objective(W) == pytest.approx(expect, rel=1e-12)
    assert list(prob.group_support(W)) == [True, False, True]
    assert prob.check(W) == []
    assert prob.check(W4)[0].startswith("groups")
    assert prob.check(np.zeros((3, 2)))[0].startswith("shape")
    assert prob.check(np.full((4, 2), np.nan))[0].startswith("finite")
    vec = StructuredMIQP(H4, W4[:, 0], G4, 1)
    assert vec.m == 1 and vec.W_hat.shape == (4, 1)
    costed = StructuredMIQP(H4, W4, G4, None, group_costs=np.array([1.0, 2.0, 3.0]), cost_budget=3.0)
    assert costed.check(np.vstack([W4[:3], np.zeros((1, 2))])) == []
    assert costed.check(W4)[0].startswith("cost")


# --- persistence and generators ---------------------------------------------------------------

def _all_kinds(seed=0):
    return [
        random_l0_regression(5, 7, 3, flop_layers=2, seed=seed),
        random_l0_regression(5, 7, 3, design="rank_deficient", seed=seed),
        random_flop_ilp(9, 3, n_layers=3, seed=seed),
        random_structured(6, 2, group_size=2, with_costs=True, seed=seed),
        random_structured(6, 2, 2, seed=seed),
    ]


@pytest.mark.parametrize("i", range(5))
def test_save_load_round_trip(tmp_path, i):
    prob = _all_kinds()[i]
    path = tmp_path / "p.npz"
    prob.save(path)
    back = load_problem(path)
    assert type(back) is type(prob) and back == prob and back.metadata() == prob.metadata()


def test_save_load_torch_input(tmp_path):
    prob = L0Regression(torch.randn(4, 3), torch.randn(4), 2, ridge=0.5, w_bar=torch.randn(3))
    prob.save(tmp_path / "t.npz")
    back = load_problem(tmp_path / "t.npz")
    assert back == prob and back.A.dtype == np.float32


def test_load_rejects_foreign_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="^path"):
        load_problem(tmp_path / "x.npz")


@pytest.mark.parametrize("kind", ["l0_regression", "flop_nnz_ilp", "structured_miqp"])
def test_generators_deterministic(kind):
    params = {"l0_regression": dict(n=4, p=6, k=2), "flop_nnz_ilp": dict(p=8), "structured_miqp": dict(d=5, m=2)}[kind]
    a, b, c = (random_problem(kind, seed=s, **params) for s in (1, 1, 2))
    assert a == b and a != c
    with pytest.raises(ValueError, match="^kind"):
        random_problem("nope")
    with pytest.raises(ValueError, match="^design"):
        random_l0_regression(3, 4, 1, design="weird")


def test_generator_options():
    ties = random_flop_ilp(40, ties=True, seed=0)
    assert len(np.unique(ties.values)) < 40
    zero = random_flop_ilp(40, zero_costs=0.5, seed=0)
    assert np.any(np.asarray(zero.costs) == 0)
    layered = random_flop_ilp(40, n_layers=4, seed=0)
    assert len(np.unique(layered.layer)) == 4
    planted = random_l0_regression(20, 10, 3, design="planted", seed=0)
    assert planted.p == 10
    rd = random_l0_regression(10, 8, 3, design="rank_deficient", seed=0)
    assert np.linalg.matrix_rank(np.asarray(rd.A)) == 4
    sp = random_structured(7, 2, group_size=[3, 4], seed=0)
    assert sp.n_groups == 2


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6), p=st.integers(1, 6), data=st.data(),
)
def test_random_valid_l0_instances_round_trip(tmp_path_factory, n, p, data):
    k = data.draw(st.integers(0, p))
    A = data.draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=n * p, max_size=n * p))
    prob = L0Regression(np.array(A).reshape(n, p), np.ones(n), k, ridge=data.draw(st.floats(0, 3)))
    assert prob.check(np.zeros(p)) == []
    path = tmp_path_factory.mktemp("rt") / "p.npz"
    prob.save(path)
    back = load_problem(path)
    assert back == prob and back.objective(np.ones(p)) == prob.objective(np.ones(p))


def test_top_level_exports():
    assert cp.L0Regression is L0Regression and cp.load_problem is load_problem


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e3), st.integers(min_value=0, max_value=2**31 - 1))
def test_with_ridge_equals_a_fresh_build(l2, seed):
    """Replacing the ridge (l2='auto' candidates) gives the instance from_gradients builds, sharing A."""
    rng = np.random.default_rng(seed)
    G, w_bar = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=5)
    base = L0Regression.from_gradients(G, w_bar, 2, l2=1e-3, first_order=True, layer=np.array([0, 0, 1, 1, 1]))
    fresh = L0Regression.from_gradients(G, w_bar, 2, l2=l2, first_order=True, layer=np.array([0, 0, 1, 1, 1]))
    other = base.with_ridge(G.shape[0] * l2)
    assert other.ridge == fresh.ridge and other.k == fresh.k and other.A is base.A
    for name in ("b", "w_bar", "layer"):
        np.testing.assert_array_equal(getattr(other, name), getattr(fresh, name))
    w = rng.normal(size=5)
    assert other.objective(w) == fresh.objective(w)
    with pytest.raises(AttributeError):
        other.ridge = 1.0
    with pytest.raises(ValueError, match="ridge"):
        base.with_ridge(-1.0)
