r"""``pulp``: the FlopNnzILP through PuLP with its bundled CBC (COIN-OR branch and cut).

Same model as ``highs``::

    maximize sum_i v_i z_i  s.t.  sum_i z_i <= k,  sum_i f_i z_i <= F,  z in {0,1}^p

written with PuLP's affine expressions and solved by ``PULP_CBC_CMD`` (the CBC binary shipped
with PuLP 3.3). PuLP does not expose CBC's dual bound, so this module asks CBC for a log file
and reads its summary: ``Result - Optimal solution found`` (then ``bound = objective``) or
``Result - Stopped on time limit`` with ``Upper bound: ...`` (CBC's best bound for this
maximisation) and its gap. If CBC stops on the time limit with a point worse than a greedy
fill (by value, by value per FLOP), the greedy point is returned. Binary values are rounded to exact 0/1 (with the repair of
:mod:`combprune.solvers._kernels.exact` if rounding ever broke a budget, status then ``feasible``).

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
from combprune.params import Boolean, Interval
from combprune.problems import FlopNnzILP
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._kernels.exact import greedy_ilp, ilp_bound_and_proof, ilp_lp_certificate, ilp_point, scaled_data

__all__ = ["pulp_cbc", "parse_cbc_log"]

#: Below this many seconds left CBC is not started (its start-up alone takes that long).
_CBC_MIN_SECONDS = 0.1
#: Rough cost of PuLP's Python model building per column (seconds), to skip CBC when the
#: model could not even be built within the time limit.
_BUILD_SECONDS_PER_COLUMN = 3e-5
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
    params={
        "gap_rel": Interval(float, 0, 1, closed="left"),
        "threads": Interval(int, 1, None),
        "presolve": [None, Boolean()],
    },
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
    try:
        import pulp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pulp is needed for the CBC solver: install it with `pip install combprune[exact]`") from exc

    lp_bound, lp_support = ilp_lp_certificate(problem)
    warm = greedy_ilp(problem)
    if problem.objective(lp_support.astype(np.float64)) >= problem.objective(warm.astype(np.float64)):
        warm = lp_support
    if deadline.remaining() < _CBC_MIN_SECONDS + problem.p * _BUILD_SECONDS_PER_COLUMN:
        return _skipped(problem, warm, lp_bound)  # PuLP builds the model in Python: no time for it
    v, f, F, s_v, _ = scaled_data(problem)  # entries of order one: CBC's tolerances are absolute
    model = pulp.LpProblem("flop_nnz_ilp", pulp.LpMaximize)
    z = [model.add_variable(f"z{i}", cat=pulp.LpBinary) for i in range(problem.p)]
    model += pulp.LpAffineExpression(zip(z, v.tolist()))
    model += pulp.LpAffineExpression(zip(z, [1.0] * problem.p)) <= problem.k, "count"
    nz = np.flatnonzero(f)
    model += pulp.LpAffineExpression([(z[i], float(f[i])) for i in nz]) <= F, "flops"

    remaining = deadline.remaining()
    if remaining < _CBC_MIN_SECONDS:
        return _skipped(problem, warm, lp_bound)
    options = [] if seed is None else [f"randomSeed {int(seed % 2147483647) or 1}", f"randomCbcSeed {int(seed % 2147483647) or 1}"]
    fd, log_path = tempfile.mkstemp(prefix="combprune-cbc-", suffix=".log")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # PuLP 3.x deprecates the bundled binary for 4.0 (pinned <4)
            warnings.simplefilter("ignore", DeprecationWarning)
            cmd = pulp.PULP_CBC_CMD(
                msg=False,
                timeLimit=None if math.isinf(remaining) else max(_CBC_MIN_SECONDS, remaining),
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
    if problem.objective(warm.astype(np.float64)) > objective:  # CBC stopped with nothing better
        zz, support, repaired = warm.astype(np.float64), warm, False
        objective = problem.objective(zz)
    result_text = log["result"] or ""
    proved = result_text.startswith("Optimal") and model.sol_status == pulp.LpSolutionOptimal
    # CBC's optimum (before our rounding) bounds the ILP when it proved optimality
    cbc_bound = float(pulp.value(model.objective) or 0.0) if proved else log["bound"]
    if cbc_bound is not None:
        cbc_bound *= s_v  # back to the problem's units
    bound, optimal, _ = ilp_bound_and_proof(objective, cbc_bound, lp_bound, proved and not repaired, float(gap_rel))
    if optimal:
        status = Status.OPTIMAL
    elif "time" in result_text.lower() or deadline.expired():
        status = Status.TIME_LIMIT
    else:
        status = Status.FEASIBLE
    return _result(problem, zz, support, bound, status, int(log["nodes"]),
                   [] if frac is None else [(deadline.elapsed(), objective)],
                   {"cbc_result": result_text, "pulp_status": pulp.LpStatus[model.status], "repaired": repaired})


def _skipped(problem: FlopNnzILP, warm: np.ndarray, lp_bound: float) -> Result:
    """The LP-rounded / greedy point when there is no time to run CBC (optimal if the LP
    certificate closes the gap, otherwise ``time_limit``)."""
    z = warm.astype(np.float64)
    bound, optimal, _ = ilp_bound_and_proof(problem.objective(z), None, lp_bound, False, 0.0)
    return _result(problem, z, warm, bound, Status.OPTIMAL if optimal else Status.TIME_LIMIT, 0, [],
                   {"cbc_result": "skipped: time limit", "repaired": False})


def _result(problem: FlopNnzILP, z: np.ndarray, support: np.ndarray, bound: float, status: Status, nodes: int,
            history: list, info: dict) -> Result:
    return Result(
        x=backend.from_numpy(z, like=problem.values, keep_dtype=True), support=support, objective=problem.objective(z),
        bound=bound, status=status, iterations=nodes, history=history, info=info,
    )
