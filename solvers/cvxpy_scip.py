r"""``cvxpy``: exact mixed-integer solves of ``L0Regression`` and ``StructuredMIQP`` with SCIP.

The models are written in cvxpy and solved by SCIP (through pyscipopt), which handles the
convex quadratic objective as second-order cones inside its branch and bound.

L0Regression (n-dimensional residual, never a p x p matrix)
-----------------------------------------------------------
::

    min   1/2 ||r||^2 + ridge/2 ||w - w_bar||^2
    s.t.  r = b - A w                                  (n equalities)
          -M_i z_i <= w_i <= M_i z_i,   z in {0,1}^p   (big-M link)
          sum_i z_i <= k,   sum_i f_i z_i <= F         (FLOP row only when given)

StructuredMIQP (group indicators, residual of the factor of H)
---------------------------------------------------------------
With ``H = R^T R`` (R of size r x d, r = rank H, from an eigen-decomposition of the d x d H),
``D = W - W_hat``::

    min   1/2 ||E||_F^2 + lam/2 ||D||_F^2
    s.t.  E = R D
          -M_ij z_g(i) <= W_ij <= M_ij z_g(i),  z in {0,1}^G
          sum_g z_g <= s,   sum_g c_g z_g <= C

Validity of the big-M
---------------------
Let x0 be any feasible point (we take the better of 0 and a refitted greedy-magnitude
support) and Q the objective. Every optimum x* satisfies Q(x*) <= Q(x0). The objective is a
convex quadratic with Hessian ``A^T A + ridge I`` (``K = H + lam I`` for the structured case),
so for its unconstrained minimiser c and the Hessian's smallest eigenvalue ``l_min``,
``Q(x) >= Q(c) + l_min/2 ||x - c||^2``. Hence ``||x* - c||^2 <= 2 (Q(x0) - Q(c)) / l_min``
and ``|x*_i| <= |c_i| + sqrt(2 (Q(x0) - Q(c)) / l_min)``, a valid M_i. Two instances:

* ``ridge > 0`` (big-M rule of docs/exact_solvers.md): c = w_bar, l_min >= ridge, and dropping the (non-negative) residual
  term, ``||w* - w_bar||^2 <= 2 Q(x0) / ridge``;
* ``n >= p`` with A of full column rank: l_min = sigma_min(A)^2 + ridge and c the (ridge)
  least-squares solution, which also covers ``ridge = 0``.

Both are computed when applicable and the smaller M is used (a further relative safety
margin of 1e-6 absorbs rounding). For ``StructuredMIQP`` c = W_hat (the unconstrained
minimiser, Q(c) = 0) and l_min = lambda_min(H) + lam. With no positive l_min (``ridge = 0``
and a singular Hessian) no finite M follows from the data: the solver refuses with a
``ValueError`` suggesting ``ridge > 0`` or the ``bruteforce`` solver, unless the caller passes
``big_m`` (then the result is optimal only among points with ``|x_i| <= big_m``; this is
recorded in ``info["big_m_source"] = "user"``).

What is reported
----------------
The binary selection of SCIP's best solution is rounded to exact 0/1 (repaired if rounding
broke a budget), the weights are set to zero off the selected support and re-fitted by an
exact float64 ridge least squares on it, so the support and budgets hold exactly and
``objective == problem.objective(x)`` (never worse than SCIP's incumbent up to tolerance).
The model is first scaled by powers of two so that its objective at a greedy point is of
order one (SCIP's tolerances are absolute). ``bound`` is SCIP's dual bound mapped back to the
objective (cvxpy's constant offset added, the scaling undone), never clamped: a bound above
the float64 objective of the returned point by more than SCIP's tolerance is rejected
(``bound=None``, ``info["bound_rejected"]``). ``status`` is ``optimal`` only when SCIP proved
it (status ``optimal`` or ``gaplimit``) and the refitted objective is within 1e-6 relative
(or ``1e-9 Q(0)``) of the bound; for ``L0Regression`` a swap local search from SCIP's support
first looks for a better point (which would expose a wrong bound). If SCIP stopped early and
the greedy point used for the big-M is better than its incumbent, that point is returned;
``time_limit`` when SCIP stopped on the deadline (best point so far), otherwise ``feasible``.
``iterations`` = SCIP nodes. See docs/exact_solvers.md (certificates).

Options: ``gap_rel`` (SCIP ``limits/gap``, default 1e-7; absolute gap ``1e-9 Q(0)``), ``big_m`` (see above), ``verbose``
(SCIP's log), ``scip_params`` (extra SCIP parameters, e.g. ``{"limits/nodes": 1000}``; by
default SCIP's ALNS and MPEC heuristics are off, see ``DEFAULT_SCIP_PARAMS``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from combprune import backend
from combprune.params import Boolean, Interval, Table
from combprune.problems import L0Regression, StructuredMIQP
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._kernels.exact import cast_point, l0_refit, pow2_above, round_selection, structured_refit
from ._kernels.selection import greedy_mask

__all__ = ["cvxpy_scip", "l0_big_m", "structured_big_m"]

_SAFETY = 1e-6


def _no_big_m_error(what: str) -> ValueError:
    return ValueError(
        f"big_m: {what} is singular and ridge = 0, so no valid big-M follows from the data; "
        "use ridge > 0 (e.g. from_gradients(l2=...)), the 'bruteforce' solver, or pass big_m "
        "explicitly (optimal only among |x_i| <= big_m)"
    )


def _l0_greedy(problem: L0Regression) -> np.ndarray:
    """Feasible support: largest ``|w_bar|`` first within ``k`` and the FLOP budget."""
    w_bar = backend.to_numpy(problem.w_bar).astype(np.float64)
    return greedy_mask(problem.budget, np.argsort(-np.abs(w_bar), kind="stable"))


def _structured_greedy(problem: StructuredMIQP) -> np.ndarray:
    """Feasible group selection: largest ``||W_hat_g||_F`` first within ``s`` and the cost budget."""
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    norms = np.bincount(problem.group_index, weights=np.sum(W_hat**2, axis=1), minlength=problem.n_groups)
    return greedy_mask(problem.budget, np.argsort(-norms, kind="stable"))


def l0_big_m(problem: L0Regression) -> np.ndarray:
    """Valid per-coordinate big-M (p,) for ``L0Regression`` (see the module docstring).

    Raises ``ValueError`` when neither ``ridge > 0`` nor a full-column-rank A gives a bound.
    """
    A = backend.to_numpy(problem.A).astype(np.float64)
    w_bar = backend.to_numpy(problem.w_bar).astype(np.float64)
    q0 = min(problem.objective(np.zeros(problem.p)), problem.objective(l0_refit(problem, _l0_greedy(problem))))
    M = np.full(problem.p, math.inf)
    if problem.ridge > 0:
        M = np.abs(w_bar) + math.sqrt(2.0 * q0 / problem.ridge)
    if problem.n >= problem.p:
        smin = float(np.linalg.svd(A, compute_uv=False)[-1])
        lmin = smin * smin + problem.ridge
        if lmin > 1e-12 * max(1.0, float(np.abs(A).max()) ** 2):
            c = l0_refit(problem, np.ones(problem.p, dtype=bool))
            qc = problem.objective(c)
            M = np.minimum(M, np.abs(c) + math.sqrt(2.0 * max(q0 - qc, 0.0) / lmin))
    if not np.all(np.isfinite(M)):
        raise _no_big_m_error("A^T A")
    return M * (1.0 + _SAFETY) + _SAFETY


def structured_big_m(problem: StructuredMIQP) -> np.ndarray:
    """Valid entry-wise big-M (d, m) for ``StructuredMIQP`` (see the module docstring)."""
    H = backend.to_numpy(problem.H).astype(np.float64)
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    lmin = max(float(np.linalg.eigvalsh(H)[0]), 0.0) + problem.ridge
    if lmin <= 1e-12 * max(1.0, float(np.abs(H).max())):
        raise _no_big_m_error("H")
    q0 = min(problem.objective(np.zeros_like(W_hat)), problem.objective(structured_refit(problem, _structured_greedy(problem))))
    M = np.abs(W_hat) + math.sqrt(2.0 * q0 / lmin)
    return M * (1.0 + _SAFETY) + _SAFETY


def _import_cvxpy():
    try:
        import cvxpy as cp
        import pyscipopt  # noqa: F401  (SCIP backend of cvxpy)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("cvxpy and pyscipopt are needed for the 'cvxpy' solver: install them with `pip install combprune[exact]`") from exc
    return cp


#: SCIP's ALNS and MPEC heuristics cost ~2/3 of the time on the small instances this solver is
#: for, and find nothing the tree search does not; ``scip_params`` can switch them back on.
DEFAULT_SCIP_PARAMS: dict[str, Any] = {"heuristics/alns/freq": -1, "heuristics/mpec/freq": -1}
#: SCIP's feasibility tolerance (``numerics/feastol``, absolute in the scaled model). Tightening
#: it to 1e-9 makes SCIP orders of magnitude slower on these models, so it is kept, and the
#: model is scaled instead (:func:`_objective_scale`).
SCIP_FEASTOL = 1e-6
#: Default relative gap at which SCIP stops (``gap_rel``), and the absolute gap relative to
#: ``Q(0)``; ``optimal`` is reported within ``OPTIMAL_RTOL`` of the bound (or ``ABS_RTOL Q(0)``).
DEFAULT_GAP_REL = 1e-7
ABS_RTOL = 1e-9
OPTIMAL_RTOL = 1e-6
#: A SCIP bound above the float64 objective of a feasible point by more than this (relative),
#: ``SCIP_FEASTOL`` in the scaled model's units, and ``ABS_RTOL Q(0)``, is provably wrong and
#: rejected; a smaller excess is SCIP's own tolerance.
BOUND_RTOL = OPTIMAL_RTOL
#: SCIP statuses that carry its proof of the gap: solved, or stopped at ``limits/gap``/``absgap``.
_PROVEN = ("optimal", "gaplimit")


def _run_scip(cp, prob, deadline: Deadline, seed: int | None, gap_rel: float, abs_gap: float, verbose: bool,
              scip_params: dict[str, Any] | None) -> dict[str, Any]:
    """Solve with SCIP; return SCIP's status, dual bound (in cvxpy's objective), nodes."""
    params: dict[str, Any] = {**DEFAULT_SCIP_PARAMS, "limits/gap": float(gap_rel), "limits/absgap": float(abs_gap)}
    params.update(scip_params or {})
    remaining = deadline.remaining()
    if math.isfinite(remaining):
        params["limits/time"] = max(remaining, 0.01)
    if seed is not None:
        params["randomization/randomseedshift"] = int(seed % 2147483647)
    try:
        with warnings.catch_warnings():  # "solution may be inaccurate" on every time limit
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=cp.SCIP, verbose=verbose, scip_params=params)
    except cp.error.SolverError:
        pass  # no incumbent (e.g. stopped before the first solution); handled by the caller
    stats = prob.solver_stats.extra_stats if prob.solver_stats is not None else None
    model = stats.get("model") if isinstance(stats, dict) else None
    out: dict[str, Any] = {"scip_status": None, "bound": None, "nodes": 0}
    if model is None:
        return out
    out["scip_status"] = model.getStatus()
    out["nodes"] = int(model.getNNodes())
    dual = float(model.getDualbound())
    if math.isfinite(dual) and model.getNSols() > 0 and prob.value is not None and math.isfinite(prob.value):
        # cvxpy's objective = SCIP's objective + a constant offset; measure it at SCIP's best point.
        # An epigraph variable that is not tight only lowers the offset: the bound stays valid.
        offset = float(prob.value) - float(model.getSolObjVal(model.getBestSol()))
        out["bound"] = dual + offset
    return out


def _better(problem, x_solver: np.ndarray, x_greedy: np.ndarray) -> np.ndarray:
    """SCIP's (refitted) point unless the greedy warm point is strictly better (early stops)."""
    return x_greedy if problem.objective(x_greedy) < problem.objective(x_solver) else x_solver


