r"""``highs``: the FlopNnzILP as a MILP in HiGHS (highspy), and its LP relaxation.

Model (p binary columns, two rows)::

    maximize    sum_i v_i z_i
    subject to  sum_i z_i       <= k        (count row, dual mu >= 0)
                sum_i f_i z_i   <= F        (FLOP row,  dual nu >= 0)
                z in {0, 1}^p               (z in [0, 1]^p for the LP relaxation)

built directly with highspy's ``HighsLp`` (row-wise sparse matrix; zero costs are simply
absent from the FLOP row). HiGHS's MIP dual bound (``mip_dual_bound``) is reported as
``Result.bound`` (an upper bound, the problem is a maximisation). ``mip_rel_gap`` defaults to
1e-9 and the absolute gap to 0, so ``optimal`` means optimal to far better than 1e-6.

HiGHS starts from the better of two greedy fills (by value, by value per FLOP; given to HiGHS
as a start solution up to 10 000 columns), and a time-limited run returns at least that point. The returned ``z`` is HiGHS's incumbent rounded to exact 0/1; if rounding within HiGHS's
feasibility tolerance (1e-9) ever breaks a budget, coordinates are dropped (lowest value
first) and the status becomes ``feasible``.

LP relaxation
-------------
:func:`solve_lp_relaxation` solves the relaxation ``z in [0,1]^p`` (default interior point
with crossover, which scales well in p; the dual simplex slows down roughly quadratically past
1e5 columns on this LP) and returns the LP value (an upper bound on the ILP optimum), the
(basic, at most two fractional entries) solution and the duals ``mu, nu`` of
the dual of docs/formulations/flop_nnz_ilp.md, ``min k mu + F nu + sum_i max(0, v_i - mu - nu f_i)``. With the solver option
``lp_relaxation=True`` the ``highs`` solver returns it as a :class:`~combprune.Result`:
``x`` is the *integer* point obtained by dropping the fractional coordinates (so ``x`` passes
``check``), ``bound`` is the dual objective at HiGHS's ``mu, nu`` (a valid upper bound by weak
duality whatever the method's accuracy; equal to the LP value at an exact optimum), status
``optimal`` only when that rounding attains the bound (to 1e-9 relative), otherwise
``feasible`` (``time_limit`` if the LP stopped on the deadline); the fractional LP solution and the duals
are in ``info["lp_x"]``, ``info["lp_value"]``, ``info["mu"]``, ``info["nu"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from combprune import backend
from combprune.params import Boolean, Interval, Options
from combprune.problems import FlopNnzILP
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._kernels.exact import greedy_ilp, ilp_bound_and_proof, ilp_lp_certificate, ilp_point, scaled_data, weak_dual_bound

__all__ = ["LPRelaxation", "solve_lp_relaxation", "highs"]

_LP_METHODS = ("ipm", "simplex", "pdlp", "choose")
#: HiGHS's presolve and root LP of this model take up to about this many seconds per column and
#: ignore the time limit; with less time left the MILP is not started (LP-rounded point returned).
_SECONDS_PER_COLUMN = 1e-4
#: Above this many columns HiGHS 1.15 can spend minutes, ignoring its time limit, on a user
#: start solution of this model; the greedy point is then only used as a fallback.
_WARM_START_MAX_P = 10_000


def _check_problem(problem: Any) -> None:
    if not isinstance(problem, FlopNnzILP):
        raise TypeError(f"problem: expected a FlopNnzILP, got {type(problem).__name__}")


def _import_highspy():
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("highspy is needed for the HiGHS solver: install it with `pip install combprune[exact]`") from exc
    return highspy


def _build(problem: FlopNnzILP, *, integer: bool, time_limit: float, threads: int | None, seed: int | None,
           extra_options: dict[str, Any]):
    """A configured ``highspy.Highs`` holding the (relaxed) model."""
    highspy = _import_highspy()
    v, f, F, _, _ = scaled_data(problem)
    p = problem.p
    lp = highspy.HighsLp()
    lp.num_col_ = p
    lp.num_row_ = 2
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = v
    lp.col_lower_ = np.zeros(p)
    lp.col_upper_ = np.ones(p)
    lp.row_lower_ = np.array([-highspy.kHighsInf, -highspy.kHighsInf])
    lp.row_upper_ = np.array([float(problem.k), F])
    nz = np.flatnonzero(f)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = p
    lp.a_matrix_.num_row_ = 2
    lp.a_matrix_.start_ = np.array([0, p, p + nz.size], dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate([np.arange(p), nz]).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate([np.ones(p), f[nz]])
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * p
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if math.isfinite(time_limit):
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
    if threads is not None:
        # HiGHS's task scheduler is global and sized once; a different thread count needs a reset
        highspy.Highs.resetGlobalScheduler(True)
        h.setOptionValue("threads", int(threads))
    if seed is not None:
        h.setOptionValue("random_seed", int(seed % 2147483647))
    for key, value in extra_options.items():
        h.setOptionValue(key, value)
    h.passModel(lp)
    return h, highspy


@dataclass
class LPRelaxation:
    """LP relaxation of a ``FlopNnzILP`` solved by HiGHS.

    ``value``: optimal LP value (an upper bound on the ILP); ``x``: (p,) LP solution in [0, 1];
    ``mu``, ``nu``: non-negative duals of the count and FLOP rows; ``status``: ``"optimal"``
    or ``"time_limit"`` (then ``value`` and the duals are those of the last iterate);
    ``iterations``: simplex + IPM + crossover + PDLP iterations; ``dual_valid``: HiGHS returned
    duals. Whatever the status and method, :meth:`dual_objective` at any ``mu, nu >= 0`` is a
    valid upper bound on the ILP (weak duality), which is what ``highs`` reports as ``bound``.
    """

    value: float
    x: np.ndarray
    mu: float
    nu: float
    status: str
    iterations: int
    dual_valid: bool = True

    def dual_objective(self, problem: FlopNnzILP) -> float:
        """``k mu + F nu + sum_i max(0, v_i - mu - nu f_i)`` (equals ``value`` at an optimum)."""
        return weak_dual_bound(problem, self.mu, self.nu)


def solve_lp_relaxation(
    problem: FlopNnzILP, method: str = "ipm", *, time_limit: float | None = None, threads: int | None = None
) -> LPRelaxation:
    """Solve the LP relaxation of ``problem`` with HiGHS.

    ``method``: ``"ipm"`` (interior point + crossover to a basic solution, the default and the
    fair reference for large p), ``"simplex"`` (dual simplex), ``"pdlp"`` (first order, no
    crossover: the solution may have more than two fractional entries) or ``"choose"``.
    """
    _check_problem(problem)
    if method not in _LP_METHODS:
        raise ValueError(f"method: expected one of {_LP_METHODS}, got {method!r}")
    limit = math.inf if time_limit is None else float(time_limit)
    h, highspy = _build(problem, integer=False, time_limit=limit, threads=threads, seed=None,
                        extra_options={"solver": method})
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    sol = h.getSolution()
    iterations = int(info.simplex_iteration_count + max(info.ipm_iteration_count, 0)
                     + max(info.crossover_iteration_count, 0) + max(info.pdlp_iteration_count, 0))
    x = np.clip(np.asarray(sol.col_value, dtype=np.float64), 0.0, 1.0)
    duals = np.abs(np.asarray(sol.row_dual, dtype=np.float64)) if sol.dual_valid else np.zeros(2)
    _, _, _, s_v, s_f = scaled_data(problem)
    duals = duals * np.array([s_v, s_v / s_f])  # back to the units of v (mu) and v per FLOP (nu)
    if status == highspy.HighsModelStatus.kOptimal:
        state = "optimal"
    elif status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kIterationLimit):
        state = "time_limit"
    else:  # pragma: no cover - the relaxation is always feasible and bounded
        raise RuntimeError(f"HiGHS LP relaxation ended with status {h.modelStatusToString(status)}")
    v = backend.to_numpy(problem.values).astype(np.float64)
    return LPRelaxation(value=float(np.dot(v, x)), x=x, mu=float(duals[0]), nu=float(duals[1]),
                        status=state, iterations=iterations, dual_valid=bool(sol.dual_valid))


def _lp_result(problem: FlopNnzILP, deadline: Deadline, lp_solver: str, threads: int | None) -> Result:
    remaining = deadline.remaining()
    lp = solve_lp_relaxation(problem, lp_solver, time_limit=None if math.isinf(remaining) else max(remaining, 1e-3),
                             threads=threads)
    integral = np.where(lp.x >= 1.0 - 1e-9, 1.0, 0.0)  # drop the (at most two) fractional entries
    z, support, _ = ilp_point(problem, integral)
    objective = problem.objective(z)
    bound = lp.dual_objective(problem) if lp.dual_valid else None  # weak duality: valid for any mu, nu >= 0
    if bound is not None and abs(bound - objective) <= 1e-9 * max(abs(bound), 1e-12):
        status = Status.OPTIMAL
    elif lp.status == "time_limit":
        status = Status.TIME_LIMIT
    else:
        status = Status.FEASIBLE
    return Result(
        x=backend.from_numpy(z, like=problem.values, keep_dtype=True), support=support, objective=objective,
        bound=bound, status=status, iterations=lp.iterations,
        info={"lp_x": lp.x, "lp_value": lp.value, "mu": lp.mu, "nu": lp.nu, "lp_status": lp.status,
              "lp_solver": lp_solver},
    )


@register_solver(
    "highs",
    problems=FlopNnzILP,
    exact=True,
    requires=("highspy",),
    extra="exact",
    description="HiGHS MILP (highspy) for the FLOP/count knapsack; reports HiGHS's dual bound.",
    params={
        "mip_rel_gap": Interval(float, 0, 1, closed="left"),
        "threads": [None, Interval(int, 1, None)],
        "lp_relaxation": Boolean(),
        "lp_solver": Options(_LP_METHODS),
        "presolve": Options({"auto", "on", "off"}),
    },
)
def highs(
    problem: FlopNnzILP,
    *,
    deadline: Deadline,
    seed: int | None = None,
    mip_rel_gap: float = 1e-9,
    threads: int | None = None,
    lp_relaxation: bool = False,
    lp_solver: str = "ipm",
    presolve: str = "auto",
) -> Result:
    """HiGHS MILP for ``FlopNnzILP`` (or only its LP relaxation with ``lp_relaxation=True``).

    Options: ``mip_rel_gap`` (relative gap at which HiGHS stops, default 1e-9), ``threads``
    (HiGHS threads, default HiGHS's choice), ``lp_relaxation`` and ``lp_solver``
    (``"ipm"``, ``"simplex"``, ``"pdlp"``, ``"choose"``; used by the relaxation only),
    ``presolve`` (``"on"``, ``"off"``, ``"auto"`` = on up to 10 000 columns: HiGHS's presolve
    of this two-row model grows roughly quadratically in p and does not watch the time limit).
    ``iterations`` = branch-and-bound nodes (MILP) or LP iterations (relaxation).
    """
    _check_problem(problem)
    if presolve == "auto":
        presolve = "on"  # HiGHS's own "auto" turns it off above 10 000 columns, ignoring time limits
    if lp_relaxation:
        return _lp_result(problem, deadline, lp_solver, threads)

    # The LP certificate first (one sort): its rounded point is a start and its bound is valid
    # whatever HiGHS's tolerances do to extreme values.
    lp_bound, lp_support = ilp_lp_certificate(problem)
    greedy = greedy_ilp(problem)
    warm = lp_support if problem.objective(lp_support.astype(np.float64)) >= problem.objective(greedy.astype(np.float64)) else greedy
    if deadline.remaining() < problem.p * _SECONDS_PER_COLUMN:
        # HiGHS's presolve and first LP do not watch the time limit: a run could not end in time
        z = warm.astype(np.float64)
        bound, optimal, _ = ilp_bound_and_proof(problem.objective(z), None, lp_bound, False, 0.0)
        return Result(x=backend.from_numpy(z, like=problem.values, keep_dtype=True), support=warm,
                      objective=problem.objective(z), bound=bound,
                      status=Status.OPTIMAL if optimal else Status.TIME_LIMIT,
                      info={"highs_status": "skipped: time limit", "lp_bound": lp_bound, "repaired": False})
    h, highspy = _build(problem, integer=True, time_limit=deadline.remaining(), threads=threads, seed=seed,
                        extra_options={"presolve": presolve, "mip_rel_gap": float(mip_rel_gap), "mip_abs_gap": 0.0,
                                       "mip_feasibility_tolerance": 1e-9, "primal_feasibility_tolerance": 1e-9,
                                       "dual_feasibility_tolerance": 1e-10})
    if problem.p <= _WARM_START_MAX_P:
        start = highspy.HighsSolution()
        start.col_value = warm.astype(np.float64)
        start.value_valid = True
        h.setSolution(start)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    has_point = info.primal_solution_status == highspy.kSolutionStatusFeasible
    frac = np.asarray(h.getSolution().col_value, dtype=np.float64) if has_point else None
    z, support, repaired = ilp_point(problem, frac)
    objective = problem.objective(z)
    if problem.objective(warm.astype(np.float64)) > objective:  # HiGHS stopped before matching its start
        z, support, repaired = warm.astype(np.float64), warm, False
        objective = problem.objective(z)
    _, _, _, s_v, _ = scaled_data(problem)
    highs_bound = float(info.mip_dual_bound) * s_v
    MS = highspy.HighsModelStatus
    bound, optimal, trusted = ilp_bound_and_proof(objective, highs_bound, lp_bound,
                                                  status == MS.kOptimal and not repaired, float(mip_rel_gap))
    if optimal:
        result_status = Status.OPTIMAL  # the LP certificate, or HiGHS's proof checked against it
    elif status in (MS.kTimeLimit, MS.kInterrupt) or deadline.expired():
        result_status = Status.TIME_LIMIT
    elif status in (MS.kOptimal, MS.kSolutionLimit, MS.kIterationLimit, MS.kObjectiveBound, MS.kObjectiveTarget):
        result_status = Status.FEASIBLE
    else:  # the ILP is always feasible (z = 0) and bounded
        raise RuntimeError(f"HiGHS ended with status {h.modelStatusToString(status)}")
    history = [] if frac is None else [(deadline.elapsed(), objective)]
    return Result(
        x=backend.from_numpy(z, like=problem.values, keep_dtype=True), support=support, objective=objective,
        bound=bound, status=result_status, iterations=int(max(info.mip_node_count, 0)), history=history,
        info={"highs_status": h.modelStatusToString(status), "highs_objective": float(info.objective_function_value),
              "highs_gap": float(info.mip_gap), "highs_bound": highs_bound, "highs_bound_trusted": trusted,
              "lp_bound": lp_bound, "repaired": repaired},
    )
