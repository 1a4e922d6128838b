r"""SparseGPT's OBS column sweep for :class:`~combprune.problems.LayerwiseL0` (Frantar & Alistarh, 2023).

The kernel of the solvers ``sparsegpt`` and ``layerwise`` (its start point).

Working on the torch layout ``W = W_hat^T`` (outputs x inputs) and ``K = H + ridge I`` (plus the
paper's damping, ``damp * mean(diag(K))``, where K is singular), SparseGPT visits the inputs
(columns of W) in order. With ``U`` the upper Cholesky factor of ``K^{-1}`` (``K^{-1} = U^T U``):

* **adaptive mask selection**: at the start of every block of ``block_size`` columns, the
  OBS saliencies ``w_ij^2 / U_jj^2`` of the block's *current* (already updated) weights choose
  the block's mask; with N:M the choice is made every m columns, n kept per output;
* **OBS update**: when column j is pruned to ``q_j`` (``w_j`` on the mask, 0 off it), the error
  ``e = (w_j - q_j) / U_jj`` is spread over the later columns of the block,
  ``W_{:, j:} -= e U_{j, j:}``;
* **lazy batch updates**: the later blocks receive the block's errors at once,
  ``W_{:, b2:} -= E U_{b1:b2, b2:}``.

Budgets: the layer count k is split over the blocks in proportion to their sizes (largest
remainder), each block keeping its share of the largest saliencies; with ``k_col`` every output
gets the same split of ``k_col`` over the blocks. The result is feasible by construction.
See ``docs/solvers/sparsegpt.md``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from combprune.problems import LayerwiseL0

from .layerwise import topk_columns
from .linalg import spd_inverse
from .selection import per_layer_budgets

__all__ = ["DEFAULT_BLOCK", "sparsegpt_weights"]


DEFAULT_BLOCK = 128


def _inverse_cholesky(K: np.ndarray, damp: float) -> np.ndarray:
    """Upper U with ``(K + damp mean(diag K) I)^{-1} = U^T U``."""
    d = K.shape[0]
    Kd = K + damp * float(np.mean(np.diag(K))) * np.eye(d)
    diag = np.diag(Kd).copy()
    dead = diag <= 0  # inputs that are always zero: as in the paper, H_ii = 1 (their weights go to 0)
    Kd[dead, dead] = 1.0
    Kinv = spd_inverse(Kd)  # LinAlgError when not positive definite
    return scipy.linalg.cholesky(Kinv, lower=False, check_finite=False)


def _block_budgets(problem: LayerwiseL0, bounds: list[tuple[int, int]]) -> np.ndarray | None:
    """Kept weights per block: (n_blocks,) for k, (n_blocks,) per output for k_col, None for N:M."""
    widths = np.array([b - a for a, b in bounds])
    if problem.k is not None:
        return per_layer_budgets(widths * problem.m, problem.k)
    if problem.k_col is not None:
        return per_layer_budgets(widths, problem.k_col)
    return None


def sparsegpt_weights(problem: LayerwiseL0, K: np.ndarray, W_hat: np.ndarray, *, block_size: int = DEFAULT_BLOCK,
                      damp: float | None = None) -> np.ndarray:
    """SparseGPT's pruned weights (d, m) in float64 (see the module docstring)."""
    d, m = problem.d, problem.m
    if damp is None:
        damp = 0.0 if problem.ridge > 0 or problem.eig_min > 0 else 0.01
    nm = problem.nm_pair
    if nm is not None:
        block_size = max(nm[1], block_size - block_size % nm[1])
    U = _inverse_cholesky(K, damp)
    W = W_hat.T.copy()
    dead = np.diag(K) <= 0
    W[:, dead] = 0.0
    bounds = [(a, min(a + block_size, d)) for a in range(0, d, block_size)]
    budgets = _block_budgets(problem, bounds)
    for b, (i1, i2) in enumerate(bounds):
        W1 = W[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        diag1 = np.diag(U1)
        E1 = np.zeros_like(W1)
        keep = np.zeros(W1.shape, dtype=bool)
        if problem.k is not None:
            sal = (W1 * W1 / (diag1 * diag1)[None, :]).reshape(-1, 1)
            keep = topk_columns(sal, np.array([budgets[b]])).reshape(W1.shape)
        elif problem.k_col is not None:
            keep = topk_columns((W1 * W1 / (diag1 * diag1)[None, :]).T, np.full(m, budgets[b])).T
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                sl = slice(i, i + nm[1])
                sal = W1[:, sl] ** 2 / (diag1[sl] ** 2)[None, :]
                keep[:, sl] = topk_columns(sal.T, np.full(m, nm[0])).T
            w = W1[:, i]
            q = np.where(keep[:, i], w, 0.0)
            err = (w - q) / diag1[i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            W1[:, i] = q
            E1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return W.T
