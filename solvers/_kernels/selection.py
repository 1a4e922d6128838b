r"""Selections under a count and a cost budget: top-k, per-layer splits and greedy fills.

* :func:`topk_mask`: the k largest scores, ties to the smaller index, O(p) (``np.partition``).
* :func:`per_layer_budgets`: a count split over layers by largest remainders.
* :func:`fill_in_order`: take candidates in a given priority order while both budgets allow,
  skipping one that does not fit (the one greedy rule; vectorised by blocks of cumulative sums).
* :func:`greedy_fill`: :func:`fill_in_order` by decreasing value (positive values only), in
  blocks of the largest values; the rounding step of the FLOP-NNZ ILP and FLOP-aware magnitude.
* :func:`greedy_mask`: :func:`fill_in_order` from an empty selection under a
  :class:`~combprune.problems.budget.Budget` (the greedy starts of the exact solvers, group
  magnitude), optionally with the budget's summation-order slack.
"""

from __future__ import annotations

import numpy as np

from combprune.problems.budget import Budget

__all__ = ["topk_mask", "per_layer_budgets", "fill_in_order", "greedy_fill", "greedy_mask"]


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest ``scores`` (ties to the smaller index), O(p).

    ``scores`` is a 1-D NumPy array; ``0 <= k``; k >= p keeps everything.
    """
    scores = np.asarray(scores)
    p = scores.shape[0]
    mask = np.zeros(p, dtype=bool)
    if k <= 0:
        return mask
    if k >= p:
        mask[:] = True
        return mask
    thr = np.partition(scores, p - k)[p - k]  # the k-th largest
    above = scores > thr
    mask |= above
    need = k - int(np.count_nonzero(above))
    if need > 0:
        mask[np.flatnonzero(scores == thr)[:need]] = True
    return mask


def per_layer_budgets(sizes: np.ndarray, k: int) -> np.ndarray:
    """Largest-remainder split of k over layers proportional to their sizes (sums to k)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    p = int(sizes.sum())
    quota = sizes * (k / p) if p else np.zeros_like(sizes, dtype=np.float64)
    base = np.minimum(np.floor(quota).astype(np.int64), sizes)
    rest = k - int(base.sum())
    if rest > 0:
        order = np.lexsort((np.arange(sizes.size), -(quota - base)))
        room = sizes[order] - base[order]
        order = order[room > 0]
        base[order[:rest]] += 1
    return base


def fill_in_order(order: np.ndarray, f: np.ndarray | None, support: np.ndarray, k_rem: int,
                  F_rem: float) -> tuple[int, float]:
    """Add the candidates ``order`` (priority order, none already in ``support``) while the count
    ``k_rem`` and the cost room ``F_rem`` allow (``sum f <= F_rem``; ``f=None``: no costs), in place.

    A candidate that does not fit is skipped and later ones are still tried (blocks of
    cumulative sums). Returns (number added, cost room left).
    """
    if k_rem <= 0:
        return 0, F_rem
    if f is None:
        take = order[:k_rem]
        support[take] = True
        return int(take.size), F_rem
    added = 0
    top = order[f[order] <= F_rem]
    while top.size and k_rem > 0:
        cs = np.cumsum(f[top])
        fit = min(int(np.searchsorted(cs, F_rem, side="right")), k_rem)
        if fit:
            support[top[:fit]] = True
            F_rem -= float(cs[fit - 1])
            k_rem -= fit
            added += fit
        top = top[fit + 1:]  # top[fit] (if any) does not fit: skip it
        top = top[f[top] <= F_rem]
    return added, F_rem


def greedy_fill(v: np.ndarray, f: np.ndarray, support: np.ndarray, k_rem: int, F_rem: float) -> int:
    """Add unselected coordinates with ``v > 0`` by decreasing value while both budgets allow (in place).

    Candidates are processed in blocks of the largest values (``argpartition``), each block
    sorted by (value desc, index asc) and filled by :func:`fill_in_order`. Returns the number
    of coordinates added.
    """
    added = 0
    if k_rem <= 0 or F_rem < 0:
        return 0
    cand = np.flatnonzero(~support & (v > 0) & (f <= F_rem))
    while k_rem > 0 and cand.size:
        B = min(cand.size, max(64, 4 * k_rem))
        if B == cand.size:
            top, rest = cand, cand[:0]
        else:
            part = np.argpartition(-v[cand], B - 1)
            top, rest = cand[part[:B]], cand[part[B:]]
        got, F_rem = fill_in_order(top[np.lexsort((top, -v[top]))], f, support, k_rem, F_rem)
        added += got
        k_rem -= got
        cand = rest[f[rest] <= F_rem]
    return added


def greedy_mask(budget: Budget, order: np.ndarray, *, slack: bool = False) -> np.ndarray:
    """Selection (m,) bool filled in ``order`` (all m items, priority first) under ``budget``.

    ``slack=False``: the cost total of the fill stays ``<= cost_budget``; ``slack=True``: up to
    the budget's summation-order slack (the rule of ``check``). Always feasible: should the
    correctly rounded total exceed the rule (rounding of the running sums), the last items are
    dropped until it holds.
    """
    m = order.size
    keep = np.zeros(m, dtype=bool)
    room = 0.0 if budget.costs is None else (budget.cost_limit if slack else float(budget.cost_budget))
    count = m if budget.count is None else budget.count
    fill_in_order(order, budget.costs, keep, count, room)
    while not budget.feasible(keep):  # pragma: no cover - guards against summation-order rounding
        keep[order[np.flatnonzero(keep[order])[-1]]] = False
    return keep
