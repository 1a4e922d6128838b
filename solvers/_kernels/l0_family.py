r"""The L0 family from small parts: IHT engine + follow-up stages, configured by iht, chita and dfo.

Every member solves ``L0Regression`` (docs/formulations/l0_regression.md) by the same engine,
:mod:`.iht_engine`, parameterised by

* the **projector** (:class:`~.projections.Projector`: top-k, or the FLOP-NNZ ILP under a FLOP
  budget, sorted per layer);
* the **step rule** (``line_search=True``: the exact piecewise-quadratic search over the
  breakpoints; ``False``: the classical ``1/L`` step);
* the **active-set policy** (``active_factor``: IHT on ~factor * k candidate columns grown until
  no coordinate enters; ``None``: all columns) and the back-solve on a stabilised support
  (``stable_iters``);
* the **follow-up stages**: the final back-solve (:func:`final_backsolve`, modes
  ``exact``/``cg``/``auto``/``none``), the support refinement (:mod:`.refine`), and, in chita,
  the swap local search (run through ``combprune.solve``).

One round (:func:`l0_round`, configured by an :class:`L0Recipe`) is: IHT (active set or all
columns) -> back-solve on the support reached (unless IHT ended on a back-solved fixed point)
-> support refinement from the back-solved point; the better of the IHT point, its back-solve
and the refinement is kept. The solvers are configurations of it:

* ``iht`` = one round, ``refine=False``;
* ``chita`` = warm start + one round with ``refine=True`` (+ the swap solver through
  ``combprune.solve``);
* ``dfo`` = rounds on all columns (``active_factor=None``, ``stable_iters=None``, no periodic
  residual refresh, the Lipschitz constant kept between rounds) with the factored back-solve
  and ``refine=True``, repeated from the round's point while Q decreases (FALCON's DFO).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from combprune.problems import L0Regression
from combprune.result import Deadline, History

from .iht_engine import IHTOutcome, iht_active_set, polish_on_support
from .l0_data import L0Data
from .projections import Projector, default_support
from .refine import RefineOutcome, refine_support
from .ridge import ridge_solve_on_support, solve_with_factor
from .support_factor import SupportFactor
from .warm_start import warm_start_weights

__all__ = ["BACKSOLVE_MODES", "L0Recipe", "RoundOutcome", "l0_round", "check_backsolve",
           "final_backsolve", "start_weights", "named_start", "NAMED_STARTS"]


BACKSOLVE_MODES = ("exact", "cg", "auto", "none")
#: Internal back-solve mode of DFO: the direct solve that also returns the Woodbury factor.
FACTORED = "factored"


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


def start_weights(problem: L0Regression, data: L0Data, warm_start: Any) -> np.ndarray:
    """Host float64 start: ``w_bar`` on the magnitude / FLOP-aware magnitude support when
    ``warm_start`` is None, else the validated warm start (a Result, weights or a support)."""
    if warm_start is None:
        return np.where(default_support(problem, data), data.w_bar, 0.0)
    return warm_start_weights(problem, warm_start)


@dataclass(frozen=True)
class L0Recipe:
    """One configuration of the L0 family (module docstring).

    Step rule ``line_search``; active-set policy ``active_factor`` (None: all columns),
    ``stable_iters`` (back-solve on a stabilised support; None: never), ``refresh_every``
    (exact residual every that many steps; None: never); stopping ``max_iter`` / ``max_outer``
    / ``tol``; follow-up stages ``backsolve`` (a mode of :func:`final_backsolve` or
    ``"factored"``) and ``refine`` (with ``keep_iterates``: the refinement's supports are kept).
    """

    line_search: bool = True
    active_factor: float | None = 2.0
    stable_iters: int | None = 4
    refresh_every: int | None = 25
    max_iter: int = 1000
    max_outer: int = 20
    tol: float = 1e-7
    backsolve: str = "exact"
    refine: bool = False
    keep_iterates: bool = False

    def with_(self, **changes: Any) -> "L0Recipe":
        return replace(self, **changes)


@dataclass
class RoundOutcome:
    """Result of :func:`l0_round`: the best point ``(w, f, e)`` and what each stage did."""

    w: np.ndarray
    f: float
    e: np.ndarray | None
    iht: IHTOutcome
    backsolve_objective: float | None = None
    refine: RefineOutcome | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)


def _backsolve_stage(data: L0Data, out: IHTOutcome, mode: str, deadline: Deadline) -> tuple[np.ndarray, np.ndarray, SupportFactor | None]:
    if mode == FACTORED:
        return solve_with_factor(data.op, data.b, data.w_bar, data.ridge, out.w != 0)
    w_bs, e_bs = final_backsolve(data, out.w, mode, deadline=deadline, active_idx=out.active_idx, active_op=out.active_op)
    return w_bs, e_bs, None


def l0_round(
    data: L0Data,
    w0: np.ndarray,
    proj: Projector,
    recipe: L0Recipe,
    *,
    deadline: Deadline,
    history: History,
    on_iterate: Callable[[float | None, np.ndarray], None] | None = None,
    lipschitz: float | None = None,
) -> RoundOutcome:
    """One round of the L0 family from the feasible host weights ``w0`` (module docstring).

    ``on_iterate(f, support)`` receives every IHT iterate, the back-solve and the refinement's
    supports (``f`` None when only the support is known) in place of ``history`` for IHT steps.
    Never returns a point worse than ``w0``'s IHT iterates; every point is feasible.
    """
    step_cb = None if on_iterate is None else (lambda fv, mask: on_iterate(fv, mask))
    out = iht_active_set(
        data, w0, proj, deadline=deadline, history=history, active_factor=recipe.active_factor, max_iter=recipe.max_iter,
        max_outer=recipe.max_outer, tol=recipe.tol, line_search=recipe.line_search, stable_iters=recipe.stable_iters,
        refresh_every=recipe.refresh_every, lipschitz=lipschitz, on_iterate=step_cb,
    )
    res = RoundOutcome(w=out.w, f=out.objective, e=out.residual, iht=out)
    res.stages.append({"stage": "active-set IHT", "objective": out.objective, "iterations": out.iterations, "time": deadline.elapsed()})
    factor = out.factor if out.backsolved else None
    if out.backsolved:
        res.backsolve_objective = out.objective
    elif recipe.backsolve != "none" and out.w.any():
        w_bs, e_bs, factor = _backsolve_stage(data, out, recipe.backsolve, deadline)
        f_bs = data.objective(w_bs, e_bs)
        res.backsolve_objective = f_bs
        history.record(f_bs)
        if on_iterate is not None:
            on_iterate(f_bs, w_bs != 0)
        if f_bs <= res.f:
            res.w, res.f, res.e = w_bs, f_bs, e_bs
        else:
            factor = None  # the refinement starts from the IHT point
    if res.backsolve_objective is not None:
        res.stages.append({"stage": "backsolve", "objective": res.backsolve_objective, "time": deadline.elapsed()})
    if recipe.refine and not deadline.expired() and res.w.any():
        f_start = res.f
        ro = refine_support(
            data, res.w, proj, deadline=deadline, history=history, factor=factor, keep_iterates=recipe.keep_iterates,
            active_idx=out.active_idx if recipe.active_factor is not None else None,
            active_op=out.active_op if recipe.active_factor is not None else None,
        )
        res.refine = ro
        res.stages.append({"stage": "support refinement", "objective": ro.objective, "moves": ro.moves, "trials": ro.trials,
                           "time": deadline.elapsed()})
        if on_iterate is not None:
            for S in ro.iterates:
                on_iterate(None, S)
            if ro.objective <= f_start:
                on_iterate(ro.objective, ro.w != 0)
        if ro.objective <= res.f:
            res.w, res.f, res.e = ro.w, ro.objective, ro.residual
    return res


#: Named warm starts of ``chita``.
NAMED_STARTS = ("magnitude", "backsolve")


def named_start(problem: L0Regression, data: L0Data, warm_start: Any) -> tuple[np.ndarray, str]:
    """(host weights, name) of chita's warm start: ``"magnitude"`` (``w_bar`` on the magnitude /
    FLOP-aware magnitude support), ``"backsolve"`` (the back-solve on that support), or a
    Result / weights / boolean support (``"given"``)."""
    if not isinstance(warm_start, str):
        return warm_start_weights(problem, warm_start), "given"
    if warm_start not in NAMED_STARTS:
        raise ValueError(f"warm_start: expected one of {NAMED_STARTS}, a Result, weights or a support, got {warm_start!r}")
    mask = default_support(problem, data)
    w0 = np.where(mask, data.w_bar, 0.0)
    if warm_start == "backsolve" and mask.any():
        w0 = ridge_solve_on_support(data.op.A, data.b, data.w_bar, data.ridge, mask)
    return w0, warm_start
