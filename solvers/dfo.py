r"""``dfo``: FALCON's discrete first-order method for ``L0Regression`` with a FLOP budget.

Problem::

    min_w  Q(w) = 1/2 ||b - A w||^2 + ridge/2 ||w - w_bar||^2
    s.t.   ||w||_0 <= k,   sum_{i: w_i != 0} f_i <= F        (f_i, F in FLOPs)

The method alternates two phases (FALCON's DFO with back-solves):

1. **projected first-order steps** ``w <- P(w - tau g)``, ``g = A^T (A w - b) + ridge (w - w_bar)``
   (one pass over A per step), where ``P`` is the Euclidean projection onto the feasible set:
   FALCON's Lemma 1, the FLOP-NNZ ILP with values ``(w - tau g)^2`` solved by dual-sort's
   integer solution, keeping ``w - tau g`` on the chosen support. ``tau`` comes from the exact
   line search of :mod:`combprune.solvers._kernels.iht_engine` (``step="line_search"``) or is ``1/L``
   (``step="lipschitz"``, ``L = sigma_max(A)^2 + ridge`` by power iteration). Steps continue
   until the objective stalls (relative decrease below ``tol`` three times in a row);
2. **back-solve**: the exact ridge least squares on the support reached, then (``refine``)
   further projected steps ``supp P(w - tau g)`` each judged by its own back-solved objective
   (tau around ``1/ridge``; rank-|D| updates of the n x n Gram, see
   :mod:`combprune.solvers._kernels.refine`) while one improves.

Rounds repeat from the back-solved point while a round lowers Q (at most ``max_rounds``).
Every iterate's support is an output of the ILP projection (or the start's feasible support),
so **both budgets hold exactly at every iterate**; ``info["iterates"]`` lists each iterate's
``(nnz, flops, objective)``. Without a FLOP budget the projection is top-k.

Start (``warm_start=None``): ``w_bar`` on the FLOP-aware magnitude support (the ILP with values
``w_bar^2``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from combprune.params import ArrayLike, Boolean, InstanceOf, Interval, Options
from combprune.problems import L0Regression
from combprune.problems.budget import flop_total
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.l0_data import L0Data, final_objective, scale_invariant
from ._kernels.l0_family import FACTORED, L0Recipe, l0_round, start_weights
from ._kernels.projections import make_projector

__all__ = ["dfo"]

_STEPS = ("line_search", "lipschitz")


@register_solver(
    "dfo",
    problems=L0Regression,
    exact=False,
    description="FALCON's discrete first-order method: FLOP-NNZ ILP projection steps + back-solve.",
    params={
        "warm_start": [None, InstanceOf(Result), ArrayLike()],
        "step": Options(_STEPS),
        "max_iter": Interval(int, 1, None),
        "max_rounds": Interval(int, 1, None),
        "tol": Interval(float, 0, None),
        "refine": Boolean(),
    },
)
@scale_invariant
def dfo(
    problem: L0Regression,
    *,
    deadline: Deadline,
    seed: int | None = None,
    warm_start: Any = None,
    step: str = "line_search",
    max_iter: int = 1000,
    max_rounds: int = 10,
    tol: float = 1e-7,
    refine: bool = True,
) -> Result:
    """DFO: rounds of projected (FLOP-NNZ ILP) gradient steps, each round ended by a back-solve.

    ``step``: ``"line_search"`` (exact piecewise-quadratic search) or ``"lipschitz"`` (1/L).
    ``refine``: the back-solve-evaluated projected steps after each round's back-solve.
    ``iterations`` = projected steps over all rounds; ``info["rounds"]``.
    """
    history = History(deadline, "min")
    data = L0Data(problem)
    proj = make_projector(data)
    w = start_weights(problem, data, warm_start)
    f = data.objective(w)
    history.record(f)
    costs = data.costs
    iterates: list[dict[str, Any]] = []

    def record(fv: float | None, supp: np.ndarray) -> None:
        if fv is not None:
            history.record(fv)
        iterates.append({"nnz": int(supp.sum()), "flops": None if costs is None else flop_total(costs, supp), "objective": fv})

    record(f, w != 0)
    # DFO's round: projected steps on all columns (no active set, no stabilisation back-solve,
    # the carried residual only), the factored back-solve, then steps judged by their
    # back-solved objective (FALCON's "project, then back-solve", low-rank Gram updates)
    recipe = L0Recipe(line_search=(step == "line_search"), active_factor=None, stable_iters=None, refresh_every=None,
                      max_outer=1, tol=tol, backsolve=FACTORED, refine=bool(refine), keep_iterates=True)
    it = rounds = 0
    L = None
    converged = data.k == 0
    while not converged and rounds < max_rounds and it < max_iter and not deadline.expired():
        rounds += 1
        r = l0_round(data, w, proj, recipe.with_(max_iter=max_iter - it), deadline=deadline, history=history,
                     on_iterate=record, lipschitz=L)
        it += len(r.iht.steps)
        L = r.iht.lipschitz
        if f - r.f <= tol * max(abs(f), 1e-300):
            converged = True
            if r.f < f:
                w, f = r.w, r.f
            break
        w, f = r.w, r.f
    x, objective, support = final_objective(problem, data, w)
    history.record(objective)
    status = Status.TIME_LIMIT if deadline.expired() and not converged else Status.FEASIBLE
    return Result(
        x=x, support=support, objective=objective, status=status, iterations=it, history=history.points,
        info={"iterates": iterates, "rounds": rounds, "converged": converged},
    )
