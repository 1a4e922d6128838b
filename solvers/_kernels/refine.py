r"""Support refinement: projected steps evaluated by their *back-solved* objective, in n-space.

At a back-solved point ``w`` (exact least squares on its support S) IHT's own line search
compares a trial support T by the value of ``(w - tau g)|_T``, whose kept weights still
compensate for the old pruned set; the true value of T is that of the back-solve on T. This
stage evaluates the projected step ``T = supp P(w - tau g)`` the way FALCON's DFO does
("project, then back-solve"), for a few step sizes, and moves to the best T when its
back-solved objective is lower. Repeats until no trial improves.

Woodbury regime (``ridge > 0``, ``|S| > n``), everything in n x n space:

* with ``K_S = A_S A_S^T``, ``r0 = b - A_S w_bar_S`` and ``(K_S + ridge I) y = r0`` the
  back-solve is ``w_S = w_bar_S + A_S^T y``, its residual ``A w - b = -ridge y`` and its value
  ``Q*(S) = ridge/2 ||w_bar_{S^c}||^2 + ridge/2 r0 . y``;
* so the gradient is ``g_j = -ridge (w_bar_j + z_j)`` off S (and 0 on S) with ``z = A^T y``:
  one pass over A per iteration gives every trial support. With ``v = w_bar + z`` and
  ``tau = c / ridge``, ``w - tau g`` is ``v`` on S and ``c v`` off S (``c < 1`` favours the
  current support);
* a trial T differs from S in a few columns D (trials changing more than |S|/8 are skipped): ``K_T = K_S + A_{T\S} A_{T\S}^T -
  A_{S\T} A_{S\T}^T`` (O(n^2 |D|)), ``r0`` likewise (O(n |D|)), one Cholesky (O(n^3/3)) and
  ``Q*(T)`` from the formula above: no pass over A, no fresh Gram. ``K`` is recomputed from
  scratch every ``refresh_every`` accepted moves.

Otherwise (``|S| <= n`` or ``ridge = 0``) each trial is back-solved directly (small systems).
Every support is a projection output, so the FLOP budget holds for every iterate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from combprune.result import Deadline, History

from .iht_engine import first_breakpoint
from .l0_data import L0Data
from .projections import Projector
from .ridge import ridge_solve_on_support
from .support_factor import SupportFactor

logger = logging.getLogger(__name__)

#: Trial steps as multiples ``c`` of ``1 / ridge`` (Woodbury regime).
LADDER = (0.25, 0.5, 0.125, 1.0)


@dataclass
class RefineOutcome:
    w: np.ndarray
    residual: np.ndarray
    objective: float
    moves: int = 0
    trials: int = 0
    iterates: list[np.ndarray] = field(default_factory=list)


def refine_support(
    data: L0Data,
    w: np.ndarray,
    proj: Projector,
    *,
    deadline: Deadline,
    history: History | None = None,
    factor: SupportFactor | None = None,
    max_moves: int = 200,
    refresh_every: int = 10,
    tol: float = 1e-12,
    keep_iterates: bool = False,
    active_idx: np.ndarray | None = None,
    active_op: Any = None,
) -> RefineOutcome:
    """Improve the back-solved point ``w`` (host float64, feasible) by back-solve-evaluated
    projected steps. ``factor``: the :class:`~.support_factor.SupportFactor` of ``w``'s
    Woodbury back-solve when known (saves one Gram). ``active_idx`` / ``active_op``: an active
    block holding the support; moves are first searched on it (cheaper passes), then on all
    columns. Never increases Q; every iterate is feasible."""
    op, b, wbar, ridge, n = data.op, data.b, data.w_bar, data.ridge, data.n
    S = w != 0
    s = int(S.sum())
    wbar_sq_total = float(data.wbar_sq.sum())
    out = RefineOutcome(w=w, residual=data.residual(w), objective=0.0)
    out.objective = data.objective(w, out.residual)
    if s == 0 or data.k == 0:
        return out
    woodbury = ridge > 0 and s > n
    if not woodbury:
        return _refine_direct(data, w, proj, out, deadline=deadline, history=history, max_moves=max_moves, tol=tol, keep_iterates=keep_iterates)
    idx = np.flatnonzero(S)
    fac = factor.on(S) if factor is not None else SupportFactor.fresh(op, b, wbar, ridge, S)
    if fac is None:
        return out
    fac.with_objective(data.wbar_sq, wbar_sq_total)
    moves = _WoodburyMoves(data, out, deadline=deadline, history=history, max_moves=max_moves, refresh_every=refresh_every,
                           tol=tol, keep_iterates=keep_iterates)
    if active_idx is not None and active_op is not None and active_op is not op and np.all(np.isin(idx, active_idx, assume_unique=True)):
        # first on the active block (cheaper passes), then confirm on all columns
        C = active_idx
        local = moves.run(active_op, wbar[C], data.wbar_sq[C], proj.restrict(C), fac.on(S[C]), embed=C)
        S_full = np.zeros(data.p, dtype=bool)
        S_full[C[local.support]] = True
        fac = local.on(S_full)
    fac = moves.run(op, wbar, data.wbar_sq, proj, fac, embed=None)
    if out.moves == 0:
        return out
    # weights of the final support, w_S = w_bar_S + (A^T y)_S, and their exact objective
    w_new = fac.refit(op, wbar)
    e_new = data.residual(w_new)
    f_new = data.objective(w_new, e_new)
    if f_new <= out.objective:
        out.w, out.residual, out.objective = w_new, e_new, f_new
    return out


@dataclass
class _WoodburyMoves:
    """The move loop of :func:`refine_support` (Woodbury regime), shared by the active-block
    pass and the all-columns pass."""

    data: L0Data
    out: RefineOutcome
    deadline: Deadline
    history: History | None
    max_moves: int
    refresh_every: int
    tol: float
    keep_iterates: bool

    def run(self, op: Any, wbar: np.ndarray, wbar_sq: np.ndarray, proj: Projector, fac: SupportFactor,
            embed: np.ndarray | None) -> SupportFactor:
        """Moves on the columns of ``op`` (all of A, or an active block whose global indices are
        ``embed``) from the factor ``fac``; returns the factor of the support reached."""
        out, data = self.out, self.data
        wbar_sq_total = float(data.wbar_sq.sum())
        s = int(fac.support.sum())
        since_refresh = 0
        while out.moves < self.max_moves and not self.deadline.expired():
            v = wbar + fac.dual_weights(op)
            best: SupportFactor | None = None
            seen: list[np.ndarray] = []
            for c in LADDER:
                T = proj.support(np.where(fac.support, v, c * v))
                if any(np.array_equal(T, t) for t in seen) or np.array_equal(T, fac.support):
                    continue
                seen.append(T)
                out.trials += 1
                if int(np.count_nonzero(T != fac.support)) > max(1, s // 8):
                    continue  # a large change is a poor step here (and would need a fresh Gram)
                trial = fac.moved(op, wbar, T)
                if trial is None:
                    continue
                trial.with_objective(wbar_sq, wbar_sq_total)
                if best is None or trial.objective < best.objective:
                    best = trial
            f = fac.objective
            if best is None or not best.objective < f - self.tol * max(abs(f), 1e-300):
                break
            fac = best
            out.moves += 1
            since_refresh += 1
            if since_refresh >= self.refresh_every:  # drift control: exact Gram of the current support
                fresh = SupportFactor.fresh(op, data.b, wbar, data.ridge, fac.support)
                if fresh is not None:
                    fac = fresh.with_objective(wbar_sq, wbar_sq_total)
                since_refresh = 0
            if self.history is not None:
                self.history.record(fac.objective)
            if self.keep_iterates:
                if embed is None:
                    out.iterates.append(fac.support.copy())
                else:
                    full = np.zeros(data.p, dtype=bool)
                    full[embed[fac.support]] = True
                    out.iterates.append(full)
        return fac


def _refine_direct(data, w, proj, out, *, deadline, history, max_moves, tol, keep_iterates) -> RefineOutcome:
    """Same search with a direct back-solve per trial (|S| <= n or ridge = 0)."""
    op, b, wbar, ridge = data.op, data.b, data.w_bar, data.ridge
    e, f = out.residual, out.objective
    while out.moves < max_moves and not deadline.expired():
        g = op.rmatvec(e) + ridge * (w - wbar)
        S = w != 0
        if ridge > 0:
            taus = [c / ridge for c in LADDER]
        else:
            base = first_breakpoint(w, g, S)
            if not (math.isfinite(base) and base > 0):
                break
            taus = [base * 2.0**j for j in range(0, 4)]
        best = None
        seen: list[np.ndarray] = []
        for tau in taus:
            T = proj.support(w - tau * g)
            if not T.any() or np.array_equal(T, S) or any(np.array_equal(T, t) for t in seen):
                continue
            seen.append(T)
            out.trials += 1
            w_T, e_T = ridge_solve_on_support(op.A, b, wbar, ridge, T, return_residual=True)
            f_T = data.objective(w_T, e_T)
            if best is None or f_T < best[0]:
                best = (f_T, w_T, e_T)
        if best is None or not best[0] < f - tol * max(abs(f), 1e-300):
            break
        f, w, e = best
        out.moves += 1
        if history is not None:
            history.record(f)
        if keep_iterates:
            out.iterates.append(w != 0)
    out.w, out.residual, out.objective = w, e, f
    return out
