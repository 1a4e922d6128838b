r"""``chita``: the recommended solver for ``L0Regression`` (CHITA, single stage).

Stages (all times against the one ``time_limit``):

1. **warm start** (``warm_start="magnitude"``, the default): ``w_bar`` on the magnitude support
   (top-k of ``|w_bar|``, or FLOP-aware magnitude pruning under a FLOP budget);
   ``"backsolve"`` also back-solves on it first; or a Result / weights / support.
2. **active-set IHT** with the exact piecewise-quadratic line search (conjugate directions on a
   fixed support), see :mod:`combprune.solvers._kernels.l0_family`.
   Once the support has been stable for ``stable_iters`` steps the weights are back-solved
   on it and IHT continues from there (CHITA's "update on the support once it stabilises").
3. **back-solve**: the ridge least squares on the final support, unless IHT ended on a
   back-solved fixed point (``backsolve="auto"``: direct when ``min(n, |S|) <= 1500``,
   otherwise conjugate gradients started at the IHT point).
4. **support refinement** (``refine=True``): projected steps ``supp P(w - tau g)`` for a few
   ``tau`` around ``1/ridge``, each evaluated by its *back-solved* objective (rank-|D| updates
   of the n x n Gram, see :mod:`combprune.solvers._kernels.refine`), moving while one improves.
   IHT's own line search cannot see these moves from a back-solved point.
5. **swap** (``swap="auto"``, the default: on when ``p <= SWAP_AUTO_MAX_P``): the swap local
   search of the ``swap`` solver (run through ``combprune.solve``) from the back-solved point, with the time left. On
   rank-deficient or strongly correlated designs IHT stops at supports that one exchange
   improves a lot (measured: objectives 2-4x lower at p = 14 ... 3000 for 2-10x the time of the
   rest, seconds at most); above ``SWAP_AUTO_MAX_P`` weights its cost (tens of seconds on a
   32k-weight MLP) is large against the solve, so it runs only when asked (``swap=True``).

Result: the best of the stages; ``info["stages"]`` lists each stage's objective and time;
``iterations`` = IHT steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from combprune.api import solve
from combprune.params import ArrayLike, Boolean, InstanceOf, Interval, Options, Table
from combprune.problems import L0Regression
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.l0_data import L0Data, final_objective, scale_invariant
from ._kernels.l0_family import BACKSOLVE_MODES, NAMED_STARTS, L0Recipe, check_backsolve, l0_round, named_start
from ._kernels.projections import make_projector

__all__ = ["chita"]

#: ``swap="auto"`` runs the swap polish on problems with at most this many weights.
SWAP_AUTO_MAX_P = 10_000


@register_solver(
    "chita",
    problems=L0Regression,
    exact=False,
    description="CHITA: magnitude warm start, active-set IHT with exact line search, back-solve (+ optional swaps).",
    params={
        "warm_start": [Options(NAMED_STARTS), InstanceOf(Result), ArrayLike()],
        "active_factor": [None, Interval(float, 1, None)],
        "max_iter": Interval(int, 1, None),
        "max_outer": Interval(int, 1, None),
        "tol": Interval(float, 0, None),
        "backsolve": [Boolean(), Options(BACKSOLVE_MODES), None],
        "stable_iters": [None, Interval(int, 1, None)],
        "refine": Boolean(),
        "swap": [Boolean(), Options({"auto"})],
        "swap_options": [None, Table()],
    },
)
@scale_invariant
def chita(
    problem: L0Regression,
    *,
    deadline: Deadline,
    seed: int | None = None,
    warm_start: Any = "magnitude",
    active_factor: float | None = 2.0,
    max_iter: int = 1000,
    max_outer: int = 20,
    tol: float = 1e-7,
    backsolve: bool | str = "auto",
    stable_iters: int | None = 4,
    refine: bool = True,
    swap: bool | str = "auto",
    swap_options: dict | None = None,
) -> Result:
    """CHITA: warm start -> active-set IHT (exact line search) -> back-solve [-> swap].

    ``warm_start``: ``"magnitude"`` (default), ``"backsolve"``, or a Result / weights / boolean
    support. ``stable_iters``: back-solve once the support is stable that many steps (None:
    never). ``backsolve``: the final back-solve mode (``"auto"``, ``"exact"``, ``"cg"``,
    ``False``; see :mod:`combprune.solvers.iht`). ``swap``: run the ``swap`` local search last
    (``True``, ``False``, or ``"auto"``: when ``p <= SWAP_AUTO_MAX_P``; ``swap_options`` are
    passed to it).
    """
    history = History(deadline, "min")
    if swap == "auto":
        swap = problem.p <= SWAP_AUTO_MAX_P
    mode = check_backsolve(backsolve)
    data = L0Data(problem)
    w0, name = named_start(problem, data, warm_start)
    f0 = data.objective(w0)
    history.record(f0)
    recipe = L0Recipe(
        active_factor=active_factor, stable_iters=stable_iters, max_iter=max_iter,
        max_outer=max_outer, tol=tol, backsolve=mode, refine=bool(refine),
    )
    stages: list[dict[str, Any]] = [{"stage": f"warm start ({name})", "objective": f0, "time": deadline.elapsed()}]
    r = l0_round(data, w0, make_projector(data), recipe, deadline=deadline, history=history)
    stages.extend(r.stages)
    out, w, f, e = r.iht, r.w, r.f, r.e
    if f0 < f:
        w, f, e = w0, f0, None
    x, objective, support = final_objective(problem, data, w, e)
    result_x = x
    if swap and not deadline.expired():
        left = deadline.remaining()
        sw = solve(
            problem, "swap", time_limit=left if math.isfinite(left) else None, seed=seed,
            warm_start=Result(x=x, support=support, objective=objective, status=Status.FEASIBLE), **(swap_options or {}),
        )
        stages.append({"stage": "swap", "objective": sw.objective, "iterations": sw.iterations, "time": deadline.elapsed()})
        if sw.objective < objective:
            result_x, objective, support = sw.x, sw.objective, np.asarray(sw.support)
            for t, v in sw.history:
                history.record(v)
    history.record(objective)
    status = Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    return Result(
        x=result_x, support=support, objective=objective, status=status, iterations=out.iterations,
        history=history.points,
        info={"stages": stages, "outer": out.outer, "active_size": out.active_size, "converged": out.converged},
    )
