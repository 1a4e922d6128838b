r"""``osscar``: OSSCAR's backward elimination + swap local search for ``StructuredMIQP``.

Problem (docs/formulations/structured_miqp.md). With ``K = H + ridge I`` and ``G = K W_hat``, keeping the row set ``S`` (a
union of groups) the best weights are ``W_S = K_SS^{-1} G_S`` and the objective is
``f(S) = 1/2 tr(W_hat^T K W_hat) - 1/2 tr(G_S^T K_SS^{-1} G_S)``. All work is done in float64 on
the Jacobi-scaled system of :mod:`._kernels.structured` (unit-diagonal ``K``; values unchanged).

Phase 1, backward elimination (from all groups). With ``A = K_SS^{-1}`` and ``W = W_S`` the
current optimal weights, removing a group ``g`` raises the objective by exactly its group-OBS
cost ``c_g = 1/2 tr(W_g^T [A_gg]^{-1} W_g)`` (O(|g|^2 (|g| + m)) per group from the diagonal
blocks only). Each round removes the ``groups_per_round`` cheapest groups ``T`` (jointly and
exactly) with the rank-|T| downdates

.. math::

    W_{S \setminus T} \leftarrow W_{S \setminus T} - A_{:,T} A_{TT}^{-1} W_T, \qquad
    A \leftarrow A_{oo} - A_{oT} A_{TT}^{-1} A_{To}, \qquad f \leftarrow f + \tfrac12
    \operatorname{tr}(W_T^T A_{TT}^{-1} W_T),

O(|S|^2 |T| + |S| m |T|) per round, i.e. O(d^2 |g|) per removed group. Rule with budgets:
while the cost budget is exceeded, groups are removed in increasing ``c_g / cost_g`` (OBS cost
per unit of budget freed; zero-cost groups are never removed for it); then, while more than
``s`` groups remain, in increasing ``c_g``. A round never removes more than needed to reach
feasibility. If the deadline passes during elimination, the remaining removals are done at
once with the last computed costs (no more downdates), so the result is still feasible.

Phase 2, start point: the elimination's support, or the ``group-magnitude`` support
(refit exactly) when that is better (``compare_magnitude``), so ``osscar`` is never worse
than ``group-magnitude``.

Phase 3, swap local search on the *sweep* representation of ``K``: with ``P`` the pruned rows,
the d x d matrix ``T = [[-K_SS^{-1}, K_SS^{-1} K_SP], [K_PS K_SS^{-1}, C_PP]]`` where
``C_PP = K_PP - K_PS K_SS^{-1} K_SP`` is the Schur complement, and ``Y = [W_S; R_P]`` with
``R_P = G_P - K_PS W_S``. Then the drop cost of a kept group is ``1/2 tr(Y_g^T (-T_gg)^{-1} Y_g)``
and the Schur-complement gain of adding a pruned group ``a`` is
``1/2 tr(R_a^T C_aa^{-1} R_a)``; moving a group between S and P is a (un)sweep, a rank-|g|
update of ``T`` and ``Y`` in O(d^2 |g| + d m |g|). A swap of size t drops the t kept groups of
smallest drop cost (one joint unsweep), then adds back pruned groups by largest gain (in at
most ``add_chunks`` joint sweeps) while they fit the budgets; it is kept if the objective
decreased, otherwise undone and t halved. At t = 1 the move is the best exchange (drop g,
add a) over the ``swap_candidates`` cheapest kept groups g and all pruned a, evaluated exactly
from rank-|g| corrections of the diagonal blocks without touching T; when no single exchange
improves, pair moves (drop one or two, add one or two, among the ``pair_candidates`` best) are
scored the same way; the search stops when no move improves. Before the swaps (and after any drop) pruned groups that fit the budgets
are added back by largest gain (a group never raises the objective).

Numerics: the inverse and the sweep matrix are rebuilt from scratch (Cholesky) every
``refresh_every`` moved rows; the final weights are always refit exactly on the chosen support
(``W_S = K_SS^{-1} G_S`` by Cholesky). With ``ridge = 0`` and a singular ``H`` the solver
raises a ``ValueError`` naming ``ridge``; with ``ridge > 0`` any input (duplicated features,
N < d, huge scale differences) is handled.

Result: status ``feasible`` (a heuristic) or ``time_limit``; ``iterations`` = elimination
rounds + swap rounds; ``history`` = objective after elimination and after each accepted swap;
``info`` has the phase details (rounds, swaps accepted, refreshes, drift of the tracked
objective at refreshes, objective after elimination, start point).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
import scipy.linalg

from combprune import backend
from combprune.params import Boolean, Interval
from combprune.problems import StructuredMIQP
from combprune.problems.budget import Budget
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.exact import structured_refit
from ._kernels.linalg import chol_solve, cholesky, rank_update
from ._kernels.linalg import spd_inverse as pd_inverse
from ._kernels.structured import (
    SECONDS_PER_FLOP,
    ScaledSystem,
    SizeBatches,
    block_quadratic,
    block_quadratic_gram,
    gather_blocks,
    gather_rows,
    group_magnitude_result,
    group_values,
    magnitude_support,
    refit,
    spd_inverse,
    structured_result,
    support_objective,
)

__all__ = ["osscar"]

logger = logging.getLogger(__name__)

#: Blocks of the scaled Schur complement with an eigenvalue below this are not added.
ADD_TOL = 1e-10


def _pd_inverse(M: np.ndarray) -> np.ndarray:
    """Inverse of a small SPD block (the kernel's ``potrf`` + ``potri``); ``LinAlgError`` if not
    positive definite with pivots ``L_ii^2 > ADD_TOL``."""
    return pd_inverse(M, symmetrize=True, min_pivot=ADD_TOL)


def _select_removals(costs: np.ndarray, alive: np.ndarray, budget: Budget, limit: int) -> np.ndarray:
    """Up to ``limit`` alive groups to remove next, by the rule of the module docstring."""
    ids = np.flatnonzero(alive)
    if budget.costs is not None:
        used = budget.total_cost(alive)
        if not budget.fits_cost(used):
            c = budget.costs[ids]
            cand = ids[c > 0]
            score = costs[cand] / budget.costs[cand]
            order = cand[np.lexsort((cand, score))]
            freed = np.cumsum(budget.costs[order])
            enough = used - freed <= budget.cost_limit  # Budget.fits_cost, vectorised
            n = int(np.argmax(enough)) + 1 if enough.any() else order.size
            return order[: min(n, limit)]
    if budget.count is not None and ids.size > budget.count:
        order = ids[np.lexsort((ids, costs[ids]))]
        return order[: min(limit, ids.size - budget.count)]
    return np.zeros(0, dtype=np.int64)


class _Elimination:
    """``A = K~_SS^{-1}`` and ``W~_S`` on the alive rows.

    Removed rows are zeroed in place; the arrays are compacted to the alive rows only when
    these fall below ``COMPACT_AT`` of the array size (a gather of the whole matrix costs
    more than several rank-|T| updates, so it is amortised).
    """

    COMPACT_AT = 0.7

    def __init__(self, system: ScaledSystem, batches: SizeBatches) -> None:
        self.system, self.batches = system, batches
        self.row_at = np.arange(system.d)  # original row at each array position (-1: removed)
        self.pos = np.arange(system.d)  # array position of each original row (-1: removed)
        self.alive = np.ones(system.n_groups, dtype=bool)
        self.A = spd_inverse(system.K, system.ridge)
        self.W = system.W_hat.copy()  # K^{-1} G = W_hat on the full support
        self.obj = 0.0
        self.moved = 0
        self.n_alive_rows = system.d

    def costs(self) -> np.ndarray:
        """Group-OBS costs ``1/2 tr(W_g^T [A_gg]^{-1} W_g)`` of the alive groups (inf elsewhere)."""
        out = np.full(self.system.n_groups, np.inf)
        for _, ids, rows in self.batches.select(self.alive):
            p = self.pos[rows]
            q, _ = block_quadratic(gather_blocks(self.A, p), gather_rows(self.W, p), 0.0)
            out[ids] = 0.5 * q
        return out

    def remove(self, groups: np.ndarray) -> None:
        """Remove ``groups`` jointly: exact rank-|T| downdate of ``A`` and ``W``."""
        idx = self.pos[self.system.rows_of(groups)]
        n = self.A.shape[0]
        U = self.A[:, idx]
        W_t = self.W[idx]
        Z = chol_solve(self.A[np.ix_(idx, idx)], 0.0, np.hstack([U.T, W_t]))
        if Z is None:
            raise np.linalg.LinAlgError("eliminated block is not positive definite")
        self.obj += 0.5 * float(np.sum(W_t * Z[:, n:]))
        rank_update(self.A, U, Z[:, :n].T)
        self.W -= U @ Z[:, n:]
        self.A[idx, :] = 0.0
        self.A[:, idx] = 0.0
        self.W[idx] = 0.0
        self.pos[self.row_at[idx]] = -1
        self.row_at[idx] = -1
        self.alive[groups] = False
        self.moved += idx.size
        self.n_alive_rows -= idx.size
        if self.n_alive_rows < self.COMPACT_AT * n:
            self.compact()

    def compact(self) -> None:
        keep = np.flatnonzero(self.row_at >= 0)
        self.A = self.A.take(keep, axis=0).take(keep, axis=1)
        self.W = self.W[keep]
        self.row_at = self.row_at[keep]
        self.pos[self.row_at] = np.arange(keep.size)

    def refresh(self) -> float:
        """Rebuild ``A`` and ``W`` from scratch; returns the relative change of ``W`` (drift)."""
        self.compact()
        K, G = self.system.K, self.system.G
        act = self.row_at
        self.A = spd_inverse(K.take(act, axis=0).take(act, axis=1), self.system.ridge)
        W = self.A @ G[act]
        drift = float(np.linalg.norm(W - self.W) / max(np.linalg.norm(W), 1e-300))
        self.W = W
        self.moved = 0
        return drift


class _SweepState:
    """The sweep matrix ``T`` (d x d) and ``Y = [W_S; R_P]`` (d x m) of a support (see docstring)."""

    def __init__(self, system: ScaledSystem, batches: SizeBatches, keep: np.ndarray) -> None:
        self.system, self.batches = system, batches
        self.keep = keep.copy()
        self.rebuild()

    def rebuild(self) -> None:
        sysm = self.system
        K, G = sysm.K, sysm.G
        rows = sysm.rows_of(np.flatnonzero(self.keep))
        mask = np.zeros(sysm.d, dtype=bool)
        mask[rows] = True
        S, P = np.flatnonzero(mask), np.flatnonzero(~mask)
        self.T = np.empty_like(K)
        self.Y = np.empty_like(G)
        if S.size:
            A = spd_inverse(K[np.ix_(S, S)], sysm.ridge)
            K_SP = K[np.ix_(S, P)]
            B = A @ K_SP
            self.T[np.ix_(S, S)] = -A
            self.T[np.ix_(S, P)] = B
            self.T[np.ix_(P, S)] = B.T
            self.T[np.ix_(P, P)] = K[np.ix_(P, P)] - K_SP.T @ B
            W_S = A @ G[S]
            self.Y[S] = W_S
            self.Y[P] = G[P] - K_SP.T @ W_S
        else:
            self.T[...] = K
            self.Y[...] = G
        self.obj = 0.5 * float(np.sum(sysm.W_hat[P] * self.Y[P]))
        self.moved = 0

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
        return self.T.copy(), self.Y.copy(), self.keep.copy(), self.obj, self.moved

    def restore(self, snap: tuple[np.ndarray, np.ndarray, np.ndarray, float, int]) -> None:
        self.T, self.Y, self.keep, self.obj, self.moved = snap

    def sweep(self, groups: np.ndarray, add: bool) -> None:
        """Move ``groups`` into S (``add``) or out of S; exact rank-|groups| update.

        Raises ``LinAlgError`` (state unchanged) if the block to invert is not well conditioned.
        """
        r = self.system.rows_of(groups)
        T_rr = self.T[np.ix_(r, r)]
        inv = _pd_inverse(T_rr) if add else -_pd_inverse(-T_rr)  # T_rr^{-1}
        col = self.T[:, r].copy()
        Y_r = self.Y[r].copy()
        Q = col @ inv
        rank_update(self.T, Q, col)
        sigma = 1.0 if add else -1.0
        self.T[:, r] = sigma * Q
        self.T[r, :] = sigma * Q.T
        self.T[np.ix_(r, r)] = -inv
        inv_Y = inv @ Y_r
        self.Y -= Q @ Y_r
        self.Y[r] = sigma * inv_Y
        self.obj -= 0.5 * float(np.sum(Y_r * inv_Y))
        self.keep[groups] = add
        self.moved += r.size

    def drop_costs(self) -> np.ndarray:
        """``1/2 tr(W_g^T [(K_SS^{-1})_gg]^{-1} W_g)`` for kept groups, inf for pruned ones."""
        out = np.full(self.system.n_groups, np.inf)
        for _, ids, rows in self.batches.select(self.keep):
            q, _ = block_quadratic(-gather_blocks(self.T, rows), gather_rows(self.Y, rows), 0.0)
            out[ids] = 0.5 * q
        return out

    def add_gains(self) -> np.ndarray:
        """Schur-complement gains ``1/2 tr(R_a^T C_aa^{-1} R_a)`` of pruned groups (-inf if kept
        or if ``C_aa`` is numerically singular)."""
        out = np.full(self.system.n_groups, -np.inf)
        for _, ids, rows in self.batches.select(~self.keep):
            q, ok = block_quadratic(gather_blocks(self.T, rows), gather_rows(self.Y, rows), ADD_TOL)
            out[ids] = np.where(ok, 0.5 * q, -np.inf)
        return out

    def pruned_blocks(self) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per size batch of pruned groups: (b, ids, flat rows, T_aa blocks, Y rows, Gram blocks)."""
        out = []
        for b, ids, rows in self.batches.select(~self.keep):
            flat = rows.ravel()
            Y_p = self.Y[flat]
            if b == 1:
                gram = np.einsum("ij,ij->i", Y_p, Y_p)
            else:
                Y3 = Y_p.reshape(ids.size, b, -1)
                gram = np.matmul(Y3, np.swapaxes(Y3, 1, 2))
            out.append((b, ids, flat, gather_blocks(self.T, rows), Y_p, gram))
        return out

    def exchange_gains(self, drop: np.ndarray, allowed: np.ndarray, blocks=None) -> tuple[float, np.ndarray, tuple]:
        """Drop cost of the kept groups ``drop`` (jointly) and the gain of each pruned group
        added after dropping them.

        From rank-|D| corrections of the diagonal blocks only (T is not modified): with D the
        dropped rows, ``N = -T_DD = (K_SS^{-1})_DD`` and ``t_a = T_aD``,
        ``C'_aa = T_aa + t_a N^{-1} t_a^T`` and ``R'_a = Y_a + t_a N^{-1} Y_D``, whose Gram
        matrix ``R'_a R'_a^T`` is expanded so that no |P| x m array is formed per candidate.
        ``blocks`` is :meth:`pruned_blocks` (recomputed when None). Gains are -inf outside
        ``allowed`` (G,) bool. The third value, ``(rows D, N^{-1}, N^{-1} Y_D)``, feeds
        :meth:`joint_gain`.
        """
        rg = self.system.rows_of(drop)
        N_inv = _pd_inverse(-self.T[np.ix_(rg, rg)])
        Y_g = self.Y[rg]
        NY = N_inv @ Y_g
        cost = 0.5 * float(np.sum(Y_g * NY))
        P2 = NY @ NY.T
        gains = np.full(self.system.n_groups, -np.inf)
        for b, ids, flat, T_aa, Y_p, gram in blocks if blocks is not None else self.pruned_blocks():
            t = self.T[np.ix_(flat, rg)]  # (rows, |D|)
            X = Y_p @ NY.T  # (rows, |D|): Y_i NY^T
            tN = t @ N_inv
            if b == 1:
                M = T_aa + np.einsum("ij,ij->i", tN, t)
                gram2 = gram + 2.0 * np.einsum("ij,ij->i", t, X) + np.einsum("ij,jk,ik->i", t, P2, t)
            else:
                n, bg = ids.size, rg.size
                t3, X3, tN3 = t.reshape(n, b, bg), X.reshape(n, b, bg), tN.reshape(n, b, bg)
                M = T_aa + np.matmul(tN3, np.swapaxes(t3, 1, 2))
                cross = np.matmul(t3, np.swapaxes(X3, 1, 2))
                gram2 = gram + cross + np.swapaxes(cross, 1, 2) + np.matmul(t3 @ P2, np.swapaxes(t3, 1, 2))
            q, ok = block_quadratic_gram(M, gram2, ADD_TOL)
            gains[ids] = np.where(ok & allowed[ids], 0.5 * q, -np.inf)
        return cost, gains, (rg, N_inv, NY)

    def joint_gain(self, context: tuple, add: np.ndarray) -> float:
        """Exact gain of adding the pruned groups ``add`` jointly after the drop of ``context``."""
        rg, N_inv, NY = context
        ra = self.system.rows_of(add)
        t = self.T[np.ix_(ra, rg)]
        M = self.T[np.ix_(ra, ra)] + t @ N_inv @ t.T
        Y_a = self.Y[ra] + t @ NY
        L = cholesky(M, symmetrize=True)
        if L is not None and float(np.min(np.diag(L))) ** 2 > ADD_TOL:
            Z = scipy.linalg.solve_triangular(L, Y_a, lower=True, check_finite=False)
            return 0.5 * float(np.sum(Z * Z))
        q, ok = block_quadratic(M[None], Y_a[None], ADD_TOL)
        return 0.5 * float(q[0]) if ok[0] else -np.inf


class _Search:
    """The swap local search (phase 3) on a :class:`_SweepState`."""

    def __init__(self, state: _SweepState, budget: Budget, tol: float, refresh_rows: int, add_chunks: int) -> None:
        self.state, self.budget, self.tol = state, budget, tol
        self.refresh_rows, self.add_chunks = refresh_rows, add_chunks
        self.refreshes, self.max_drift = 0, 0.0

    def maybe_refresh(self) -> None:
        if self.state.moved >= self.refresh_rows:
            tracked = self.state.obj
            self.state.rebuild()
            self.refreshes += 1
            drift = abs(tracked - self.state.obj) / max(abs(self.state.obj), self.tol)
            self.max_drift = max(self.max_drift, drift)

    def fill(self, banned: np.ndarray | None = None, limit: int | None = None) -> int:
        """Add pruned groups by largest gain while they fit (at most ``limit``); count added."""
        st, added = self.state, 0
        chunk = max(1, math.ceil((limit or 1) / self.add_chunks))
        while limit is None or added < limit:
            gains = st.add_gains()
            allowed = self.budget.addable(st.keep)
            if banned is not None:
                allowed[banned] = False
            gains[~allowed] = -np.inf
            order = np.lexsort((np.arange(gains.size), -gains))
            order = order[np.isfinite(gains[order]) & (gains[order] >= 0.0)]
            if order.size == 0:
                break
            pick = self._jointly_feasible(order, chunk if limit is None else min(chunk, limit - added))
            if pick.size == 0:  # pragma: no cover - order holds individually addable groups
                break
            try:
                st.sweep(pick, add=True)
            except np.linalg.LinAlgError:
                st.sweep(pick[:1], add=True)  # single blocks were checked well conditioned
                pick = pick[:1]
            added += pick.size
        return added

    def _jointly_feasible(self, order: np.ndarray, k: int) -> np.ndarray:
        trial = self.state.keep.copy()
        pick = []
        for g in order:
            if len(pick) >= k:
                break
            trial[g] = True
            if self.budget.feasible(trial):
                pick.append(g)
            else:
                trial[g] = False
        return np.array(pick, dtype=np.int64)

    def multi_swap(self, t: int) -> bool:
        """Drop the t cheapest kept groups, refill by gain; keep it if the objective decreased."""
        st = self.state
        snap = st.snapshot()
        costs = st.drop_costs()
        kept = np.flatnonzero(st.keep)
        drop = kept[np.lexsort((kept, costs[kept]))][:t]
        st.sweep(drop, add=False)
        self.fill(banned=drop, limit=t if self.budget.costs is None else None)
        if st.obj < snap[3] - self.tol:
            return True
        st.restore(snap)
        return False

    def exchange(self, n_single: int, n_pair: int) -> bool:
        """Best exchange of up to two kept groups for up to two pruned ones; apply if improving.

        First single exchanges: drop one of the ``n_single`` kept groups of smallest drop cost,
        add the best single pruned group. Only when none improves, pair moves too: drop sets
        are also every pair among the ``n_pair`` cheapest kept groups, and add sets every pair
        among the ``n_pair`` pruned groups of largest gain after the drop. All are scored
        exactly (:meth:`_SweepState.exchange_gains`, :meth:`_SweepState.joint_gain`) within
        the budgets, and the best move is applied.
        """
        st = self.state
        costs = st.drop_costs()
        kept = np.flatnonzero(st.keep)
        order = kept[np.lexsort((kept, costs[kept]))]
        singles = [order[i : i + 1] for i in range(min(n_single, order.size))]
        blocks = st.pruned_blocks()
        move = self._best_move(singles, 0, blocks)
        if move is None and n_pair >= 2:
            top = order[:n_pair]
            pairs = [np.array([top[i], top[j]]) for i in range(top.size) for j in range(i + 1, top.size)]
            move = self._best_move(singles + pairs, n_pair, blocks)
        if move is None:
            return False
        return self._apply(*move)

    def _best_move(self, drops: list[np.ndarray], n_pair: int, blocks) -> tuple[np.ndarray, np.ndarray] | None:
        """The most improving (drop set, add set) over ``drops`` (None if none improves)."""
        st, budget = self.state, self.budget
        best, move = -self.tol, None
        for D in drops:
            trial = st.keep.copy()
            trial[D] = False
            allowed = budget.addable(trial)
            allowed[D] = False
            if not allowed.any():
                continue
            try:
                cost, gains, context = st.exchange_gains(D, allowed, blocks)
            except np.linalg.LinAlgError:  # dropping D leaves a numerically singular block: skip the move
                continue
            a = int(np.argmax(gains))
            if np.isfinite(gains[a]) and gains[a] - cost > best:
                best, move = gains[a] - cost, (D, np.array([a]))
            cand = np.flatnonzero(np.isfinite(gains))
            cand = cand[np.lexsort((cand, -gains[cand]))][:n_pair]
            for i in range(cand.size):
                for j in range(i + 1, cand.size):
                    A = np.array([cand[i], cand[j]])
                    trial[A] = True
                    fits = budget.feasible(trial)
                    trial[A] = False
                    if not fits:
                        continue
                    gain = st.joint_gain(context, A)
                    if gain - cost > best:
                        best, move = gain - cost, (D, A)
        return move

    def _apply(self, D: np.ndarray, A: np.ndarray) -> bool:
        """Apply the exchange (drop D, add A); True if the objective decreased."""
        st = self.state
        # The move's effect is known exactly, so no undo copy of T is taken: a failure
        # (numerically impossible with well-conditioned blocks) is undone by inverse sweeps.
        before = st.obj
        st.sweep(D, add=False)
        try:
            st.sweep(A, add=True)
        except np.linalg.LinAlgError:  # pragma: no cover - gains were computed from OK blocks
            st.sweep(D, add=True)
            return False
        if st.obj < before - self.tol:
            self.fill()  # (cost budgets) whatever fits again; never raises the objective
            return True
        st.sweep(A, add=False)  # pragma: no cover - the exact gain said it improves
        st.sweep(D, add=True)  # pragma: no cover
        return False


def _check_options(groups_per_round, swap_size, swap_candidates, pair_candidates, max_swap_rounds, refresh_every, add_chunks) -> None:
    for name, value, allow_none in (
        ("pair_candidates", pair_candidates, False),
        ("groups_per_round", groups_per_round, True),
        ("swap_size", swap_size, True),
        ("swap_candidates", swap_candidates, False),
        ("max_swap_rounds", max_swap_rounds, False),
        ("refresh_every", refresh_every, True),
        ("add_chunks", add_chunks, False),
    ):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an integer{' or None' if allow_none else ''}, got {value!r}")
        low = 0 if name in ("max_swap_rounds", "pair_candidates") else 1
        if value < low:
            raise ValueError(f"{name}: must be >= {low}, got {value}")


def _osscar_search(
    problem: StructuredMIQP,
    *,
    deadline: Deadline,
    seed: int | None = None,
    groups_per_round: int | None = None,
    swap_size: int | None = None,
    swap_candidates: int = 32,
    pair_candidates: int = 4,
    max_swap_rounds: int = 100,
    add_chunks: int = 4,
    refresh_every: int | None = None,
    compare_magnitude: bool = True,
) -> Result:
    """OSSCAR's structured pruning search (see the module docstring for the maths).

    Longer than 80 lines on purpose: the elimination rounds, the swap rounds and the deadline
    checks share one factorisation state; the per-step maths lives in the structured kernels.

    Options
    -------
    groups_per_round : groups removed per elimination round (default ``ceil(G / 128)``).
    swap_size : initial swap size t (default ``max(1, min(#kept, #pruned) // 8)``); halved
        whenever a swap of that size does not improve; 1 means exchanges only.
    swap_candidates : kept groups (cheapest drop cost first) tried as the dropped group of a
        single exchange (t = 1).
    pair_candidates : exchanges also drop every pair among this many cheapest kept groups and
        add every pair among this many best pruned groups (0 or 1: single exchanges only).
    max_swap_rounds : swap attempts at most (0 disables the local search).
    add_chunks : the t groups added back after a drop of size t are swept in at most this many
        joint updates (1 = all at once; larger = closer to one-by-one greedy).
    refresh_every : rows moved (removed, added or dropped) between rebuilds of the inverse /
        sweep matrix from scratch by Cholesky (default ``max(64, d // 2)``).
    compare_magnitude : also refit the ``group-magnitude`` support and start the swaps from the
        better of the two starts.

    ``seed`` is accepted for the common interface; the search is deterministic.
    """
    _check_options(groups_per_round, swap_size, swap_candidates, pair_candidates, max_swap_rounds, refresh_every, add_chunks)
    if not isinstance(compare_magnitude, bool):
        raise TypeError(f"compare_magnitude: expected a bool, got {compare_magnitude!r}")
    system = ScaledSystem.from_problem(problem)
    budget = problem.budget
    batches = SizeBatches(system.rows)
    n_groups, d = system.n_groups, system.d
    per_round = groups_per_round or max(1, math.ceil(n_groups / 128))
    refresh_rows = refresh_every or max(64, d // 2)
    history = History(deadline, "min")
    scale = 0.5 * float(np.sum(system.W_hat * system.G))  # objective of W = 0
    tol = 1e-12 * scale + 1e-300
    info: dict = {"groups_per_round": per_round, "refresh_every": refresh_rows}

    # Phase 1: backward elimination.
    elim = _Elimination(system, batches)
    rounds, refreshes, max_drift, timed_out = 0, 0, 0.0, False
    while not budget.feasible(elim.alive):
        costs = elim.costs()
        if deadline.expired():
            timed_out = True
            rest = _select_removals(costs, elim.alive, budget, n_groups)
            while rest.size:
                elim.alive[rest] = False
                rest = _select_removals(costs, elim.alive, budget, n_groups)
            break
        elim.remove(_select_removals(costs, elim.alive, budget, per_round))
        rounds += 1
        if elim.moved >= refresh_rows and not budget.feasible(elim.alive):
            max_drift = max(max_drift, elim.refresh())
            refreshes += 1
    keep = elim.alive.copy()
    info.update(elimination_rounds=rounds, objective_elimination=elim.obj)
    del elim
    if timed_out:
        info.update(phase_timed_out="elimination", refreshes=refreshes, max_drift=max_drift)
        W = system.unscale(refit(system, system.rows_of(np.flatnonzero(keep))))
        result = structured_result(problem, W, keep, Status.TIME_LIMIT, iterations=rounds, info=info)
        history.record(result.objective)
        result.history = history.points
        return result
    start_obj = info["objective_elimination"]
    history.record(start_obj)
    info["start"] = "elimination"

    # Phase 2: the magnitude start, if better.
    if compare_magnitude:
        mag = magnitude_support(group_values(problem), budget)
        if not np.array_equal(mag, keep):
            rows = system.rows_of(np.flatnonzero(mag))
            mag_obj = support_objective(system, rows, refit(system, rows))
            info["objective_magnitude"] = mag_obj
            if mag_obj < start_obj - tol:
                keep, start_obj, info["start"] = mag, mag_obj, "magnitude"
                history.record(mag_obj)

    # Phase 3: swap local search.
    swap_rounds = accepted = 0
    n_keep = int(keep.sum())
    if max_swap_rounds > 0 and not deadline.expired():
        state = _SweepState(system, batches, keep)
        search = _Search(state, budget, tol, refresh_rows, add_chunks)
        search.fill()
        history.record(state.obj)
        n_keep = int(state.keep.sum())
        t = swap_size or max(1, min(n_keep, n_groups - n_keep) // 8)
        while swap_rounds < max_swap_rounds and 0 < n_keep < n_groups and not deadline.expired():
            swap_rounds += 1
            improved = search.multi_swap(t) if t > 1 else search.exchange(swap_candidates, pair_candidates)
            if improved:
                accepted += 1
                history.record(state.obj)
            elif t == 1:
                break
            else:
                t //= 2
            search.maybe_refresh()
            n_keep = int(state.keep.sum())
        keep = state.keep.copy()
        refreshes += search.refreshes
        max_drift = max(max_drift, search.max_drift)
        del state, search
    info.update(swap_rounds=swap_rounds, swaps_accepted=accepted, refreshes=refreshes, max_drift=max_drift)

    W = system.unscale(refit(system, system.rows_of(np.flatnonzero(keep))))
    status = Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    result = structured_result(problem, W, keep, status, iterations=rounds + swap_rounds, info=info)
    history.record(result.objective)
    result.history = history.points
    logger.debug("osscar: %s", info)
    return result


@register_solver(
    "osscar",
    problems=StructuredMIQP,
    exact=False,
    description="OSSCAR: group-OBS backward elimination + swap local search with low-rank updates.",
    params={
        "groups_per_round": [None, Interval(int, 1, None)],
        "swap_size": [None, Interval(int, 1, None)],
        "swap_candidates": Interval(int, 1, None),
        "pair_candidates": Interval(int, 0, None),
        "max_swap_rounds": Interval(int, 0, None),
        "add_chunks": Interval(int, 1, None),
        "refresh_every": [None, Interval(int, 1, None)],
        "compare_magnitude": Boolean(),
    },
)
@functools.wraps(_osscar_search)
def osscar(problem: StructuredMIQP, **kwargs: Any) -> Result:
    deadline = kwargs["deadline"]
    d, m = problem.d, problem.m
    if deadline.remaining() < SECONDS_PER_FLOP * (d**3 + 2 * d * d * m):
        # the initial d x d inverse alone would overrun the limit: the group-magnitude point
        res = group_magnitude_result(problem, deadline)
        res.status = Status.TIME_LIMIT
        res.info.update(fallback="group-magnitude (no time for the elimination)", phase_timed_out="elimination")
        return res
    try:
        return _osscar_search(problem, **kwargs)
    except (np.linalg.LinAlgError, ValueError) as exc:
        singular = isinstance(exc, np.linalg.LinAlgError) or str(exc).startswith("ridge: K_SS")
        if not singular:
            raise
        if problem.ridge <= 0:
            if isinstance(exc, ValueError):
                raise
            raise ValueError(f"ridge: K = H + ridge*I is numerically singular ({exc}) with ridge=0; use a positive ridge") from None
        # ridge > 0 but K numerically singular at float64 precision (a ridge tiny next to H):
        # the group-magnitude support with the exact (SVD least-squares) refit, never an error
        logger.warning("osscar: %s; returning the group-magnitude support with an exact refit", exc)
        deadline = kwargs["deadline"]
        sel = magnitude_support(group_values(problem), problem.budget)
        W = structured_refit(problem, sel)
        x = backend.from_numpy(W, like=problem.W_hat, keep_dtype=True)
        objective = problem.objective(x)
        return Result(x=x, support=problem.group_support(W), objective=objective,
                      status=Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE,
                      history=[(deadline.elapsed(), objective)], info={"fallback": f"group-magnitude ({exc})"})

