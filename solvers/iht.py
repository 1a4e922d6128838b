r"""``iht``: iterative hard thresholding for ``L0Regression`` (CHITA's IHT).

``w+ = P(w - tau grad Q(w))`` with ``grad Q(w) = A^T (A w - b) + ridge (w - w_bar)`` (O(np) per
step, never a p x p matrix), ``P`` the top-k projection or, under a FLOP budget, FALCON's
Lemma 1 projection (the FLOP-NNZ ILP with values ``u^2``, dual-sort's integer solution).

* Step size: the exact piecewise-quadratic line search of :mod:`combprune.solvers._l0_engine`
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

import numpy as np

from combprune.params import ArrayLike, Boolean, InstanceOf, Interval, Options
from combprune.problems import L0Regression
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._l0_core import (
    L0Data,
    check_positive_float,
    check_positive_int,
    default_support,
    final_objective,
    make_projector,
    scale_invariant,
    warm_start_weights,
)
from ._l0_engine import IHTOutcome, iht_active_set, polish_on_support
from .backsolve import ridge_solve_on_support

__all__ = ["iht", "run_iht"]


def check_active_factor(active_factor: Any) -> float | None:
    if active_factor is None:
        return None
    v = check_positive_float("active_factor", active_factor)
    if v < 1.0:
        raise ValueError(f"active_factor: expected None or a number >= 1 (candidate set = factor * k), got {active_factor!r}")
    return v


BACKSOLVE_MODES = ("exact", "cg", "auto", "none")


def check_backsolve(backsolve: Any) -> str:
    if backsolve is True:
        return "exact"
    if backsolve is False or backsolve is None:
        return "none"
    if backsolve not in BACKSOLVE_MODES:
        raise ValueError(f"backsolve: expected a bool or one of {BACKSOLVE_MODES}, got {backsolve!r}")
    return backsolve


def final_backsolve(
    data: L0Data, w: np.ndarray, mode: str, *, deadline: Deadline, active_idx: np.ndarray | None = None, active_op: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Back-solve on ``supp(w)``: ``"exact"`` (direct, Woodbury when |S| > n), ``"cg"``
    (conjugate gradients from ``w``), ``"auto"`` (exact when ``min(n, |S|) <= 1500``, else cg:
    the direct n x n Gram costs ~2 n^2 |S| flops at BLAS-3 speed, CG ~60 memory-bound passes).
    Columns come from the active block when the support lies in it."""
    mask = w != 0
    s = int(mask.sum())
    if mode == "auto":
        mode = "exact" if min(data.n, s) <= 1500 else "cg"
    if mode == "cg":
        return polish_on_support(data, w, deadline=deadline, active_idx=active_idx, active_op=active_op)
    S = np.flatnonzero(mask)
    if active_idx is not None and active_op is not None and active_op is not data.op and np.all(np.isin(S, active_idx, assume_unique=True)):
        local = np.zeros(active_idx.size, dtype=bool)
        local[np.searchsorted(active_idx, S)] = True
        wC, e = ridge_solve_on_support(active_op.A, data.b, data.w_bar[active_idx], data.ridge, local, return_residual=True, max_gather_fraction=1.0)
        out = np.zeros(data.p)
        out[active_idx] = wC
        return out, e
    return ridge_solve_on_support(data.op.A, data.b, data.w_bar, data.ridge, mask, return_residual=True)


def run_iht(
    problem: L0Regression,
    data: L0Data,
    w0: np.ndarray,
    *,
    deadline: Deadline,
    history: History,
    active_factor: float | None,
    max_iter: int,
    max_outer: int,
    tol: float,
    line_search: bool,
    backsolve: str,
    stable_iters: int | None = 4,
) -> tuple[np.ndarray, float, np.ndarray, IHTOutcome, float | None]:
    """IHT (+ final back-solve, ``backsolve`` a mode of :func:`final_backsolve`) from host
    weights ``w0``; returns (weights, objective, residual, IHT outcome, back-solved objective)."""
    proj = make_projector(data)
    out = iht_active_set(
        data, w0, proj, deadline=deadline, history=history, active_factor=active_factor,
        max_iter=max_iter, max_outer=max_outer, tol=tol, line_search=line_search, stable_iters=stable_iters,
    )
    w, f, e = out.w, out.objective, out.residual
    f_bs = None
    if out.backsolved:
        f_bs = f
    elif backsolve != "none" and out.w.any():
        w_bs, e_bs = final_backsolve(data, out.w, backsolve, deadline=deadline, active_idx=out.active_idx, active_op=out.active_op)
        f_bs = data.objective(w_bs, e_bs)
        history.record(f_bs)
        if f_bs <= f:
            w, f, e = w_bs, f_bs, e_bs
    return w, f, e, out, f_bs


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
    af = check_active_factor(active_factor)
    max_iter = check_positive_int("max_iter", max_iter)
    max_outer = check_positive_int("max_outer", max_outer)
    tol = check_positive_float("tol", tol, allow_zero=True)
    data = L0Data(problem)
    if warm_start is None:
        w0 = np.where(default_support(problem, data), data.w_bar, 0.0)
    else:
        w0 = warm_start_weights(problem, warm_start)
    mode = check_backsolve(backsolve)
    w, _, e, out, f_bs = run_iht(
        problem, data, w0, deadline=deadline, history=history, active_factor=af, max_iter=max_iter,
        max_outer=max_outer, tol=tol, line_search=bool(line_search), backsolve=mode,
        stable_iters=check_positive_int("stable_iters", stable_iters, allow_none=True),
    )
    x, objective, support = final_objective(problem, data, w, e)
    history.record(objective)
    status = Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    return Result(
        x=x, support=support, objective=objective, status=status, iterations=out.iterations,
        history=history.points,
        info={
            "outer": out.outer, "active_size": out.active_size, "iht_objective": out.objective,
            "backsolve_objective": f_bs, "converged": out.converged, "fallback_steps": out.fallback_steps,
        },
    )
