"""Reliability fuzzing: every registered solver on small nasty instances, checked in float64.

Families (seeded; tiny so that an exhaustive reference is cheap):

* ``L0Regression``: ill-conditioned A (condition 1e8 to 1e12), rank-deficient A with ridge 0,
  all-zero columns with ridge 0, supports larger than n, duplicated (tied) columns, float32
  data at condition 1e10, data scaled by 10^s for s in {-90, -40, 40, 77, 150}, a FLOP budget
  with costs over ten decades.
* ``FlopNnzILP``: values and costs spanning up to twenty decades, ties, zero costs.
* ``StructuredMIQP``: ill-conditioned or singular H (ridge 0 or tiny), ``W_hat = 0``,
  duplicated groups, scaled data.

Checks on each ``Result`` (failure kinds, counted in the output):

* ``error``: the solver raised although the instance is valid (``ValueError`` refusals that
  name an argument are counted apart as ``refused``, they are allowed);
* ``nonfinite``: ``x`` contains NaN/Inf, or the objective is not finite;
* ``infeasible``: ``problem.check(x) != []``;
* ``objective``: the reported objective differs from an independent float64 evaluation;
* ``false_optimal``: status ``optimal`` but the objective is worse than the reference
  (an exhaustive float64 enumeration, or a better point found by any solver) by more than
  ``OPT_RTOL`` relative;
* ``invalid_bound``: the bound is on the wrong side of the reference by more than ``OPT_RTOL``;
* ``time``: the solve took longer than ``max(1.5 limit, limit + 0.5 s)``.

Run ``python benchmarks/fuzz.py [--seeds N] [--out NAME]`` (through ``flock /tmp/cpu.lock``);
counts go to ``benchmarks/results/<NAME>.json`` and ``.md``. The script uses only the public
API, so the same file measures an older checkout (``cd old && .venv/bin/python path/fuzz.py``).
``tests/test_fuzz.py`` runs the same families and checks on a few seeds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np

import combprune as cp
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP

#: Relative tolerance of ``optimal`` claims and bounds (the docs promise far better than 1e-6).
OPT_RTOL = 1e-6
#: Relative tolerance of the objective recomputation.
OBJ_RTOL = 1e-7
#: Absolute tolerance relative to the objective at zero (the exact solvers' absolute gap).
ABS_RTOL = 1e-9
TIME_LIMIT = 2.0


def time_allowed(limit: float) -> float:
    """The longest acceptable wall time of a solve with ``time_limit=limit``."""
    return max(1.5 * limit, limit + 0.5)


# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------
def _conditioned(rng: np.random.Generator, n: int, p: int, cond: float) -> np.ndarray:
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((p, p)))
    r = min(n, p)
    S = np.zeros((n, p))
    S[np.arange(r), np.arange(r)] = np.logspace(0, -math.log10(cond), r)
    return U @ S @ V.T


def l0_instance(family: str, rng: np.random.Generator) -> L0Regression:
    """One ``L0Regression`` of ``family`` (see the module docstring)."""
    n, p = int(rng.integers(3, 9)), int(rng.integers(4, 8))
    k = int(rng.integers(1, p))
    w_bar = rng.standard_normal(p)
    ridge = float(rng.choice([0.0, 1e-6, 0.1]))
    kw: dict[str, Any] = {}
    if family == "ill_conditioned":
        A = _conditioned(rng, n, p, 10.0 ** rng.uniform(8, 12))
    elif family == "rank_deficient":
        r = max(1, min(n, p) // 2)
        A = rng.standard_normal((n, r)) @ rng.standard_normal((r, p))
        A[:, -1] = A[:, 0] * (1 + 1e-13)  # numerically (not exactly) dependent columns
        ridge = 0.0
    elif family == "zero_columns":
        A = rng.standard_normal((n, p))
        A[:, rng.choice(p, size=max(1, p // 2), replace=False)] = 0.0
        ridge = 0.0
    elif family == "support_gt_n":
        n = int(rng.integers(1, 3))
        A = rng.standard_normal((n, p))
        k = int(rng.integers(n + 1, p + 1))
        ridge = float(rng.choice([0.0, 1e-8]))
    elif family == "ties":
        base = rng.integers(-2, 3, size=(n, max(2, p // 2))).astype(float)
        A = base[:, np.arange(p) % base.shape[1]]
        w_bar = np.round(w_bar)
    elif family == "float32":
        A = _conditioned(rng, n, p, 1e10).astype(np.float32)
        b = (A.astype(np.float64) @ w_bar + 0.01 * rng.standard_normal(n)).astype(np.float32)
        return L0Regression(A, b, k, ridge=ridge, w_bar=w_bar.astype(np.float32))
    elif family == "scaled":
        s = 10.0 ** float(rng.choice([-90, -40, 40, 77, 150]))
        A = rng.standard_normal((n, p)) * s
        b = rng.standard_normal(n) * s
        return L0Regression(A, b, k, ridge=ridge * s * s, w_bar=w_bar)
    elif family == "flops":
        A = rng.standard_normal((n, p))
        costs = 10.0 ** rng.uniform(0, 10, size=p)
        kw = {"flop_costs": costs, "flop_budget": float(costs.sum() * rng.uniform(0.1, 0.7))}
    else:  # pragma: no cover - programming error
        raise ValueError(family)
    b = A @ (w_bar * (rng.random(p) < 0.5)) + 0.1 * rng.standard_normal(n)
    return L0Regression(A, b, k, ridge=ridge, w_bar=w_bar, **kw)


def ilp_instance(family: str, rng: np.random.Generator) -> FlopNnzILP:
    """One ``FlopNnzILP`` of ``family``."""
    p = int(rng.integers(2, 10))
    k = int(rng.integers(0, p + 1))
    if family == "wide_values":
        v = 10.0 ** rng.uniform(-10, 10, size=p)
        f = 10.0 ** rng.uniform(0, 2, size=p)
    elif family == "wide_costs":
        v = rng.random(p)
        f = 10.0 ** rng.uniform(-8, 8, size=p)
    elif family == "wide_both":
        v = 10.0 ** rng.uniform(-8, 12, size=p)
        f = 10.0 ** rng.uniform(-8, 12, size=p)
    elif family == "ties":
        v = rng.integers(0, 3, size=p).astype(float)
        f = rng.integers(0, 3, size=p).astype(float)
    else:  # pragma: no cover
        raise ValueError(family)
    F = float(f.sum() * rng.uniform(0.0, 0.8))
    return FlopNnzILP(v, f, k, F)


def structured_instance(family: str, rng: np.random.Generator) -> StructuredMIQP:
    """One ``StructuredMIQP`` of ``family``."""
    n_groups = int(rng.integers(2, 6))
    sizes = rng.integers(1, 3, size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    d, m = int(groups.size), int(rng.integers(1, 3))
    s = int(rng.integers(0, n_groups))
    W_hat = rng.standard_normal((d, m))
    ridge = 1e-3
    if family == "ill_conditioned":
        X = _conditioned(rng, d + 2, d, 10.0 ** rng.uniform(6, 10))
        ridge = 0.0
    elif family == "singular":
        X = rng.standard_normal((max(1, d // 2), d))
        ridge = float(rng.choice([1e-8, 1e-4]))
    elif family == "zero_weights":
        X = rng.standard_normal((d + 3, d))
        W_hat = np.zeros((d, m))
        ridge = 1e-8
    elif family == "ties":
        X = rng.standard_normal((d + 3, d))
        X = X[:, groups]  # columns repeated inside groups: duplicated directions
        W_hat = np.round(W_hat)
    elif family == "scaled":
        sc = 10.0 ** float(rng.choice([-60, 60]))
        X = rng.standard_normal((d + 3, d)) * sc
        ridge = 1e-3 * sc * sc
    else:  # pragma: no cover
        raise ValueError(family)
    return StructuredMIQP(X.T @ X, W_hat, groups, s, ridge=ridge)


FAMILIES: dict[str, tuple[Callable[[str, np.random.Generator], Any], tuple[str, ...]]] = {
    "l0": (l0_instance, ("ill_conditioned", "rank_deficient", "zero_columns", "support_gt_n", "ties", "float32",
                         "scaled", "flops")),
    "ilp": (ilp_instance, ("wide_values", "wide_costs", "wide_both", "ties")),
    "structured": (structured_instance, ("ill_conditioned", "singular", "zero_weights", "ties", "scaled")),
}


def instances(seeds: range) -> Iterator[tuple[str, int, Any]]:
    """``(family label, seed, problem)`` for every family and seed."""
    for kind, (make, families) in FAMILIES.items():
        for fam in families:
            for seed in seeds:
                rng = np.random.default_rng([seed, sum(map(ord, kind + fam))])
                yield f"{kind}/{fam}", seed, make(fam, rng)


# ----------------------------------------------------------------------------------------------
# Independent float64 evaluation and reference optimum
# ----------------------------------------------------------------------------------------------
def _np64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def objective64(problem: Any, x: Any) -> float:
    """The formulation's objective at ``x``, evaluated here in float64 (not by the library)."""
    x = _np64(x)
    if isinstance(problem, L0Regression):
        r = _np64(problem.b) - _np64(problem.A) @ x
        d = x - _np64(problem.w_bar)
        return 0.5 * float(r @ r) + 0.5 * problem.ridge * float(d @ d)
    if isinstance(problem, FlopNnzILP):
        return math.fsum((_np64(problem.values) * x).tolist())
    D = x.reshape(problem.d, problem.m) - _np64(problem.W_hat)
    return 0.5 * float(np.sum(D * (_np64(problem.H) @ D))) + 0.5 * problem.ridge * float(np.sum(D * D))


