"""Benchmark of the ``swap`` local search (solvers/swap.py).

Part 1, gain evaluation: the exact objective change of the candidate moves of one swap
iteration (q candidate columns against every kept coordinate: q x |S| swaps plus q additions),
computed by the low-rank (Schur complement) formulas of :class:`SupportModel`, against the
naive way, a fresh exact solve of every candidate support (gather A_S, Cholesky of the
smaller of the |S| x |S| Gram and the n x n Woodbury matrix). The
naive time is measured on a sample of candidate supports and extrapolated linearly to the whole
candidate set (it is one independent solve per candidate); the gains of the sample are compared
with the low-rank ones. n = 500, p in {1e4, 1e5}, |S| below n (gram form) and above n
(woodbury form). Ratio = naive / low-rank time for the same candidate set, in the same run.

Part 2, solution quality: objective of ``chita`` and ``iht`` on medium instances, and of
``swap`` warm-started from each; relative improvement ``(Q_before - Q_after) / Q_before``,
swap time and accepted moves.

Usage: ``python benchmarks/swap.py [--quick]`` (run the full mode under the shared lock:
``flock /tmp/combprune-heavy.lock .venv/bin/python benchmarks/swap.py``).
Writes ``benchmarks/results/swap.json`` and ``benchmarks/results/swap.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import combprune as cp  # noqa: E402
from combprune.problems.generators import random_l0_regression  # noqa: E402
from combprune.solvers._kernels.l0_data import L0Data  # noqa: E402
from combprune.solvers.swap import SupportModel  # noqa: E402

from _common import RESULTS_DIR, machine_info, markdown_table, timeit  # noqa: E402


def fresh_value(A: np.ndarray, b: np.ndarray, w_bar: np.ndarray, ridge: float, S: np.ndarray) -> float:
    """Q*(S) by a fresh exact solve: gather A_S, Cholesky of the smaller Gram (the naive way)."""
    AS = np.asarray(A[:, S], dtype=np.float64)
    wS = w_bar[S]
    n, m = AS.shape
    if m <= n:
        G = AS.T @ AS
        G[np.diag_indices_from(G)] += ridge
        w = scipy.linalg.cho_solve(scipy.linalg.cho_factor(G, lower=True), AS.T @ b + ridge * wS)
    else:
        K = AS @ AS.T
        K[np.diag_indices_from(K)] += ridge
        w = wS + AS.T @ scipy.linalg.cho_solve(scipy.linalg.cho_factor(K, lower=True), b - AS @ wS)
    r = b - AS @ w
    return 0.5 * float(r @ r) + 0.5 * ridge * (float((w - wS) @ (w - wS)) + float(w_bar @ w_bar) - float(wS @ wS))


def gain_evaluation(n: int, p: int, k: int, q: int, sample: int, seed: int = 0) -> dict:
    prob = random_l0_regression(n, p, k, design="correlated", rho=0.3, ridge=0.05 * n, seed=seed)
    data = L0Data(prob)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(p, size=k, replace=False))
    col_sq = data.op.col_sqnorms()
    t_build = time.perf_counter()
    model = SupportModel(data.op, data.b, data.w_bar, data.ridge, idx, k, col_sq)
    t_build = time.perf_counter() - t_build
    outside = np.setdiff1d(np.arange(p), idx)
    J = np.sort(rng.choice(outside, size=q, replace=False))
    t_low, (swap_gain, add_gain) = timeit(lambda: model.move_gains(J), repeat=3)
    n_cand = swap_gain.size + add_gain.size
    # naive: one fresh exact solve per candidate support, on a random sample of the candidates
    A = np.asarray(prob.A)
    base = fresh_value(A, data.b, data.w_bar, data.ridge, idx)
    picks = [(int(rng.integers(k)), int(rng.integers(q))) for _ in range(sample)]
    errs, t_naive = [], 0.0
    for t, l in picks:
        S = idx.copy()
        S[t] = J[l]
        S.sort()
        t0 = time.perf_counter()
        fresh = fresh_value(A, data.b, data.w_bar, data.ridge, S) - base
        t_naive += time.perf_counter() - t0
        errs.append(abs(fresh - swap_gain[t, l]) / max(abs(fresh), 1e-12 * abs(base)))
    per_solve = t_naive / sample
    naive_total = per_solve * n_cand
    return {
        "n": n,
        "p": p,
        "|S|": k,
        "form": model.mode,
        "candidates q": q,
        "moves evaluated": n_cand,
        "low-rank s": t_low,
        "fresh solve s (each)": per_solve,
        "naive s (extrapolated)": naive_total,
        "ratio naive/low-rank": naive_total / t_low,
        "max rel gain diff": float(max(errs)),
        "factor build s": t_build,
    }


def improvement(label: str, prob, time_limit: float) -> list[dict]:
    rows = []
    for first in ("chita", "iht"):
        try:
            cp.get_solver(first)
        except cp.UnknownSolverError:
            continue
        start = cp.solve(prob, first)
        res = cp.solve(prob, "swap", warm_start=start, time_limit=time_limit)
        assert prob.check(res.x) == [], res
        rows.append(
            {
                "instance": label,
                "first stage": first,
                "Q first": start.objective,
                "first s": start.time,
                "Q +swap": res.objective,
                "improvement": (start.objective - res.objective) / abs(start.objective),
                "swap s": res.time,
                "moves": res.iterations,
                "status": res.status.value,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="time limit of each swap run (s)")
    args = ap.parse_args()

    if args.quick:
        gain_cases = [(200, 5_000, 100), (200, 5_000, 400)]
        q, sample = 16, 4
        quality = [("gauss n=100 p=2000 k=100", dict(n=100, p=2000, k=100))]
    else:
        gain_cases = [(500, 10_000, 300), (500, 10_000, 1_000), (500, 100_000, 300), (500, 100_000, 10_000)]
        q, sample = 32, 8
        quality = [
            ("gauss n=200 p=5000 k=250", dict(n=200, p=5000, k=250)),
            ("corr0.7 n=200 p=5000 k=250", dict(n=200, p=5000, k=250, design="correlated", rho=0.7)),
            ("planted n=300 p=20000 k=500", dict(n=300, p=20000, k=500, design="planted", noise=1.0)),
            ("corr0.5 n=500 p=20000 k=2000 FLOPs", dict(n=500, p=20000, k=2000, design="correlated", rho=0.5, flop_layers=8, flop_fraction=0.1)),
        ]

    gain_rows = []
    for n, p, k in gain_cases:
        row = gain_evaluation(n, p, k, q, sample)
        print(row, flush=True)
        gain_rows.append(row)
    quality_rows = []
    for label, kw in quality:
        prob = random_l0_regression(ridge=0.01 * kw["n"], seed=1, **kw)
        quality_rows.extend(improvement(label, prob, args.time_limit))

    meta = machine_info()
    meta["mode"] = "quick" if args.quick else "full"
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "swap.json"), "w") as fh:
        json.dump({"meta": meta, "gain_evaluation": gain_rows, "improvement": quality_rows}, fh, indent=2, default=float)
    md = "\n".join(
        ["# swap", ""]
        + [f"- {key}: {value}" for key, value in meta.items()]
        + ["", "## Gain evaluation: low-rank formulas vs a fresh solve per candidate", "", markdown_table(gain_rows)]
        + ["", "## Objective improvement of swap after chita / iht", "", markdown_table(quality_rows), ""]
    )
    with open(os.path.join(RESULTS_DIR, "swap.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
