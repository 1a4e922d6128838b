r"""Column access to ``A`` where it lives: :class:`ColumnOperator` and the row Gram ``A A^T``.

``A`` (n x p, n << p) is never copied to float64 and ``A^T A`` (p x p) is never formed. The heavy
work (``A @ x``, ``A.T @ r``, column gathers, ``A_S A_S^T``) runs in ``A``'s own array library
and dtype: NumPy arrays and CPU torch tensors (a zero-copy NumPy view) on the host with BLAS;
CuPy / CUDA torch arrays on their device. Vectors in and out are host float64 NumPy arrays
(O(p) memory, exact enough for the line searches, cheap to move).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from combprune import backend

from .linalg import single_thread

__all__ = ["GATHER_FRACTION", "ACTIVE_FRACTION", "host_or_native", "to_host64", "ColumnOperator", "gram_rows"]

#: Largest working copy of gathered columns, as a fraction of ``A``'s bytes (the 1.5x memory rule).
GATHER_FRACTION = 0.45


#: Largest active-set block (IHT's candidate columns), as a fraction of ``A``'s bytes; a support
#: gathered from inside it is at most about half of it, so A + block + support <= ~1.5 A.
ACTIVE_FRACTION = 0.33


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
        with single_thread():
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