def _lstsq_min(M: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Least-squares solution by complete orthogonal decomposition (LAPACK ``gelsy``) refined by
    one step of iterative refinement; independent of the library's solvers."""
    import scipy.linalg

    x = scipy.linalg.lstsq(M, rhs, lapack_driver="gelsy")[0]
    return x + scipy.linalg.lstsq(M, rhs - M @ x, lapack_driver="gelsy")[0]


def reference(problem: Any) -> tuple[float, np.ndarray]:
    """Exhaustive optimum over all supports and its point (float64; tiny instances only)."""
    if isinstance(problem, FlopNnzILP):
        v, f = _np64(problem.values), _np64(problem.costs)
        best, best_x = 0.0, np.zeros(problem.p)
        for size in range(problem.k + 1):
            for S in itertools.combinations(range(problem.p), size):
                if math.fsum(f[list(S)].tolist()) <= problem.flop_budget * (1 + 1e-12):
                    val = math.fsum(v[list(S)].tolist())
                    if val > best:
                        best, best_x = val, np.isin(np.arange(problem.p), S).astype(np.float64)
        return best, best_x
    if isinstance(problem, L0Regression):
        A, b, wb = _np64(problem.A), _np64(problem.b), _np64(problem.w_bar)
        costs = None if problem.flop_costs is None else _np64(problem.flop_costs)
        sr = math.sqrt(problem.ridge)
        best_x = np.zeros(problem.p)
        best = objective64(problem, best_x)
        for S in itertools.combinations(range(problem.p), problem.k):
            idx = list(S)
            for T in ([idx] if costs is None else (list(U) for j in range(len(idx) + 1) for U in itertools.combinations(idx, j))):
                if costs is not None and math.fsum(costs[T].tolist()) > problem.flop_budget * (1 + 1e-12):
                    continue
                if not T:
                    continue
                w = np.zeros(problem.p)
                w[T] = _lstsq_min(np.vstack([A[:, T], sr * np.eye(len(T))]), np.concatenate([b, sr * wb[T]]))
                if objective64(problem, w) < best:
                    best, best_x = objective64(problem, w), w
        return best, best_x
    H, W_hat = _np64(problem.H), _np64(problem.W_hat)
    K = H + problem.ridge * np.eye(problem.d)
    G = K @ W_hat
    best_x = np.zeros_like(W_hat)
    best = objective64(problem, best_x)
    for S in itertools.combinations(range(problem.n_groups), problem.s):
        rows = problem.rows_of(np.isin(np.arange(problem.n_groups), S))
        if not rows.any():
            continue
        W = np.zeros_like(W_hat)
        W[rows] = _lstsq_min(K[np.ix_(rows, rows)], G[rows])
        if objective64(problem, W) < best:
            best, best_x = objective64(problem, W), W
    return best, best_x


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def _worse(problem: Any, a: float, b: float, rtol: float, floor: float) -> bool:
    """``a`` worse than ``b`` by more than ``max(rtol |b|, floor)``."""
    tol = max(rtol * abs(b), floor)
    return a > b + tol if problem.sense == "min" else a < b - tol


def floor_of(problem: Any, x: Any) -> float:
    """Absolute tolerance at ``x``: ``ABS_RTOL |Q(0)|`` (the exact solvers' documented absolute
    gap) plus the rounding error of evaluating the objective in float64 at ``x``,
    ``||r|| ||e|| + ||e||^2`` with ``e = (n + p) eps (|A| |x| + |b|)`` (``K`` for H)."""
    eps = np.finfo(np.float64).eps
    x = _np64(x)
    if isinstance(problem, FlopNnzILP):
        return 1e-12 * float(_np64(problem.values).sum())
    if isinstance(problem, L0Regression):
        A, b = _np64(problem.A), _np64(problem.b)
        e = (problem.n + problem.p) * eps * (np.abs(A) @ np.abs(x) + np.abs(b))
        r = b - A @ x
        q0 = objective64(problem, np.zeros(problem.p))
    else:
        H = _np64(problem.H) + problem.ridge * np.eye(problem.d)
        D = x.reshape(problem.d, problem.m) - _np64(problem.W_hat)
        e = 2 * problem.d * eps * (np.abs(H) @ np.abs(D)) * np.abs(D)
        r = np.zeros(1)
        q0 = objective64(problem, np.zeros((problem.d, problem.m)))
    ne = float(np.linalg.norm(e))
    return ABS_RTOL * abs(q0) + float(np.linalg.norm(r)) * ne + ne * ne


def check_result(problem: Any, result: Any, elapsed: float, limit: float, ref: float, ref_floor: float) -> list[str]:
    """Failure kinds of one result (empty when it passes every check); ``ref_floor`` is the
    evaluation error of the reference objective."""
    kinds = []
    x = result.x
    if x is None or not np.all(np.isfinite(_np64(x))) or not math.isfinite(result.objective):
        return ["nonfinite"]
    if problem.check(x):
        kinds.append("infeasible")
    own = objective64(problem, x)
    floor = floor_of(problem, x) + ref_floor
    if not math.isfinite(own) or abs(own - result.objective) > max(OBJ_RTOL * abs(own), floor):
        kinds.append("objective")
    if str(result.status.value) == "optimal" and _worse(problem, own, ref, OPT_RTOL, floor):
        kinds.append("false_optimal")
    if result.bound is not None and math.isfinite(result.bound):
        tol = max(OPT_RTOL * abs(ref), floor)
        if (result.bound > ref + tol) if problem.sense == "min" else (result.bound < ref - tol):
            kinds.append("invalid_bound")
    if elapsed > time_allowed(limit):
        kinds.append("time")
    return kinds


def run_instance(problem: Any, limit: float = TIME_LIMIT, solvers: list[str] | None = None) -> list[dict[str, Any]]:
    """Every available solver of ``problem`` on it; one record per solver with its failures."""
    names = solvers or [r["name"] for r in cp.list_solvers(problem) if r["available"]]
    ref, ref_x = reference(problem)
    records, results = [], {}
    for name in names:
        t0 = time.perf_counter()
        try:
            res = cp.solve(problem, name, time_limit=limit, seed=0)
        except ValueError as exc:  # a refusal naming its argument is an allowed answer
            records.append({"solver": name, "failures": ["refused"], "detail": str(exc)[:200]})
            continue
        except Exception as exc:  # noqa: BLE001 - any other exception is a failure to record
            records.append({"solver": name, "failures": ["error"], "detail": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        results[name] = (res, time.perf_counter() - t0)
    # the reference is the better of the enumeration and every point a solver found
    ref_floor = floor_of(problem, ref_x)
    for res, _ in results.values():
        if res.x is not None and np.all(np.isfinite(_np64(res.x))) and not problem.check(res.x):
            own = objective64(problem, res.x)
            if (own < ref) if problem.sense == "min" else (own > ref):
                ref, ref_floor = own, floor_of(problem, res.x)
    for name, (res, elapsed) in results.items():
        fails = check_result(problem, res, elapsed, limit, ref, ref_floor)
        records.append({"solver": name, "failures": fails, "status": res.status.value, "objective": res.objective,
                        "bound": res.bound, "reference": ref, "time": elapsed})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="instances per family")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--out", default="fuzz", help="results name (benchmarks/results/<out>.json/.md)")
    parser.add_argument("--label", default="", help="free text stored in the results (e.g. the commit)")
    args = parser.parse_args(argv)
    counts: Counter[str] = Counter()
    by_solver: Counter[tuple[str, str]] = Counter()
    examples: dict[str, str] = {}
    runs = 0
    t0 = time.perf_counter()
    for fam, seed, problem in instances(range(args.first_seed, args.first_seed + args.seeds)):
        for rec in run_instance(problem):
            runs += 1
            for kind in rec["failures"]:
                counts[kind] += 1
                by_solver[(rec["solver"], kind)] += 1
                examples.setdefault(f"{rec['solver']}/{kind}", f"{fam} seed {seed}: {rec}")
    failures = sum(v for k, v in counts.items() if k != "refused")
    rows = [{"solver": s, "kind": k, "count": c} for (s, k), c in sorted(by_solver.items())]
    meta = {"label": args.label, "runs": runs, "failures": failures, "by_kind": dict(sorted(counts.items())),
            "seeds_per_family": args.seeds, "first_seed": args.first_seed, "time_limit": TIME_LIMIT, "opt_rtol": OPT_RTOL,
            "seconds": round(time.perf_counter() - t0, 1)}
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _common import save_results

    text = save_results(args.out, rows, meta)
    print(text)
    for key, ex in sorted(examples.items()):
        print(f"- {key}: {ex}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
