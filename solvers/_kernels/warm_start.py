"""Warm starts of the L0 solvers: validated supports and weights from a Result, an array or a mask.

* :func:`support_mask`: a boolean (p,) mask from a mask or integer indices, checked against
  both budgets (``ValueError`` naming the argument).
* :func:`warm_start_weights`: host float64 weights from a Result, a weight vector or a boolean
  support (``w_bar`` on it).
* :func:`warm_start_support`: (support, weights or None) for the support-based searches
  (swap), where a Result's own support may extend its nonzeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from combprune import backend
from combprune.problems import L0Regression
from combprune.result import Result

from .columns import to_host64
from .l0_data import L0Data
from .projections import default_support

__all__ = ["support_mask", "warm_start_weights", "warm_start_support"]


def support_mask(problem: L0Regression, support: Any, name: str = "support", *, check_budgets: bool = True) -> np.ndarray:
    """Boolean (p,) mask from a boolean mask or integer indices (any namespace); validated."""
    p = problem.p
    arr = backend.to_numpy(support) if backend.is_array(support) else np.asarray(support)
    if arr.dtype == bool:
        if arr.shape != (p,):
            raise ValueError(f"{name}: expected a boolean mask of shape ({p},), got shape {arr.shape}")
        mask = arr.copy()
    elif arr.dtype.kind in "iu" and arr.ndim == 1:
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= p):
            raise ValueError(f"{name}: indices must lie in [0, {p - 1}]")
        mask = np.zeros(p, dtype=bool)
        mask[arr] = True
        if int(mask.sum()) != arr.size:
            raise ValueError(f"{name}: repeated indices")
    else:
        raise ValueError(f"{name}: expected a boolean mask of shape ({p},) or integer indices, got dtype {arr.dtype}, shape {arr.shape}")
    if check_budgets:
        nnz = int(mask.sum())
        if nnz > problem.k:
            raise ValueError(f"{name}: {nnz} coordinates > k = {problem.k}")
        budget = problem.budget
        if budget.has_costs:
            total = budget.total_cost(mask)
            if not budget.fits_cost(total):
                raise ValueError(f"{name}: uses {total:.17g} FLOPs > flop_budget = {problem.flop_budget:.17g}")
    return mask


def _parse(problem: L0Regression, warm_start: Any, name: str, *, result_support: bool,
           other: type[Exception]) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask, weights or None) of a Result, a weight vector or a boolean mask (not yet checked
    against the budgets). ``result_support``: a Result's ``support`` is added to its nonzeros
    when the count still holds; ``other``: the error for inputs that are neither (TypeError,
    or ValueError after an ``np.asarray`` attempt)."""
    p = problem.p
    if isinstance(warm_start, Result):
        if warm_start.x is None:
            raise ValueError(f"{name}: the Result has no solution (status {warm_start.status.value})")
        x = to_host64(warm_start.x)
        if x.shape != (p,):
            raise ValueError(f"{name}: the Result's x has shape {x.shape}, expected ({p},)")
        mask = x != 0
        if result_support and warm_start.support.shape == (p,) and int((mask | warm_start.support).sum()) <= problem.k:
            mask = mask | warm_start.support
    else:
        if backend.is_array(warm_start) or isinstance(warm_start, (list, tuple)):
            arr = backend.to_numpy(warm_start) if backend.is_array(warm_start) else np.asarray(warm_start)
        elif other is TypeError:
            raise TypeError(f"{name}: expected a Result, a weight vector, a boolean support or None, got {type(warm_start).__name__}")
        else:
            arr = np.asarray(warm_start)
        if arr.dtype == bool:
            return arr, None
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: expected a Result, weights or a boolean support, got dtype {arr.dtype}")
        if arr.shape != (p,):
            raise ValueError(f"{name}: expected shape ({p},) (weights or boolean support), got {arr.shape}")
        x = arr.astype(np.float64)
        mask = x != 0
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or Inf")
    return mask, x


def warm_start_weights(problem: L0Regression, warm_start: Any, name: str = "warm_start") -> np.ndarray:
    """Host float64 weights from a Result, a weight vector or a boolean support (-> w_bar on it);
    ``ValueError`` naming ``name`` when invalid or over a budget."""
    mask, x = _parse(problem, warm_start, name, result_support=False, other=ValueError)
    mask = support_mask(problem, mask, name)
    return np.where(mask, to_host64(problem.w_bar), 0.0) if x is None else x


def warm_start_support(problem: L0Regression, data: L0Data, warm_start: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(support mask, weights or None) from a Result, a weight vector, a boolean mask, or None
    (the magnitude / FLOP-aware magnitude support). A Result's ``support`` is added to its
    nonzeros when both budgets still hold."""
    if warm_start is None:
        return support_mask(problem, default_support(problem, data), "warm_start"), None
    mask, x = _parse(problem, warm_start, "warm_start", result_support=True, other=TypeError)
    return support_mask(problem, mask, "warm_start"), x
