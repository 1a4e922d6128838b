"""Budgets and layers as first-class data: ``problems.budget.Budget`` (the one slack rule, used
by ``check``, the greedy fills and the projections) and the ``layer`` index of ``L0Regression``
(validated, saved, filled by the torch adapter, used by the FLOP-aware projection)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import combprune.torch as cpt
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP, load_problem, random_l0_regression
from combprune.problems.budget import FLOP_RTOL, Budget, flop_total, within_budget
from combprune.solvers._kernels.l0_data import L0Data
from combprune.solvers._kernels.projections import Projector, cost_classes, make_projector
from combprune.solvers._kernels.selection import greedy_mask

masks = st.lists(st.booleans(), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_budget_feasible_is_count_and_slack_rule(data):
    m = data.draw(st.integers(1, 30))
    costs = np.asarray(data.draw(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=m, max_size=m)))
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    count = data.draw(st.none() | st.integers(0, m))
    F = data.draw(st.floats(0, 3e4, allow_nan=False))
    b = Budget(count, costs, F)
    expected = (count is None or int(mask.sum()) <= count) and flop_total(costs, mask) <= F + FLOP_RTOL * max(abs(F), 1.0)
    assert b.feasible(mask) == expected
    assert b.fits_cost(flop_total(costs, mask)) == within_budget(flop_total(costs, mask), F)
    # addable: exactly the outside items that keep the selection feasible when added alone
    add = b.addable(mask)
    for j in range(m):
        trial = mask.copy()
        trial[j] = True
        assert add[j] == (not mask[j] and b.feasible(trial))


def test_budget_slack_is_summation_order_only():
    b = Budget(None, np.array([1.0]), 1e6)
    assert b.fits_cost(1e6 * (1 + 0.5e-12)) and not b.fits_cost(1e6 * (1 + 2e-12))
    assert Budget(3).cost_limit == np.inf and Budget(3).slack == 0.0
    with pytest.raises(ValueError, match="cost_budget"):
        Budget(2, np.ones(3), None)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_greedy_mask_is_feasible_and_maximal(data):
    m = data.draw(st.integers(1, 25))
    costs = np.asarray(data.draw(st.lists(st.integers(0, 9), min_size=m, max_size=m)), dtype=np.float64)
    count = data.draw(st.none() | st.integers(0, m))
    F = float(data.draw(st.integers(0, 40)))
    order = np.asarray(data.draw(st.permutations(range(m))), dtype=np.int64)
    b = Budget(count, costs, F)
    keep = greedy_mask(b, order, slack=True)
    assert b.feasible(keep)
    assert not b.addable(keep).any()  # a greedy fill leaves nothing that still fits
    # the fill follows the order: an item is skipped only when it did not fit at its turn
    used, n = 0.0, 0
    for i in order:
        fits = (count is None or n < count) and used + costs[i] <= F
        assert keep[i] == fits
        if fits:
            used, n = used + costs[i], n + 1


def test_problems_check_through_budget():
    A = np.eye(3)
    prob = L0Regression(A, np.ones(3), 1, flop_costs=np.array([1.0, 2.0, 3.0]), flop_budget=2.0)
    b = prob.budget
    assert (b.count, b.cost_budget) == (1, 2.0) and np.array_equal(b.costs, [1.0, 2.0, 3.0])
    assert prob.check(np.array([1.0, 1.0, 0.0])) == ["nnz: 2 nonzeros > k = 1", "flops: 3 > flop_budget = 2"]
    ilp = FlopNnzILP(np.ones(3), np.array([1.0, 2.0, 3.0]), 1, 2.0)
    assert ilp.check(np.array([0, 0, 1])) == ["flops: 3 > flop_budget = 2"]
    H = np.eye(4)
    st_prob = StructuredMIQP(H, np.ones((4, 1)), np.array([0, 0, 1, 1]), 1, ridge=0.1)
    assert st_prob.check(np.ones((4, 1))) == ["groups: 2 selected > s = 1"]


# --- the layer index of L0Regression ---------------------------------------------------------------
def _layered(p=12, layers=3, seed=0):
    rng = np.random.default_rng(seed)
    layer = np.repeat(np.arange(layers), p // layers)
    costs = (1.0 + layer).astype(np.float64)
    A = rng.standard_normal((8, p))
    return L0Regression(A, A @ rng.standard_normal(p), p // 3, ridge=0.1, w_bar=rng.standard_normal(p), flop_costs=costs,
                        flop_budget=float(costs.sum()) / 3, layer=layer)


def test_layer_defaults_to_none_and_is_saved(tmp_path):
    assert random_l0_regression(n=5, p=10, k=3, seed=0).layer is None
    prob = _layered()
    prob.save(tmp_path / "p.npz")
    back = load_problem(tmp_path / "p.npz")
    assert back == prob and np.array_equal(back.layer, prob.layer)


@pytest.mark.parametrize(
    "layer, costs, match",
    [
        (np.zeros(5, dtype=np.int64), None, "layer"),  # wrong length
        (-np.ones(6, dtype=np.int64), None, "layer"),  # negative
        (np.array([0, 0, 0, 1, 1, 1]), np.array([1.0, 2.0, 1.0, 3.0, 3.0, 3.0]), "layer: costs must be constant"),
    ],
)
def test_layer_is_validated(layer, costs, match):
    A = np.ones((2, 6))
    flops = {} if costs is None else {"flop_costs": costs, "flop_budget": 5.0}
    with pytest.raises(ValueError, match=match):
        L0Regression(A, np.ones(2), 2, layer=layer, **flops)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_projection_with_the_layer_index_solves_the_same_ilp(seed, layers):
    prob = _layered(p=24, layers=layers if 24 % layers == 0 else 2, seed=seed)
    data = L0Data(prob)
    proj = make_projector(data)
    assert proj.layer is data.layer  # the problem's index, not one inferred from the costs
    u = np.random.default_rng(seed).standard_normal(prob.p)
    with_layer = proj.support(u)
    inferred = Projector(data.budget, cost_classes(data.costs)).support(u)
    assert data.budget.feasible(with_layer)
    assert float(np.sum(u[with_layer] ** 2)) == pytest.approx(float(np.sum(u[inferred] ** 2)), rel=1e-12)


def test_adapter_fills_the_layer_index(monkeypatch):
    prune_mod = sys.modules["combprune.torch.prune"]
    seen = []
    real = prune_mod.solve

    def spy(problem, *args, **kwargs):
        seen.append(problem)
        return real(problem, *args, **kwargs)

    monkeypatch.setattr(prune_mod, "solve", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    cpt.prune(model, (X, y), method="iht", sparsity=0.5, flop_budget=0.6, progress=False)
    problems = [p for p in seen if isinstance(p, L0Regression)]
    assert problems
    layer = np.asarray(problems[0].layer)
    sizes = [p.numel() for p in model.parameters() if p.dim() == 2]
    assert np.array_equal(layer, np.repeat(np.arange(len(sizes)), sizes))
