"""Benchmark: ``osscar``'s low-rank search against a naive search that re-solves every candidate.

Layer: d inputs, m = d/4 outputs, calibration X (N x d) with correlated columns
(``N = min(2d, 2048)``), ``H = X^T X``, OSSCAR's default ridge ``1e-2 mean(diag H)``; groups of
1 row (neurons) or 64 rows (attention heads); keep 50 % of the groups (count budget).

* ``osscar``: the solver with its defaults (elimination + magnitude start + swap search),
  and its backward elimination alone (``max_swap_rounds=0, compare_magnitude=False``).
* naive: the *same* backward elimination (same ``groups_per_round`` schedule, same choices in
  exact arithmetic), but each candidate group g is scored by re-solving the kept problem
  without it from scratch: Cholesky of ``K_{S\\g,S\\g}`` and a solve with the m right-hand
  sides, ``O(|S|^3/3 + 2 |S|^2 m)`` per candidate, ``O(d^4)``-ish per round.

Naive timing: where the whole naive run is estimated to fit in ``--naive-budget`` seconds it is
run to the end (``measured``) and its objective is compared with osscar's. Otherwise it is
*extrapolated* (the table says so): a few candidates are timed at the full size and at 3/4 of
it, the per-candidate time is modelled as ``alpha * (n^3/3 + 2 n^2 m)`` (alpha fitted on
those probes), and summed over the schedule's rounds and candidates. The probed candidates'
naive scores are also compared with osscar's group-OBS costs (``cost agreement``). On the
measured rows the model's prediction is reported next to the measurement, as a check of the
extrapolation.

Exponents: least-squares slope of ``log time`` vs ``log d`` over the sizes of each group size.
Speed-ups are ratios measured in the same run; BLAS runs with ``--threads`` threads (default 1:
the machine is shared, and OpenBLAS threads degrade badly when cores are oversubscribed).

    .venv/bin/python benchmarks/structured.py --quick
    flock /tmp/combprune-heavy.lock .venv/bin/python benchmarks/structured.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS_DIR, machine_info, save_results  # noqa: E402

import combprune  # noqa: E402
from combprune.problems import StructuredMIQP  # noqa: E402
from combprune.problems.structured import osscar_default_ridge  # noqa: E402
from combprune.solvers._kernels import structured as sl  # noqa: E402
from combprune.solvers.osscar import _Elimination  # noqa: E402


def make_layer(d: int, group_size: int, seed: int) -> StructuredMIQP:
    rng = np.random.default_rng(seed)
    n = min(2 * d, 2048)
    Z = rng.standard_normal((n, d))
    X = Z + 0.5 * np.roll(Z, 1, axis=1) + 0.3 * rng.standard_normal((n, 1))  # correlated columns
    H = X.T @ X
    H = 0.5 * (H + H.T)
    m = d // 4
    W_hat = rng.standard_normal((d, m)) / math.sqrt(d)
    groups = np.arange(d) // group_size
    n_groups = int(groups.max()) + 1
    return StructuredMIQP(H, W_hat, groups, n_groups // 2, ridge=osscar_default_ridge(H))


def per_round(problem: StructuredMIQP) -> int:
    """osscar's default ``groups_per_round``."""
    return max(1, math.ceil(problem.n_groups / 128))


def schedule(problem: StructuredMIQP) -> list[tuple[int, int]]:
    """(candidates, rows per candidate problem) of every naive elimination round."""
    r, b = per_round(problem), problem.d // problem.n_groups
    alive, out = problem.n_groups, []
    while alive > problem.s:
        out.append((alive, (alive - 1) * b))
        alive -= min(r, alive - problem.s)
    return out