def _zero_point(problem) -> np.ndarray:
    return np.zeros(problem.p) if isinstance(problem, L0Regression) else np.zeros((problem.d, problem.m))


def _finish(problem, x_np, support, sel_ok, run, deadline, like, info, scale: float) -> Result:
    """Status and bound derived from SCIP's certificate only, checked against the point.

    ``scale`` converts SCIP's objective to the problem's (the model is scaled). SCIP's bound is
    rejected when it lies above the float64 objective of a feasible point by more than
    SCIP's tolerance (``BOUND_RTOL`` relative, ``SCIP_FEASTOL`` in the scaled units): it is
    then provably wrong; a smaller excess is SCIP's tolerance and the bound is then the
    point's value. ``optimal`` needs SCIP's own ``optimal`` and a point within ``OPTIMAL_RTOL`` of the
    bound (or ``ABS_RTOL Q(0)`` absolute).
    """
    x, objective, exact = cast_point(problem, x_np, like)
    q0 = problem.objective(_zero_point(problem))
    floor = ABS_RTOL * abs(q0)
    bound = None if run["bound"] is None else run["bound"] * scale
    excess = -math.inf if bound is None else bound - problem.objective(x_np)
    rejected = excess > max(BOUND_RTOL * abs(objective), SCIP_FEASTOL * scale, floor)
    if rejected:
        bound = None
    elif excess > 0:  # SCIP's own tolerances, within OPTIMAL_RTOL: the point attains the bound
        bound = problem.objective(x_np)
    close = bound is not None and objective - bound <= max(OPTIMAL_RTOL * abs(objective), floor)
    if run["scip_status"] in _PROVEN and sel_ok and exact and close:
        status = Status.OPTIMAL
    elif run["scip_status"] == "timelimit" or deadline.expired():
        status = Status.TIME_LIMIT
    else:
        status = Status.FEASIBLE
    info = {**info, "scip_status": run["scip_status"], "bound_rejected": rejected}
    return Result(
        x=x, support=support, objective=objective, bound=bound,
        status=status, iterations=run["nodes"], history=[(deadline.elapsed(), objective)], info=info,
    )


