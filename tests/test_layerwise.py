"""LayerwiseL0: validation, objective, persistence; its solvers against each other and the exact optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import LayerwiseL0, load_problem
from combprune.solvers._kernels.layerwise import dense_f64, refit

HEURISTICS = ("magnitude", "wanda", "sparsegpt", "layerwise")


def make_layer(d, m, n_samples=None, seed=0, **pattern):
    """A layer with correlated inputs (like real activations) and OSSCAR's default ridge."""
    rng = np.random.default_rng(seed)
    n_samples = n_samples or 4 * d
    mix = rng.standard_normal((d, d)) * 0.4 + np.eye(d)
    X = rng.standard_normal((n_samples, d)) @ mix * rng.uniform(0.2, 3.0, size=d)
    W_hat = rng.standard_normal((d, m))
    return X, W_hat, LayerwiseL0.from_activations(X, W_hat, **pattern)


# --- the formulation ------------------------------------------------------------------------

H3 = np.eye(4)
W3 = np.ones((4, 2))


@pytest.mark.parametrize(
    "args, kwargs, exc, field",
    [
        ((np.ones((4, 3)), W3), {"k": 2}, ValueError, "H"),
        ((np.array([[1.0, 2.0], [0.0, 1.0]]), np.ones((2, 1))), {"k": 1}, ValueError, "H"),  # not symmetric
        ((np.diag([1.0, -1.0, 1.0, 1.0]), W3), {"k": 2}, ValueError, "H"),  # not PSD
        ((H3, np.ones((3, 2))), {"k": 2}, ValueError, "W_hat"),
        ((H3, W3), {}, ValueError, "k"),
        ((H3, W3), {"k": 2, "k_col": 1}, ValueError, "k"),
        ((H3, W3), {"k": 9}, ValueError, "k"),
        ((H3, W3), {"k_col": 5}, ValueError, "k_col"),
        ((H3, W3), {"nm": "2:3"}, ValueError, "nm"),  # 3 does not divide 4
        ((H3, W3), {"nm": "3:2"}, ValueError, "nm"),  # n > m
        ((H3, W3), {"nm": "two:four"}, ValueError, "nm"),
        ((H3, W3), {"nm": 2}, TypeError, "nm"),
        ((H3, W3), {"k": 2, "ridge": -1.0}, ValueError, "ridge"),
        ((H3, torch.ones(4, 2, dtype=torch.float64)), {"k": 2}, TypeError, "W_hat"),
    ],
)
def test_validation_names_the_argument(args, kwargs, exc, field):
    with pytest.raises(exc, match=f"^{field}"):
        LayerwiseL0(*args, **kwargs)


def test_objective_is_the_reconstruction_error_plus_ridge():
    X, W_hat, prob = make_layer(8, 3, k=12)
    W = np.where(np.abs(W_hat) > 0.7, W_hat * 0.9, 0.0)
    D = W - W_hat
    expect = 0.5 * np.sum((X @ D) ** 2) + 0.5 * prob.ridge * np.sum(D * D)
    assert prob.objective(W) == pytest.approx(expect, rel=1e-12)
    assert prob.ridge == pytest.approx(1e-2 * np.mean(np.sum(X * X, axis=0)))
    assert prob.relative_error(W) == pytest.approx(np.sum((X @ D) ** 2) / np.sum((X @ W_hat) ** 2), rel=1e-12)
    assert prob.objective(W_hat) == 0.0
    with pytest.raises(ValueError, match="^W"):
        prob.objective(np.ones((3, 8)))


def test_from_activations_accumulates_batches_in_float64():
    X, W_hat, prob = make_layer(6, 2, k_col=3)
    batches = [torch.tensor(X[:10], dtype=torch.float32).reshape(2, 5, 6), torch.tensor(X[10:], dtype=torch.float32)]
    from_torch = LayerwiseL0.from_activations(batches, W_hat, k_col=3, ridge=prob.ridge)
    H32 = X.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(from_torch.H, H32.T @ H32, rtol=1e-12)
    assert from_torch.H.dtype == np.float64
    with pytest.raises(ValueError, match="^X"):
        LayerwiseL0.from_activations([X, X[:, :3]], W_hat, k_col=3)
    with pytest.raises(ValueError, match="^X"):
        LayerwiseL0.from_activations([], W_hat, k_col=3)


