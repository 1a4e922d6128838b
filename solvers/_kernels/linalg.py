r"""Dense symmetric positive (semi)definite algebra: the one SPD solve and the one SPD inverse.

Every solver that solves ``(M + shift I) x = rhs`` or forms ``(M + shift I)^{-1}`` for a
symmetric PSD ``M`` (swap's support model, osscar's eliminations, the structured refits, the
L0 back-solves, SparseGPT's inverse Hessian) goes through this module.

Fast path (measured by ``benchmarks/spd_inverse.py``, one BLAS thread, results in
``benchmarks/results/spd_inverse.md``): LAPACK ``potrf`` + ``potri`` (inverse, symmetrised from
the lower triangle) and ``potrf`` + ``potrs`` (solve), called directly. Against
``potrf`` + ``trtri`` + ``L^{-T} L^{-1}``, ``scipy.linalg.cho_solve(I)`` and ``numpy.linalg.inv``,
``potri`` takes 0.55-0.93x the time of ``cho_solve(I)`` (n = 200 ... 2000) and 0.67-0.8x that of
``trtri`` from n = 500 on; ``trtri`` is faster only around n = 50 (0.63x, microseconds either
way). ``potrs`` takes 0.5-1.0x the time of ``cho_solve`` (no input checks), same residuals.
All of them run on one BLAS thread
(:func:`single_thread`): at these sizes a second thread gains little, and on a loaded
machine a spinning thread pool can make an n x n Cholesky 100x slower.

Failure handling is the caller's choice (``on_fail``): ``"raise"`` (``np.linalg.LinAlgError``,
or the caller's own error), ``"eig"`` (a symmetric eigen-decomposition with small or negative
eigenvalues floored: the pseudo-inverse for solves, a floored inverse for inverses) or
``"none"`` (return ``None``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import numpy as np
from scipy.linalg import blas, lapack

logger = logging.getLogger(__name__)

__all__ = ["single_thread", "cholesky", "psd_solve", "chol_solve", "spd_inverse", "rank_update", "vdot"]

#: Relative eigenvalue floor of the ``"eig"`` fallback of :func:`spd_inverse`.
EIG_FLOOR = 1e-14


@functools.lru_cache(maxsize=None)
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_thread() -> Any:
    """Limit BLAS/LAPACK to one thread (threadpoolctl when installed) for the small dense
    factorisations (see the module docstring).

    One ``ThreadpoolController`` is built on first use and reused: ``threadpool_limits(...)``
    rescans the loaded libraries at every call (measured 1.3 ms, as long as a 200 x 200
    Cholesky), ``controller.limit(...)`` does not (0.02 ms).
    """
    try:
        controller = _controller()
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def vdot(x: np.ndarray, y: np.ndarray) -> float:
    """Dot product of two host float64 vectors without BLAS (no thread start-up or contention
    for these short O(n) / O(p) reductions)."""
    return float(np.einsum("i,i->", x, y))


def _shifted(M: np.ndarray, shift: float, symmetrize: bool) -> np.ndarray:
    M = np.array(M, dtype=np.float64, copy=True)
    if symmetrize:
        M = 0.5 * (M + M.T)
    if shift:
        M[np.diag_indices_from(M)] += shift
    return M


def cholesky(M: np.ndarray, shift: float = 0.0, *, symmetrize: bool = False) -> np.ndarray | None:
    """Lower Cholesky factor ``L`` of ``M + shift I`` (``potrf``), or None when not positive definite."""
    if M.shape[0] == 0:
        return np.zeros((0, 0))
    with single_thread():
        L, info = lapack.dpotrf(_shifted(M, shift, symmetrize), lower=1, clean=1, overwrite_a=1)
    return L if info == 0 else None


def chol_solve(M: np.ndarray, shift: float, rhs: np.ndarray) -> np.ndarray | None:
    """``(M + shift I)^{-1} rhs`` by Cholesky (``potrf`` + ``potrs``), or None when ``M + shift I``
    is not numerically positive definite."""
    L = cholesky(M, shift)
    if L is None:
        return None
    if L.shape[0] == 0:
        return np.zeros_like(rhs, dtype=np.float64)
    with single_thread():
        x, info = lapack.dpotrs(L, np.asarray(rhs, dtype=np.float64), lower=1)
    return x if info == 0 else None


def psd_solve(M: np.ndarray, rhs: np.ndarray, shift: float) -> np.ndarray:
    """Solve ``(M + shift I) x = rhs`` for symmetric PSD ``M`` (float64; ``rhs`` 1-D or 2-D).

    ``shift > 0``: Cholesky of the symmetrised matrix (falling back to a symmetric eigen-solve
    if rounding made it indefinite). ``shift == 0``: the minimum-norm solution through a
    pseudo-inverse (eigenvalues below ``dim * eps * max eigenvalue`` treated as zero).
    """
    with single_thread():
        M = _shifted(M, 0.0, True)
        if shift > 0:
            x = chol_solve(M, shift, rhs)
            if x is not None:
                return x
            logger.debug("psd_solve: Cholesky failed, using eigh")
            M[np.diag_indices_from(M)] += shift
        vals, vecs = np.linalg.eigh(M)
        cut = max(M.shape[0], 1) * np.finfo(np.float64).eps * max(float(vals.max(initial=0.0)), 0.0)
        inv = np.where(vals > cut, 1.0 / np.where(vals > cut, vals, 1.0), 0.0)
        return vecs @ (inv[:, None] * (vecs.T @ rhs)) if rhs.ndim == 2 else vecs @ (inv * (vecs.T @ rhs))


def spd_inverse(M: np.ndarray, shift: float = 0.0, *, on_fail: str = "raise", min_pivot: float = 0.0,
                symmetrize: bool = False) -> np.ndarray | None:
    """``(M + shift I)^{-1}`` of a symmetric positive definite matrix (``potrf`` + ``potri``), symmetric.

    ``min_pivot``: the factorisation also fails when ``min_i L_ii^2 <= min_pivot`` (numerically
    singular). On failure: ``on_fail="raise"`` raises ``np.linalg.LinAlgError``, ``"eig"`` returns
    the inverse with eigenvalues floored at ``EIG_FLOOR * max eigenvalue``, ``"none"`` returns None.
    """
    if on_fail not in ("raise", "eig", "none"):
        raise ValueError(f"on_fail: expected 'raise', 'eig' or 'none', got {on_fail!r}")
    n = M.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    L = cholesky(M, shift, symmetrize=symmetrize)
    if L is not None and min_pivot > 0 and float(np.min(np.abs(np.diag(L)))) ** 2 <= min_pivot:
        L = None
    if L is not None:
        with single_thread():
            inv, info = lapack.dpotri(L, lower=1, overwrite_c=1)
        if info == 0:
            low = np.tril(inv)
            return low + np.tril(low, -1).T
    if on_fail == "none":
        return None
    if on_fail == "raise":
        raise np.linalg.LinAlgError("matrix is not numerically positive definite")
    vals, vecs = np.linalg.eigh(_shifted(M, shift, True))
    floor = max(vals.max(), 1e-300) * EIG_FLOOR
    inv = (vecs / np.maximum(vals, floor)) @ vecs.T
    return 0.5 * (inv + inv.T)


def rank_update(T: np.ndarray, U: np.ndarray, V: np.ndarray) -> None:
    """In place ``T -= U V^T`` (BLAS ``dgemm`` on ``T``'s memory, no n x n temporary).

    ``T`` is a C-contiguous float64 (n, n) array, ``U`` and ``V`` are (n, r).
    """
    if T.size == 0 or U.shape[1] == 0:
        return
    if T.flags.c_contiguous and T.dtype == np.float64:
        # T^T is Fortran-ordered: T^T -= V U^T  <=>  T -= U V^T.
        out = blas.dgemm(alpha=-1.0, a=V, b=U, trans_b=1, beta=1.0, c=T.T, overwrite_c=1)
        if np.shares_memory(out, T):
            return
    T -= U @ V.T  # pragma: no cover - non-contiguous fallback
