r"""``SupportFactor``: the Woodbury factor of the back-solve on a support, with add/drop updates.

For a support S of an ``L0Regression`` (docs/formulations/l0_regression.md) with ``ridge > 0``
and ``|S| > n``, the back-solve lives in n x n space (docs/solvers/chita.md, "back-solve"):

.. math::

    K_S = A_S A_S^T, \quad r_0 = b - A_S \bar w_S, \quad (K_S + \lambda I) y = r_0, \quad
    w_S = \bar w_S + A_S^T y, \quad A w - b = -\lambda y,

    Q^*(S) = \tfrac{\lambda}{2} \|\bar w_{S^c}\|^2 + \tfrac{\lambda}{2} r_0^T y .

Changing S by adding the columns ``T \ S`` and dropping ``S \ T`` updates ``K`` by
``A_add A_add^T - A_drop A_drop^T`` (O(n^2 |D|)) and ``r0`` by ``-A_add w_bar_add + A_drop
w_bar_drop`` (O(n |D|)); one Cholesky solve (O(n^3 / 3)) gives the new ``y`` and ``Q*``: no
pass over A and no fresh Gram (:meth:`SupportFactor.moved`). :meth:`SupportFactor.refit`
returns the weights ``w`` of the support (one pass ``A^T y``), :meth:`SupportFactor.fresh`
recomputes the factor from the columns (drift control).

The back-solve kernel (:func:`~.ridge.ridge_solve_on_support`, ``factor=True``) returns the
factor of the support it solved, which the IHT engine and the support refinement reuse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .linalg import chol_solve, single_thread, vdot

__all__ = ["SupportFactor"]


@dataclass
class SupportFactor:
    """Woodbury factor ``(K, r0, y)`` of the back-solve on ``support`` (module docstring).

    ``support``: boolean mask over the columns of the operator it was built on (or None when
    the factor was handed over without it); ``objective``: ``Q*(S)`` up to the constant
    ``ridge/2 ||w_bar_{S^c}||^2`` when ``wbar_sq`` was not given (NaN until computed);
    ``z``: cached ``A^T y`` over all columns (None: not computed for this ``y``).
    """

    K: np.ndarray
    r0: np.ndarray
    y: np.ndarray
    ridge: float
    support: np.ndarray | None = None
    objective: float = float("nan")
    z: np.ndarray | None = None

    # construction --------------------------------------------------------------------------
    @classmethod
    def solve(cls, K: np.ndarray, r0: np.ndarray, ridge: float, support: np.ndarray | None = None) -> "SupportFactor | None":
        """The factor of ``(K + ridge I) y = r0`` (None when not numerically positive definite)."""
        y = chol_solve(K, ridge, r0)
        return None if y is None else cls(K, r0, y, float(ridge), support)

    @classmethod
    def fresh(cls, op: Any, b: np.ndarray, wbar: np.ndarray, ridge: float, support: np.ndarray) -> "SupportFactor | None":
        """The factor of ``support`` computed from its gathered columns (``op``: a ColumnOperator)."""
        idx = np.flatnonzero(support)
        AS = op.sub(idx)
        return cls.solve(AS.gram_rows(), b - AS.matvec(wbar[idx]), ridge, support)

    def with_objective(self, wbar_sq: np.ndarray, wbar_sq_total: float) -> "SupportFactor":
        """This factor with ``objective = Q*(S)`` set (``wbar_sq = w_bar**2`` per column)."""
        self.objective = self.value(wbar_sq, wbar_sq_total)
        return self

    def value(self, wbar_sq: np.ndarray, wbar_sq_total: float) -> float:
        """``Q*(S) = ridge/2 (||w_bar||^2 - ||w_bar_S||^2) + ridge/2 r0 . y``."""
        kept = float(wbar_sq[self.support].sum()) if self.support is not None else 0.0
        return 0.5 * self.ridge * (wbar_sq_total - kept) + 0.5 * self.ridge * vdot(self.r0, self.y)

    # updates -------------------------------------------------------------------------------
    def moved(self, op: Any, wbar: np.ndarray, target: np.ndarray) -> "SupportFactor | None":
        """The factor of the support ``target`` by rank-|D| updates of ``K`` and ``r0`` (module
        docstring); None when the updated system is not numerically positive definite."""
        add, drop = np.flatnonzero(target & ~self.support), np.flatnonzero(self.support & ~target)
        K, r0 = self.K.copy(), self.r0.copy()
        with single_thread():
            if add.size:
                Aa = np.asarray(op._out(op.take(add)))
                K += Aa @ Aa.T
                r0 -= Aa @ wbar[add]
            if drop.size:
                Ad = np.asarray(op._out(op.take(drop)))
                K -= Ad @ Ad.T
                r0 += Ad @ wbar[drop]
        return SupportFactor.solve(K, r0, self.ridge, target)

    def on(self, support: np.ndarray) -> "SupportFactor":
        """The same factor indexed by another column set's mask (e.g. an active block's)."""
        return replace(self, support=support, z=None)

    # weights ---------------------------------------------------------------------------------
    def dual_weights(self, op: Any) -> np.ndarray:
        """``z = A^T y`` over the columns of ``op`` (cached)."""
        if self.z is None:
            self.z = op.rmatvec(self.y)
        return self.z

    def refit(self, op: Any, wbar: np.ndarray) -> np.ndarray:
        """The back-solved weights ``w_S = w_bar_S + (A^T y)_S`` (0 off S) over ``op``'s columns."""
        return np.where(self.support, wbar + self.dual_weights(op), 0.0)
