"""``LayerwiseL0``: unstructured pruning of one linear layer by reconstruction (SparseGPT / Wanda / ALPS)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from combprune import backend
from combprune._validation import check_array, check_int, check_scalar

from ._base import Problem
from .structured import osscar_default_ridge

__all__ = ["LayerwiseL0", "parse_nm", "reconstruction_error"]

#: Relative tolerance of the positive semi-definiteness check of H (eigenvalues >= -tol * d * max|H|).
PSD_RTOL = 1e-9
#: Rows of X turned into float64 at a time by :meth:`LayerwiseL0.from_activations`.
_CHUNK_ROWS = 8192


def parse_nm(nm: Any, name: str = "nm") -> tuple[int, int]:
    """``"2:4"`` or ``(2, 4)`` -> ``(n, m)`` with ``0 <= n <= m``, ``m >= 1`` (error names ``name``)."""
    if isinstance(nm, str):
        parts = nm.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{name}: expected 'N:M' such as '2:4', got {nm!r}")
        nm = (int(parts[0]), int(parts[1]))
    if not isinstance(nm, (tuple, list)) or len(nm) != 2:
        raise TypeError(f"{name}: expected 'N:M' or a pair (n, m), got {nm!r}")
    m = check_int(name, nm[1], low=1, high=2**31)
    n = check_int(name, nm[0], low=0, high=m)
    return n, m


def reconstruction_error(H: Any, W_hat: Any, W: Any) -> float:
    """``||X (W - W_hat)||_F^2 / ||X W_hat||_F^2 = tr(D^T H D) / tr(W_hat^T H W_hat)`` with
    ``H = X^T X`` and ``D = W - W_hat`` (float64; 0 when ``X W_hat = 0``). Shared by the
    unstructured and structured layer problems (the ridge is left out)."""
    H = backend.to_numpy(H).astype(np.float64)
    W_hat = backend.to_numpy(W_hat).astype(np.float64).reshape(H.shape[0], -1)
    D = backend.to_numpy(W).astype(np.float64).reshape(W_hat.shape) - W_hat
    den = float(np.sum(W_hat * (H @ W_hat)))
    return float(np.sum(D * (H @ D))) / den if den > 0 else 0.0


class LayerwiseL0(Problem):
    r"""Layer-wise unstructured pruning of one linear layer.

    .. math::

        \min_W \; \tfrac12 \operatorname{tr}\big((W - \hat W)^T (H + \lambda I) (W - \hat W)\big)
        \quad \text{s.t. a sparsity pattern on } W

    with ``H = X^T X`` (d x d) of the layer's calibration inputs X (N x d), so that the objective
    is ``1/2 ||X (W - W_hat)||_F^2 + lam/2 ||W - W_hat||_F^2``. Rows of ``W_hat`` (d x m) are the
    layer's inputs, columns its outputs (``W_hat = weight.T`` for ``torch.nn.Linear``).

    Exactly one pattern is given:

    * ``k``: at most k nonzeros in the whole layer;
    * ``k_col``: at most ``k_col`` nonzeros in every output column;
    * ``nm="n:m"``: at most n nonzeros in every group of m consecutive inputs of every output
      column (m must divide d).

    Parameters
    ----------
    H : (d, d) symmetric positive semi-definite (checked by a Cholesky factorisation of ``H + PSD_RTOL d max|H| I``).
    W_hat : (d, m) dense weights (a (d,) vector is read as one output).
    ridge : lam ``>= 0``; :meth:`from_activations` defaults to ``1e-2 mean(diag(H))``.

    For a fixed support S_j of column j the best weights are ``W_{S_j, j} = K_{S_j S_j}^{-1}
    (K W_hat)_{S_j, j}`` with ``K = H + lam I`` (see ``docs/formulations/layerwise_l0.md``).
    """

    kind: ClassVar[str] = "layerwise_l0"
    sense: ClassVar[str] = "min"
    default_solver: ClassVar[str] = "layerwise"
    _array_fields: ClassVar[tuple[str, ...]] = ("H", "W_hat")
    _scalar_fields: ClassVar[tuple[str, ...]] = ("k", "k_col", "nm", "ridge")

    def __init__(
        self,
        H: Any,
        W_hat: Any,
        *,
        k: int | None = None,
        k_col: int | None = None,
        nm: str | tuple[int, int] | None = None,
        ridge: float = 0.0,
    ) -> None:
        H = check_array("H", H, ndim=2)
        d = int(H.shape[0])
        if H.shape[1] != d or d == 0:
            raise ValueError(f"H: expected a non-empty square (d, d) matrix, got shape {tuple(H.shape)}")
        Hn = backend.to_numpy(H).astype(np.float64)
        scale = max(float(np.abs(Hn).max()), 1e-300)
        if not np.allclose(Hn, Hn.T, rtol=1e-6, atol=1e-8 * scale):
            raise ValueError("H: must be symmetric (H = X^T X)")
        try:  # PSD up to PSD_RTOL: a Cholesky factor of the slightly shifted H exists
            with threadpool_limits(1, user_api="blas"):
                np.linalg.cholesky((Hn + Hn.T) / 2 + PSD_RTOL * scale * d * np.eye(d))
        except np.linalg.LinAlgError:
            raise ValueError("H: must be positive semi-definite (H = X^T X)") from None
        W_hat = check_array("W_hat", W_hat, ndim=(1, 2), shape=(d,))
        if W_hat.ndim == 1:
            W_hat = backend.namespace(W_hat).reshape(W_hat, (d, 1))
        if backend.namespace(W_hat) is not backend.namespace(H):
            raise TypeError("W_hat: must be the same array type as H")
        m = int(W_hat.shape[1])
        given = [name for name, v in (("k", k), ("k_col", k_col), ("nm", nm)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"k: give exactly one pattern among k, k_col and nm (got {given or 'none'})")
        if k is not None:
            k = check_int("k", k, low=0, high=d * m)
        if k_col is not None:
            k_col = check_int("k_col", k_col, low=0, high=d)
        if nm is not None:
            n_keep, group = parse_nm(nm)
            if d % group:
                raise ValueError(f"nm: group size m={group} must divide the input size d={d}")
            nm = f"{n_keep}:{group}"
        self.H, self.W_hat = H, W_hat
        self.k, self.k_col, self.nm = k, k_col, nm
        self.ridge = check_scalar("ridge", ridge, low=0.0)
        self._eig_min: float | None = None
        self._freeze()

    # Constructors ---------------------------------------------------------------------------
    @classmethod
    def from_activations(
        cls,
        X: Any,
        W_hat: Any,
        *,
        k: int | None = None,
        k_col: int | None = None,
        nm: str | tuple[int, int] | None = None,
        ridge: float | None = None,
    ) -> "LayerwiseL0":
        """Build from calibration inputs: ``H = sum_b X_b^T X_b`` accumulated in float64.

        ``X`` is an (N, d) array, an (..., d) array (leading axes flattened: batch, tokens), or
        an iterable of such arrays (batches). ``ridge=None`` takes ``1e-2 mean(diag(H))``.
        """
        chunks: Iterable[Any] = [X] if backend.is_array(X) or isinstance(X, np.ndarray) else X
        H = None
        for i, chunk in enumerate(chunks):
            arr = backend.to_numpy(check_array("X", chunk, ndim=tuple(range(1, 8))))
            arr = arr.reshape(-1, arr.shape[-1])
            if H is None:
                H = np.zeros((arr.shape[1], arr.shape[1]))
            elif arr.shape[1] != H.shape[0]:
                raise ValueError(f"X: batch {i} has {arr.shape[1]} features, expected {H.shape[0]}")
            for start in range(0, arr.shape[0], _CHUNK_ROWS):
                block = arr[start:start + _CHUNK_ROWS].astype(np.float64)
                H += block.T @ block
        if H is None:
            raise ValueError("X: no calibration inputs")
        if ridge is None:
            ridge = osscar_default_ridge(H)
        W_hat_np = backend.to_numpy(check_array("W_hat", W_hat, ndim=(1, 2)))
        return cls(H, W_hat_np, k=k, k_col=k_col, nm=nm, ridge=ridge)

    # Properties -----------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return int(self.H.shape[0])

    @property
    def m(self) -> int:
        return int(self.W_hat.shape[1])

    @property
    def pattern(self) -> str:
        """``"layer"`` (count k), ``"column"`` (count k_col) or ``"nm"``."""
        return "layer" if self.k is not None else "column" if self.k_col is not None else "nm"

    @property
    def nm_pair(self) -> tuple[int, int] | None:
        """``(n, m)`` of the N:M pattern, else None."""
        return None if self.nm is None else parse_nm(self.nm)

    @property
    def max_nnz(self) -> int:
        """Largest number of nonzeros the pattern allows."""
        if self.k is not None:
            return self.k
        if self.k_col is not None:
            return self.k_col * self.m
        n_keep, group = parse_nm(self.nm)
        return n_keep * (self.d // group) * self.m

    @property
    def sparsity(self) -> float:
        """Fraction of weights removed at ``max_nnz``."""
        return 1.0 - self.max_nnz / (self.d * self.m)

    @property
    def eig_min(self) -> float:
        """Smallest eigenvalue of H clipped at 0 (computed on first use, then cached)."""
        if self._eig_min is None:
            with threadpool_limits(1, user_api="blas"):
                value = float(np.linalg.eigvalsh(backend.to_numpy(self.H).astype(np.float64))[0])
            object.__setattr__(self, "_eig_min", max(value, 0.0))
        return self._eig_min

    # Evaluation -----------------------------------------------------------------------------
    def _as_matrix(self, W: Any) -> np.ndarray:
        W = backend.to_numpy(W)
        if W is not None and W.ndim == 1:
            W = W.reshape(-1, 1)
        if W is None or W.shape != (self.d, self.m):
            raise ValueError(f"W: expected shape ({self.d}, {self.m}), got {None if W is None else W.shape}")
        return W

    def column_objectives(self, W: Any) -> np.ndarray:
        """(m,) ``1/2 (w_j - w_hat_j)^T (H + lam I) (w_j - w_hat_j)`` in float64."""
        D = self._as_matrix(W).astype(np.float64) - backend.to_numpy(self.W_hat).astype(np.float64)
        HD = backend.to_numpy(self.H).astype(np.float64) @ D
        return 0.5 * np.sum(D * HD, axis=0) + 0.5 * self.ridge * np.sum(D * D, axis=0)

    def objective(self, W: Any) -> float:
        """``1/2 tr((W - W_hat)^T (H + ridge I) (W - W_hat))`` in float64."""
        return math.fsum(self.column_objectives(W).tolist())

    def relative_error(self, W: Any) -> float:
        """``||X (W - W_hat)||_F^2 / ||X W_hat||_F^2`` (the ridge left out; 0 when X W_hat = 0)."""
        return reconstruction_error(self.H, self.W_hat, self._as_matrix(W))

    def check(self, W: Any) -> list[str]:
        """Violated constraints of ``W`` (empty when feasible)."""
        try:
            W = self._as_matrix(W)
        except ValueError as exc:
            return [f"shape: {exc}"]
        if not np.all(np.isfinite(W)):
            return ["finite: W contains NaN or Inf"]
        nz = W != 0
        if self.k is not None and int(nz.sum()) > self.k:
            return [f"nnz: {int(nz.sum())} nonzeros > k = {self.k}"]
        if self.k_col is not None:
            counts = nz.sum(axis=0)
            bad = np.flatnonzero(counts > self.k_col)
            if bad.size:
                return [f"k_col: column {int(bad[0])} has {int(counts[bad[0]])} nonzeros > k_col = {self.k_col}"
                        + (f" ({bad.size} columns violate)" if bad.size > 1 else "")]
        if self.nm is not None:
            n_keep, group = parse_nm(self.nm)
            counts = nz.reshape(self.d // group, group, self.m).sum(axis=1)
            if np.any(counts > n_keep):
                g, j = np.argwhere(counts > n_keep)[0]
                return [f"nm: group {int(g)} (inputs {int(g) * group}..{int(g) * group + group - 1}) of column "
                        f"{int(j)} has {int(counts[g, j])} nonzeros > n = {n_keep}"]
        return []

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "LayerwiseL0":
        return cls(arrays["H"], arrays["W_hat"], k=meta["k"], k_col=meta["k_col"], nm=meta["nm"], ridge=meta["ridge"])

    def __repr__(self) -> str:
        pattern = {"layer": f"k={self.k}", "column": f"k_col={self.k_col}", "nm": f"nm={self.nm!r}"}[self.pattern]
        return f"LayerwiseL0(d={self.d}, m={self.m}, {pattern}, ridge={self.ridge:.6g}, dtype={self.W_hat.dtype})"
