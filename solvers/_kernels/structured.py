r"""Linear algebra shared by the ``StructuredMIQP`` solvers (``osscar``, ``group-magnitude``).

Conventions
-----------
Everything here is float64, whatever the problem's dtype. With ``K = H + ridge I`` (d x d),
``G = K W_hat`` (d x m) and ``D = diag(K)``, the solvers work in *Jacobi-scaled* variables

.. math::

    \tilde K = D^{-1/2} K D^{-1/2}, \quad \tilde W = D^{1/2} W, \quad
    \tilde{\hat W} = D^{1/2} \hat W, \quad \tilde G = \tilde K \tilde{\hat W} = D^{-1/2} G,

so that ``K~`` has a unit diagonal. The scaling is per row, so it keeps the group structure,
and it leaves every objective value, OBS cost and swap gain unchanged:
``1/2 tr((W - W_hat)^T K (W - W_hat)) = 1/2 tr((W~ - W_hat~)^T K~ (W~ - W_hat~))``. It is what
makes inputs with huge scale differences between features (1e-6 next to 1e6) harmless: the
eigenvalues of every principal block of ``K~`` lie in ``[lambda_min(K~), d]`` and those of
its inverse in ``[1/d, 1/lambda_min(K~)]``.

For a kept row set S the best weights are ``W~_S = K~_SS^{-1} G~_S`` (:func:`refit`), and with
``P`` the pruned rows and ``R_P = G~_P - K~_PS W~_S`` (minus the gradient on the pruned rows)
the objective is ``1/2 <W_hat~_P, R_P>`` (:func:`support_objective`), which is the same as
``1/2 tr(W_hat^T K W_hat) - 1/2 tr(G_S^T K_SS^{-1} G_S)`` without its cancellation.

Singularity: ``K_SS`` is positive definite whenever ``ridge > 0``. With ``ridge = 0`` and a
rank-deficient ``H`` (N < d samples, duplicated or dead features), :func:`cholesky` raises a
``ValueError`` that names ``ridge`` (the only case where these solvers refuse a problem).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from combprune import backend
from combprune.problems import StructuredMIQP
from combprune.problems.budget import Budget
from combprune.result import Deadline, Result, Status

from . import linalg
from .linalg import rank_update
from .selection import greedy_mask

__all__ = [
    "SINGULAR_PIVOT",
    "ScaledSystem",
    "cholesky",
    "spd_inverse",
    "refit",
    "support_objective",
    "block_quadratic",
    "block_quadratic_gram",
    "gather_blocks",
    "gather_rows",
    "rank_update",
    "SizeBatches",
    "structured_result",
    "group_values",
    "magnitude_support",
    "SECONDS_PER_FLOP",
]

#: With ``ridge = 0``, a scaled Cholesky pivot ``L_ii^2`` below this (``K~`` has a unit
#: diagonal) means ``K_SS`` is numerically singular.
SINGULAR_PIVOT = 1e-12


def _singular_error(ridge: float, detail: str) -> ValueError:
    return ValueError(
        f"ridge: K_SS = (H + ridge*I)_SS is singular ({detail}) with ridge={ridge:g}; H = X^T X is "
        "rank-deficient (N < d samples, duplicated or all-zero features). Use a positive ridge, "
        "e.g. combprune.problems.structured.osscar_default_ridge(H) = 1e-2 * mean(diag(H))"
    )


def cholesky(K: np.ndarray, ridge: float) -> np.ndarray:
    """Lower Cholesky factor ``L`` (``K = L L^T``) of a scaled SPD block, float64.

    Raises a ``ValueError`` naming ``ridge`` when ``K`` is not (numerically) positive definite:
    LAPACK's ``potrf`` fails, or, with ``ridge = 0``, a pivot ``L_ii^2 < SINGULAR_PIVOT``.
    """
    if K.shape[0] == 0:
        return np.zeros((0, 0))
    L = linalg.cholesky(K)
    if L is None:
        raise _singular_error(ridge, "Cholesky failed")
    if ridge == 0.0:
        pivot = float(np.min(np.diag(L)) ** 2)
        if pivot < SINGULAR_PIVOT:
            raise _singular_error(ridge, f"smallest scaled pivot {pivot:.3g}")
    return L


def spd_inverse(K: np.ndarray, ridge: float) -> np.ndarray:
    """Inverse of a scaled SPD block (:func:`~.linalg.spd_inverse`, ``potrf`` + ``potri``), symmetric.

    Costs ``2/3 n^3`` flops; the only full inverse the solvers ever form (at the start and at
    the periodic refreshes), never one per candidate. Singular blocks raise like :func:`cholesky`.
    """
    inv = linalg.spd_inverse(K, on_fail="none", min_pivot=SINGULAR_PIVOT if ridge == 0.0 else 0.0)
    if inv is None:
        cholesky(K, ridge)  # raises the error naming ridge
        raise _singular_error(ridge, "potri failed")  # pragma: no cover - potrf succeeded
    return inv


@dataclass
class ScaledSystem:
    """The problem in Jacobi-scaled float64 variables (see the module docstring).

    Attributes
    ----------
    K : (d, d) ``K~ = D^{-1/2} (H + ridge I) D^{-1/2}`` (unit diagonal).
    W_hat : (d, m) ``W_hat~ = D^{1/2} W_hat``.
    G : (d, m) ``G~ = K~ W_hat~``.
    scale : (d,) ``sqrt(diag(K))``; ``W = W~ / scale[:, None]``.
    ridge : the problem's ridge (for the singularity test).
    group_index : (d,) group number of each row; ``rows``: row indices of each group.
    """

    K: np.ndarray
    W_hat: np.ndarray
    G: np.ndarray
    scale: np.ndarray
    ridge: float
    group_index: np.ndarray
    rows: list[np.ndarray]

    @classmethod
    def from_problem(cls, problem: StructuredMIQP) -> "ScaledSystem":
        H = backend.to_numpy(problem.H)
        K = np.array(H, dtype=np.float64, copy=True)
        K = 0.5 * (K + K.T)
        d = K.shape[0]
        K[np.diag_indices(d)] += problem.ridge
        diag = np.diag(K).copy()
        if np.any(diag <= 0.0):
            if problem.ridge == 0.0:
                raise _singular_error(0.0, f"{int(np.sum(diag <= 0))} all-zero feature(s), diag(H) = 0")
            raise ValueError("H: diagonal entries of H + ridge*I must be positive (H = X^T X is PSD)")  # pragma: no cover
        scale = np.sqrt(diag)
        K /= scale[:, None]
        K /= scale[None, :]
        K[np.diag_indices(d)] = 1.0
        W_hat = backend.to_numpy(problem.W_hat).astype(np.float64) * scale[:, None]
        G = K @ W_hat
        return cls(K, W_hat, G, scale, float(problem.ridge), problem.group_index, problem.group_rows())

    @property
    def d(self) -> int:
        return int(self.K.shape[0])

    @property
    def n_groups(self) -> int:
        return len(self.rows)

    def rows_of(self, groups: Any) -> np.ndarray:
        """Sorted row indices of the given group numbers."""
        groups = np.asarray(groups, dtype=np.int64).ravel()
        if groups.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([self.rows[g] for g in groups]))

    def unscale(self, W_scaled: np.ndarray) -> np.ndarray:
        """``W = D^{-1/2} W~`` (float64)."""
        return W_scaled / self.scale[:, None]


def refit(system: ScaledSystem, rows: np.ndarray) -> np.ndarray:
    """Exact weights on a kept row set: ``W~_S = K~_SS^{-1} G~_S`` (Cholesky), 0 elsewhere.

    ``rows`` is a boolean (d,) mask or an index array; returns the scaled (d, m) ``W~``.
    """
    idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
    W = np.zeros_like(system.W_hat)
    if idx.size:
        L = cholesky(system.K[np.ix_(idx, idx)], system.ridge)
        W[idx] = scipy.linalg.cho_solve((L, True), system.G[idx], check_finite=False)
    return W


def support_objective(system: ScaledSystem, rows: np.ndarray, W_scaled: np.ndarray) -> float:
    """Objective of the refit ``W~`` on kept rows ``rows``: ``1/2 <W_hat~_P, G~_P - K~_PS W~_S>``.

    Exact for the refit weights (where the gradient on S vanishes); O(|P| |S| m).
    """
    mask = np.zeros(system.d, dtype=bool)
    mask[rows] = True
    P, S = np.flatnonzero(~mask), np.flatnonzero(mask)
    if P.size == 0:
        return 0.0
    R = system.G[P] - system.K[np.ix_(P, S)] @ W_scaled[S] if S.size else system.G[P]
    return 0.5 * float(np.sum(system.W_hat[P] * R))


def block_quadratic(M: np.ndarray, Y: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``q_g = tr(Y_g^T M_g^{-1} Y_g)`` for a batch of symmetric blocks.

    ``M``: (n, b, b) blocks (or (n,) for b = 1), ``Y``: (n, b, m) (or (n, m)). See
    :func:`block_quadratic_gram` (this computes the Gram matrices ``Y_g Y_g^T`` first).
    """
    if M.ndim == 1:
        return block_quadratic_gram(M, np.einsum("ij,ij->i", Y, Y), tol)
    return block_quadratic_gram(M, np.matmul(Y, np.swapaxes(Y, 1, 2)), tol)


