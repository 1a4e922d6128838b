"""Optimality-gap demo: seeded random instances of the three formulations, every available
solver for each, and the gap of each solver's objective to the proven optimum.

The reference optimum of an instance is the best objective among the exact solvers that
proved optimality (``bruteforce``, ``highs``, ``pulp``, ``cvxpy``, whichever are installed);
the gap of a solver is ``(objective - optimum) / max(|optimum|, 1e-12)`` for a minimisation
and ``(optimum - objective) / max(|optimum|, 1e-12)`` for a maximisation (so >= 0 up to
solver tolerances, 0 for an optimal answer). Every registered solver for a formulation takes
part (``combprune.list_solvers(problem)``), so the table grows as solvers are added.

Library code: :func:`run_gap_demo` returns rows and :func:`format_gap_table` a string; only
the command line (``combprune demo --instances``) prints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ._table import text_table
from .api import solve
from .problems import Problem, random_flop_ilp, random_l0_regression, random_structured
from .registry import list_solvers

logger = logging.getLogger(__name__)

__all__ = ["GapRow", "demo_instances", "run_gap_demo", "format_gap_table"]


@dataclass
class GapRow:
    """One (instance, solver) line of the demo table; ``error`` is set when the solver failed."""

    instance: str
    formulation: str
    solver: str
    kind: str
    status: str
    objective: float | None
    gap: float | None
    time: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def demo_instances(seed: int = 0) -> list[tuple[str, Problem]]:
    """Small seeded instances that brute force solves in well under a second each."""
    return [
        ("l0 n=30 p=12 k=4", random_l0_regression(30, 12, 4, design="correlated", ridge=0.1, seed=seed)),
        ("l0+flops n=30 p=12 k=5", random_l0_regression(30, 12, 5, ridge=0.1, flop_layers=3, flop_fraction=0.3,
                                                        seed=seed + 1)),
        ("ilp p=16 k=6", random_flop_ilp(16, 6, n_layers=4, budget_fraction=0.3, seed=seed + 2)),
        ("structured d=12 g=6 s=3", random_structured(12, 4, 3, group_size=2, correlated=True, seed=seed + 3)),
        ("structured+costs d=12 g=6", random_structured(12, 4, None, group_size=2, with_costs=True, seed=seed + 4)),
    ]


def run_gap_demo(
    seed: int = 0,
    *,
    time_limit: float = 5.0,
    solvers: list[str] | None = None,
    instances: list[tuple[str, Problem]] | None = None,
    on_row: Callable[[GapRow], None] | None = None,
) -> list[GapRow]:
    """Solve each instance with every available solver for it (or only ``solvers``).

    ``time_limit`` is given to every solve; ``on_row`` is called as each row is ready.
    """
    rows: list[GapRow] = []
    for label, problem in instances if instances is not None else demo_instances(seed):
        specs = [r for r in list_solvers(problem) if r["available"] and (solvers is None or r["name"] in solvers)]
        # exact solvers first, so the reference optimum is known before the heuristics' rows
        specs.sort(key=lambda r: (r["kind"] != "exact", r["name"]))
        results: list[tuple[dict[str, Any], Any, str | None]] = []
        for spec in specs:
            try:
                res = solve(problem, spec["name"], time_limit=time_limit, seed=seed)
                results.append((spec, res, None))
            except Exception as exc:  # a failing solver is a row of the table, not a crash
                logger.warning("%s on %s failed: %s", spec["name"], label, exc)
                results.append((spec, None, f"{type(exc).__name__}: {exc}"))
        proven = [res.objective for spec, res, _ in results
                  if res is not None and spec["kind"] == "exact" and res.status.value == "optimal"]
        optimum = None
        if proven:
            optimum = max(proven) if problem.sense == "max" else min(proven)
        for spec, res, err in results:
            gap = None
            if res is not None and optimum is not None and math.isfinite(res.objective):
                diff = optimum - res.objective if problem.sense == "max" else res.objective - optimum
                gap = diff / max(abs(optimum), 1e-12)
            row = GapRow(
                instance=label, formulation=type(problem).__name__, solver=spec["name"], kind=spec["kind"],
                status="error" if res is None else res.status.value,
                objective=None if res is None else res.objective, gap=gap,
                time=0.0 if res is None else res.time, error=err,
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if spec.endswith("e") and abs(value) < 1e-12:  # rounding noise around an exact tie
        value = 0.0
    return format(value, spec)


def format_gap_table(rows: list[GapRow]) -> str:
    """Plain-text table: instance, formulation, solver, kind, status, objective, gap, time."""
    header = ["instance", "formulation", "solver", "kind", "status", "objective", "gap", "time [s]"]
    body = [
        [r.instance, r.formulation, r.solver, r.kind, r.status, _fmt(r.objective, ".8g"),
         _fmt(r.gap, ".2e"), f"{r.time:.3f}"]
        for r in rows
    ]
    lines = [text_table(header, body)]
    errors = [r for r in rows if r.error]
    if errors:
        lines.append("")
        lines += [f"{r.solver} on {r.instance}: {r.error}" for r in errors]
    lines.append("")
    lines.append("gap = (objective - optimum) / |optimum| (optimum - objective for the ILP's maximisation); "
                 "optimum = best proven-optimal exact result")
    return "\n".join(lines)
