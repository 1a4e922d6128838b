r"""Shared numerical machinery of the ``L0Regression`` solvers (backsolve, iht, chita, dfo).

Problem (docs/formulations/l0_regression.md)::

    Q(w) = 1/2 ||b - A w||^2 + (ridge/2) ||w - w_bar||^2,   ||w||_0 <= k,   sum_{w_i != 0} f_i <= F

Design
------
* ``A`` (n x p, n << p) is never copied to float64 and ``A^T A`` (p x p) is never formed. The
  heavy work (``A @ x``, ``A.T @ r``, column gathers, ``A_S A_S^T``) runs in ``A``'s own array
  library and dtype through :class:`ColumnOperator`: NumPy arrays and CPU torch tensors (a
  zero-copy NumPy view) on the host with BLAS; CuPy / CUDA torch arrays on their device.
* Everything of length p or n besides ``A`` (weights, gradients, residuals) is a host NumPy
  float64 vector: O(p) memory, exact enough for the line search, cheap to move.
* n x n (or |S| x |S|) systems are solved on the host in float64 (Cholesky; an eigenvalue
  pseudo-inverse or ``lstsq`` when ``ridge = 0``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any, Callable

import numpy as np
import scipy.linalg

from combprune import backend
from combprune.problems import L0Regression
from combprune.problems.l0_regression import flop_total, within_budget
from combprune.result import relative_gap

from .magnitude import topk_mask  # the project's top-k (O(p), deterministic ties)

logger = logging.getLogger(__name__)

#: Largest working copy of gathered columns, as a fraction of ``A``'s bytes (the 1.5x memory rule).
GATHER_FRACTION = 0.45
#: Largest active-set block (IHT's candidate columns), as a fraction of ``A``'s bytes; a support
#: gathered from inside it is at most about half of it, so A + block + support <= ~1.5 A.
ACTIVE_FRACTION = 0.33


def vdot(x: np.ndarray, y: np.ndarray) -> float:
    """Dot product of two host float64 vectors without BLAS (no thread start-up or contention
    for these short O(n) / O(p) reductions)."""
    return float(np.einsum("i,i->", x, y))


# ------------------------------------------------------------------------------------------
# Host / device views of A
# ------------------------------------------------------------------------------------------
def host_or_native(x: Any) -> Any:
    """A NumPy view for NumPy arrays and CPU torch tensors (zero copy); other arrays as given."""
    if backend.is_numpy(x):
        return x
    if backend.is_torch(x) and x.device.type == "cpu":
        return x.detach().resolve_conj().numpy()
    return x


def to_host64(x: Any) -> np.ndarray:
    """A host float64 NumPy copy (or view when already float64) of any supported vector."""
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


class ColumnOperator:
    """Matrix-vector products with a column block of ``A`` in ``A``'s namespace and dtype.

    Vectors in and out are host float64 NumPy arrays; the matrix stays where it lives.
    """

    def __init__(self, A: Any) -> None:
        self.A = host_or_native(A)
        self.is_numpy = isinstance(self.A, np.ndarray)
        self.n, self.m = int(self.A.shape[0]), int(self.A.shape[1])
        if self.is_numpy:
            self.dtype = self.A.dtype
            self.itemsize = self.A.dtype.itemsize
        else:
            self.xp = backend.namespace(self.A)
            self.dtype = self.A.dtype
            self.itemsize = int(np.dtype(str(self.A.dtype).replace("torch.", "")).itemsize)

    @property
    def nbytes(self) -> int:
        return self.n * self.m * self.itemsize

    # conversions ---------------------------------------------------------------------------
    def _in(self, v: np.ndarray) -> Any:
        if self.is_numpy:
            return v.astype(self.dtype, copy=False)
        return backend.from_numpy(np.ascontiguousarray(v), like=self.A, keep_dtype=True)

    @staticmethod
    def _out(v: Any) -> np.ndarray:
        return np.asarray(backend.to_numpy(v), dtype=np.float64)

    # products --------------------------------------------------------------------------------
    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``A @ x`` (x of length m) as host float64."""
        return self._out(self.A @ self._in(x))

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """``A.T @ r`` (r of length n) as host float64."""
        return self._out(self.A.T @ self._in(r))

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """``A @ X`` for a (m, c) host matrix."""
        return self._out(self.A @ self._in(X))

    def take(self, idx: np.ndarray) -> Any:
        """Columns ``idx`` (sorted int array) as a new contiguous matrix in A's namespace."""
        if idx.size == self.m:
            return self.A
        if self.is_numpy:
            if idx.size > self.m // 64:
                mask = np.zeros(self.m, dtype=bool)
                mask[idx] = True
                return np.compress(mask, self.A, axis=1)
            return np.take(self.A, idx, axis=1)
        idx_dev = backend.from_numpy(idx.astype(np.int64), like=self.A)
        return self.A[:, idx_dev]

    def sub(self, idx: np.ndarray) -> "ColumnOperator":
        return ColumnOperator(self.take(idx))

    def cols_matvec(self, idx: np.ndarray, X: np.ndarray) -> np.ndarray:
        """``A[:, idx] @ X`` (X of shape (len(idx),) or (len(idx), c)) without a dense pass
        when few columns are involved, with a masked dense product otherwise."""
        if idx.size == 0:
            shape = (self.n,) if X.ndim == 1 else (self.n, X.shape[1])
            return np.zeros(shape)
        if idx.size * 16 > self.m:  # a gather would touch every cache line anyway: one dense pass
            full = np.zeros((self.m,) + X.shape[1:])
            full[idx] = X
            return self.matmat(full) if X.ndim == 2 else self.matvec(full)
        cols = self.take(idx)
        if self.is_numpy:
            return np.asarray(cols @ X.astype(self.dtype, copy=False), dtype=np.float64)
        return self._out(cols @ backend.from_numpy(np.ascontiguousarray(X), like=cols, keep_dtype=True))

    def gram_rows(self) -> np.ndarray:
        """``A A^T`` (n x n) in float64, accumulated blockwise over columns."""
        return gram_rows(self.A)

    def col_sqnorms(self) -> np.ndarray:
        """``||a_j||^2`` for every column (host float64)."""
        out = np.empty(self.m)
        step = max(1, (64 << 20) // max(1, self.n * self.itemsize))
        for lo in range(0, self.m, step):
            blk = self.A[:, lo : lo + step]
            if self.is_numpy:
                out[lo : lo + step] = np.einsum("ij,ij->j", blk, blk, dtype=np.float64)
            else:
                out[lo : lo + step] = self._out(self.xp.sum(blk * blk, axis=0))
        return out


def gram_rows(M: Any) -> np.ndarray:
    """``M M^T`` in float64 for an (n, s) matrix in any namespace.

    NumPy float64: one BLAS product. float32 (any namespace): products of column chunks in
    float32 (the input's precision, no float64 copy of M), accumulated in float64.
    """
    M = host_or_native(M)
    n, s = int(M.shape[0]), int(M.shape[1])
    if isinstance(M, np.ndarray) and (n < 256 or float(n) * n * s < 2e9):
        # small or tall-skinny products: one BLAS thread (a contended pool can be 100x slower)
        with _single_thread():
            return _gram_host(M, n, s)
    if isinstance(M, np.ndarray):
        return _gram_host(M, n, s)
    G = np.zeros((n, n))
    step = 8192
    for lo in range(0, s, step):
        blk = M[:, lo : lo + step]
        G += np.asarray(backend.to_numpy(blk @ blk.T), dtype=np.float64)
    return G


def _gram_host(M: np.ndarray, n: int, s: int) -> np.ndarray:
    if M.dtype == np.float64 or s <= 4096:
        return np.asarray(M @ M.T, dtype=np.float64)
    G = np.zeros((n, n))
    step = 8192
    for lo in range(0, s, step):
        blk = np.ascontiguousarray(M[:, lo : lo + step])
        G += blk @ blk.T
    return G


# ------------------------------------------------------------------------------------------
# Small dense solves
# ------------------------------------------------------------------------------------------
def psd_solve(M: np.ndarray, rhs: np.ndarray, shift: float) -> np.ndarray:
    """Solve ``(M + shift I) x = rhs`` for symmetric PSD ``M`` (float64).

    ``shift > 0``: Cholesky (falling back to a symmetric eigen-solve if rounding made the
    matrix indefinite). ``shift == 0``: the minimum-norm solution through a pseudo-inverse
    (eigenvalues below ``dim * eps * max eigenvalue`` treated as zero).
    """
    with _single_thread():
        return _psd_solve(M, rhs, shift)


def _single_thread():
    """Limit BLAS/LAPACK to one thread for the small dense factorisations (threadpoolctl when
    installed): at n ~ 1e3 a second thread gains little, and on a loaded machine a spinning
    thread pool can make an n x n Cholesky 100x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _psd_solve(M: np.ndarray, rhs: np.ndarray, shift: float) -> np.ndarray:
    M = np.array(M, dtype=np.float64, copy=True)
    M = 0.5 * (M + M.T)
    if shift > 0:
        M[np.diag_indices_from(M)] += shift
        try:
            c = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
            return scipy.linalg.cho_solve(c, rhs, check_finite=False)
        except np.linalg.LinAlgError:
            logger.debug("psd_solve: Cholesky failed, using eigh")
    vals, vecs = np.linalg.eigh(M)
    cut = max(M.shape[0], 1) * np.finfo(np.float64).eps * max(float(vals.max(initial=0.0)), 0.0)
    inv = np.where(vals > cut, 1.0 / np.where(vals > cut, vals, 1.0), 0.0)
    return vecs @ (inv[:, None] * (vecs.T @ rhs)) if rhs.ndim == 2 else vecs @ (inv * (vecs.T @ rhs))


# ------------------------------------------------------------------------------------------
# Problem data on the host (vectors only) and objective bookkeeping
# ------------------------------------------------------------------------------------------
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
        from ._exact import l0_refit

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
    """``max |x|`` of any supported array (0 when empty)."""
    if not math.prod(x.shape):
        return 0.0
    xp = backend.namespace(x)
    return float(xp.max(xp.abs(x)))


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
                              flop_costs=problem.flop_costs, flop_budget=problem.flop_budget)
        res = solver(scaled, **kwargs)
        res.objective = problem.objective(res.x)
        if res.bound is not None:
            res.bound = res.bound * c * c
        res.gap = None if res.bound is None else relative_gap(res.objective, res.bound)
        res.history = [(t, v * c * c) for t, v in res.history]
        res.info["data_scale"] = c
        return res

    return wrapper


# ------------------------------------------------------------------------------------------
# Supports: validation, magnitude / FLOP-aware starts, projections
# ------------------------------------------------------------------------------------------
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
        if problem.flop_costs is not None:
            total = flop_total(backend.to_numpy(problem.flop_costs), mask)
            if not within_budget(total, problem.flop_budget):
                raise ValueError(f"{name}: uses {total:.17g} FLOPs > flop_budget = {problem.flop_budget:.17g}")
    return mask


def flop_selector() -> Callable[..., Any]:
    """The FLOP-NNZ ILP integer solver of the dual-sort module (FALCON's Lemma 1 projection)."""
    try:
        from combprune.solvers.dual_sort import flop_nnz_select
    except ImportError as exc:  # pragma: no cover - depends on the dual-sort module being present
        raise RuntimeError("FLOP budget: the dual-sort solver module (combprune.solvers.dual_sort) is required for FLOP projections") from exc
    return flop_nnz_select


class Projector:
    """Euclidean projection onto {||w||_0 <= k, sum_{w_i != 0} f_i <= F} of a host vector.

    Without a FLOP budget: top-k of ``|u|``. With one: FALCON's Lemma 1, the FLOP-NNZ ILP with
    values ``u^2`` solved by dual-sort's integer solution (both budgets hold exactly).
    Works on a column subset ``C`` via :meth:`restrict` (weights are zero off C, so the whole
    budget is available to C).
    """

    def __init__(self, k: int, costs: np.ndarray | None = None, budget: float | None = None, layer: np.ndarray | None = None) -> None:
        self.k = int(k)
        self.costs = costs
        self.budget = budget
        self.layer = layer
        self._select = flop_selector() if costs is not None else None

    @property
    def has_flops(self) -> bool:
        return self.costs is not None

    def restrict(self, idx: np.ndarray) -> "Projector":
        if self.costs is None:
            return Projector(self.k)
        return Projector(self.k, self.costs[idx], self.budget, None if self.layer is None else self.layer[idx])

    def support(self, u: np.ndarray) -> np.ndarray:
        """Boolean support of the projection of ``u`` (zero entries of ``u`` are never kept)."""
        if self._select is None:
            return topk_mask(np.abs(u), self.k) & (u != 0)
        sel = self._select(u * u, self.costs, self.k, self.budget, layer=self.layer)
        mask = np.asarray(backend.to_numpy(sel))
        if mask.dtype != bool:
            if mask.ndim == 1 and mask.shape[0] == u.shape[0]:
                mask = mask > 0.5
            else:  # indices
                idx = mask.astype(np.int64)
                mask = np.zeros(u.shape[0], dtype=bool)
                mask[idx] = True
        return mask & (u != 0)

    def feasible(self, mask: np.ndarray) -> bool:
        if int(mask.sum()) > self.k:
            return False
        return self.costs is None or within_budget(flop_total(self.costs, mask), self.budget)


def default_support(problem: L0Regression, data: L0Data) -> np.ndarray:
    """Magnitude start: top-k of ``|w_bar|``; with a FLOP budget FLOP-aware magnitude pruning
    (the FLOP-NNZ ILP with values ``w_bar^2``). Only nonzero ``w_bar`` entries are kept."""
    return make_projector(data).support(data.w_bar)


def cost_classes(costs: np.ndarray | None) -> np.ndarray | None:
    """A "layer" index for the FLOP projection: coordinates of equal cost share a class.

    The ILP depends on the costs only, so grouping equal costs is always valid; it is passed
    on (enabling the sort-each-layer-once path) when there are few classes.
    """
    if costs is None:
        return None
    uniq, inv = np.unique(costs, return_inverse=True)
    return inv.astype(np.int64) if uniq.size <= max(1, costs.size // 16) else None


def make_projector(data: L0Data) -> Projector:
    """The problem's projection (top-k, or the FLOP-NNZ ILP under a FLOP budget)."""
    return Projector(data.k, data.costs, data.flop_budget, cost_classes(data.costs))


# ------------------------------------------------------------------------------------------
# Option validation
# ------------------------------------------------------------------------------------------
def check_positive_int(name: str, value: Any, *, allow_none: bool = False, low: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} finite number, got {value!r}")
    return v


def warm_start_weights(problem: L0Regression, warm_start: Any, name: str = "warm_start") -> np.ndarray:
    """Host float64 weights from a Result, a weight vector or a boolean support (-> w_bar on it)."""
    from combprune.result import Result

    if isinstance(warm_start, Result):
        if warm_start.x is None:
            raise ValueError(f"{name}: the Result has no solution (status {warm_start.status.value})")
        w = to_host64(warm_start.x)
    else:
        arr = backend.to_numpy(warm_start) if backend.is_array(warm_start) else np.asarray(warm_start)
        if arr.dtype == bool:
            mask = support_mask(problem, arr, name)
            return np.where(mask, to_host64(problem.w_bar), 0.0)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: expected a Result, weights or a boolean support, got dtype {arr.dtype}")
        w = arr.astype(np.float64)
    if w.shape != (problem.p,):
        raise ValueError(f"{name}: expected shape ({problem.p},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name}: contains NaN or Inf")
    support_mask(problem, w != 0, name)
    return w
