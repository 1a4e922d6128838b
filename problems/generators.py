"""Seeded random instances of the three formulations (for tests, studies and the demo).

Designs
-------
* ``"gaussian"``: i.i.d. N(0, 1) columns.
* ``"correlated"``: equicorrelated columns, ``corr(a_i, a_j) = rho``.
* ``"planted"``: a true sparse vector with k nonzeros; ``b = A w_true + noise``.
* ``"rank_deficient"``: A of rank ``min(n, p) // 2``.

FLOP costs are constant within ``n_layers`` contiguous layers (log-uniform between 1 and
``cost_range``); ``ties=True`` rounds values so that many coincide.
"""

from __future__ import annotations

import numpy as np

from combprune._validation import check_int

from ._base import Problem
from .flop_ilp import FlopNnzILP
from .l0_regression import L0Regression
from .structured import StructuredMIQP, osscar_default_ridge

DESIGNS = ("gaussian", "correlated", "planted", "rank_deficient")


def layer_costs(p: int, n_layers: int, rng: np.random.Generator, cost_range: float = 1e4) -> tuple[np.ndarray, np.ndarray]:
    """(costs, layer) with costs constant over ``n_layers`` contiguous layers of near-equal size."""
    n_layers = max(1, min(n_layers, p))
    layer = np.repeat(np.arange(n_layers), np.diff(np.linspace(0, p, n_layers + 1).round().astype(int)))
    per_layer = np.exp(rng.uniform(0.0, np.log(cost_range), size=n_layers)).round()
    return per_layer[layer], layer


def _check_sizes(**sizes: int) -> None:
    """Dimensions must be positive integers (named in the error)."""
    for name, value in sizes.items():
        check_int(name, value, low=1, high=2**40)


def _design_matrix(n: int, p: int, design: str, rho: float, rng: np.random.Generator) -> np.ndarray:
    if design not in DESIGNS:
        raise ValueError(f"design: expected one of {DESIGNS}, got {design!r}")
    if design == "correlated":
        common = rng.standard_normal((n, 1))
        return np.sqrt(rho) * common + np.sqrt(1.0 - rho) * rng.standard_normal((n, p))
    if design == "rank_deficient":
        r = max(1, min(n, p) // 2)
        return rng.standard_normal((n, r)) @ rng.standard_normal((r, p)) / np.sqrt(r)
    return rng.standard_normal((n, p))


def random_l0_regression(
    n: int,
    p: int,
    k: int,
    *,
    design: str = "gaussian",
    rho: float = 0.5,
    noise: float = 0.1,
    ridge: float = 0.1,
    flop_layers: int | None = None,
    flop_fraction: float = 0.5,
    ties: bool = False,
    dtype: type = np.float64,
    seed: int | None = 0,
) -> L0Regression:
    """A random ``L0Regression`` with ``w_bar`` drawn like trained weights.

    ``flop_layers`` adds layer-wise constant FLOP costs and a budget of ``flop_fraction`` of
    the dense FLOPs.
    """
    _check_sizes(n=n, p=p)
    rng = np.random.default_rng(seed)
    A = _design_matrix(n, p, design, rho, rng)
    w_bar = rng.standard_normal(p)
    if ties:
        w_bar = np.round(w_bar * 2) / 2
    if design == "planted":
        w_true = np.zeros(p)
        w_true[rng.choice(p, size=k, replace=False)] = rng.standard_normal(k) * 2
        b = A @ w_true + noise * rng.standard_normal(n)
    else:
        b = A @ w_bar + noise * rng.standard_normal(n)
    kwargs = {}
    if flop_layers:
        costs, _ = layer_costs(p, flop_layers, rng)
        kwargs = {"flop_costs": costs, "flop_budget": float(flop_fraction * costs.sum())}
    return L0Regression(A.astype(dtype), b.astype(dtype), k, ridge=ridge, w_bar=w_bar.astype(dtype), **kwargs)


def random_flop_ilp(
    p: int,
    k: int | None = None,
    *,
    budget_fraction: float = 0.5,
    n_layers: int | None = None,
    cost_range: float = 1e4,
    ties: bool = False,
    zero_costs: float = 0.0,
    seed: int | None = 0,
) -> FlopNnzILP:
    """A random ``FlopNnzILP``: values like squared trained weights, budget a fraction of total cost.

    ``k`` defaults to ``p // 2``; ``n_layers`` makes costs layer-wise constant (with ``layer``);
    ``zero_costs`` is the fraction of coordinates given cost 0.
    """
    _check_sizes(p=p)
    rng = np.random.default_rng(seed)
    k = p // 2 if k is None else k
    values = rng.standard_normal(p) ** 2
    if ties:
        values = np.round(values * 4) / 4
    if n_layers:
        costs, layer = layer_costs(p, n_layers, rng, cost_range)
        if zero_costs:
            zero_layers = rng.random(int(layer.max()) + 1) < zero_costs
            costs = np.where(zero_layers[layer], 0.0, costs)
    else:
        costs, layer = rng.uniform(1.0, 10.0, size=p).round(), None
        if zero_costs:
            costs[rng.random(p) < zero_costs] = 0.0
    return FlopNnzILP(values, costs, k, float(budget_fraction * costs.sum()), layer=layer)


def random_structured(
    d: int,
    m: int,
    s: int | None = None,
    *,
    group_size: int | list[int] = 1,
    n_samples: int | None = None,
    correlated: bool = False,
    ridge: float | None = None,
    with_costs: bool = False,
    seed: int | None = 0,
) -> StructuredMIQP:
    """A random ``StructuredMIQP`` from synthetic activations X (N x d).

    ``group_size``: an int (equal groups; the last one may be shorter) or a list of sizes
    summing to d. ``s`` defaults to half the groups; ``ridge=None`` uses OSSCAR's default.
    """
    _check_sizes(d=d, m=m)
    if isinstance(group_size, int) and not isinstance(group_size, bool) and group_size < 1:
        raise ValueError(f"group_size: must be a positive integer, got {group_size}")
    rng = np.random.default_rng(seed)
    N = n_samples if n_samples is not None else 4 * d
    X = rng.standard_normal((N, d))
    if correlated:
        X = X @ (np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d))
        X += rng.standard_normal((N, 1))
    sizes = [group_size] * (-(-d // group_size)) if isinstance(group_size, int) else list(group_size)
    if sum(sizes) < d or any(sz <= 0 for sz in sizes):
        raise ValueError("group_size: sizes must be positive and cover the d rows")
    groups = np.repeat(np.arange(len(sizes)), sizes)[:d]
    n_groups = int(groups.max()) + 1
    W_hat = rng.standard_normal((d, m))
    H = X.T @ X
    H = (H + H.T) / 2
    kwargs = {}
    if with_costs:
        costs = rng.uniform(1.0, 5.0, size=n_groups).round()
        kwargs = {"group_costs": costs, "cost_budget": float(costs.sum() / 2)}
    s = n_groups // 2 if s is None and not with_costs else s
    lam = osscar_default_ridge(H) if ridge is None else ridge
    return StructuredMIQP(H, W_hat, groups, s, ridge=lam, **kwargs)


def random_problem(kind: str, seed: int | None = 0, **params) -> Problem:
    """Generate by formulation name: ``"l0_regression"``, ``"flop_nnz_ilp"``, ``"structured_miqp"``."""
    makers = {"l0_regression": random_l0_regression, "flop_nnz_ilp": random_flop_ilp, "structured_miqp": random_structured}
    if kind not in makers:
        raise ValueError(f"kind: expected one of {sorted(makers)}, got {kind!r}")
    return makers[kind](seed=seed, **params)
