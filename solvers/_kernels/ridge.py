r"""Exact ridge least squares on a fixed support (CHITA's back-solve), the kernel of every L0 solver.

For a support S (|S| = s) the best weights of ``L0Regression`` solve

.. math::

    (A_S^T A_S + \lambda I)\, w_S = A_S^T b + \lambda \bar w_S, \qquad w_{S^c} = 0 .

Writing ``w_S = w_bar_S + d`` and ``r0 = b - A_S w_bar_S`` this is
``(A_S^T A_S + lambda I) d = A_S^T r0``, computed in the smaller of two spaces:

* ``s <= n`` (primal): the s x s system ``A_S^T A_S + lambda I`` (Cholesky, float64).
* ``s > n`` (Woodbury / push-through): ``(A_S^T A_S + lambda I)^{-1} A_S^T = A_S^T (A_S A_S^T +
  lambda I)^{-1}``, so ``d = A_S^T y`` with ``(A_S A_S^T + lambda I) y = r0``: an n x n system.
  The p x p matrix is never formed; memory is the gathered ``A_S`` (or chunks of it, when it
  would exceed ~0.45x the size of A) plus n x n.
* ``lambda = 0``: the system may be singular (``s > n``, or rank-deficient ``A_S``). The
  solution returned is then the least-squares solution *closest to* ``w_bar_S``
  (minimum-norm ``d``), i.e. the limit of the ridge solution as ``lambda -> 0+``; it is computed
  with ``lstsq`` on ``A_S`` (or a pseudo-inverse of the n x n Gram when ``A_S`` is chunked).

Solving the n x n Woodbury system (``method``, for ``s > n`` and ``ridge > 0``):

* ``"direct"``: form ``K = A_S A_S^T`` (``n^2 s`` multiply-adds, BLAS-bound) and Cholesky.
* ``"cg"``: conjugate gradients on ``(K + lambda I) y = r0`` without forming ``K``; each
  iteration is one ``K p = A_S (A_S^T p)`` (two matrix-vector products with the gathered
  ``A_S``: ``4 n s`` flops, memory-bound, against ``n^2 s`` for ``K``). When ``s >> n`` the
  spectrum of ``K`` is concentrated (for iid Gaussian columns in ``[(sqrt s - sqrt n)^2,
  (sqrt s + sqrt n)^2]``) and CG converges in a few tens of iterations. Stopping rule, with
  ``r = r0 - (K + lambda I) y`` recomputed explicitly (not the recursive residual) from the
  same products that give the returned ``w_S`` and ``A_S w_S - b``:
  ``Q(w) - Q(w*) = r^T (K + lambda I)^{-1} K r / 2 <= ||r||^2 / 2``, so CG stops when
  ``||r||^2 <= 2 CG_FTOL Q(w)`` (objective exact to ``CG_FTOL = 1e-13`` relative; ``Q`` = the
  data + ridge terms on S) and ``||r|| <= CG_RTOL ||r0||`` (``1e-9``). When the residual has
  not met this within the iteration cap, or its observed decay rate (checked from the 5th
  iteration) predicts it will not, the direct solve is used on the same gathered ``A_S``: the
  result is always the exact back-solve. Cap:
  ``max(16, n // 30)`` under ``"auto"`` (about where CG stops being cheaper than forming ``K``:
  an iteration costs ``4 n s`` memory-bound flops, ``K`` costs ``n^2 s`` BLAS-3 flops; measured
  break-even 25-45 iterations at n = 1000 on 2 cores), ``max(16, n // 10)`` under ``"cg"``.
* ``"auto"`` (default): ``"cg"`` when ``s > n >= 512``, ``ridge > 0``, ``A`` is float64 (any
  namespace) and no ``state`` is requested (``state`` needs ``K``); ``"direct"`` otherwise.
  (float32 products cannot reach the stopping rule; ``"cg"`` then falls back.) When ``A_S``
  is too large to gather (``max_gather_fraction``), CG multiplies by all of ``A`` with the
  coordinates outside S zeroed / dropped instead (``p / s`` times the traffic, no copy).

A gather of ``A_S`` from a large C-ordered NumPy ``A`` (either method) is copied by parallel
threads over row blocks (a single-threaded column gather is bound by one core's memory
throughput).

Block variant (``block_size`` or ``blocks``): for very large p, the support is split into
blocks (consecutive chunks of ``block_size`` coordinates, or a per-coordinate block index such
as the layer of each weight) and the exact problem is minimised *block by block*: block
Gauss-Seidel, each step the exact minimiser over ``w_{S∩B}`` with the others fixed
(right-hand side ``b - A_{S \ B} w_{S \ B}``, the residual kept up to date). This is the
block-diagonal approximation of ``A_S^T A_S`` used as a sweep; the objective never increases
and repeated sweeps (``sweeps``) converge to the exact back-solve. Memory: one block's columns.

Conventions: float32 ``A`` stays float32 (Gram products in float32 chunks accumulated in
float64; small systems and all vectors in float64). Results come back in ``A``'s namespace
and dtype.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from combprune import backend

from .columns import GATHER_FRACTION, ColumnOperator, gram_rows, host_or_native, to_host64
from .linalg import psd_solve
from .options import check_positive_int
from .support_factor import SupportFactor

logger = logging.getLogger(__name__)

__all__ = ["ridge_solve_on_support", "solve_with_factor", "check_method", "METHODS"]

METHODS = ("auto", "direct", "cg")


CG_FTOL = 1e-13  # relative objective accuracy of an accepted CG solve


CG_RTOL = 1e-9  # relative residual of an accepted CG solve


CG_MIN_N = 512  # auto: below this the n x n Gram is cheap (and CG's break-even cap is small)


_GATHER_THREADED_BYTES = 32 << 20  # gathers at least this large are split over threads


def _gather(op: ColumnOperator, idx: np.ndarray) -> Any:
    """``op.take(idx)``; a large gather from a C-ordered NumPy ``A`` is split into row blocks
    copied by parallel threads (``np.take`` releases the GIL; the copy is bound by one core's
    memory throughput, about 2x faster on 2 cores for the 1000 x 268336 bar instance)."""
    A = op.A
    threads = min(4, os.cpu_count() or 1)
    if (
        threads < 2
        or not op.is_numpy
        or not A.flags.c_contiguous
        or idx.size == op.m
        or op.n < 2 * threads
        or op.n * idx.size * op.itemsize < _GATHER_THREADED_BYTES
    ):
        return op.take(idx)
    out = np.empty((op.n, idx.size), dtype=A.dtype)
    cuts = np.linspace(0, op.n, threads + 1).astype(int)

    def copy_rows(j: int) -> None:
        lo, hi = cuts[j], cuts[j + 1]
        np.take(A[lo:hi], idx, axis=1, out=out[lo:hi], mode="clip")  # idx is validated: clip = no buffering

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy_rows, range(threads)))
    return out


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return method


def _wants_cg(method: str, ridge: float, want_factor: bool, n: int, itemsize: int) -> bool:
    """Whether the Woodbury system (s > n) is tried by CG first (module docstring)."""
    if ridge <= 0:
        return False
    return method == "cg" or (method == "auto" and not want_factor and n >= CG_MIN_N and itemsize == 8)


class _MaskedColumns:
    """``A_S`` as products with all of ``A`` and a scatter / gather of the S coordinates (for
    supports too large to gather: two passes over ``A`` per product, no copy)."""

    def __init__(self, op: ColumnOperator, idx: np.ndarray) -> None:
        self.op, self.idx, self.n = op, idx, op.n

    def matvec(self, x: np.ndarray) -> np.ndarray:
        full = np.zeros(self.op.m)
        full[self.idx] = x
        return self.op.matvec(full)

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        return self.op.rmatvec(r)[self.idx]


def _woodbury_cg(
    opS: ColumnOperator | _MaskedColumns,
    wbar_S: np.ndarray,
    r0: np.ndarray,
    ridge: float,
    info: dict | None,
    forced: bool = False,
) -> tuple[np.ndarray, np.ndarray] | None:
    """CG on ``(A_S A_S^T + ridge I) y = r0``; (w_S, A_S w_S - b) or None when not converged.

    Accepted only after an explicit residual check (module docstring); the explicit products
    are the ones that give ``w_S = w_bar_S + A_S^T y`` and ``A_S w_S - b = A_S A_S^T y - r0``."""
    n = opS.n
    cap = max(16, n // (10 if forced else 30))
    n0 = math.sqrt(float(r0 @ r0))
    if n0 == 0.0:
        return wbar_S.copy(), -r0
    y = np.zeros(n)
    r = r0.copy()
    p = r.copy()
    rr = n0 * n0
    it = 0
    checks = 0
    while it < cap:
        q = opS.matvec(opS.rmatvec(p)) + ridge * p
        pq = float(p @ q)
        if not pq > 0:
            break
        a = rr / pq
        y += a * p
        r -= a * q
        it += 1
        rr_new = float(r @ r)
        # Q(w) at the solution is ridge * r0.y / 2 (e = -ridge y): test the recursive residual
        # against that estimate, then verify with the explicit residual
        f_est = 0.5 * ridge * float(r0 @ y)
        if rr_new <= 2 * CG_FTOL * max(f_est, 0.0) and rr_new <= (CG_RTOL * n0) ** 2:
            checks += 1
            d = opS.rmatvec(y)
            Kd = opS.matvec(d)
            r_true = r0 - Kd - ridge * y
            e = Kd - r0
            f = 0.5 * float(e @ e) + 0.5 * ridge * float(d @ d)
            rt = float(r_true @ r_true)
            if rt <= 2 * CG_FTOL * f and rt <= (CG_RTOL * n0) ** 2:
                if info is not None:
                    info.pop("cg_fallback", None)
                    info.update(method="cg", cg_iterations=it, cg_residual=math.sqrt(rt) / n0)
                return wbar_S + d, e
            r = r_true  # restart from the true residual
            p = r.copy()
            rr = rt
            continue
        if it >= 5:  # predicted iterations from the observed decay rate
            rate = (rr_new / (n0 * n0)) ** (0.5 / it)
            target = min(CG_RTOL, math.sqrt(2 * CG_FTOL * max(f_est, 1e-300)) / n0)
            if rate >= 1.0 or it + math.log(target / math.sqrt(rr_new / (n0 * n0))) / math.log(rate) > cap:
                break
        p = r + (rr_new / rr) * p
        rr = rr_new
    logger.debug("backsolve: CG not converged after %d iterations (%d checks); direct solve", it, checks)
    if info is not None:
        info.update(cg_iterations=it, cg_fallback=True)
    return None


def _solve_exact(
    op: ColumnOperator,
    b: np.ndarray,
    wbar_S: np.ndarray,
    ridge: float,
    idx: np.ndarray,
    max_bytes: float,
    want_factor: bool = False,
    method: str = "auto",
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, SupportFactor | None]:
    """Exact solve on the columns ``idx`` of ``op``; returns (w_S, A_S w_S - b, factor).

    ``want_factor``: return the :class:`~.support_factor.SupportFactor` of the Woodbury path
    (|S| > n, ridge > 0; None otherwise): ``K = A_S A_S^T``, ``r0 = b - A_S w_bar_S`` and
    ``y = (K + ridge I)^{-1} r0`` (so ``w_S = w_bar_S + A_S^T y``); it implies the direct solve.
    ``method``: how the gathered Woodbury system is solved (module docstring); ``info`` (a
    dict) receives ``method`` and, for CG, ``cg_iterations``. (Long for a reason: the three
    regimes, primal, gathered Woodbury and chunked Woodbury, share the gather and the factor.)"""
    n = op.n
    s = idx.size
    if s == 0:
        if info is not None:
            info["method"] = "direct"
        return np.zeros(0), -b.copy(), None
    chunk = max(1, int(max_bytes // max(1, n * op.itemsize)))
    if s <= n:
        if info is not None:
            info["method"] = "direct"
    if s <= n:
        AS = op.take(idx)
        As_np = host_or_native(AS)
        opS = ColumnOperator(As_np)
        r0 = b - opS.matvec(wbar_S)
        if ridge > 0:
            M = gram_rows(As_np.T)  # s x s = A_S^T A_S in float64
            d = psd_solve(M, opS.rmatvec(r0), ridge)
        else:
            A64 = np.asarray(to_host64(As_np))
            d = np.linalg.lstsq(A64, r0, rcond=None)[0]
        w_S = wbar_S + d
        return w_S, opS.matvec(w_S) - b, None
    if s <= chunk:  # one gathered block, reused for every product
        AS = _gather(op, idx)
        opS = ColumnOperator(AS)
        r0 = b - opS.matvec(wbar_S)
        if _wants_cg(method, ridge, want_factor, n, opS.itemsize):
            out = _woodbury_cg(opS, wbar_S, r0, ridge, info, method == "cg")
            if out is not None:
                return out[0], out[1], None
        if info is not None:
            info["method"] = "direct"
        factor = None
        if ridge == 0 and opS.is_numpy:
            d = np.linalg.lstsq(to_host64(opS.A), r0, rcond=None)[0]
        else:
            K = opS.gram_rows()
            y = psd_solve(K, r0, ridge)
            d = opS.rmatvec(y)
            if want_factor and ridge > 0:
                factor = SupportFactor(K, r0, y, ridge)
        w_S = wbar_S + d
        return w_S, opS.matvec(w_S) - b, factor
    # chunked: CG on all of A with a mask, or never more than `chunk` gathered columns at a time
    if _wants_cg(method, ridge, want_factor, n, op.itemsize):
        masked = _MaskedColumns(op, idx)
        out = _woodbury_cg(masked, wbar_S, b - masked.matvec(wbar_S), ridge, info, method == "cg")
        if out is not None:
            return out[0], out[1], None
    if info is not None:
        info["method"] = "direct"
    G = np.zeros((n, n))
    Aw = np.zeros(n)
    for lo in range(0, s, chunk):
        opc = ColumnOperator(op.take(idx[lo : lo + chunk]))
        G += opc.gram_rows()
        Aw += opc.matvec(wbar_S[lo : lo + chunk])
    y = psd_solve(G, b - Aw, ridge)
    factor = SupportFactor(G, b - Aw, y, ridge) if want_factor and ridge > 0 else None
    w_S = wbar_S.copy()
    e = -b.copy()
    for lo in range(0, s, chunk):
        opc = ColumnOperator(op.take(idx[lo : lo + chunk]))
        w_S[lo : lo + chunk] += opc.rmatvec(y)
        e += opc.matvec(w_S[lo : lo + chunk])
    return w_S, e, factor


def _block_ids(p: int, block_size: int | None, blocks: Any) -> np.ndarray:
    if blocks is not None:
        ids = backend.to_numpy(blocks) if backend.is_array(blocks) else np.asarray(blocks)
        if ids.shape != (p,):
            raise ValueError(f"blocks: expected a per-coordinate block index of shape ({p},), got {ids.shape}")
        if ids.dtype.kind == "f":
            if not np.all(ids == np.round(ids)):
                raise ValueError("blocks: expected integer block labels")
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"blocks: expected integer block labels, got dtype {ids.dtype}")
        return ids
    return np.arange(p) // int(block_size)


def ridge_solve_on_support(
    A: Any,
    b: Any,
    w_bar: Any,
    ridge: float,
    support: Any,
    *,
    block_size: int | None = None,
    blocks: Any = None,
    sweeps: int = 1,
    w0: np.ndarray | None = None,
    max_gather_fraction: float = GATHER_FRACTION,
    return_residual: bool = False,
    state: dict | None = None,
    method: str = "auto",
    info: dict | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""Exact ridge least squares on ``support``: the (p,) host float64 weights.

    Solves ``(A_S^T A_S + ridge I) w_S = A_S^T b + ridge w_bar_S`` with ``w = 0`` off S (see the
    module docstring for the n x n Woodbury form used when ``|S| > n`` and the ``ridge = 0``
    convention). ``A`` may be a NumPy array, a torch tensor or a CuPy array (float32 or
    float64); ``b`` and ``w_bar`` any vectors; ``support`` a boolean (p,) mask or indices.

    ``block_size`` / ``blocks``: block Gauss-Seidel over blocks of coordinates instead of the
    joint solve (``sweeps`` passes, starting from ``w0`` restricted to S or ``w_bar`` on S).
    ``return_residual``: also return ``A w - b`` (host float64). ``state``: a dict that the
    joint Woodbury solve (|S| > n, ridge > 0) fills with ``K = A_S A_S^T``, ``r0`` and ``y``
    (it implies the direct solve under ``method="auto"``). ``method``: ``"auto"``,
    ``"direct"`` or ``"cg"`` for the Woodbury system (module docstring; the result is the
    exact solve whichever is used). ``info``: a dict receiving ``method`` (the one used last)
    and, when CG ran, ``cg_iterations`` (and ``cg_fallback`` when it fell back).
    """
    check_method(method)
    op = ColumnOperator(A)
    n, p = op.n, op.m
    b64 = to_host64(b)
    wbar = to_host64(w_bar)
    if b64.shape != (n,) or wbar.shape != (p,):
        raise ValueError(f"b, w_bar: expected shapes ({n},) and ({p},), got {b64.shape} and {wbar.shape}")
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
    mask = np.asarray(support)
    if mask.dtype != bool:
        idx_in = mask.astype(np.int64)
        mask = np.zeros(p, dtype=bool)
        mask[idx_in] = True
    if mask.shape != (p,):
        raise ValueError(f"support: expected shape ({p},), got {mask.shape}")
    max_bytes = max(float(max_gather_fraction) * op.nbytes, 16.0 * n * op.itemsize)
    w = np.zeros(p)
    if block_size is None and blocks is None:
        idx = np.flatnonzero(mask)
        w_S, e, factor = _solve_exact(op, b64, wbar[idx], ridge, idx, max_bytes, state is not None, method, info)
        if factor is not None:
            state.update(K=factor.K, r0=factor.r0, y=factor.y)
        w[idx] = w_S
        return (w, e) if return_residual else w
    if block_size is not None:
        check_positive_int("block_size", block_size)
    sweeps = check_positive_int("sweeps", sweeps)
    ids = _block_ids(p, block_size, blocks)
    start = wbar if w0 is None else to_host64(w0)
    w = np.where(mask, start, 0.0)
    nz = np.flatnonzero(w)
    e = op.cols_matvec(nz, w[nz]) - b64
    order = np.argsort(ids[mask], kind="stable")
    sup_idx = np.flatnonzero(mask)[order]
    sup_ids = ids[sup_idx]
    cuts = np.flatnonzero(np.diff(sup_ids)) + 1
    groups = np.split(sup_idx, cuts) if sup_idx.size else []
    for _ in range(sweeps):
        for idx in groups:
            old = w[idx]
            # right-hand side with the other blocks fixed: b' = b - (A w - A_B w_B) = -(e - A_B w_B)
            AB = ColumnOperator(op.take(idx))
            e_wo = e - AB.matvec(old)
            w_B, e_new, _ = _solve_exact(AB, -e_wo, wbar[idx], ridge, np.arange(idx.size), max_bytes, False, method, info)
            w[idx] = w_B
            e = e_new
    return (w, e) if return_residual else w


def solve_with_factor(op: ColumnOperator, b: np.ndarray, wbar: np.ndarray, ridge: float, support: np.ndarray, *,
                      max_gather_fraction: float = GATHER_FRACTION) -> tuple[np.ndarray, np.ndarray, SupportFactor | None]:
    """The joint exact back-solve on the boolean ``support`` of ``op``'s columns (host float64
    vectors) with its :class:`~.support_factor.SupportFactor` (Woodbury path, ridge > 0; None
    otherwise). Returns (w, A w - b, factor)."""
    max_bytes = max(float(max_gather_fraction) * op.nbytes, 16.0 * op.n * op.itemsize)
    idx = np.flatnonzero(support)
    w_S, e, factor = _solve_exact(op, b, wbar[idx], float(ridge), idx, max_bytes, True)
    w = np.zeros(op.m)
    w[idx] = w_S
    if factor is not None:
        factor.support = np.asarray(support, dtype=bool).copy()
    return w, e, factor