def test_check_reports_each_pattern():
    H = np.eye(4)
    W = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert LayerwiseL0(H, W, k=6).check(W) == []
    assert LayerwiseL0(H, W, k=5).check(W)[0].startswith("nnz")
    assert LayerwiseL0(H, W, k_col=3).check(W) == []
    assert LayerwiseL0(H, W, k_col=2).check(W)[0].startswith("k_col: column 0")
    assert LayerwiseL0(H, W, nm="1:2").check(W)[0].startswith("nm: group 0")
    assert LayerwiseL0(H, W, nm=(2, 2)).check(W) == []
    assert LayerwiseL0(H, W, k=6).check(np.full((4, 2), np.nan))[0].startswith("finite")
    assert LayerwiseL0(H, W, k=6).check(np.ones((2, 4)))[0].startswith("shape")


def test_save_load_roundtrip(tmp_path):
    for pattern in ({"k": 10}, {"k_col": 2}, {"nm": "2:4"}):
        _, _, prob = make_layer(8, 3, **pattern)
        prob.save(tmp_path / "p.npz")
        back = load_problem(tmp_path / "p.npz")
        assert isinstance(back, LayerwiseL0) and back == prob and back.pattern == prob.pattern


def test_immutable_and_properties():
    _, _, prob = make_layer(8, 4, nm="2:4")
    with pytest.raises(AttributeError):
        prob.k = 3
    assert (prob.d, prob.m, prob.max_nnz, prob.sparsity, prob.nm_pair) == (8, 4, 16, 0.5, (2, 4))


# --- solvers ----------------------------------------------------------------------------------

def test_solvers_listed_for_the_formulation():
    names = {row["name"] for row in cp.list_solvers(LayerwiseL0)}
    assert set(HEURISTICS) | {"layerwise-exact"} <= names


