"""``bruteforce``: exact enumeration of supports, for tiny instances and tests.

Because a superset of a support can always reproduce the subset's solution (extra weights at
zero), only *maximal* feasible supports are enumerated: supports of size k without a FLOP/cost
budget; with one, supports to which no further coordinate fits. For each support the inner
problem is solved exactly:

* ``L0Regression``: ridge least squares on S,
  ``min_{w_S} 1/2 ||b - A_S w_S||^2 + ridge/2 ||w_S - w_bar_S||^2`` (``lstsq`` on the stacked
  system, so ridge = 0 and rank-deficient A are handled);
* ``FlopNnzILP``: the value of S;
* ``StructuredMIQP``: ``W_S = K_SS^+ (K W_hat)_S`` with ``K = H + ridge I``.

Ties are broken towards the first support in lexicographic order. An instance needing more
than ``max_subsets`` subsets is refused with a ``ValueError`` (no silent hours-long run).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np

from combprune import backend
from combprune.params import Interval
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.exact import cast_point, l0_refit, structured_refit

DEFAULT_MAX_SUBSETS = 200_000


def _count_subsets(p: int, sizes: list[int], cap: int) -> int:
    """Number of subsets of ``range(p)`` with a size in ``sizes``, or ``cap + 1`` once above ``cap``.

    Stops as soon as the count exceeds ``cap`` (binomials of large instances are huge integers).
    """
    total = 0
    for j in sorted(sizes, key=lambda j: min(j, p - j)):  # small binomials first
        if min(j, p - j) > 64 and p > 128:
            return cap + 1  # C(p, j) >= C(129, 65) > any usable cap
        total += math.comb(p, j)
        if total > cap:
            return cap + 1
    return total


def _maximal_supports(
    p: int, k: int, costs: np.ndarray | None, budget: float | None, max_subsets: int
) -> Iterator[tuple[int, ...]]:
    """Maximal feasible supports (size <= k, cost <= budget) in lexicographic order."""
    sizes = [k] if costs is None else list(range(k, -1, -1))
    if _count_subsets(p, sizes, max_subsets) > max_subsets:
        raise ValueError(
            f"max_subsets: instance (p={p}, k={k}) needs more than max_subsets={max_subsets} subsets; bruteforce is for tiny instances"
        )
    slack_tol = 1e-12 * max(abs(budget or 0.0), 1.0)
    for size in sizes:
        for S in itertools.combinations(range(p), size):
            if costs is None:
                yield S
                continue
            used = math.fsum(costs[list(S)].tolist())
            if used > budget + slack_tol:
                continue
            if size < k:
                outside = np.ones(p, dtype=bool)
                outside[list(S)] = False
                if np.any(costs[outside] <= budget - used + slack_tol):
                    continue  # not maximal: some coordinate still fits
            yield S


def _finish(problem, x_np, support, best, deadline, history, iterations, like) -> Result:
    if support is None:
        return Result(x=None, support=np.zeros(0, bool), objective=math.nan, status=Status.INFEASIBLE, iterations=iterations)
    x, objective, exact = cast_point(problem, x_np, like)
    if deadline.expired():
        status, bound = Status.TIME_LIMIT, None
    else:
        # the enumeration's float64 optimum bounds every point; the returned one (cast to the
        # data's dtype) attains it to rounding of the objective unless the cast lost accuracy
        # (float32 data): then it is only feasible, with the float64 optimum as its bound
        status = Status.OPTIMAL if exact else Status.FEASIBLE
        bound = objective if exact else problem.objective(x_np)
    return Result(
        x=x, support=support, objective=objective, bound=bound, status=status,
        iterations=iterations, history=history.points,
    )


def _solve_l0(problem: L0Regression, deadline: Deadline, max_subsets: int) -> Result:
    costs = None if problem.flop_costs is None else backend.to_numpy(problem.flop_costs).astype(np.float64)
    history = History(deadline, "min")
    best, best_w, best_support, it = math.inf, None, None, 0
    for S in _maximal_supports(problem.p, problem.k, costs, problem.flop_budget, max_subsets):
        it += 1
        idx = list(S)
        support = np.zeros(problem.p, dtype=bool)
        support[idx] = True
        w = l0_refit(problem, support)
        val = problem.objective(w)
        if best_w is None or val < best - 1e-12 * abs(best):
            best, best_w = val, w
            best_support = np.zeros(problem.p, dtype=bool)
            best_support[idx] = True
            history.record(val)
        if deadline.expired():
            break
    return _finish(problem, best_w, best_support, best, deadline, history, it, problem.A)


def _solve_ilp(problem: FlopNnzILP, deadline: Deadline, max_subsets: int) -> Result:
    v = backend.to_numpy(problem.values).astype(np.float64)
    costs = backend.to_numpy(problem.costs).astype(np.float64)
    history = History(deadline, "max")
    best, best_z, it = -math.inf, None, 0
    for S in _maximal_supports(problem.p, problem.k, costs, problem.flop_budget, max_subsets):
        it += 1
        val = math.fsum(v[list(S)].tolist())
        if best_z is None or val > best + 1e-12 * abs(best):
            best = val
            best_z = np.zeros(problem.p)
            best_z[list(S)] = 1.0
            history.record(val)
        if deadline.expired():
            break
    support = None if best_z is None else best_z == 1
    return _finish(problem, best_z, support, best, deadline, history, it, problem.values)


def _solve_structured(problem: StructuredMIQP, deadline: Deadline, max_subsets: int) -> Result:
    n_groups = problem.n_groups
    k = n_groups if problem.s is None else problem.s
    costs = None if problem.group_costs is None else backend.to_numpy(problem.group_costs).astype(np.float64)
    history = History(deadline, "min")
    best, best_W, best_support, it = math.inf, None, None, 0
    for S in _maximal_supports(n_groups, k, costs, problem.cost_budget, max_subsets):
        it += 1
        sel = np.zeros(n_groups, dtype=bool)
        sel[list(S)] = True
        W = structured_refit(problem, sel)
        val = problem.objective(W)
        if best_W is None or val < best - 1e-12 * abs(best):
            best, best_W, best_support = val, W, sel
            history.record(val)
        if deadline.expired():
            break
    return _finish(problem, best_W, best_support, best, deadline, history, it, problem.W_hat)


@register_solver(
    "bruteforce",
    problems=(L0Regression, FlopNnzILP, StructuredMIQP),
    exact=True,
    description="Exact enumeration of maximal supports (tiny instances only).",
    params={
        "max_subsets": Interval(int, 1, None),
    },
)
def bruteforce(problem, *, deadline: Deadline, seed: int | None = None, max_subsets: int = DEFAULT_MAX_SUBSETS) -> Result:
    """Exact enumeration of maximal feasible supports; ``max_subsets`` caps the work."""
    if isinstance(problem, L0Regression):
        return _solve_l0(problem, deadline, max_subsets)
    if isinstance(problem, FlopNnzILP):
        return _solve_ilp(problem, deadline, max_subsets)
    return _solve_structured(problem, deadline, max_subsets)