def block_quadratic_gram(M: np.ndarray, gram: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``q_g = tr(M_g^{-1} Gram_g)`` for symmetric blocks ``M_g`` and ``Gram_g = Y_g Y_g^T``.

    ``M``, ``gram``: (n, b, b), or (n,) for b = 1. A block whose smallest eigenvalue is
    ``<= tol`` is reported in ``ok = False``; its ``q`` uses the pseudo-inverse (directions
    with eigenvalue ``<= tol`` are ignored), so it is finite. Cost ``O(n b^3)``: only diagonal
    blocks, never a d x d inverse.
    """
    if M.ndim == 1:
        ok = M > tol
        return np.where(ok, gram / np.where(ok, M, 1.0), 0.0), ok
    M = 0.5 * (M + np.swapaxes(M, 1, 2))
    try:  # fast path: every block positive definite with pivots above tol
        L = np.linalg.cholesky(M)
        if float(np.min(np.diagonal(L, axis1=1, axis2=2))) ** 2 > tol:
            q = np.trace(np.linalg.solve(M, gram), axis1=1, axis2=2)
            return q, np.ones(M.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        pass
    w, V = np.linalg.eigh(M)
    good = w > tol
    inv_w = np.where(good, 1.0 / np.where(good, w, 1.0), 0.0)
    rotated = np.sum(V * np.matmul(gram, V), axis=1)  # diag(V^T Gram V), (n, b)
    return np.sum(inv_w * rotated, axis=1), good.all(axis=1)


class SizeBatches:
    """Groups batched by size, for vectorised per-group block computations.

    ``batches`` is a list of ``(b, ids, rows)`` with ``ids`` (n,) group numbers of size b and
    ``rows`` (n, b) their row indices.
    """

    def __init__(self, rows: list[np.ndarray]) -> None:
        sizes = np.array([len(r) for r in rows], dtype=np.int64)
        self.sizes = sizes
        self.batches: list[tuple[int, np.ndarray, np.ndarray]] = []
        for b in np.unique(sizes):
            ids = np.flatnonzero(sizes == b)
            self.batches.append((int(b), ids, np.stack([rows[g] for g in ids]).astype(np.int64)))

    def select(self, mask: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The batches restricted to the groups where ``mask`` (G,) is True."""
        out = []
        for b, ids, rows in self.batches:
            keep = mask[ids]
            if keep.any():
                out.append((b, ids[keep], rows[keep]))
        return out


def gather_blocks(T: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Diagonal blocks ``T[g, g]`` for a (n, b) row matrix: (n,) if b = 1 else (n, b, b)."""
    if rows.shape[1] == 1:
        r = rows[:, 0]
        return T[r, r]
    return T[rows[:, :, None], rows[:, None, :]]


def gather_rows(Y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Row blocks ``Y[g]`` for a (n, b) row matrix: (n, m) if b = 1 else (n, b, m)."""
    if rows.shape[1] == 1:
        return Y[rows[:, 0]]
    return Y[rows]


def structured_result(
    problem: StructuredMIQP,
    W: np.ndarray,
    support: np.ndarray,
    status: Status,
    *,
    iterations: int = 0,
    history: list[tuple[float, float]] | None = None,
    info: dict[str, Any] | None = None,
) -> Result:
    """A :class:`Result` with ``x`` in the problem's namespace/dtype and its exact objective."""
    W = np.where(problem.rows_of(support)[:, None], W, 0.0)
    x = backend.from_numpy(W, like=problem.W_hat, keep_dtype=True)
    return Result(
        x=x,
        support=np.asarray(support, dtype=bool),
        objective=problem.objective(x),
        status=status,
        iterations=iterations,
        history=list(history or []),
        info=dict(info or {}),
    )


refit_rows = refit


def group_values(problem: StructuredMIQP) -> np.ndarray:
    """``v_g = ||W_hat_g||_F^2`` per group (float64)."""
    W = backend.to_numpy(problem.W_hat).astype(np.float64)
    return np.bincount(problem.group_index, weights=np.einsum("ij,ij->i", W, W), minlength=problem.n_groups)


def magnitude_support(values: np.ndarray, budget: Budget) -> np.ndarray:
    """Kept groups (G,) bool of structured magnitude pruning for group values ``values``.

    Count budget only: the ``s`` largest values (ties to the smaller group). With costs: the
    better (larger total value) of two greedy fills (:func:`~.selection.greedy_mask`, up to the
    budget's slack), by value per cost and by value (docs/solvers/osscar.md).
    """
    n_groups = values.size
    by_value = np.lexsort((np.arange(n_groups), -values))  # decreasing v, ties by index
    if budget.costs is None:
        keep = np.zeros(n_groups, dtype=bool)
        keep[by_value[: min(budget.count, n_groups)]] = True
        return keep
    costs = budget.costs
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(costs > 0, values / np.where(costs > 0, costs, 1.0), np.inf)
    by_ratio = np.lexsort((np.arange(n_groups), -values, -ratio))
    a = greedy_mask(budget, by_ratio, slack=True)
    b = greedy_mask(budget, by_value, slack=True)
    return a if values[a].sum() >= values[b].sum() else b


#: Conservative seconds per floating-point operation of the dense linear algebra, used to skip
#: uninterruptible factorisations that would overrun a time limit.
SECONDS_PER_FLOP = 2e-9


def group_magnitude_result(problem: StructuredMIQP, deadline: Deadline, *, refit: bool = True) -> Result:
    """Structured magnitude pruning (:func:`magnitude_support`) with an optional exact refit.

    ``iterations`` is 1; ``info["values"]`` holds the group values ``||W_hat_g||_F^2``.
    Status ``feasible`` (``time_limit`` if the deadline had passed by the end). The refit is
    skipped (``info["refit"] = False``) when its estimated cost, ``SECONDS_PER_FLOP`` per
    flop, exceeds the time left. The solver ``group-magnitude``, and osscar's fallback.
    """
    values = group_values(problem)
    keep = magnitude_support(values, problem.budget)
    rows = problem.rows_of(keep)
    r = int(rows.sum())
    # the refit (a Cholesky of the kept block plus products with H) cannot be interrupted:
    # skipped when it would not end before the deadline (the masked W_hat is returned)
    skipped = refit and deadline.remaining() <= SECONDS_PER_FLOP * (r**3 / 3 + 2 * problem.d**2 * problem.m)
    do_refit = refit and not skipped
    if do_refit:
        system = ScaledSystem.from_problem(problem)
        W = system.unscale(refit_rows(system, rows))
    else:
        W = np.where(rows[:, None], backend.to_numpy(problem.W_hat).astype(np.float64), 0.0)
    status = Status.TIME_LIMIT if skipped or deadline.expired() else Status.FEASIBLE
    result = structured_result(problem, W, keep, status, iterations=1, info={"values": values, "refit": do_refit})
    result.history = [(deadline.elapsed(), result.objective)]
    return result

