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

Configurations: ``iht`` = :func:`run_iht` from a warm start; ``chita`` = warm start +
:func:`run_iht` + refinement + swap; ``dfo`` = rounds of :func:`~.iht_engine.run_inner` on all
columns (no active set, no stabilisation back-solve) each closed by a back-solve and a
refinement (FALCON's DFO).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from combprune.problems import L0Regression
from combprune.result import Deadline, History

from .iht_engine import IHTOutcome, iht_active_set, polish_on_support
from .l0_data import L0Data
from .options import check_positive_float
from .projections import default_support, make_projector
from .ridge import ridge_solve_on_support
from .warm_start import warm_start_weights

__all__ = ["BACKSOLVE_MODES", "check_active_factor", "check_backsolve", "final_backsolve", "run_iht", "start_weights"]


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


def start_weights(problem: L0Regression, data: L0Data, warm_start: Any) -> np.ndarray:
    """Host float64 start: ``w_bar`` on the magnitude / FLOP-aware magnitude support when
    ``warm_start`` is None, else the validated warm start (a Result, weights or a support)."""
    if warm_start is None:
        return np.where(default_support(problem, data), data.w_bar, 0.0)
    return warm_start_weights(problem, warm_start)
