r"""Shared pieces of the :class:`~combprune.problems.LayerwiseL0` solvers.

* :func:`pattern_mask`: the best mask of a score matrix under the problem's pattern (largest
  scores kept; ties to the smaller input index, then the smaller output index for ``k``);
* :func:`refit`: the exact weights on a fixed support, column by column,
  ``W_{S_j, j} = K_{S_j S_j}^{-1} (K W_hat)_{S_j, j}`` with ``K = H + ridge I`` (one Cholesky
  of ``K_{S_j S_j}`` per column; columns with the same support share it);
* :func:`lower_bound`: ``ridge/2 * min_{feasible S} sum_{(i,j) not in S} W_hat_ij^2``,
  valid because ``D^T K D >= lambda_min(K) ||D||^2 >= ridge ||D||^2`` (H is PSD) and a pruned
  entry has ``D_ij = -W_hat_ij`` (``lambda_min(H)`` is left out: an eigendecomposition per layer
  is not cheap, and it is ~0 for real activations);
  the minimum pruned mass is the complement of magnitude pruning's mask (the pattern's
  constraints are cardinalities on disjoint sets, so greedy top-|W_hat| is optimal);
* :func:`magnitude_layerwise`: the ``magnitude`` solver on this formulation.

See ``docs/formulations/layerwise_l0.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from combprune import backend
from combprune.problems import LayerwiseL0
from combprune.result import Result, Status

from .linalg import chol_solve, single_thread
from .selection import topk_mask

__all__ = ["dense_f64", "pattern_mask", "column_budgets", "topk_columns", "refit", "lower_bound",
           "finish", "magnitude_layerwise", "single_thread"]


def dense_f64(problem: LayerwiseL0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(K, W_hat, G)`` in float64 NumPy: ``K = H + ridge I``, ``G = K W_hat``."""
    K = backend.to_numpy(problem.H).astype(np.float64)
    K = (K + K.T) / 2 + problem.ridge * np.eye(problem.d)
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    return K, W_hat, K @ W_hat


def column_budgets(k: int, m: int) -> np.ndarray:
    """Split a layer count k over m equal columns: ``k // m`` each, one more for the first ``k % m``."""
    ks = np.full(m, k // m, dtype=np.int64)
    ks[: k % m] += 1
    return ks


def topk_columns(scores: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Boolean mask keeping the ``ks[j]`` largest scores of column j (ties to the smaller row)."""
    order = np.argsort(-scores, axis=0, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[0])[:, None], axis=0)
    return ranks < np.asarray(ks)[None, :]


def pattern_mask(problem: LayerwiseL0, scores: np.ndarray, *, per_output: bool = False) -> np.ndarray:
    """(d, m) mask of the largest ``scores`` the pattern allows.

    With the layer count k, ``per_output=False`` ranks the whole layer (magnitude pruning's
    layer-wise ranking); ``per_output=True`` gives every output ``k // m`` or one more
    (Wanda's per-output comparison group).
    """
    d, m = problem.d, problem.m
    scores = np.asarray(scores, dtype=np.float64)
    if problem.k is not None:
        if per_output:
            return topk_columns(scores, column_budgets(problem.k, m))
        return topk_mask(scores.reshape(-1), problem.k).reshape(d, m)
    if problem.k_col is not None:
        return topk_columns(scores, np.full(m, problem.k_col))
    n_keep, group = problem.nm_pair
    grouped = scores.reshape(d // group, group, m).transpose(1, 0, 2).reshape(group, -1)
    mask = topk_columns(grouped, np.full(grouped.shape[1], n_keep))
    return mask.reshape(group, d // group, m).transpose(1, 0, 2).reshape(d, m)


def refit(K: np.ndarray, G: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Exact minimiser on the support ``mask`` (see the module docstring), float64 (d, m)."""
    W = np.zeros_like(G)
    with single_thread():
        _refit_into(W, K, G, mask)
    return W


def _refit_into(W: np.ndarray, K: np.ndarray, G: np.ndarray, mask: np.ndarray) -> None:
    keys = np.packbits(mask, axis=0)
    _, first, inverse = np.unique(keys.T, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    for u, j0 in enumerate(first):
        S = np.flatnonzero(mask[:, j0])
        if S.size == 0:
            continue
        cols = np.flatnonzero(inverse == u)
        sol = chol_solve(K[np.ix_(S, S)], 0.0, G[np.ix_(S, cols)])
        if sol is None:
            raise np.linalg.LinAlgError("refit: K_SS is not positive definite")
        W[np.ix_(S, cols)] = sol


def lower_bound(problem: LayerwiseL0, W_hat: np.ndarray) -> float:
    """The ridge bound of the module docstring (0 when ``ridge = 0``)."""
    lam = problem.ridge
    sq = W_hat * W_hat
    pruned = float(sq.sum() - sq[pattern_mask(problem, sq)].sum())
    return max(0.5 * lam * pruned * (1.0 - 1e-9), 0.0)


def finish(problem: LayerwiseL0, W: np.ndarray, *, bound: float | None = None, iterations: int = 0,
           status: Status = Status.FEASIBLE, info: dict[str, Any] | None = None) -> Result:
    """A :class:`Result` with ``x`` like ``W_hat``, the objective recomputed and the bound clamped."""
    x = backend.from_numpy(W, like=problem.W_hat, keep_dtype=True)
    objective = problem.objective(x)
    if bound is not None:
        bound = min(bound, objective)
    return Result(x=x, support=backend.to_numpy(x) != 0, objective=objective, bound=bound, status=status,
                  iterations=iterations, info=info or {})


def magnitude_layerwise(problem: LayerwiseL0, per_layer: bool = False, layers: Any = None) -> Result:
    """Magnitude pruning: keep the largest ``|W_hat|`` the pattern allows, no re-fit."""
    if per_layer or layers is not None:
        raise ValueError("per_layer: layer options apply to L0Regression only (a LayerwiseL0 is one layer)")
    _, W_hat, _ = dense_f64(problem)
    mask = pattern_mask(problem, np.abs(W_hat))
    return finish(problem, np.where(mask, W_hat, 0.0), bound=lower_bound(problem, W_hat),
                  info={"mode": f"layerwise_{problem.pattern}"})
