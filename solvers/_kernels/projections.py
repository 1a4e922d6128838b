r"""The Euclidean projection of the L0 solvers onto ``{||w||_0 <= k, sum_{w_i != 0} f_i <= F}``.

Without a FLOP budget: top-k of ``|u|`` (:func:`~.selection.topk_mask`, ties to the smaller
index). With one: FALCON's Lemma 1, the FLOP-NNZ ILP with values ``u^2``
(:func:`~.flop_nnz.flop_nnz_select`, the dual-sort integer solution; both budgets hold
exactly). The layer index of the ILP (one sort per layer) is the problem's ``layer`` when it
has one, otherwise the classes of equal cost (:func:`cost_classes`).
See docs/formulations/l0_regression.md and docs/solvers/dual_sort.md.
"""

from __future__ import annotations

import numpy as np

from combprune import backend
from combprune.problems import L0Regression
from combprune.problems.budget import Budget

from .flop_nnz import flop_nnz_select
from .l0_data import L0Data
from .selection import topk_mask

__all__ = ["Projector", "cost_classes", "make_projector", "default_support"]


class Projector:
    """Euclidean projection onto {||w||_0 <= k, sum_{w_i != 0} f_i <= F} of a host vector.

    ``budget``: a :class:`~combprune.problems.budget.Budget` (count k, optional costs and F) or
    an int k. Without costs: top-k of ``|u|``. With costs: FALCON's Lemma 1, the FLOP-NNZ ILP
    with values ``u^2`` solved by dual-sort's integer solution (both budgets hold exactly),
    sorted per ``layer`` when a layer index is given. Works on a column subset ``C`` via
    :meth:`restrict` (weights are zero off C, so the whole budget is available to C).
    """

    def __init__(self, budget: Budget | int, layer: np.ndarray | None = None) -> None:
        self.budget = budget if isinstance(budget, Budget) else Budget(int(budget))
        if self.budget.count is None:
            raise ValueError("budget: the L0 projection needs a count k")
        self.layer = layer

    @property
    def k(self) -> int:
        return int(self.budget.count)

    @property
    def has_flops(self) -> bool:
        return self.budget.costs is not None

    def restrict(self, idx: np.ndarray) -> "Projector":
        """The projection of the coordinates ``idx`` (the others held at zero)."""
        b = self.budget
        if b.costs is None:
            return Projector(b)
        return Projector(Budget(b.count, b.costs[idx], b.cost_budget), None if self.layer is None else self.layer[idx])

    def support(self, u: np.ndarray) -> np.ndarray:
        """Boolean support of the projection of ``u`` (zero entries of ``u`` are never kept)."""
        b = self.budget
        if b.costs is None:
            return topk_mask(np.abs(u), self.k) & (u != 0)
        mask = np.asarray(backend.to_numpy(flop_nnz_select(u * u, b.costs, self.k, b.cost_budget, layer=self.layer)))
        return mask & (u != 0)

    def feasible(self, mask: np.ndarray) -> bool:
        return self.budget.feasible(mask)


def default_support(problem: L0Regression, data: L0Data) -> np.ndarray:
    """Magnitude start: top-k of ``|w_bar|``; with a FLOP budget FLOP-aware magnitude pruning
    (the FLOP-NNZ ILP with values ``w_bar^2``). Only nonzero ``w_bar`` entries are kept."""
    return make_projector(data).support(data.w_bar)


def cost_classes(costs: np.ndarray | None) -> np.ndarray | None:
    """A "layer" index for the FLOP projection: coordinates of equal cost share a class.

    The ILP depends on the costs only, so grouping equal costs is always valid; it is passed
    on (enabling the sort-each-layer-once path) when there are few classes.
    """
    if costs is None:
        return None
    uniq, inv = np.unique(costs, return_inverse=True)
    return inv.astype(np.int64) if uniq.size <= max(1, costs.size // 16) else None


def make_projector(data: L0Data) -> Projector:
    """The problem's projection (top-k, or the FLOP-NNZ ILP under a FLOP budget), sorted per
    layer by the problem's ``layer`` index when it has one, else by :func:`cost_classes`."""
    layer = None
    if data.costs is not None:
        layer = data.layer if data.layer is not None else cost_classes(data.costs)
    return Projector(data.budget, layer)
