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
import scipy.linalg

from combprune.result import Deadline, History

from ._l0_core import L0Data, Projector, _single_thread, gram_rows, vdot
from ._l0_engine import first_breakpoint

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


def _chol_solve(K: np.ndarray, ridge: float, r0: np.ndarray) -> np.ndarray | None:
    M = K.copy()
    M[np.diag_indices_from(M)] += ridge
    try:
        with _single_thread():
            c = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
            return scipy.linalg.cho_solve(c, r0, check_finite=False)
    except np.linalg.LinAlgError:
        return None


def refine_support(
    data: L0Data,
    w: np.ndarray,
    proj: Projector,
    *,
    deadline: Deadline,
    history: History | None = None,
    factor: dict | None = None,
    max_moves: int = 200,
    refresh_every: int = 10,
    tol: float = 1e-12,
    keep_iterates: bool = False,
    active_idx: np.ndarray | None = None,
    active_op: Any = None,
) -> RefineOutcome:
    """Improve the back-solved point ``w`` (host float64, feasible) by back-solve-evaluated
    projected steps. ``factor``: ``K``, ``r0``, ``y`` of ``w``'s Woodbury back-solve when
    known (saves one Gram). ``active_idx`` / ``active_op``: an active block holding the
    support; moves are first searched on it (cheaper passes), then on all columns.
    Never increases Q; every iterate is feasible."""
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
    if factor is not None and {"K", "r0", "y"} <= set(factor):
        K, r0, y = factor["K"], factor["r0"], factor["y"]
    else:
        AS = op.sub(idx)
        K = AS.gram_rows()
        r0 = b - AS.matvec(wbar[idx])
        y = _chol_solve(K, ridge, r0)
        if y is None:
            return out
    f = 0.5 * ridge * (wbar_sq_total - float(data.wbar_sq[idx].sum())) + 0.5 * ridge * vdot(r0, y)
    state = [f, S, K, r0, y, None]  # f, support, K, r0, y, z = A^T y (None: stale)
    if active_idx is not None and active_op is not None and active_op is not op and np.all(np.isin(idx, active_idx, assume_unique=True)):
        # first on the active block (cheaper passes), then confirm on all columns
        C = active_idx
        local = [state[0], S[C], K, r0, y, None]
        _woodbury_moves(active_op, b, wbar[C], data.wbar_sq[C], wbar_sq_total, ridge, proj.restrict(C), local, out,
                        deadline=deadline, history=history, max_moves=max_moves, refresh_every=refresh_every, tol=tol,
                        keep_iterates=keep_iterates, embed=C, p=data.p)
        S_full = np.zeros(data.p, dtype=bool)
        S_full[C[local[1]]] = True
        state = [local[0], S_full, local[2], local[3], local[4], None]
    _woodbury_moves(op, b, wbar, data.wbar_sq, wbar_sq_total, ridge, proj, state, out, deadline=deadline, history=history,
                    max_moves=max_moves, refresh_every=refresh_every, tol=tol, keep_iterates=keep_iterates, embed=None, p=data.p)
    f, S, K, r0, y, z_of_y = state
    if out.moves == 0:
        return out
    # weights of the final support, w_S = w_bar_S + (A^T y)_S, and their exact objective
    if z_of_y is None:
        z_of_y = op.rmatvec(y)
    w_new = np.where(S, wbar + z_of_y, 0.0)
    e_new = data.residual(w_new)
    f_new = data.objective(w_new, e_new)
    if f_new <= out.objective:
        out.w, out.residual, out.objective = w_new, e_new, f_new
    return out


def _woodbury_moves(op, b, wbar, wbar_sq, wbar_sq_total, ridge, proj, state, out, *, deadline, history, max_moves,
                    refresh_every, tol, keep_iterates, embed, p) -> None:
    """The move loop of :func:`refine_support` on the columns of ``op`` (all of A, or an active
    block whose global indices are ``embed``); updates ``state`` in place."""
    f, S, K, r0, y, z_of_y = state
    s = int(S.sum())
    since_refresh = 0
    moves0 = out.moves
    while out.moves < max_moves and not deadline.expired():
        z = op.rmatvec(y)
        z_of_y = z
        v = wbar + z
        best = None
        seen: list[np.ndarray] = []
        for c in LADDER:
            T = proj.support(np.where(S, v, c * v))
            if any(np.array_equal(T, t) for t in seen) or np.array_equal(T, S):
                continue
            seen.append(T)
            add, drop = np.flatnonzero(T & ~S), np.flatnonzero(S & ~T)
            out.trials += 1
            if add.size + drop.size > max(1, s // 8):
                continue  # a large change is a poor step here (and would need a fresh Gram)
            K_T = K.copy()
            r0_T = r0.copy()
            with _single_thread():
                if add.size:
                    Aa = np.asarray(op._out(op.take(add)))
                    K_T += Aa @ Aa.T
                    r0_T -= Aa @ wbar[add]
                if drop.size:
                    Ad = np.asarray(op._out(op.take(drop)))
                    K_T -= Ad @ Ad.T
                    r0_T += Ad @ wbar[drop]
            y_T = _chol_solve(K_T, ridge, r0_T)
            if y_T is None:
                continue
            f_T = 0.5 * ridge * (wbar_sq_total - float(wbar_sq[T].sum())) + 0.5 * ridge * vdot(r0_T, y_T)
            if best is None or f_T < best[0]:
                best = (f_T, T, K_T, r0_T, y_T)
        if best is None or not best[0] < f - tol * max(abs(f), 1e-300):
            break
        f, S, K, r0, y = best[0], best[1], best[2], best[3], best[4]
        z_of_y = None
        out.moves += 1
        since_refresh += 1
        if since_refresh >= refresh_every:  # drift control: exact Gram of the current support
            idx = np.flatnonzero(S)
            AS = op.sub(idx)
            K = AS.gram_rows()
            r0 = b - AS.matvec(wbar[idx])
            y_new = _chol_solve(K, ridge, r0)
            if y_new is not None:
                y = y_new
                f = 0.5 * ridge * (wbar_sq_total - float(wbar_sq[idx].sum())) + 0.5 * ridge * vdot(r0, y)
            since_refresh = 0
        if history is not None:
            history.record(f)
        if keep_iterates:
            if embed is None:
                out.iterates.append(S.copy())
            else:
                full = np.zeros(p, dtype=bool)
                full[embed[S]] = True
                out.iterates.append(full)
    state[:] = [f, S, K, r0, y, z_of_y]


def _refine_direct(data, w, proj, out, *, deadline, history, max_moves, tol, keep_iterates) -> RefineOutcome:
    """Same search with a direct back-solve per trial (|S| <= n or ridge = 0)."""
    from .backsolve import ridge_solve_on_support

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
