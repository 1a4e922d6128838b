"""SPD inverse / solve candidates for the kernel ``solvers/_kernels/linalg.py`` (one BLAS thread).

Candidates for ``inv(M)``, M symmetric positive definite (float64, sizes of the swap / osscar
supports and of the n x n Woodbury systems):

* ``potri``: LAPACK ``potrf`` + ``potri`` (symmetrised),
* ``trtri``: ``potrf`` + triangular inverse ``trtri`` + ``L^-T L^-1`` product (BLAS-3),
* ``cho_solve``: ``scipy.linalg.cho_factor`` + ``cho_solve(I)``,
* ``numpy``: ``numpy.linalg.inv`` (LU; no symmetry used),

and for ``(M + shift I) x = rhs`` with one right-hand side: ``cho_solve`` against ``potrs``.
Times are best-of-repeat runs, reported as ratios to ``potri`` measured in the same run;
the error column is ``max |M X - I|``. Writes ``results/spd_inverse.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results, timeit  # noqa: E402


def _sym(low: np.ndarray) -> np.ndarray:
    low = np.tril(low)
    return low + np.tril(low, -1).T


def inv_potri(M):
    L, info = lapack.dpotrf(M, lower=1, clean=1)
    inv, info = lapack.dpotri(L, lower=1)
    return _sym(inv)


def inv_trtri(M):
    L, info = lapack.dpotrf(M, lower=1, clean=1)
    Li, info = lapack.dtrtri(L, lower=1)
    return Li.T @ Li


def inv_cho_solve(M):
    c = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
    return scipy.linalg.cho_solve(c, np.eye(M.shape[0]), check_finite=False)


def inv_numpy(M):
    return np.linalg.inv(M)


def solve_cho(M, r):
    c = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
    return scipy.linalg.cho_solve(c, r, check_finite=False)


def solve_potrs(M, r):
    L, info = lapack.dpotrf(M, lower=1, clean=0)
    x, info = lapack.dpotrs(L, r, lower=1)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500, 1000, 2000])
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover
        limit = None
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        X = rng.standard_normal((n, 2 * n))
        M = X @ X.T / (2 * n) + 1e-2 * np.eye(n)
        r = rng.standard_normal(n)
        repeat = max(3, int(2e8 // n**3))
        base = timeit(lambda: inv_potri(M), repeat=repeat, warmup=1)[0]
        for name, fn in (("potri", inv_potri), ("trtri", inv_trtri), ("cho_solve", inv_cho_solve), ("numpy", inv_numpy)):
            t = timeit(lambda: fn(M), repeat=repeat, warmup=1)[0]
            err = float(np.max(np.abs(M @ fn(M) - np.eye(n))))
            rows.append({"n": n, "op": "inverse", "candidate": name, "time / potri": t / base, "max |MX - I|": err})
        sbase = timeit(lambda: solve_cho(M, r), repeat=repeat, warmup=1)[0]
        for name, fn in (("cho_solve", solve_cho), ("potrs", solve_potrs)):
            t = timeit(lambda: fn(M, r), repeat=repeat, warmup=1)[0]
            err = float(np.max(np.abs(M @ fn(M, r) - r)))
            rows.append({"n": n, "op": "solve", "candidate": name, "time / potri": t / sbase, "max |MX - I|": err})
        print(rows[-6:], flush=True)
    md = save_results("spd_inverse", rows, {**machine_info(), "threads": 1, "note": "solve rows: ratio to cho_solve"})
    print(md)


if __name__ == "__main__":
    main()
