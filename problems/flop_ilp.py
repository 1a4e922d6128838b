"""``FlopNnzILP``: FALCON's two-budget knapsack (FLOP-aware magnitude pruning, DFO projection)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from combprune import backend
from combprune._validation import check_array, check_int, check_scalar

from ._base import Problem, check_layer
from .budget import Budget


class FlopNnzILP(Problem):
    r"""Maximise kept value under a count budget and a FLOP budget.

    .. math::

        \max_z \sum_i v_i z_i \quad \text{s.t.} \quad \sum_i z_i \le k, \quad
        \sum_i f_i z_i \le F, \quad z \in \{0, 1\}^p .

    Parameters
    ----------
    values : (p,) non-negative values v (``w_bar**2`` for FLOP-aware magnitude pruning).
    costs : (p,) non-negative FLOP costs f (zero costs allowed).
    k : count budget, ``0 <= k <= p``.
    flop_budget : F ``>= 0``, in the unit of ``costs``.
    layer : optional (p,) integer layer index; costs must be constant within a layer, which
        lets solvers sort each layer once.

    ``x`` for this problem is a 0/1 vector; ``objective(z) = v @ z``; ``check`` requires exact
    0/1 entries and both budgets (FLOPs summed with ``math.fsum``).
    """

    kind: ClassVar[str] = "flop_nnz_ilp"
    sense: ClassVar[str] = "max"
    default_solver: ClassVar[str] = "dual-sort"
    _array_fields: ClassVar[tuple[str, ...]] = ("values", "costs", "layer")
    _scalar_fields: ClassVar[tuple[str, ...]] = ("k", "flop_budget")

    def __init__(self, values: Any, costs: Any, k: int, flop_budget: float, *, layer: Any = None) -> None:
        values = check_array("values", values, ndim=1, nonnegative=True)
        p = int(values.shape[0])
        if p == 0:
            raise ValueError("values: needs at least one coordinate (p >= 1)")
        costs = check_array("costs", costs, ndim=1, shape=(p,), nonnegative=True)
        if backend.namespace(costs) is not backend.namespace(values):
            raise TypeError("costs: must be the same array type as values")
        k = check_int("k", k, low=0, high=p)
        flop_budget = check_scalar("flop_budget", flop_budget, low=0.0)
        layer = check_layer(layer, p, costs)
        self.values, self.costs, self.layer = values, costs, layer
        self.k, self.flop_budget = k, flop_budget
        self._freeze()

    @property
    def p(self) -> int:
        return int(self.values.shape[0])

    def objective(self, z: Any) -> float:
        """``sum_i v_i z_i`` in float64."""
        z = backend.to_numpy(z)
        if z.shape != (self.p,):
            raise ValueError(f"z: expected shape ({self.p},), got {z.shape}")
        return float(np.dot(backend.to_numpy(self.values).astype(np.float64), z.astype(np.float64)))

    def check(self, z: Any) -> list[str]:
        """Violated constraints of ``z`` (empty when feasible)."""
        z = backend.to_numpy(z)
        if z is None or z.shape != (self.p,):
            return [f"shape: expected ({self.p},), got {None if z is None else z.shape}"]
        if not np.all((z == 0) | (z == 1)):
            return ["binary: z has entries other than 0 and 1"]
        return self.budget.violations(z == 1, count_key="nnz", count_text="selected", count_name="k", cost_key="flops",
                                      cost_name="flop_budget")

    @property
    def budget(self) -> Budget:
        """The count ``k`` and the FLOP budget as one :class:`~combprune.problems.budget.Budget`."""
        return Budget.of(self.k, self.costs, self.flop_budget)

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "FlopNnzILP":
        return cls(arrays["values"], arrays["costs"], meta["k"], meta["flop_budget"], layer=arrays.get("layer"))

    def __repr__(self) -> str:
        layers = "" if self.layer is None else f", layers={len(np.unique(backend.to_numpy(self.layer)))}"
        return f"FlopNnzILP(p={self.p}, k={self.k}, flop_budget={self.flop_budget:.6g}{layers})"
