"""``StructuredMIQP``: OSSCAR's layer-wise group (neuron / channel / head) pruning problem."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.linalg

from combprune import backend
from combprune._validation import check_array, check_int, check_scalar

from ._base import Problem
from .budget import Budget


def osscar_default_ridge(H: Any) -> float:
    """OSSCAR's default ridge ``lam = 1e-2 * mean(diag(X^T X))`` for ``H = X^T X``."""
    diag = np.diag(backend.to_numpy(H)).astype(np.float64)
    return float(1e-2 * diag.mean()) if diag.size else 0.0


#: Relative tolerance of the PSD test: eigenvalues of H down to ``-PSD_RTOL * d * ||H||_2`` are
#: rounding (a Gram matrix ``X^T X`` formed in floating point is PSD only up to such errors).
PSD_RTOL = 1e-9


def check_psd(name: str, H: np.ndarray) -> None:
    r"""Reject a symmetric ``H`` that is not positive semi-definite up to rounding.

    Test: ``H + tau I`` admits a Cholesky factorisation with ``tau = PSD_RTOL d ||H||_2``
    (``||H||_2 <= ||H||_F``, which is used), i.e. ``lambda_min(H) > -tau``. Without it the
    objective is unbounded below on some support and no solver answer means anything.
    """
    H64 = 0.5 * (H.astype(np.float64) + H.astype(np.float64).T)
    d = H64.shape[0]
    tau = PSD_RTOL * d * float(np.linalg.norm(H64))
    try:
        scipy.linalg.cho_factor(H64 + tau * np.eye(d), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        lmin = float(np.linalg.eigvalsh(H64)[0])
        raise ValueError(
            f"{name}: must be positive semi-definite (H = X^T X); its smallest eigenvalue is {lmin:.3g} "
            f"(tolerance {-tau:.3g})"
        ) from None


class StructuredMIQP(Problem):
    r"""Group-sparse layer reconstruction (OSSCAR).

    .. math::

        \min_W \tfrac12 \operatorname{tr}\big((W - \hat W)^T H (W - \hat W)\big)
        + \tfrac{\lambda}{2} \|W - \hat W\|_F^2
        \quad \text{s.t.} \quad W_g = 0 \text{ for unselected groups}, \quad
        \#\text{selected} \le s \;\; (\text{and/or} \; \textstyle\sum_{g \text{ sel.}} c_g \le C)

    with ``H = X^T X`` (d x d) of the layer's calibration input X (N x d), so that the first
    term equals ``1/2 ||X (W - W_hat)||_F^2``. Rows of ``W_hat`` (d x m) are input features.
    With ``K = H + lam I`` and ``G = K W_hat``, for a kept row set S the best weights are
    ``W_S = K_SS^{-1} G_S`` and the objective is
    ``1/2 tr(W_hat^T K W_hat) - 1/2 tr(G_S^T K_SS^{-1} G_S)``.

    Parameters
    ----------
    H : (d, d) symmetric positive semi-definite Gram matrix.
    W_hat : (d, m) dense weights (a (d,) vector is read as m = 1).
    groups : (d,) integer group label of each row; groups are numbered in sorted label order
        (``group_labels``), and ``support`` vectors are over that order.
    s : keep at most s groups (``0 <= s <= G``).
    ridge : lam ``>= 0`` (see :func:`osscar_default_ridge`).
    group_costs, cost_budget : optional cost c_g per group (G,) and budget C (given together).
    At least one of ``s`` and ``cost_budget`` is required.
    """

    kind: ClassVar[str] = "structured_miqp"
    sense: ClassVar[str] = "min"
    default_solver: ClassVar[str] = "osscar"
    _array_fields: ClassVar[tuple[str, ...]] = ("H", "W_hat", "groups", "group_costs")
    _scalar_fields: ClassVar[tuple[str, ...]] = ("s", "ridge", "cost_budget")

    def __init__(
        self,
        H: Any,
        W_hat: Any,
        groups: Any,
        s: int | None = None,
        *,
        ridge: float = 0.0,
        group_costs: Any = None,
        cost_budget: float | None = None,
    ) -> None:
        H = check_array("H", H, ndim=2)
        d = int(H.shape[0])
        if H.shape[1] != d or d == 0:
            raise ValueError(f"H: expected a non-empty square (d, d) matrix, got shape {tuple(H.shape)}")
        Hn = backend.to_numpy(H)
        scale = max(float(np.abs(Hn).max()), 1.0)
        if not np.allclose(Hn, Hn.T, rtol=1e-6, atol=1e-8 * scale):
            raise ValueError("H: must be symmetric (H = X^T X)")
        check_psd("H", Hn)
        W_hat = check_array("W_hat", W_hat, ndim=(1, 2), shape=(d,))
        if W_hat.ndim == 1:
            W_hat = backend.namespace(W_hat).reshape(W_hat, (d, 1))
        groups = check_array("groups", groups, ndim=1, shape=(d,), dtype_kind="int")
        labels = np.unique(backend.to_numpy(groups))
        n_groups = int(labels.size)
        ridge = check_scalar("ridge", ridge, low=0.0)
        if s is None and cost_budget is None:
            raise ValueError("s: give a group count budget s, a cost_budget, or both")
        if s is not None:
            s = check_int("s", s, low=0, high=n_groups)
        if (group_costs is None) != (cost_budget is None):
            missing = "cost_budget" if cost_budget is None else "group_costs"
            raise ValueError(f"{missing}: group_costs and cost_budget must be given together")
        if group_costs is not None:
            group_costs = check_array("group_costs", group_costs, ndim=1, shape=(n_groups,), nonnegative=True)
            cost_budget = check_scalar("cost_budget", cost_budget, low=0.0)
        self.H, self.W_hat, self.groups = H, W_hat, groups
        self.s, self.ridge = s, ridge
        self.group_costs, self.cost_budget = group_costs, cost_budget
        self._labels = labels
        self._group_index = np.searchsorted(labels, backend.to_numpy(groups))
        self._freeze()

    @classmethod
    def from_activations(
        cls,
        X: Any,
        W_hat: Any,
        groups: Any,
        s: int | None = None,
        *,
        ridge: float | None = None,
        group_costs: Any = None,
        cost_budget: float | None = None,
    ) -> "StructuredMIQP":
        """Build from calibration inputs X (N x d): ``H = X^T X`` in float64; ``ridge=None``
        takes OSSCAR's default ``1e-2 * mean(diag(H))``."""
        X = backend.to_numpy(check_array("X", X, ndim=2)).astype(np.float64)
        H = X.T @ X
        if ridge is None:
            ridge = osscar_default_ridge(H)
        return cls(H, W_hat, groups, s, ridge=ridge, group_costs=group_costs, cost_budget=cost_budget)

    # Properties -----------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return int(self.H.shape[0])

    @property
    def m(self) -> int:
        return int(self.W_hat.shape[1])

    @property
    def n_groups(self) -> int:
        return int(self._labels.size)

    @property
    def group_labels(self) -> np.ndarray:
        """Sorted distinct labels; group j of a ``support`` vector is ``group_labels[j]``."""
        return self._labels

    @property
    def group_index(self) -> np.ndarray:
        """(d,) group number (0..G-1) of each row."""
        return self._group_index

    def group_rows(self) -> list[np.ndarray]:
        """Row indices of each group, in group order."""
        order = np.argsort(self._group_index, kind="stable")
        counts = np.bincount(self._group_index, minlength=self.n_groups)
        return np.split(order, np.cumsum(counts)[:-1])

    def rows_of(self, support: Any) -> np.ndarray:
        """Boolean (d,) mask of the rows of the groups selected by the (G,) ``support``."""
        return np.asarray(support, dtype=bool)[self._group_index]

    # Evaluation -----------------------------------------------------------------------------
    def objective(self, W: Any) -> float:
        """``1/2 tr((W - W_hat)^T (H + ridge I) (W - W_hat))`` in float64."""
        W = backend.to_numpy(W)
        if W.ndim == 1:
            W = W.reshape(-1, 1)
        if W.shape != (self.d, self.m):
            raise ValueError(f"W: expected shape ({self.d}, {self.m}), got {W.shape}")
        D = W.astype(np.float64) - backend.to_numpy(self.W_hat).astype(np.float64)
        HD = backend.to_numpy(self.H).astype(np.float64) @ D
        return float(0.5 * np.sum(D * HD) + 0.5 * self.ridge * np.sum(D * D))

    def group_support(self, W: Any) -> np.ndarray:
        """(G,) boolean: groups with any nonzero entry in W."""
        W = backend.to_numpy(W).reshape(self.d, -1)
        row_nz = np.any(W != 0, axis=1)
        return np.bincount(self._group_index, weights=row_nz, minlength=self.n_groups) > 0

    def check(self, W: Any) -> list[str]:
        """Violated constraints of ``W`` (empty when feasible)."""
        W = backend.to_numpy(W)
        if W is None:
            return ["shape: W is None"]
        if W.ndim == 1:
            W = W.reshape(-1, 1)
        if W.shape != (self.d, self.m):
            return [f"shape: expected ({self.d}, {self.m}), got {W.shape}"]
        if not np.all(np.isfinite(W)):
            return ["finite: W contains NaN or Inf"]
        return self.budget.violations(self.group_support(W), count_key="groups", count_text="selected", count_name="s",
                                      cost_key="cost", cost_name="cost_budget")

    @property
    def budget(self) -> Budget:
        """The group count ``s`` and the cost budget as one :class:`~combprune.problems.budget.Budget`."""
        return Budget.of(self.s, self.group_costs, self.cost_budget)

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "StructuredMIQP":
        return cls(
            arrays["H"],
            arrays["W_hat"],
            arrays["groups"],
            meta["s"],
            ridge=meta["ridge"],
            group_costs=arrays.get("group_costs"),
            cost_budget=meta.get("cost_budget"),
        )

    def __repr__(self) -> str:
        budget = f", s={self.s}" if self.s is not None else ""
        if self.cost_budget is not None:
            budget += f", cost_budget={self.cost_budget:.6g}"
        return f"StructuredMIQP(d={self.d}, m={self.m}, groups={self.n_groups}{budget}, ridge={self.ridge:.6g})"
