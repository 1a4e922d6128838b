"""Shared helpers of the exact solvers: turning a MIP solver's floating-point answer into a
point that satisfies the formulation *exactly*, with an objective recomputed in float64.

A MIP solver works to tolerances (integrality ~1e-9, primal feasibility ~1e-9), so its binary
variables can come back as 0.9999999997 and its continuous weights as 3e-11 where the model
forces zero. These helpers

* round binaries to exact 0/1 and, in the rare case where rounding breaks a budget by more
  than :func:`~combprune.problems.l0_regression.within_budget` allows, repair the point by
  dropping selected coordinates (the caller then downgrades ``optimal`` to ``feasible``);
* for the two regressions, set the weights to exactly zero off the selected support and
  re-solve the ridge least squares on the support in float64 (``lstsq`` on the stacked
  system, so ridge = 0 and rank deficiency are fine), so that ``objective`` equals
  ``problem.objective(x)`` and is at least as good as the solver's continuous answer.
"""

from __future__ import annotations

import math

import numpy as np

from combprune import backend
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP
from combprune.problems.l0_regression import flop_total, within_budget

__all__ = ["greedy_mask", "greedy_ilp", "round_selection", "ilp_point", "l0_refit", "structured_refit"]


def greedy_mask(scores: np.ndarray, k: int | None, costs: np.ndarray | None, budget: float | None,
                order: np.ndarray | None = None) -> np.ndarray:
    """Take coordinates in decreasing ``scores`` (or the given ``order``), skipping those that no
    longer fit the count ``k`` or the cost ``budget``; always feasible (``within_budget``)."""
    mask = np.zeros(scores.size, dtype=bool)
    used, count = 0.0, 0
    for i in (np.argsort(-scores, kind="stable") if order is None else order):
        if k is not None and count >= k:
            break
        c = 0.0 if costs is None else float(costs[i])
        if costs is not None and used + c > budget:
            continue
        mask[i] = True
        used += c
        count += 1
    if costs is not None and not within_budget(flop_total(costs, mask), budget):  # pragma: no cover - fp drift
        return np.zeros(scores.size, dtype=bool)
    return mask


def greedy_ilp(problem: FlopNnzILP) -> np.ndarray:
    """The better of two greedy fills of a ``FlopNnzILP``: by value and by value per FLOP."""
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    by_value = greedy_mask(v, problem.k, f, problem.flop_budget)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(f > 0, v / np.where(f > 0, f, 1.0), np.inf)
    order = np.lexsort((-v, -ratio))  # ratio first, then value (zero-cost coordinates first)
    by_ratio = greedy_mask(v, problem.k, f, problem.flop_budget, order=order)
    return by_value if v[by_value].sum() >= v[by_ratio].sum() else by_ratio


def round_selection(
    frac: np.ndarray, values: np.ndarray, k: int | None, costs: np.ndarray | None, budget: float | None
) -> tuple[np.ndarray, bool]:
    """Round a near-binary selection to a feasible boolean mask.

    Returns ``(mask, repaired)``; ``repaired`` is True when coordinates had to be dropped
    (count above ``k`` or cost above ``budget``), lowest ``values`` first (among those with a
    positive cost when the cost budget is the violated one).
    """
    mask = np.asarray(frac, dtype=np.float64) > 0.5
    repaired = False
    if k is not None:
        while int(mask.sum()) > k:
            sel = np.flatnonzero(mask)
            mask[sel[np.argmin(values[sel])]] = False
            repaired = True
    if costs is not None:
        while not within_budget(flop_total(costs, mask), budget):
            sel = np.flatnonzero(mask & (costs > 0))
            mask[sel[np.argmin(values[sel])]] = False
            repaired = True
    return mask, repaired


def ilp_point(problem: FlopNnzILP, frac: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(z, support, repaired)`` for a ``FlopNnzILP`` from a solver's (near-)binary vector.

    ``frac=None`` (no incumbent) gives the always-feasible ``z = 0``.
    """
    if frac is None:
        z = np.zeros(problem.p)
        return z, z.astype(bool), False
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    mask, repaired = round_selection(frac, v, problem.k, f, problem.flop_budget)
    return mask.astype(np.float64), mask, repaired


def l0_refit(problem: L0Regression, support: np.ndarray) -> np.ndarray:
    """Exact minimiser of ``Q`` over weights supported on ``support`` (float64, zeros elsewhere)."""
    A = backend.to_numpy(problem.A).astype(np.float64)
    b = backend.to_numpy(problem.b).astype(np.float64)
    w_bar = backend.to_numpy(problem.w_bar).astype(np.float64)
    w = np.zeros(problem.p)
    idx = np.flatnonzero(support)
    if idx.size:
        sr = math.sqrt(problem.ridge)
        M = np.vstack([A[:, idx], sr * np.eye(idx.size)])
        rhs = np.concatenate([b, sr * w_bar[idx]])
        w[idx] = np.linalg.lstsq(M, rhs, rcond=None)[0]
        # lstsq can return exact zeros on the support (rank deficiency); that only helps the budgets
    return w


def structured_refit(problem: StructuredMIQP, group_sel: np.ndarray) -> np.ndarray:
    """Exact ``W`` for the selected groups: ``W_S = K_SS^+ (K W_hat)_S``, zero rows elsewhere."""
    H = backend.to_numpy(problem.H).astype(np.float64)
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    K = H + problem.ridge * np.eye(problem.d)
    rows = problem.rows_of(group_sel)
    W = np.zeros_like(W_hat)
    if rows.any():
        W[rows] = np.linalg.lstsq(K[np.ix_(rows, rows)], (K @ W_hat)[rows], rcond=None)[0]
    return W
