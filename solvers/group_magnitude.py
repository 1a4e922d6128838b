r"""``group-magnitude``: keep the groups with the largest weight norms, then refit them exactly.

The baseline against which ``osscar``'s search is measured: the *selection* uses only the
dense weights, the *refit* is the same exact least-squares solve as ``osscar``'s, so a study
can separate the value of the search from the value of the refit (``refit=False`` gives
plain structured magnitude pruning, ``W = W_hat`` on the kept rows).

Selection rule (value of a group ``v_g = ||W_hat_g||_F^2``, the squared Frobenius norm of its
rows of the dense weights):

* count budget only: the ``s`` groups of largest ``v_g`` (ties: lower group number first);
* with a cost budget ``sum_{g kept} c_g <= C`` (and possibly ``#kept <= s``): the better, in
  total kept value ``sum v_g``, of two greedy fills, one in decreasing ``v_g / c_g`` (groups
  of cost 0 first) and one in decreasing ``v_g``; each skips any group that no longer fits
  and stops at ``s`` groups. (The classical 1/2-approximation of this knapsack; FALCON's
  FLOP-aware magnitude pruning solves the same ILP per weight.)

Refit: ``W_S = K_SS^{-1} (K W_hat)_S`` with ``K = H + ridge I``, by Cholesky in float64
(:mod:`._structured_linalg`); with ``ridge = 0`` a singular ``K_SS`` raises a ``ValueError``
naming ``ridge``.
"""

from __future__ import annotations

import numpy as np

from combprune import backend
from combprune.params import Boolean
from combprune.problems import StructuredMIQP
from combprune.problems.l0_regression import within_budget
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._structured_linalg import Budget, ScaledSystem, structured_result
from ._structured_linalg import refit as refit_support

__all__ = ["group_magnitude", "magnitude_support"]


def _greedy_fill(order: np.ndarray, budget: Budget, n_groups: int) -> np.ndarray:
    keep = np.zeros(n_groups, dtype=bool)
    count, used = 0, 0.0
    for g in order:
        if budget.s is not None and count >= budget.s:
            break
        if budget.costs is None or within_budget(used + budget.costs[g], budget.cost_budget):
            keep[g] = True
            count += 1
            used += 0.0 if budget.costs is None else budget.costs[g]
    while not budget.feasible(keep):  # pragma: no cover - guards against summation-order rounding
        keep[np.flatnonzero(keep)[-1]] = False
    return keep


def magnitude_support(values: np.ndarray, budget: Budget) -> np.ndarray:
    """Kept groups (G,) bool by the rule in the module docstring for group values ``values``."""
    n_groups = values.size
    by_value = np.lexsort((np.arange(n_groups), -values))  # decreasing v, ties by index
    if budget.costs is None:
        keep = np.zeros(n_groups, dtype=bool)
        keep[by_value[: min(budget.s, n_groups)]] = True
        return keep
    costs = budget.costs
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(costs > 0, values / np.where(costs > 0, costs, 1.0), np.inf)
    by_ratio = np.lexsort((np.arange(n_groups), -values, -ratio))
    a = _greedy_fill(by_ratio, budget, n_groups)
    b = _greedy_fill(by_value, budget, n_groups)
    return a if values[a].sum() >= values[b].sum() else b


def group_values(problem: StructuredMIQP) -> np.ndarray:
    """``v_g = ||W_hat_g||_F^2`` per group (float64)."""
    W = backend.to_numpy(problem.W_hat).astype(np.float64)
    return np.bincount(problem.group_index, weights=np.einsum("ij,ij->i", W, W), minlength=problem.n_groups)


#: Conservative seconds per floating-point operation of the dense linear algebra, used to skip
#: uninterruptible factorisations that would overrun a time limit.
SECONDS_PER_FLOP = 2e-9


@register_solver(
    "group-magnitude",
    problems=StructuredMIQP,
    exact=False,
    description="Keep the groups of largest weight norm, then refit the kept rows exactly.",
    params={
        "refit": Boolean(),
    },
)
def group_magnitude(problem: StructuredMIQP, *, deadline: Deadline, seed: int | None = None, refit: bool = True) -> Result:
    """Structured magnitude pruning with an optional exact refit (``refit=True``).

    ``iterations`` is 1; ``info["values"]`` holds the group values ``||W_hat_g||_F^2``.
    Status ``feasible`` (``time_limit`` if the deadline had passed by the end). The refit is
    skipped (``info["refit"] = False``) when its estimated cost, ``SECONDS_PER_FLOP`` per
    flop, exceeds the time left.
    """
    if not isinstance(refit, bool):
        raise TypeError(f"refit: expected a bool, got {refit!r}")
    values = group_values(problem)
    keep = magnitude_support(values, Budget.from_problem(problem))
    rows = problem.rows_of(keep)
    r = int(rows.sum())
    # the refit (a Cholesky of the kept block plus products with H) cannot be interrupted:
    # skipped when it would not end before the deadline (the masked W_hat is returned)
    skipped = refit and deadline.remaining() <= SECONDS_PER_FLOP * (r**3 / 3 + 2 * problem.d**2 * problem.m)
    refit = refit and not skipped
    if refit:
        system = ScaledSystem.from_problem(problem)
        W = system.unscale(refit_support(system, rows))
    else:
        W = np.where(rows[:, None], backend.to_numpy(problem.W_hat).astype(np.float64), 0.0)
    status = Status.TIME_LIMIT if skipped or deadline.expired() else Status.FEASIBLE
    result = structured_result(problem, W, keep, status, iterations=1, info={"values": values, "refit": refit})
    result.history = [(deadline.elapsed(), result.objective)]
    return result

