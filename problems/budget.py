r"""``Budget``: the count and/or cost constraint shared by every formulation, with its slack rule.

Every formulation limits a selection ``S`` (weights, ILP items, groups) by a count and/or an
additive cost (docs/formulations/):

.. math::

    |S| \le k, \qquad \sum_{i \in S} c_i \le C .

The count is compared exactly. The cost total is the correctly rounded sum
(:func:`flop_total`, ``math.fsum``) and passes when

.. math::

    \textstyle\sum_{i \in S} c_i \le C + \varepsilon \max(|C|, 1), \qquad \varepsilon = 10^{-12}
    \; (\texttt{FLOP\_RTOL}),

a slack that absorbs summation order only. ``check`` of every problem, the projections, the
greedy fills, osscar, swap and the torch report all use this one rule through
:class:`Budget` (or :func:`within_budget` for a bare total).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FLOP_RTOL", "Budget", "flop_total", "within_budget"]

#: Relative slack when comparing a cost (FLOP) total with its budget (absorbs summation order only).
FLOP_RTOL = 1e-12


def flop_total(costs: np.ndarray, support: np.ndarray) -> float:
    """Correctly rounded sum of ``costs`` over the boolean ``support`` (``math.fsum``)."""
    return math.fsum(np.asarray(costs, dtype=np.float64)[np.asarray(support, dtype=bool)].tolist())


def cost_slack(budget: float) -> float:
    """The absolute slack ``FLOP_RTOL * max(|C|, 1)`` allowed above the cost budget ``C``."""
    return FLOP_RTOL * max(abs(budget), 1.0)


def within_budget(total: float, budget: float) -> bool:
    """``total <= budget`` up to the summation-order slack (module docstring)."""
    return total <= budget + cost_slack(budget)


@dataclass(frozen=True)
class Budget:
    """A count budget ``count`` (``|S| <= count``) and/or a cost budget ``sum_S costs <= cost_budget``.

    ``costs`` is a host float64 (m,) array or None (then ``cost_budget`` is None too);
    ``count`` None means no count limit. Masks are boolean (m,) arrays.
    """

    count: int | None = None
    costs: np.ndarray | None = None
    cost_budget: float | None = None

    def __post_init__(self) -> None:
        if (self.costs is None) != (self.cost_budget is None):
            raise ValueError("costs, cost_budget: give both or neither")

    @classmethod
    def of(cls, count: int | None, costs: Any = None, cost_budget: float | None = None) -> "Budget":
        """A budget from any costs array (converted to host float64)."""
        from combprune import backend

        c = None if costs is None else np.asarray(backend.to_numpy(costs), dtype=np.float64)
        return cls(None if count is None else int(count), c, None if cost_budget is None else float(cost_budget))

    @property
    def has_costs(self) -> bool:
        return self.costs is not None

    @property
    def slack(self) -> float:
        """Absolute slack above ``cost_budget`` (0 without costs)."""
        return 0.0 if self.cost_budget is None else cost_slack(self.cost_budget)

    @property
    def cost_limit(self) -> float:
        """``cost_budget`` plus its slack: the largest total that passes (inf without costs)."""
        return math.inf if self.cost_budget is None else self.cost_budget + self.slack

    def total_cost(self, mask: np.ndarray) -> float:
        """Correctly rounded cost of the selection (0 without costs)."""
        return 0.0 if self.costs is None else flop_total(self.costs, mask)

    def fits_cost(self, total: float) -> bool:
        """Whether a cost total passes the slack rule (always, without costs)."""
        return self.cost_budget is None or within_budget(total, self.cost_budget)

    def feasible(self, mask: np.ndarray) -> bool:
        """Both budgets hold for the selection ``mask``."""
        if self.count is not None and int(np.count_nonzero(mask)) > self.count:
            return False
        return self.costs is None or self.fits_cost(self.total_cost(mask))

    def addable(self, mask: np.ndarray) -> np.ndarray:
        """Boolean (m,): the items outside ``mask`` that could each be added alone, feasibly."""
        out = ~np.asarray(mask, dtype=bool)
        if self.count is not None and int(np.count_nonzero(mask)) >= self.count:
            out[:] = False
        if self.costs is not None:
            out &= self.total_cost(mask) + self.costs <= self.cost_limit
        return out

    def violations(self, mask: np.ndarray, *, count_key: str, count_text: str, count_name: str, cost_key: str,
                   cost_name: str) -> list[str]:
        """The messages of a problem's ``check`` for ``mask`` (empty when feasible), e.g.
        ``"nnz: 5 nonzeros > k = 4"`` and ``"flops: 12 > flop_budget = 10"``."""
        out = []
        used = int(np.count_nonzero(mask))
        if self.count is not None and used > self.count:
            out.append(f"{count_key}: {used} {count_text} > {count_name} = {self.count}")
        if self.costs is not None:
            total = self.total_cost(mask)
            if not self.fits_cost(total):
                out.append(f"{cost_key}: {total:.17g} > {cost_name} = {self.cost_budget:.17g}")
        return out
