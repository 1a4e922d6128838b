r"""Host data of an ``L0Regression`` for its solvers, and the exact scaling wrapper.

Problem (docs/formulations/l0_regression.md)::

    Q(w) = 1/2 ||b - A w||^2 + (ridge/2) ||w - w_bar||^2,   ||w||_0 <= k,   sum_{w_i != 0} f_i <= F

* :class:`L0Data`: the vectors as host float64 arrays (O(p) memory, exact enough for the line
  searches) plus the :class:`~.columns.ColumnOperator` on ``A`` (which stays in its own
  namespace and dtype), the budget and the layer index.
* :func:`final_objective`: the returned point in the input's namespace and its exact ``Q``.
* :func:`scale_invariant`: runs a solver on data of order one (a power-of-two rescaling, exact).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable

import numpy as np

from combprune import backend
from combprune.problems import L0Regression
from combprune.problems.budget import Budget
from combprune.result import relative_gap

from .columns import ColumnOperator, to_host64
from .linalg import vdot

logger = logging.getLogger(__name__)

__all__ = ["L0Data", "final_objective", "scale_invariant", "SCALE_EXPONENT"]


class L0Data:
    """The vectors of an ``L0Regression`` as host float64 arrays plus the operator on ``A``."""

    def __init__(self, problem: L0Regression) -> None:
        self.problem = problem
        self.op = ColumnOperator(problem.A)
        self.b = to_host64(problem.b)
        self.w_bar = to_host64(problem.w_bar)
        self.ridge = float(problem.ridge)
        self.k = int(problem.k)
        self.n, self.p = problem.n, problem.p
        self.costs = None if problem.flop_costs is None else to_host64(problem.flop_costs)
        self.flop_budget = problem.flop_budget
        self.budget = Budget(self.k, self.costs, self.flop_budget)
        self.layer = None if problem.layer is None else np.asarray(backend.to_numpy(problem.layer), dtype=np.int64)
        self.wbar_sq = self.w_bar * self.w_bar

    def objective(self, w: np.ndarray, residual: np.ndarray | None = None) -> float:
        """``Q(w)`` from host float64 ``w``; ``residual = A w - b`` when already known.

        Only the columns on the support of ``w`` are read.
        """
        if residual is None:
            residual = self.residual(w)
        d = w - self.w_bar
        return 0.5 * vdot(residual, residual) + 0.5 * self.ridge * vdot(d, d)

    def residual(self, w: np.ndarray) -> np.ndarray:
        """``A w - b`` reading only the support columns of ``w``."""
        nz = np.flatnonzero(w)
        return self.op.cols_matvec(nz, w[nz]) - self.b

    def result_x(self, w: np.ndarray) -> Any:
        """``w`` in the problem's namespace/device/dtype."""
        return backend.from_numpy(w, like=self.problem.A, keep_dtype=True)


def final_objective(problem: L0Regression, data: L0Data, w: np.ndarray, residual: np.ndarray | None = None) -> tuple[Any, float, np.ndarray]:
    """(x in the input's namespace, Q(x), support) with the weights cast to ``A``'s dtype.

    ``Q(x)`` is evaluated in float64 throughout: from ``A``'s own products when ``A`` is
    float64 (only the support columns are read; ``residual = A w - b`` reused when given),
    otherwise by ``problem.objective(x)``, so float32 data report the formulation's exact
    value, not a float32 approximation of it. Weights that are not finite (a breakdown of a rank-one update
    on degenerate data) are never returned: the exact least squares on their support replaces
    them (same support, so the budgets still hold).
    """
    if not np.all(np.isfinite(w)):
        from .exact import l0_refit

        logger.warning("non-finite weights on %d coordinates: re-solved exactly on their support", int((~np.isfinite(w)).sum()))
        w = l0_refit(problem, w != 0)
    x = data.result_x(w)
    w_cast = to_host64(x)
    if getattr(data.op, "dtype", None) == np.float64:  # A's own float64 products: the solver's value
        if residual is not None and not np.array_equal(w_cast, w):
            residual = None
        return x, data.objective(w_cast, residual), w_cast != 0
    return x, problem.objective(x), w_cast != 0


#: The L0 heuristics rescale the data by a power of two when ``max(|A|, |b|)`` lies outside
#: ``[2^-SCALE_EXPONENT, 2^SCALE_EXPONENT]`` (a copy of A, made only then).
SCALE_EXPONENT = 16


def _max_abs(x: Any) -> float:
    """``max |x| = max(max x, -min x)`` of any supported array (0 when empty), without the
    temporary ``|x|`` (a copy of ``A`` on every solve); NaN when ``x`` holds one."""
    if not math.prod(x.shape):
        return 0.0
    xp = backend.namespace(x)
    hi, lo = float(xp.max(x)), float(xp.min(x))
    return hi if math.isnan(hi) else max(hi, -lo)


def scale_invariant(solver: Callable[..., Any]) -> Callable[..., Any]:
    r"""Run an ``L0Regression`` solver on data of order one, exactly equivalent to the input.

    For a power of two ``c``, ``A' = A / c``, ``b' = b / c``, ``ridge' = ridge / c^2`` give
    ``Q'(w) = Q(w) / c^2`` for every ``w``: the same minimisers, the same weights, and no
    rounding at all in the scaling. With ``c ~ max(|A|, |b|)`` the solver's absolute floors
    and jitters, squares (overflow beyond 1e154, underflow below 1e-154) and line searches
    all see data of order one, so its answer does not depend on the units of the data.
    Objectives, bounds and the history are mapped back (``objective`` is recomputed on the
    original problem in float64).
    """

    @functools.wraps(solver)
    def wrapper(problem: L0Regression, **kwargs: Any) -> Any:
        top = max(_max_abs(problem.A), _max_abs(problem.b))
        exponent = math.frexp(top)[1] if top > 0 else 0
        if abs(exponent) <= SCALE_EXPONENT:
            return solver(problem, **kwargs)
        c = math.ldexp(1.0, exponent)
        scaled = L0Regression(problem.A / c, problem.b / c, problem.k, ridge=problem.ridge / c / c, w_bar=problem.w_bar,
                              flop_costs=problem.flop_costs, flop_budget=problem.flop_budget, layer=problem.layer)
        res = solver(scaled, **kwargs)
        res.objective = problem.objective(res.x)
        if res.bound is not None:
            res.bound = res.bound * c * c
        res.gap = None if res.bound is None else relative_gap(res.objective, res.bound)
        res.history = [(t, v * c * c) for t, v in res.history]
        res.info["data_scale"] = c
        return res

    return wrapper