class Naive:
    """Backward elimination scoring each candidate by a from-scratch Cholesky solve."""

    def __init__(self, problem: StructuredMIQP) -> None:
        self.problem = problem
        H = np.asarray(problem.H, dtype=np.float64)
        self.K = H + problem.ridge * np.eye(problem.d)
        self.W_hat = np.asarray(problem.W_hat, dtype=np.float64)
        self.G = self.K @ self.W_hat
        self.c = 0.5 * float(np.sum(self.W_hat * self.G))
        self.rows = problem.group_rows()

    def score(self, alive: np.ndarray, g: int) -> float:
        """Objective of the support ``alive`` without group g, solved from scratch."""
        keep = alive.copy()
        keep[g] = False
        S = np.flatnonzero(self.problem.rows_of(keep))
        if S.size == 0:
            return self.c
        cf = scipy.linalg.cho_factor(self.K[np.ix_(S, S)], lower=True, check_finite=False)
        W_S = scipy.linalg.cho_solve(cf, self.G[S], check_finite=False)
        return self.c - 0.5 * float(np.sum(self.G[S] * W_S))

    def run(self) -> tuple[float, np.ndarray]:
        alive = np.ones(self.problem.n_groups, dtype=bool)
        r = per_round(self.problem)
        t0 = time.perf_counter()
        while alive.sum() > self.problem.s:
            ids = np.flatnonzero(alive)
            scores = np.array([self.score(alive, int(g)) for g in ids])
            take = ids[np.lexsort((ids, scores))][: min(r, ids.size - self.problem.s)]
            alive[take] = False
        return time.perf_counter() - t0, alive

    def probe(self, n_probe: int, rng: np.random.Generator) -> list[tuple[int, float, dict[int, float]]]:
        """Time ``n_probe`` candidates at the full support and at 3/4 of it."""
        out = []
        G = self.problem.n_groups
        for frac in (1.0, 0.75):
            alive = np.zeros(G, dtype=bool)
            alive[rng.permutation(G)[: max(2, int(round(frac * G)))]] = True
            ids = np.flatnonzero(alive)[:n_probe]
            self.score(alive, int(ids[-1]))  # warm-up (allocations, BLAS buffers), untimed
            scores, t0 = {}, time.perf_counter()
            for g in ids:
                scores[int(g)] = self.score(alive, int(g))
            dt = (time.perf_counter() - t0) / ids.size
            out.append((int(self.problem.rows_of(alive).sum()) - self.problem.d // G, dt, scores if frac == 1.0 else {}))
        return out


def flops(n: int, m: int) -> float:
    return n**3 / 3 + 2 * n**2 * m


def fit_exponent(ds: list[int], ts: list[float]) -> float | None:
    if len(ds) < 2:
        return None
    return float(np.polyfit(np.log(ds), np.log(ts), 1)[0])


def run_config(d: int, group_size: int, args: argparse.Namespace) -> dict:
    problem = make_layer(d, group_size, seed=args.seed)
    m = problem.m
    t0 = time.perf_counter()
    full = combprune.solve(problem, "osscar")
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    elim = combprune.solve(problem, "osscar", max_swap_rounds=0, compare_magnitude=False)
    t_elim = time.perf_counter() - t0
    mag = combprune.solve(problem, "group-magnitude")
    naive = Naive(problem)
    sched = schedule(problem)
    probes = naive.probe(args.probes, np.random.default_rng(args.seed))
    alpha = float(np.mean([dt / flops(n, m) for n, dt, _ in probes]))
    predicted = sum(c * alpha * flops(n, m) for c, n in sched)
    # cost agreement of the probed round-0 candidates with osscar's group-OBS costs
    system = sl.ScaledSystem.from_problem(problem)
    obs = _Elimination(system, sl.SizeBatches(system.rows)).costs()
    agree = max(abs(s - obs[g]) / max(obs[g], 1e-300) for g, s in probes[0][2].items())
    del system
    row = {
        "d": d, "m": m, "group": group_size, "G": problem.n_groups, "kept": problem.s,
        "osscar s": t_full, "osscar elim s": t_elim,
    }
    if predicted <= args.naive_budget:
        t_naive, alive = naive.run()
        W = system_refit(problem, alive)
        obj_naive = problem.objective(W)
        row.update({"naive s": t_naive, "naive": "measured", "model s": predicted})
    else:
        t_naive, obj_naive = predicted, None
        row.update({"naive s": predicted, "naive": f"extrapolated ({args.probes} probes x 2 sizes)", "model s": predicted})
    row.update({
        "speedup (full)": t_naive / t_full,
        "speedup (elim)": t_naive / t_elim,
        "obj osscar": full.objective,
        "obj osscar elim": elim.objective,
        "obj naive": obj_naive,
        "osscar vs naive": None if obj_naive is None else (full.objective - obj_naive) / obj_naive,
        "elim vs naive": None if obj_naive is None else (elim.objective - obj_naive) / obj_naive,
        "obj magnitude": mag.objective,
        "swaps accepted": full.info.get("swaps_accepted"),
        "cost agreement": agree,
    })
    print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def system_refit(problem: StructuredMIQP, alive: np.ndarray) -> np.ndarray:
    system = sl.ScaledSystem.from_problem(problem)
    return system.unscale(sl.refit(system, problem.rows_of(alive)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 4096, 8192], help="(none: only --append/--merge)")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--naive-budget", type=float, default=150.0, help="run the naive search fully when predicted below (s)")
    ap.add_argument("--probes", type=int, default=3, help="timed naive candidates per probed size")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="sizes 256 and 1024 only")
    ap.add_argument("--name", default="structured")
    ap.add_argument("--append", action="store_true", help="merge with the rows already in results/<name>.json")
    ap.add_argument("--merge", nargs="*", default=[], help="also take the rows of these results/<NAME>.json files")
    args = ap.parse_args()
    if args.quick:
        args.sizes = [256, 1024]
    from threadpoolctl import threadpool_limits

    rows: list[dict] = []
    sources = ([args.name] if args.append else []) + list(args.merge)
    for name in sources:  # later sources replace earlier rows of the same (d, group)
        path = os.path.join(RESULTS_DIR, f"{name}.json")
        if os.path.exists(path):
            with open(path) as fh:
                new = json.load(fh)["rows"]
            keys = {(r["d"], r["group"]) for r in new}
            rows = [r for r in rows if (r["d"], r["group"]) not in keys] + new
    done = {(d, gs) for gs in args.group_sizes for d in args.sizes}
    rows = [r for r in rows if (r["d"], r["group"]) not in done]
    with threadpool_limits(limits=args.threads):
        for gs in args.group_sizes:
            for d in args.sizes:
                if d % gs == 0 and d // gs >= 2:
                    rows.append(run_config(d, gs, args))
    rows.sort(key=lambda r: (r["group"], r["d"]))
    args.group_sizes = sorted({r["group"] for r in rows})
    meta = {**machine_info(), "threads": args.threads, "keep": "50 % of the groups", "m": "d/4",
            "naive": "same elimination schedule, every candidate re-solved by Cholesky from scratch",
            "extrapolation": "alpha * (n^3/3 + 2 n^2 m) per candidate, alpha from timed probes"}
    for gs in args.group_sizes:
        sel = [r for r in rows if r["group"] == gs and r["d"] >= 1024]
        ds = [r["d"] for r in sel]
        meta[f"exponent osscar (group {gs}, d>=1024)"] = fit_exponent(ds, [r["osscar s"] for r in sel])
        meta[f"exponent osscar elim (group {gs}, d>=1024)"] = fit_exponent(ds, [r["osscar elim s"] for r in sel])
        meta[f"exponent naive (group {gs}, d>=1024)"] = fit_exponent(ds, [r["naive s"] for r in sel])
    print(save_results(args.name, rows, meta))


if __name__ == "__main__":
    main()