#: The objective scale is kept above ``data scale * 2^-OBJECTIVE_SCALE_RANGE`` so that the
#: scaled coefficients stay far below SCIP's infinity (1e20).
OBJECTIVE_SCALE_RANGE = 30


def _objective_scale(problem, x_greedy: np.ndarray, data_scale: float) -> float:
    """A power of two ``s ~ Q(x_greedy)`` (an upper bound on the optimum; ``Q(0)`` when that
    is 0), at least ``data_scale * 2^-OBJECTIVE_SCALE_RANGE``: dividing the objective by it
    gives SCIP, whose tolerances are absolute, an optimum of order one at most."""
    q = problem.objective(x_greedy) or problem.objective(_zero_point(problem))
    floor = math.ldexp(pow2_above(data_scale), -OBJECTIVE_SCALE_RANGE) if data_scale > 0 else 0.0
    return max(pow2_above(q), floor) if q > 0 or floor > 0 else 1.0


def _scaled_l0(problem: L0Regression) -> tuple[L0Regression, float]:
    """``(problem', s)`` with ``A' = A / c``, ``b' = b / c``, ``ridge' = ridge / c^2`` for a power
    of two ``c = sqrt(s)``, ``s ~ Q(greedy point)``: the same minimisers, ``Q = s Q'`` exactly,
    and a model whose objective is of order one for SCIP whatever the data's scale."""
    A = backend.to_numpy(problem.A).astype(np.float64)
    b = backend.to_numpy(problem.b).astype(np.float64)
    data_scale = max(float(np.abs(A).max()), float(np.abs(b).max(initial=0.0))) ** 2
    s = _objective_scale(problem, l0_refit(problem, _l0_greedy(problem)), data_scale)
    c = math.ldexp(1.0, math.frexp(s)[1] // 2)
    scaled = L0Regression(A / c, b / c, problem.k, ridge=problem.ridge / c / c,
                          w_bar=backend.to_numpy(problem.w_bar).astype(np.float64),
                          flop_costs=None if problem.flop_costs is None else backend.to_numpy(problem.flop_costs),
                          flop_budget=problem.flop_budget)
    return scaled, c * c


def _scaled_structured(problem: StructuredMIQP) -> tuple[StructuredMIQP, float]:
    """``(problem', s)`` with ``H' = H / s``, ``ridge' = ridge / s`` (``s`` a power of two near
    the objective of the greedy point, see :func:`_objective_scale`): the same minimisers and
    ``Q = s Q'`` exactly."""
    H = backend.to_numpy(problem.H).astype(np.float64)
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    data_scale = (float(np.abs(H).max()) + problem.ridge) * float(np.abs(W_hat).max()) ** 2
    s = _objective_scale(problem, structured_refit(problem, _structured_greedy(problem)), data_scale)
    scaled = StructuredMIQP(H / s, W_hat, backend.to_numpy(problem.groups),
                            problem.s, ridge=problem.ridge / s,
                            group_costs=None if problem.group_costs is None else backend.to_numpy(problem.group_costs),
                            cost_budget=problem.cost_budget)
    return scaled, s


def _local_check(problem: L0Regression, x: np.ndarray, deadline: Deadline) -> np.ndarray:
    """Swap local search from SCIP's support (tiny instances: milliseconds): a point better than
    SCIP's bound exposes a wrong bound (then rejected by :func:`_finish`)."""
    from combprune.api import solve  # another solver runs through the public entry point

    left = deadline.remaining()
    try:
        res = solve(problem, "swap", time_limit=None if not math.isfinite(left) else max(left, 1e-9), warm_start=np.asarray(x != 0))
    except (ValueError, np.linalg.LinAlgError):  # the check is optional; SCIP's point stands
        return x
    w = backend.to_numpy(res.x).astype(np.float64)
    if not np.all(np.isfinite(w)) or problem.check(w):
        return x
    return l0_refit(problem, w != 0) if problem.objective(l0_refit(problem, w != 0)) < problem.objective(x) else x


#: Seconds cvxpy + SCIP take to build a model, per nonzero of its data (measured: ~8e-6 on the
#: development machine), and to import cvxpy the first time: a solve that could not even
#: start before its deadline returns the greedy refit at once (status ``time_limit``).
_BUILD_SECONDS_PER_ENTRY = 1e-5
_IMPORT_SECONDS = 2.5


def _no_time_to_build(entries: int, deadline: Deadline) -> bool:
    import sys

    needed = entries * _BUILD_SECONDS_PER_ENTRY + (0.0 if "cvxpy" in sys.modules else _IMPORT_SECONDS)
    return deadline.remaining() < needed


_SKIPPED = {"scip_status": "timelimit", "bound": None, "nodes": 0}


def _solve_l0(original: L0Regression, deadline, seed, gap_rel, big_m, verbose, scip_params) -> Result:
    if _no_time_to_build(original.n * original.p + 3 * original.p, deadline):
        x = l0_refit(original, _l0_greedy(original))
        return _finish(original, x, x != 0, False, _SKIPPED, deadline, original.A, {"skipped": "no time to build the MIQP"}, 1.0)
    cp = _import_cvxpy()
    problem, scale = _scaled_l0(original)
    A = backend.to_numpy(problem.A).astype(np.float64)
    b = backend.to_numpy(problem.b).astype(np.float64)
    w_bar = backend.to_numpy(problem.w_bar).astype(np.float64)
    costs = None if problem.flop_costs is None else backend.to_numpy(problem.flop_costs).astype(np.float64)
    if big_m is None:
        M, source = l0_big_m(problem), "proven"
    else:
        M, source = np.full(problem.p, float(big_m)), "user"
    w = cp.Variable(problem.p)
    z = cp.Variable(problem.p, boolean=True)
    r = cp.Variable(problem.n)
    cons = [r == b - A @ w, w <= cp.multiply(M, z), w >= -cp.multiply(M, z), cp.sum(z) <= problem.k]
    if costs is not None:
        cons.append(costs @ z <= problem.flop_budget)
    obj = 0.5 * cp.sum_squares(r)
    if problem.ridge > 0:
        obj = obj + 0.5 * problem.ridge * cp.sum_squares(w - w_bar)
    prob = cp.Problem(cp.Minimize(obj), cons)
    abs_gap = ABS_RTOL * problem.objective(np.zeros(problem.p))
    run = _run_scip(cp, prob, deadline, seed, gap_rel, abs_gap, verbose, scip_params)
    if z.value is None:
        mask, repaired = np.zeros(problem.p, dtype=bool), False
    else:
        mask, repaired = round_selection(z.value, np.abs(w.value), problem.k, costs, problem.flop_budget)
    x = _better(original, l0_refit(original, mask), l0_refit(original, _l0_greedy(original)))
    if run["scip_status"] in _PROVEN:
        x = _local_check(original, x, deadline)
    return _finish(original, x, x != 0, z.value is not None and not repaired, run, deadline, original.A,
                   {"big_m": float(M.max()) if M.size else 0.0, "big_m_source": source, "repaired": repaired}, scale)


def _solve_structured(original: StructuredMIQP, deadline, seed, gap_rel, big_m, verbose, scip_params) -> Result:
    if _no_time_to_build(original.d * original.d * original.m + original.d * original.m, deadline):
        x = structured_refit(original, _structured_greedy(original))
        return _finish(original, x, original.group_support(x), False, _SKIPPED, deadline, original.W_hat,
                       {"skipped": "no time to build the MIQP"}, 1.0)
    cp = _import_cvxpy()
    problem, scale = _scaled_structured(original)
    H = backend.to_numpy(problem.H).astype(np.float64)
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    costs = None if problem.group_costs is None else backend.to_numpy(problem.group_costs).astype(np.float64)
    if big_m is None:
        M, source = structured_big_m(problem), "proven"
    else:
        M, source = np.full(W_hat.shape, float(big_m)), "user"
    evals, evecs = np.linalg.eigh(H)
    keep = evals > 1e-12 * max(float(evals[-1]), 1e-300)
    R = np.sqrt(evals[keep])[:, None] * evecs[:, keep].T  # H = R^T R up to the dropped null space
    d, m, G = problem.d, problem.m, problem.n_groups
    P = np.zeros((d, G))
    P[np.arange(d), problem.group_index] = 1.0
    W = cp.Variable((d, m))
    z = cp.Variable(G, boolean=True)
    Zrows = cp.reshape(P @ z, (d, 1), order="F") @ np.ones((1, m))
    D = W - W_hat
    cons = [W <= cp.multiply(M, Zrows), W >= -cp.multiply(M, Zrows)]
    if problem.s is not None:
        cons.append(cp.sum(z) <= problem.s)
    if costs is not None:
        cons.append(costs @ z <= problem.cost_budget)
    obj = 0
    if R.shape[0]:
        E = cp.Variable((R.shape[0], m))
        cons.append(E == R @ D)
        obj = 0.5 * cp.sum_squares(E)
    if problem.ridge > 0:
        obj = obj + 0.5 * problem.ridge * cp.sum_squares(D)
    prob = cp.Problem(cp.Minimize(obj), cons)
    abs_gap = ABS_RTOL * problem.objective(np.zeros_like(W_hat))
    run = _run_scip(cp, prob, deadline, seed, gap_rel, abs_gap, verbose, scip_params)
    if z.value is None:
        sel, repaired = np.zeros(G, dtype=bool), False
    else:
        gnorm = np.bincount(problem.group_index, weights=np.sum(np.asarray(W.value) ** 2, axis=1), minlength=G)
        sel, repaired = round_selection(z.value, gnorm, problem.s, costs, problem.cost_budget)
    x = _better(original, structured_refit(original, sel), structured_refit(original, _structured_greedy(original)))
    return _finish(original, x, original.group_support(x), z.value is not None and not repaired, run, deadline,
                   original.W_hat, {"big_m": float(M.max()), "big_m_source": source, "repaired": repaired}, scale)


@register_solver(
    "cvxpy",
    problems=(L0Regression, StructuredMIQP),
    exact=True,
    requires=("cvxpy", "pyscipopt"),
    extra="exact",
    description="cvxpy + SCIP big-M MIQP for L0Regression and StructuredMIQP (proven big-M, SCIP's bound).",
    params={
        "gap_rel": Interval(float, 0, 1, closed="left"),
        "big_m": [None, Interval(float, 0, None, closed="neither")],
        "verbose": Boolean(),
        "scip_params": [None, Table()],
    },
)
def cvxpy_scip(
    problem: L0Regression | StructuredMIQP,
    *,
    deadline: Deadline,
    seed: int | None = None,
    gap_rel: float = DEFAULT_GAP_REL,
    big_m: float | None = None,
    verbose: bool = False,
    scip_params: dict[str, Any] | None = None,
) -> Result:
    """Big-M MIQP in cvxpy solved by SCIP (see the module docstring for the model and the big-M)."""
    if isinstance(problem, L0Regression):
        return _solve_l0(problem, deadline, seed, gap_rel, big_m, verbose, scip_params)
    if isinstance(problem, StructuredMIQP):
        return _solve_structured(problem, deadline, seed, gap_rel, big_m, verbose, scip_params)
    raise TypeError(f"problem: expected L0Regression or StructuredMIQP, got {type(problem).__name__}")
