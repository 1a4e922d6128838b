r"""``pulp``: the FlopNnzILP through PuLP with its bundled CBC (COIN-OR branch and cut).

Same model as ``highs``::

    maximize sum_i v_i z_i  s.t.  sum_i z_i <= k,  sum_i f_i z_i <= F,  z in {0,1}^p

written with PuLP's affine expressions and solved by ``PULP_CBC_CMD`` (the CBC binary shipped
with PuLP 3.3). PuLP does not expose CBC's dual bound, so this module asks CBC for a log file
and reads its summary: ``Result - Optimal solution found`` (then ``bound = objective``) or
``Result - Stopped on time limit`` with ``Upper bound: ...`` (CBC's best bound for this
maximisation) and its gap. If CBC stops on the time limit with a point worse than a greedy
fill (by value, by value per FLOP), the greedy point is returned. Binary values are rounded to exact 0/1 (with the repair of
:mod:`combprune.solvers._exact` if rounding ever broke a budget, status then ``feasible``).

Options: ``gap_rel`` (CBC's relative gap, default 0), ``threads`` (CBC threads, default 1),
``presolve`` (CBC presolve on/off, default CBC's). ``iterations`` = enumerated B&B nodes.
CBC runs as a subprocess; its wall-clock time limit is the remaining time of the deadline
(at least 1 s, CBC's granularity), so very small limits can be overrun by up to a second
plus the model-writing time.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings

import numpy as np

from combprune import backend
from combprune.problems import FlopNnzILP
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._exact import greedy_ilp, ilp_point

__all__ = ["pulp_cbc", "parse_cbc_log"]

_RESULT_RE = re.compile(r"^Result - (.+)$", re.MULTILINE)
_BOUND_RE = re.compile(r"^(?:Upper|Lower) bound:\s+(\S+)", re.MULTILINE)
_NODES_RE = re.compile(r"^Enumerated nodes:\s+(\d+)", re.MULTILINE)


def parse_cbc_log(text: str) -> dict[str, object]:
    """``{"result": str|None, "bound": float|None, "nodes": int}`` from a CBC log's summary."""
    result = _RESULT_RE.findall(text)
    bound = _BOUND_RE.findall(text)
    nodes = _NODES_RE.findall(text)
    parsed_bound = None
    if bound:
        try:
            parsed_bound = float(bound[-1])
        except ValueError:
            parsed_bound = None
    return {
        "result": result[-1].strip() if result else None,
        "bound": parsed_bound,
        "nodes": int(nodes[-1]) if nodes else 0,
    }


@register_solver(
    "pulp",
    problems=FlopNnzILP,
    exact=True,
    requires=("pulp",),
    extra="exact",
    description="PuLP + bundled CBC branch and cut for the FLOP/count knapsack; reports CBC's bound.",
)
def pulp_cbc(
    problem: FlopNnzILP,
    *,
    deadline: Deadline,
    seed: int | None = None,
    gap_rel: float = 0.0,
    threads: int = 1,
    presolve: bool | None = None,
) -> Result:
    """PuLP/CBC MILP for ``FlopNnzILP`` (see the module docstring for options and bound)."""
    if not isinstance(problem, FlopNnzILP):
        raise TypeError(f"problem: expected a FlopNnzILP, got {type(problem).__name__}")
    if isinstance(gap_rel, bool) or not isinstance(gap_rel, (int, float)) or not 0 <= gap_rel < 1:
        raise ValueError(f"gap_rel: expected a number in [0, 1), got {gap_rel!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive integer, got {threads!r}")
    if presolve is not None and not isinstance(presolve, bool):
        raise ValueError(f"presolve: expected a bool or None, got {presolve!r}")
    try:
        import pulp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pulp is needed for the CBC solver: install it with `pip install combprune[exact]`") from exc

    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    model = pulp.LpProblem("flop_nnz_ilp", pulp.LpMaximize)
    z = [model.add_variable(f"z{i}", cat=pulp.LpBinary) for i in range(problem.p)]
    model += pulp.LpAffineExpression(zip(z, v.tolist()))
    model += pulp.LpAffineExpression(zip(z, [1.0] * problem.p)) <= problem.k, "count"
    nz = np.flatnonzero(f)
    model += pulp.LpAffineExpression([(z[i], float(f[i])) for i in nz]) <= problem.flop_budget, "flops"

    remaining = deadline.remaining()
    options = [] if seed is None else [f"randomSeed {int(seed % 2147483647) or 1}", f"randomCbcSeed {int(seed % 2147483647) or 1}"]
    fd, log_path = tempfile.mkstemp(prefix="combprune-cbc-", suffix=".log")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # PuLP 3.x deprecates the bundled binary for 4.0 (pinned <4)
            warnings.simplefilter("ignore", DeprecationWarning)
            cmd = pulp.PULP_CBC_CMD(
                msg=False,
                timeLimit=None if math.isinf(remaining) else max(1, math.ceil(remaining)),
                gapRel=float(gap_rel),
                gapAbs=0.0,
                threads=threads,
                presolve=presolve,
                logPath=log_path,
                options=options,
            )
        model.solve(cmd)
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            log = parse_cbc_log(fh.read())
    finally:
        os.unlink(log_path)

    values = [var.varValue for var in z]
    has_point = model.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible) and all(
        val is not None for val in values
    )
    frac = np.asarray(values, dtype=np.float64) if has_point else None
    zz, support, repaired = ilp_point(problem, frac)
    objective = problem.objective(zz)
    warm = greedy_ilp(problem)
    if problem.objective(warm.astype(np.float64)) > objective:  # CBC stopped with nothing better
        zz, support, repaired = warm.astype(np.float64), warm, False
        objective = problem.objective(zz)
    result_text = log["result"] or ""
    proved = result_text.startswith("Optimal") and model.sol_status == pulp.LpSolutionOptimal
    if proved:  # CBC's optimum (before our rounding) is the bound
        bound = max(objective, float(pulp.value(model.objective) or 0.0))
        status = Status.FEASIBLE if repaired else Status.OPTIMAL
    else:
        bound = log["bound"]
        status = Status.TIME_LIMIT if ("time" in result_text.lower() or deadline.expired()) else Status.FEASIBLE
    return Result(
        x=backend.from_numpy(zz, like=problem.values, keep_dtype=True), support=support, objective=objective,
        bound=bound, status=status, iterations=int(log["nodes"]),
        history=[] if frac is None else [(deadline.elapsed(), objective)],
        info={"cbc_result": result_text, "pulp_status": pulp.LpStatus[model.status], "repaired": repaired},
    )
