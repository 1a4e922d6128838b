r"""``iht``: iterative hard thresholding for ``L0Regression`` (CHITA's IHT).

``w+ = P(w - tau grad Q(w))`` with ``grad Q(w) = A^T (A w - b) + ridge (w - w_bar)`` (O(np) per
step, never a p x p matrix), ``P`` the top-k projection or, under a FLOP budget, FALCON's
Lemma 1 projection (the FLOP-NNZ ILP with values ``u^2``, dual-sort's integer solution).

* Step size: the exact piecewise-quadratic line search of :mod:`combprune.solvers._kernels.iht_engine`
  (first-piece minimiser when no support change precedes it, otherwise a search over the
  breakpoints with exact minimisation on each candidate support; fallback ``1/L`` with
  ``L = sigma_max(A)^2 + ridge`` by power iteration). ``line_search=False`` uses ``1/L``
  throughout (classical IHT). The objective never increases.
* Active set: IHT on ~``active_factor * k`` candidate columns, grown with the coordinates a
  full projected gradient step would select, until none is added.
* Final back-solve (``backsolve=True`` or ``"exact"``): the exact ridge least squares on the
  final support (direct; Woodbury when |S| > n); ``"cg"``: conjugate gradients on the support
  from the IHT point (iterative back-solve, two products with ``A_S`` per iteration);
  ``"auto"``: exact when ``min(n, |S|) <= 1500``, else cg; ``False``: none. The better of the
  IHT iterate and its back-solve is returned.
* Back-solve on stabilisation (``stable_iters``, default 4): once the support has not changed
  for that many steps, the iterate is replaced by the exact least squares on it (CHITA's
  "update the weights on the support once it stabilises") and IHT continues; a step from
  there that keeps the support ends the active-set round. ``None``: plain IHT.

``iterations`` = IHT steps (all active-set rounds); ``info``: ``outer`` (active-set rounds),
``active_size``, ``iht_objective`` (before the back-solve), ``converged``, ``fallback_steps``.
"""

from __future__ import annotations

from typing import Any


from combprune.params import ArrayLike, Boolean, InstanceOf, Interval, Options
from combprune.problems import L0Regression
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.l0_data import L0Data, final_objective, scale_invariant
from ._kernels.l0_family import BACKSOLVE_MODES, L0Recipe, check_backsolve, l0_round, start_weights
from ._kernels.projections import make_projector

__all__ = ["iht"]


@register_solver(
    "iht",
    problems=L0Regression,
    exact=False,
    description="IHT with exact piecewise-quadratic line search, active set and final back-solve (CHITA).",
    params={
        "warm_start": [None, InstanceOf(Result), ArrayLike()],
        "active_factor": [None, Interval(float, 1, None)],
        "max_iter": Interval(int, 1, None),
        "max_outer": Interval(int, 1, None),
        "tol": Interval(float, 0, None),
        "line_search": Boolean(),
        "backsolve": [Boolean(), Options(BACKSOLVE_MODES), None],
        "stable_iters": [None, Interval(int, 1, None)],
    },
)
@scale_invariant
def iht(
    problem: L0Regression,
    *,
    deadline: Deadline,
    seed: int | None = None,
    warm_start: Any = None,
    active_factor: float | None = 2.0,
    max_iter: int = 1000,
    max_outer: int = 20,
    tol: float = 1e-7,
    line_search: bool = True,
    backsolve: bool | str = True,
    stable_iters: int | None = 4,
) -> Result:
    """IHT from ``warm_start`` (a Result, weights, or a boolean support -> ``w_bar`` on it;
    default: ``w_bar`` on the magnitude / FLOP-aware magnitude support).

    ``active_factor``: candidate-set size over k (``None``: all columns); ``tol``: relative
    decrease below which (3 times in a row) IHT stops on an active set.
    """
    history = History(deadline, "min")
    data = L0Data(problem)
    w0 = start_weights(problem, data, warm_start)
    mode = check_backsolve(backsolve)
    recipe = L0Recipe(
        line_search=line_search, active_factor=active_factor, stable_iters=stable_iters,
        max_iter=max_iter, max_outer=max_outer, tol=tol, backsolve=mode,
    )
    r = l0_round(data, w0, make_projector(data), recipe, deadline=deadline, history=history)
    x, objective, support = final_objective(problem, data, r.w, r.e)
    history.record(objective)
    status = Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    out = r.iht
    return Result(
        x=x, support=support, objective=objective, status=status, iterations=out.iterations,
        history=history.points,
        info={
            "outer": out.outer, "active_size": out.active_size, "iht_objective": out.objective,
            "backsolve_objective": r.backsolve_objective, "converged": out.converged, "fallback_steps": out.fallback_steps,
        },
    )