def test_wanda_keeps_the_largest_weight_times_input_norm_per_output():
    H = np.diag([100.0, 1.0, 1.0, 4.0])  # input norms 10, 1, 1, 2
    W_hat = np.array([[0.1, -1.0], [1.0, 0.5], [-0.5, 3.0], [0.3, 0.2]])
    prob = LayerwiseL0(H, W_hat, k_col=2)
    res = cp.solve(prob, "wanda")
    # column 0 scores 1.0, 1.0, 0.5, 0.6 -> inputs 0, 1 ; column 1 scores 10, 0.5, 3, 0.4 -> inputs 0, 2
    expect = np.array([[0.1, -1.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    np.testing.assert_array_equal(res.x, expect)
    # layer count: per output budgets k // m (+1 for the first columns), not a layer-wide ranking
    res = cp.solve(LayerwiseL0(H, W_hat, k=3), "wanda")
    assert list((res.x != 0).sum(axis=0)) == [2, 1]


def test_magnitude_on_layerwise():
    H = np.eye(4)
    W_hat = np.array([[0.1, -1.0], [1.0, 0.5], [-0.5, 3.0], [0.3, 0.2]])
    res = cp.solve(LayerwiseL0(H, W_hat, k=3), "magnitude")
    np.testing.assert_array_equal(res.x != 0, np.abs(W_hat) >= 1.0)
    res = cp.solve(LayerwiseL0(H, W_hat, nm="1:2"), "magnitude")
    assert res.x.tolist() == [[0.0, -1.0], [1.0, 0.0], [-0.5, 3.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="^per_layer"):
        cp.solve(LayerwiseL0(H, W_hat, k=3), "magnitude", per_layer=True)


def test_sparsegpt_obs_update_is_exact_for_one_pruned_input():
    """Pruning only input 0 (smallest saliency everywhere): the OBS update is the exact refit."""
    X, W_hat, _ = make_layer(6, 3, k=1)
    W_hat[0] *= 1e-3
    prob = LayerwiseL0.from_activations(X, W_hat, k_col=5)
    res = cp.solve(prob, "sparsegpt")
    mask = np.ones((6, 3), dtype=bool)
    mask[0] = False
    K, _, G = dense_f64(prob)
    np.testing.assert_array_equal(res.x != 0, mask)
    np.testing.assert_allclose(res.x, refit(K, G, mask), rtol=1e-9, atol=1e-12)


def test_sparsegpt_options_validated():
    _, _, prob = make_layer(8, 2, k=8)
    with pytest.raises(ValueError, match="^block_size"):
        cp.solve(prob, "sparsegpt", block_size=0)
    with pytest.raises(ValueError, match="^damp"):
        cp.solve(prob, "sparsegpt", damp=-1.0)
    with pytest.raises(ValueError, match="^rho_growth"):
        cp.solve(prob, "layerwise", rho_growth=0.5)


@pytest.mark.parametrize("pattern", [{"k": 48 * 16 // 2}, {"k_col": 12}, {"nm": "2:4"}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layerwise_beats_sparsegpt_and_wanda_on_every_layer(pattern, seed):
    _, _, prob = make_layer(48, 16, seed=seed, **pattern)
    res = {name: cp.solve(prob, name) for name in HEURISTICS}
    for name, r in res.items():
        assert prob.check(r.x) == [], name
        assert r.bound is not None and 0 <= r.bound <= r.objective
    best_baseline = min(res[n].objective for n in ("magnitude", "wanda", "sparsegpt"))
    assert res["layerwise"].objective < 0.95 * best_baseline


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), pattern=st.sampled_from(["k", "k_col", "nm"]), ridge=st.sampled_from([0.0, 0.5]))
def test_exact_optimum_bounds_every_heuristic(seed, pattern, ridge):
    rng = np.random.default_rng(seed)
    d, m = (4, 2) if pattern != "nm" else (8, 2)
    X = rng.standard_normal((3 * d, d))
    W_hat = rng.standard_normal((d, m))
    kw = {"k": 3} if pattern == "k" else {"k_col": 2} if pattern == "k_col" else {"nm": "2:4"}
    prob = LayerwiseL0.from_activations(X, W_hat, ridge=ridge, **kw)
    exact = cp.solve(prob, "layerwise-exact")
    assert exact.status == "optimal" and prob.check(exact.x) == []
    assert exact.bound <= exact.objective + 1e-12
    tol = 1e-9 * max(1.0, exact.objective)
    for name in HEURISTICS:
        r = cp.solve(prob, name)
        assert prob.check(r.x) == []
        assert r.objective >= exact.objective - tol, name
        assert r.bound <= exact.objective + tol, name  # the ridge lower bound is a bound
    assert cp.solve(prob, "layerwise").objective <= cp.solve(prob, "sparsegpt").objective + tol


def test_exact_inner_solvers_agree():
    pytest.importorskip("cvxpy")
    _, _, prob = make_layer(5, 2, k_col=2, seed=3)
    a = cp.solve(prob, "layerwise-exact", inner="bruteforce")
    b = cp.solve(prob, "layerwise-exact", inner="cvxpy")
    assert a.status == b.status == "optimal"
    assert a.objective == pytest.approx(b.objective, rel=1e-7)
    with pytest.raises(ValueError, match="^inner"):
        cp.solve(prob, "layerwise-exact", inner="scip")
    with pytest.raises(ValueError, match="^max_subsets"):
        cp.solve(make_layer(16, 1, nm="2:4")[2], "layerwise-exact", max_subsets=10)


def test_torch_input_gives_torch_output():
    X, W_hat, prob = make_layer(8, 4, k_col=4)
    tprob = LayerwiseL0(torch.tensor(np.asarray(prob.H)), torch.tensor(W_hat), k_col=4,
                        ridge=prob.ridge)
    res = cp.solve(tprob, "layerwise")
    assert isinstance(res.x, torch.Tensor)
    assert res.objective == pytest.approx(cp.solve(prob, "layerwise").objective, rel=1e-9)


def test_local_search_never_worsens_and_history_decreases():
    _, _, prob = make_layer(32, 8, seed=5, k=128)
    plain = cp.solve(prob, "layerwise")
    polished = cp.solve(prob, "layerwise", local_rounds=3)
    assert polished.objective <= plain.objective * (1 + 1e-12)
    values = [v for _, v in polished.history]
    assert values == sorted(values, reverse=True) and values[-1] == pytest.approx(polished.objective, rel=1e-9)
    assert prob.check(polished.x) == []
