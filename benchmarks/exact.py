"""Exact solvers: time to a proven optimum, as ratios against a reference in the same run.

* ``FlopNnzILP`` (layer-wise constant costs, both budgets binding): ``pulp`` (CBC) and the
  ``highs`` LP relaxation against the ``highs`` MILP (reference), p in {1e3, 1e4} (+1e5 in
  the full run); both MILPs must agree on the optimum to 1e-6.
* ``L0Regression`` (correlated design, FLOP budget) and ``StructuredMIQP`` (groups of 2
  rows): ``cvxpy`` (SCIP, big-M) against ``bruteforce`` (reference), which must agree to
  1e-6; the ratio shows where enumeration stops being the cheaper exact method.

Each time is the best of ``--repeat`` full ``combprune.solve`` calls. Usage:
``python benchmarks/exact.py --quick`` (seconds) or ``python benchmarks/exact.py`` (under
the heavy lock). Writes ``benchmarks/results/exact.json`` and ``exact.md`` (``--name``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import combprune  # noqa: E402
from combprune.problems import random_flop_ilp, random_l0_regression, random_structured  # noqa: E402

from _common import machine_info, save_results, timeit  # noqa: E402


def _solve(problem, name, **options):
    return combprune.solve(problem, name, time_limit=120, seed=0, **options)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def run_ilp(sizes: list[int], repeat: int) -> list[dict]:
    rows = []
    for p in sizes:
        problem = random_flop_ilp(p, int(0.3 * p), n_layers=20, budget_fraction=0.25, seed=p)
        t_ref, ref = timeit(lambda: _solve(problem, "highs"), repeat=repeat)
        for name, opts in (("highs", {}), ("pulp", {}), ("highs", {"lp_relaxation": True})):
            t, res = (t_ref, ref) if (name, opts) == ("highs", {}) else timeit(lambda: _solve(problem, name, **opts), repeat=repeat)
            rows.append({
                "formulation": "FlopNnzILP", "size": f"p={p}", "solver": name + (" (LP)" if opts else ""),
                "reference": "highs", "status": res.status.value, "time_s": t, "ratio_vs_ref": t / t_ref,
                "rel_diff_objective": _rel(res.objective, ref.objective), "gap": res.gap,
            })
    return rows


def run_qp(configs: list[tuple[str, object]], repeat: int) -> list[dict]:
    rows = []
    for label, problem in configs:
        t_ref, ref = timeit(lambda: _solve(problem, "bruteforce"), repeat=repeat)
        t, res = timeit(lambda: _solve(problem, "cvxpy"), repeat=repeat)
        for name, tt, rr in (("bruteforce", t_ref, ref), ("cvxpy", t, res)):
            rows.append({
                "formulation": type(problem).__name__, "size": label, "solver": name, "reference": "bruteforce",
                "status": rr.status.value, "time_s": tt, "ratio_vs_ref": tt / t_ref,
                "rel_diff_objective": _rel(rr.objective, ref.objective), "gap": rr.gap,
            })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (seconds)")
    parser.add_argument("--repeat", type=int, default=None, help="best of this many solves (default 3, quick 1)")
    parser.add_argument("--name", default=None, help="result file name (default exact / exact_quick)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    qp = [
        ("p=10 k=4", random_l0_regression(40, 10, 4, design="correlated", flop_layers=2, flop_fraction=0.4, seed=1)),
        ("G=6 s=3", random_structured(12, 4, 3, group_size=2, correlated=True, seed=1)),
    ]
    if not args.quick:
        qp += [
            ("p=14 k=5", random_l0_regression(40, 14, 5, design="correlated", flop_layers=2, flop_fraction=0.4, seed=2)),
            ("p=18 k=6", random_l0_regression(40, 18, 6, design="correlated", seed=3)),
            ("G=10 s=4", random_structured(20, 4, 4, group_size=2, correlated=True, seed=2)),
        ]
    rows = run_ilp(sizes, repeat) + run_qp(qp, repeat)
    name = args.name or ("exact_quick" if args.quick else "exact")
    md = save_results(name, rows, {"quick": args.quick, "repeat": repeat, **machine_info()})
    print(md)


if __name__ == "__main__":
    main()
