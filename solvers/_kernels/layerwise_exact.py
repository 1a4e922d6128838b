r"""Exact :class:`~combprune.problems.LayerwiseL0` for tiny layers, by reduction to the exact L0 solvers.

With ``K = H + ridge I = R^T R`` (``R = diag(sqrt(lam)) Q^T`` from ``K = Q diag(lam) Q^T``, valid
for any PSD K), output column j contributes ``1/2 ||R w_j - R w_hat_j||^2``, i.e. the
:class:`~combprune.problems.L0Regression` ``(A = R, b = R w_hat_j, ridge = 0)``:

* ``k_col``: column j is that problem with ``k = k_col``; the columns are independent;
* layer count ``k``: ``f_j(c)`` = optimum of column j with c nonzeros (``c = 0..min(d, k)``),
  then a knapsack over columns ``min sum_j f_j(c_j), sum_j c_j <= k`` by dynamic programming;
* N:M: every N:M support of a column is enumerated (``C(m, n)^(d/m)`` supports) and refitted.

The inner solves are the registered ``bruteforce`` or ``cvxpy`` solvers (never re-implemented
here). ``bound`` is the sum of the inner bounds (the optimum itself for enumeration).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from combprune.api import solve
from combprune.problems import L0Regression, LayerwiseL0
from combprune.result import Deadline, Result, Status

from .layerwise import dense_f64, finish, pattern_mask, refit

__all__ = ["solve_exact"]

_INNER = ("bruteforce", "cvxpy")


def _factor(K: np.ndarray) -> np.ndarray:
    lam, Q = np.linalg.eigh(K)
    return np.sqrt(np.maximum(lam, 0.0))[:, None] * Q.T


def _column(R: np.ndarray, w_hat: np.ndarray, count: int, inner: str, deadline: Deadline, seed, max_subsets: int):
    """(weights, bound, optimal) of one output column with at most ``count`` nonzeros."""
    prob = L0Regression(R, R @ w_hat, count)
    options = {"max_subsets": max_subsets} if inner == "bruteforce" else {}
    left = deadline.remaining()  # the inner solver runs through solve: its options and availability are checked
    res = solve(prob, inner, time_limit=None if math.isinf(left) else max(left, 1e-3), seed=seed, **options)
    bound = res.bound if res.bound is not None else 0.0
    return np.asarray(res.x, dtype=np.float64), bound, res.status is Status.OPTIMAL


def _nm_supports(d: int, n_keep: int, group: int, max_subsets: int):
    per_group = list(itertools.combinations(range(group), n_keep))
    _check_nm_size(d, len(per_group), group, max_subsets)
    for choice in itertools.product(per_group, repeat=d // group):
        mask = np.zeros(d, dtype=bool)
        for g, kept in enumerate(choice):
            mask[[g * group + i for i in kept]] = True
        yield mask


def _check_nm_size(d: int, per_group: int, group: int, max_subsets: int) -> None:
    """Refuse (``ValueError`` naming ``max_subsets``) before any work when the enumeration is too large."""
    if (d // group) * math.log(per_group) > math.log(max_subsets) + 1e-9:  # without forming the huge count
        raise ValueError(
            f"max_subsets: N:M enumeration needs {per_group}^{d // group} supports per output > max_subsets={max_subsets}; "
            "layerwise-exact is for tiny layers"
        )


def _solve_nm(problem: LayerwiseL0, K, W_hat, G, max_subsets: int, deadline: Deadline) -> tuple[np.ndarray, bool]:
    n_keep, group = problem.nm_pair
    W = refit(K, G, pattern_mask(problem, np.abs(W_hat)))
    complete = True
    for j in range(problem.m):
        best = math.inf
        for mask in _nm_supports(problem.d, n_keep, group, max_subsets):
            w = refit(K, G[:, [j]], mask[:, None])[:, 0]
            dlt = w - W_hat[:, j]
            value = 0.5 * float(dlt @ K @ dlt)
            if value < best:
                best, W[:, j] = value, w
        if deadline.expired():
            complete = j == problem.m - 1
            break
    return W, complete


def _solve_layer_count(problem: LayerwiseL0, R, W_hat, inner, deadline, seed, max_subsets):
    d, m, k = problem.d, problem.m, problem.k
    top = min(d, k)
    values = np.full((m, top + 1), math.inf)
    bounds = np.zeros((m, top + 1))
    weights = {}
    optimal = True
    for j in range(m):
        for c in range(top + 1):
            w, b, opt = _column(R, W_hat[:, j], c, inner, deadline, seed, max_subsets)
            dlt = R @ (w - W_hat[:, j])
            values[j, c], bounds[j, c], weights[j, c] = 0.5 * float(dlt @ dlt), b, w
            optimal &= opt
    # knapsack: best[t] = min sum of f_j(c_j) with sum c_j = t over the columns seen so far
    best = np.full(k + 1, math.inf)
    best[0] = 0.0
    lb = np.full(k + 1, math.inf)
    lb[0] = 0.0
    choice = np.zeros((m, k + 1), dtype=np.int64)
    for j in range(m):
        new, new_lb = np.full(k + 1, math.inf), np.full(k + 1, math.inf)
        for t in range(k + 1):
            for c in range(min(top, t) + 1):
                if best[t - c] + values[j, c] < new[t]:
                    new[t], choice[j, t] = best[t - c] + values[j, c], c
                new_lb[t] = min(new_lb[t], lb[t - c] + bounds[j, c])
        best, lb = new, new_lb
    t = int(np.argmin(best))
    W = np.zeros_like(W_hat)
    for j in range(m - 1, -1, -1):
        c = int(choice[j, t])
        W[:, j] = weights[j, c]
        t -= c
    return W, float(np.min(lb)), optimal


def solve_exact(problem: LayerwiseL0, *, deadline: Deadline, seed, inner: str, max_subsets: int) -> Result:
    """See the module docstring."""
    if inner not in _INNER:
        raise ValueError(f"inner: expected one of {', '.join(_INNER)}, got {inner!r}")
    if isinstance(max_subsets, bool) or not isinstance(max_subsets, int) or max_subsets < 1:
        raise ValueError(f"max_subsets: expected a positive integer, got {max_subsets!r}")
    if problem.nm is not None:
        n_keep, group = problem.nm_pair
        _check_nm_size(problem.d, math.comb(group, n_keep), group, max_subsets)
    K, W_hat, G = dense_f64(problem)
    if problem.nm is not None:
        W, complete = _solve_nm(problem, K, W_hat, G, max_subsets, deadline)
        result = finish(problem, W, status=Status.OPTIMAL if complete else Status.TIME_LIMIT, info={"method": "enumeration"})
        if complete:
            result.bound, result.gap = result.objective, 0.0
        return result
    R = _factor(K)
    if problem.k_col is not None:
        cols = [_column(R, W_hat[:, j], problem.k_col, inner, deadline, seed, max_subsets) for j in range(problem.m)]
        W = np.stack([c[0] for c in cols], axis=1)
        bound, optimal = math.fsum(c[1] for c in cols), all(c[2] for c in cols)
    else:
        W, bound, optimal = _solve_layer_count(problem, R, W_hat, inner, deadline, seed, max_subsets)
    bound -= 1e-9 * max(abs(bound), 1.0)  # R^T R equals K up to rounding
    result = finish(problem, W, bound=bound, info={"method": f"reduction/{inner}"})
    if optimal and not deadline.expired() and result.gap is not None and result.gap <= 1e-6:
        result.status = Status.OPTIMAL
    elif deadline.expired():
        result.status = Status.TIME_LIMIT
    return result
