r"""``swap``: local search over supports with low-rank (Schur complement) gain evaluation.

Problem (:class:`~combprune.problems.L0Regression`)::

    min_w  Q(w) = 1/2 ||b - A w||^2 + (ridge/2) ||w - w_bar||^2
    s.t.   ||w||_0 <= k,   sum_{i: w_i != 0} f_i <= F   (optional FLOP budget; f_i in FLOPs)

Starting from any feasible support S, the search repeatedly applies the best improving *move*
among a screened set of candidates and stops when none improves (or at the deadline):

* a 1-for-1 swap ``S -> S - i + j`` (i kept, j dropped), and
* a pure addition ``S -> S + j`` while ``|S| < k`` and the FLOP budget has room
  (a pure removal never lowers Q: Q is non-increasing under support inclusion).

A move is admissible only if both budgets hold after it (the FLOP test uses the problem's own
``within_budget`` rule).

Exact value of a support
------------------------
With ``G_S = A_S^T A_S + ridge I`` and ``g = A^T b + ridge w_bar`` the best weights on S are
``w_S = G_S^{-1} g_S`` and ``Q*(S) = 1/2 ||b||^2 + ridge/2 ||w_bar||^2 - 1/2 g_S^T G_S^{-1} g_S``.
With ``r = b - A_S w_S`` the residual, write for a coordinate j outside S

    c_j = a_j^T r + ridge w_bar_j              (minus the partial derivative of Q at w, w_j = 0)
    v_j = G_S^{-1} A_S^T a_j                   (|S|-vector)
    s_j = ||a_j - A_S v_j||^2 + ridge (1 + ||v_j||^2)      (Schur complement of G_jj)

and for a coordinate i in S, ``d_i = (G_S^{-1})_ii``. Then (Schur complements, rank one each):

* add j:     ``Q*(S + j) - Q*(S) = - c_j^2 / (2 s_j)``
* drop i:    ``Q*(S - i) - Q*(S) = + w_i^2 / (2 d_i)``
* swap i, j: ``Q*(S - i + j) - Q*(S) = (w_i^2 s_j - 2 w_i v_ji c_j - d_i c_j^2) / (2 (d_i s_j + v_ji^2))``

The swap formula is "add j, then drop i from S + j" with the common factor cancelled: it never
divides by ``s_j`` alone, so a column j in the span of A_S (``s_j -> 0`` at ridge 0) is harmless,
and its denominator ``d_i s_j + v_ji^2 = d_i s_j'`` (``s_j'`` = Schur complement of j w.r.t.
``S - i``) vanishes only when ``S - i + j`` itself is singular. For q candidate columns
``A_J`` the whole ``|S| x q`` gain matrix costs one product with A_S and one with the factor:
``O(n |S| q)`` plus ``O(min(n, |S|)^2 q)``, never a fresh solve.

Factorisation (all in float64, n x n space at most)
---------------------------------------------------
* ``|S| <= n`` ("gram"): the explicit inverse ``G_S^{-1}`` (|S| x |S|). Adding j is the
  bordered-inverse update ``[[G^{-1} + v v^T / s, -v / s], [-v^T / s, 1 / s]]``; dropping i is
  the downdate ``G^{-1}_{-i,-i} - G^{-1}_{-i,i} G^{-1}_{i,-i} / d_i``: O(|S|^2) each.
* ``|S| > n`` ("woodbury"): ``K^{-1}`` with ``K = A_S A_S^T + ridge I_n`` (n x n), the
  Woodbury form ``G_S^{-1} = (I - A_S^T K^{-1} A_S) / ridge``; push-through gives
  ``v_j = A_S^T K^{-1} a_j`` and ``s_j = ridge (1 + a_j^T K^{-1} a_j)``. Add / drop are
  Sherman-Morrison up/downdates of ``K^{-1}`` (O(n^2)); the diagonal ``d`` is carried along
  with one O(n |S|) product per move.

The kept columns are held in float64, or, when that copy would exceed half of A's bytes
(float32 A at low sparsity), in A's own float32 with every product computed in float64 in
chunks: memory stays within ``max(0.5, 1 - sparsity)`` times the size of A.

The factor is rebuilt from scratch (Cholesky) every ``refactor_every`` accepted moves
(default ``max(25, min(n, |S|))``) and
whenever a move fails to lower the exactly recomputed objective, so rounding drift cannot
accumulate or make the search cycle: after every move the weights ``w_S`` are recomputed from
the factor and the objective is the exact ``Q`` of those weights (residual recomputed from A),
and a move is kept only if that exact objective decreased.

``ridge = 0``: G_S may be singular (rank-deficient A, |S| > n). The search then ranks
candidates with a tiny internal ridge ``1e-9 * mean ||a_j||^2`` (gains are approximations
there, objectives stay exact for the weights held), refactorises after every accepted move,
and the final weights are a rank-revealing least-squares solve (``numpy.linalg.lstsq``, the
minimum-norm solution) on the final support. No NaN can arise.

Candidate screening (one "iteration" = one accepted move)
---------------------------------------------------------
1. Full gradient ``c = A^T r + ridge w_bar`` (one pass over A, in A's dtype).
2. Primary neighbourhood: the ``candidates`` outside coordinates with the largest
   ``c_j^2 / (||a_j||^2 + ridge)`` (a lower bound on twice their add gain), restricted to
   coordinates that fit the FLOP budget after some swap; the exact gains of these columns
   against *every* kept coordinate (all pairs) and as pure additions.
3. If nothing improves: secondary neighbourhood. For the ``drop_candidates`` kept coordinates
   with the smallest drop cost ``w_i^2 / (2 d_i)`` the gradient after dropping i is
   ``c' = c + (w_i / d_i) A^T u_i`` with ``u_i = A_S G_S^{-1} e_i`` (one matrix product
   ``A^T U`` for all of them); the best replacements for each are added to the candidate set
   and all pairs are evaluated exactly as in 2.
   The next (up to 8) iterations first re-evaluate the same candidate set exactly (only the
   O(np) screen is reused); a fresh screen follows when it has no improving move.
4. Best improvement: the most negative gain among the evaluated moves is applied if it lowers
   Q by more than ``tol * max(|Q|, 1e-300)``. When every outside coordinate fits in the
   candidate set (small p) the neighbourhood is exhaustive and a point where no move applies
   is a true 1-swap local optimum (``info["exhaustive"]``).
5. Variable-depth chains (Kernighan-Lin) at a local optimum, ``depth`` > 0: from each of the
   ``breadth`` best first moves, apply up to ``depth`` best moves *even when they worsen Q*,
   every coordinate moving at most once. If some prefix of a chain ends lower than the local
   optimum, the moves after the best prefix are undone (reverse rank-one moves) and the
   descent resumes from there; otherwise the chain is undone. This escapes the 1-swap local
   optima that need two or three simultaneous exchanges (typical under a FLOP budget, where a
   single exchange is often inadmissible). The search stops when no chain improves.

Public entry points
-------------------
``swap_search(problem, support, *, deadline=None, candidates=32, drop_candidates=8,
depth=4, breadth=4, max_swaps=None, refactor_every=None, tol=1e-10, final_solve=True,
data=None) -> SwapOutcome``: improve a feasible support (boolean mask or indices; ValueError
if infeasible); returns host float64 weights (exact ridge least squares on the final support
through the back-solve kernel ``ridge_solve_on_support``), the support, Q, the counts of moves and the
history. This is the function other solvers call as a final stage (e.g. after CHITA's IHT).
The registered solver ``swap`` wraps it: ``combprune.solve(problem, "swap", warm_start=...)``
with a Result, a weight vector or a boolean support (default: magnitude / FLOP-aware
magnitude), results in the input's namespace and dtype.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from combprune.params import ArrayLike, InstanceOf, Interval
from combprune.problems import L0Regression
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.columns import ColumnOperator, to_host64
from ._kernels.l0_data import L0Data, final_objective, scale_invariant
from ._kernels.linalg import spd_inverse
from ._kernels.options import check_positive_int
from ._kernels.ridge import ridge_solve_on_support
from ._kernels.warm_start import support_mask, warm_start_support

logger = logging.getLogger(__name__)

__all__ = ["SwapOutcome", "SupportModel", "swap_search", "swap"]

#: Relative size of the internal ridge used to rank candidates when the problem's ridge is 0.
ZERO_RIDGE_JITTER = 1e-9
#: Hysteresis (in coordinates) before the factor switches between gram and woodbury form.
_MODE_SLACK = 32
#: Largest float64 copy of the kept columns, as a fraction of A's bytes (float32 storage beyond).
F64_COLUMNS_MAX_FRACTION = 0.5
#: Consecutive moves taken from the last screen's candidates before a fresh gradient pass.
_POOL_REUSE = 8


# ----------------------------------------------------------------------------------------------
# Dense helpers
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The support model: exact solution on S with rank-one updates
# ----------------------------------------------------------------------------------------------
class SupportModel:
    r"""Exact ridge least squares on a support S, kept up to date under rank-one changes.

    Holds the kept columns ``A_S`` (one row per kept coordinate, "slots"; float64, or A's
    float32 beyond ``F64_COLUMNS_MAX_FRACTION``, products always float64), the
    factor (``G_S^{-1}`` in gram form or ``K^{-1}`` in woodbury form, see the module
    docstring), the weights ``w`` (per slot), the residual ``r = b - A_S w``, the diagonal
    ``d = diag(G_S^{-1})`` and the exact objective ``Q`` of the weights held.

    ``lam`` is the ridge used in the factor (the problem's ridge, or the internal jitter when
    that is 0); ``ridge`` is the problem's ridge, used for the objective.
    """

    def __init__(self, op: ColumnOperator, b: np.ndarray, w_bar: np.ndarray, ridge: float, idx: np.ndarray, capacity: int, col_sq: np.ndarray) -> None:
        self.op = op
        self.n = op.n
        self.b = np.asarray(b, dtype=np.float64)
        self.w_bar = np.asarray(w_bar, dtype=np.float64)
        self.ridge = float(ridge)
        if self.ridge > 0.0:
            self.lam = self.ridge
        else:
            mean_sq = float(np.mean(col_sq)) if col_sq.size else 0.0
            self.lam = ZERO_RIDGE_JITTER * (mean_sq if mean_sq > 0 else 1.0)
        self.wbar_sq_total = math.fsum((self.w_bar * self.w_bar).tolist()) if self.w_bar.size < 2_000_000 else float(self.w_bar @ self.w_bar)
        idx = np.asarray(idx, dtype=np.int64)
        capacity = max(int(capacity), idx.size, 1)
        # Kept columns in float64, or in A's float32 when a float64 copy would exceed
        # F64_COLUMNS_MAX_FRACTION of A's bytes (lossless: the columns come from A; every
        # product with them is still computed in float64, chunk by chunk).
        store = np.float64 if op.itemsize == 8 or 8 * self.n * capacity <= F64_COLUMNS_MAX_FRACTION * op.nbytes else np.float32
        self.AS = np.empty((capacity, self.n), dtype=store)
        self.idx = np.empty(capacity, dtype=np.int64)
        self.m = idx.size
        self.idx[: self.m] = idx
        if self.m:
            self.AS[: self.m] = self.columns(idx).T
        self.refactorizations = 0
        self.refactor()

    # Columns -----------------------------------------------------------------------------------
    def columns(self, J: np.ndarray) -> np.ndarray:
        """``A[:, J]`` as a host float64 (n, |J|) array (columns in the order of ``J``)."""
        J = np.asarray(J, dtype=np.int64)
        order = np.argsort(J, kind="stable")
        cols = to_host64(self.op.take(J[order]))
        out = np.empty_like(cols)
        out[:, order] = cols
        return out

    @property
    def support_idx(self) -> np.ndarray:
        return self.idx[: self.m].copy()

    def _blocks(self):
        """``(lo, hi, float64 rows lo:hi of A_S^T)`` in chunks of at most ~32 MB."""
        AS = self.AS[: self.m]
        if AS.dtype == np.float64:
            yield 0, self.m, AS
            return
        step = max(1, (32 << 20) // (8 * max(self.n, 1)))
        for lo in range(0, self.m, step):
            hi = min(lo + step, self.m)
            yield lo, hi, np.asarray(AS[lo:hi], dtype=np.float64)

    def mul(self, X: np.ndarray) -> np.ndarray:
        """``A_S^T X`` in float64 (``X``: n or n x c); rows = kept slots."""
        if self.AS.dtype == np.float64:
            return self.AS[: self.m] @ X
        out = np.empty((self.m,) + X.shape[1:])
        for lo, hi, blk in self._blocks():
            out[lo:hi] = blk @ X
        return out

    def tmul(self, Y: np.ndarray) -> np.ndarray:
        """``A_S Y`` in float64 (``Y``: |S| or |S| x c), an n-vector or n x c matrix."""
        if self.AS.dtype == np.float64:
            return self.AS[: self.m].T @ Y
        out = np.zeros((self.n,) + Y.shape[1:])
        for lo, hi, blk in self._blocks():
            out += blk.T @ Y[lo:hi]
        return out

    # Factorisation -------------------------------------------------------------------------------
    def refactor(self) -> None:
        """Rebuild the factor from scratch (Cholesky) and recompute w, r, d, Q."""
        self.refactorizations += 1
        m, AS = self.m, self.AS[: self.m]
        if m <= self.n:
            self.mode = "gram"
            AS = np.asarray(AS, dtype=np.float64)  # at most (n + slack) x n
            G = AS @ AS.T
            G[np.diag_indices_from(G)] += self.lam
            self.Ginv = spd_inverse(G, on_fail="eig")
            self.Kinv = None
        else:
            self.mode = "woodbury"
            K = np.zeros((self.n, self.n))
            self.d = np.empty(m)
            for lo, hi, blk in self._blocks():
                K += blk.T @ blk
            K[np.diag_indices_from(K)] += self.lam
            self.Kinv = spd_inverse(K, on_fail="eig")
            self.Ginv = None
            for lo, hi, blk in self._blocks():
                self.d[lo:hi] = (1.0 - np.einsum("ij,ij->i", blk @ self.Kinv, blk)) / self.lam
        self._solve()

    def _solve(self) -> None:
        """Weights from the factor; residual and objective recomputed exactly from them."""
        m = self.m
        wbS = self.w_bar[self.idx[:m]]
        if self.mode == "gram":
            self.w = self.Ginv @ (self.mul(self.b) + self.lam * wbS)
            self.d = np.diag(self.Ginv).copy()
        else:
            self.w = wbS + self.mul(self.Kinv @ (self.b - self.tmul(wbS)))
        self.d = np.maximum(self.d, np.finfo(np.float64).tiny)
        self.r = self.b - self.tmul(self.w)
        diff = self.w - wbS
        outside_sq = max(self.wbar_sq_total - float(wbS @ wbS), 0.0)
        self.objective = 0.5 * float(self.r @ self.r) + 0.5 * self.ridge * (float(diff @ diff) + outside_sq)

    # Gains -----------------------------------------------------------------------------------------
    def candidate_terms(self, J: np.ndarray, AJ: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(c_J, V, s_J)``: gradient terms, ``V = G_S^{-1} A_S^T A_J`` (m x q), Schur complements."""
        if AJ is None:
            AJ = self.columns(J)
        c = AJ.T @ self.r + self.lam * self.w_bar[J]
        if self.mode == "gram":
            V = self.Ginv @ self.mul(AJ)
            R = AJ - self.tmul(V)
            s = np.einsum("ij,ij->j", R, R) + self.lam * (1.0 + np.einsum("ij,ij->j", V, V))
        else:
            Y = self.Kinv @ AJ
            V = self.mul(Y)
            s = self.lam * (1.0 + np.einsum("ij,ij->j", AJ, Y))
        return c, V, np.maximum(s, np.finfo(np.float64).tiny)

    def move_gains(self, J: np.ndarray, AJ: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact objective changes: ``(swap (m x q) [slot, candidate], add (q,))``.

        ``swap[t, l] = Q*(S - idx[t] + J[l]) - Q*(S)`` and ``add[l] = Q*(S + J[l]) - Q*(S)``,
        both for the factor's ridge ``lam`` (exact for the problem when ridge > 0).
        """
        c, V, s = self.candidate_terms(J, AJ)
        add = -(c * c) / (2.0 * s)
        w = self.w[:, None]
        d = self.d[:, None]
        num = (w * w) * s[None, :] - 2.0 * w * V * c[None, :] - d * (c * c)[None, :]
        den = 2.0 * (d * s[None, :] + V * V)
        with np.errstate(divide="ignore", invalid="ignore"):
            swap = num / den
        swap[~np.isfinite(swap) | (den <= 0.0)] = np.inf
        return swap, add

    def drop_costs(self) -> np.ndarray:
        """``Q*(S - idx[t]) - Q*(S) = w_t^2 / (2 d_t)`` per slot."""
        return self.w * self.w / (2.0 * self.d)

    def drop_directions(self, slots: np.ndarray) -> np.ndarray:
        """``U = A_S G_S^{-1} e_t`` for the given slots (n x |slots|)."""
        if self.mode == "gram":
            return self.tmul(self.Ginv[:, slots])
        return self.Kinv @ np.asarray(self.AS[slots], dtype=np.float64).T

    # Updates ---------------------------------------------------------------------------------------
    def _drop(self, t: int) -> None:
        last = self.m - 1
        AS = self.AS
        if self.mode == "woodbury":
            a = np.asarray(AS[t], dtype=np.float64)
            y = self.Kinv @ a
            col = -self.mul(y)
            col[t] += 1.0
            col /= self.lam  # G_S^{-1} e_t
            den = max(1.0 - float(a @ y), np.finfo(np.float64).tiny)
            self.Kinv += np.outer(y, y) / den
            self.d = self.d - col * col / max(col[t], np.finfo(np.float64).tiny)
        if t != last:
            AS[[t, last]] = AS[[last, t]]
            self.idx[[t, last]] = self.idx[[last, t]]
            self.w[[t, last]] = self.w[[last, t]]
            self.d[[t, last]] = self.d[[last, t]]
            if self.mode == "gram":
                Gi = self.Ginv
                Gi[[t, last]] = Gi[[last, t]]
                Gi[:, [t, last]] = Gi[:, [last, t]]
        if self.mode == "gram":
            Gi = self.Ginv
            g = Gi[:last, last]
            self.Ginv = Gi[:last, :last] - np.outer(g, g) / Gi[last, last]
        self.d = self.d[:last]
        self.w = self.w[:last]
        self.m = last

    def _add(self, j: int, a: np.ndarray) -> None:
        if self.m >= self.AS.shape[0]:
            grown = np.empty((2 * self.AS.shape[0], self.n), dtype=self.AS.dtype)
            grown[: self.m] = self.AS[: self.m]
            self.AS = grown
            idx = np.empty(2 * self.idx.shape[0], dtype=np.int64)
            idx[: self.m] = self.idx[: self.m]
            self.idx = idx
        m = self.m
        if self.mode == "gram":
            v = self.Ginv @ self.mul(a)
            res = a - self.tmul(v)
            s = max(float(res @ res) + self.lam * (1.0 + float(v @ v)), np.finfo(np.float64).tiny)
            Gi = np.empty((m + 1, m + 1))
            Gi[:m, :m] = self.Ginv + np.outer(v, v) / s
            Gi[:m, m] = Gi[m, :m] = -v / s
            Gi[m, m] = 1.0 / s
            self.Ginv = Gi
        else:
            y = self.Kinv @ a
            q = float(a @ y)
            s = self.lam * (1.0 + q)
            v = self.mul(y)
            self.d = np.concatenate([self.d + v * v / s, [1.0 / s]])
            self.Kinv -= np.outer(y, y) / (1.0 + q)
        self.AS[m] = a
        self.idx[m] = j
        self.w = np.concatenate([self.w, [0.0]])
        self.m = m + 1

    def apply(self, drop_slot: int | None, add: int | None) -> None:
        """Drop the coordinate in ``drop_slot`` and/or add coordinate ``add``; re-solve."""
        if drop_slot is not None:
            self._drop(int(drop_slot))
        if add is not None:
            self._add(int(add), self.columns([add])[:, 0])
        if (self.mode == "gram" and self.m > self.n + _MODE_SLACK) or (self.mode == "woodbury" and self.m < self.n - _MODE_SLACK):
            self.refactor()
        else:
            if self.mode == "woodbury":
                self.Kinv = 0.5 * (self.Kinv + self.Kinv.T)
            self._solve()


# ----------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------
@dataclass
class SwapOutcome:
    """What :func:`swap_search` found.

    ``weights`` (p,) float64 exact ridge least squares on ``support``; ``objective`` its Q;
    ``swaps`` / ``additions`` accepted moves of each kind (moves of accepted variable-depth
    chains included); ``history`` ``(seconds, Q)`` of the incumbents; ``local_optimum`` True
    when the search stopped because no evaluated move (and no variable-depth chain) improves,
    with ``exhaustive`` True when that neighbourhood was all 1-swaps and additions;
    ``chains`` variable-depth passes run / ``chains_accepted`` those that improved.
    """

    support: np.ndarray
    weights: np.ndarray
    objective: float
    initial_objective: float
    swaps: int = 0
    additions: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)
    local_optimum: bool = False
    exhaustive: bool = False
    refactorizations: int = 0
    timed_out: bool = False
    chains: int = 0
    chains_accepted: int = 0

    @property
    def moves(self) -> int:
        return self.swaps + self.additions


def _top(scores: np.ndarray, pool: np.ndarray, count: int) -> np.ndarray:
    """Indices from ``pool`` with the ``count`` largest ``scores[pool]`` (descending)."""
    if pool.size <= count:
        order = np.argsort(-scores[pool], kind="stable")
        return pool[order]
    part = np.argpartition(-scores[pool], count - 1)[:count]
    part = part[np.argsort(-scores[pool][part], kind="stable")]
    return pool[part]


@dataclass
class _Move:
    drop: int | None  # coordinate dropped (None: pure addition)
    add: int | None  # coordinate added (None: pure removal, only when undoing a chain)
    gain: float  # predicted change of Q (negative = improvement)


class _Search:
    """State of one swap search: the support model, the budgets and the candidate screens."""

    def __init__(self, data: L0Data, mask: np.ndarray, candidates: int, drop_candidates: int, tol: float) -> None:
        self.data, self.op = data, data.op
        self.k, self.costs, self.budget = data.k, data.costs, data.budget
        # half the slack of the budget rule: a margin for the running cost sums of the moves
        self.slack = 0.5 * self.budget.slack
        self.candidates, self.drop_candidates, self.tol = candidates, drop_candidates, tol
        self.col_sq = self.op.col_sqnorms()
        self.in_S = mask.copy()
        self.model = self.new_model(np.flatnonzero(mask))
        self.screen_den = self.col_sq + self.model.lam
        self.refactorizations = 0
        self.pool: np.ndarray | None = None  # candidates of the last full screen
        self.pool_uses = 0

    def new_model(self, idx: np.ndarray) -> SupportModel:
        d = self.data
        return SupportModel(self.op, d.b, d.w_bar, d.ridge, idx, capacity=max(self.k, 1), col_sq=self.col_sq)

    def reset(self, idx: np.ndarray) -> None:
        """Rebuild the model from scratch on the support ``idx``."""
        self.refactorizations += self.model.refactorizations
        self.model = self.new_model(idx)
        self.in_S[:] = False
        self.in_S[idx] = True
        self.pool = None

    def best_moves(self, *, threshold: float, frozen: np.ndarray | None = None, n_best: int = 1) -> tuple[list[_Move], bool]:
        """The ``n_best`` best admissible moves lowering Q by more than ``-threshold`` (any
        moves when ``threshold = inf``), best first, and whether the neighbourhood evaluated
        was exhaustive.

        ``frozen`` (p,) bool: coordinates that may not move (variable-depth chains).

        Without ``frozen``, the candidate set of the last full screen is tried first (up to
        ``_POOL_REUSE`` times in a row; their gains are recomputed exactly, only the screen is
        reused), saving the O(np) gradient pass; a full screen follows when it has no
        improving move, so a local optimum is always certified by a fresh gradient.
        """
        model, costs = self.model, self.costs
        m, k = model.m, self.k
        can_add = m < k
        outside = np.flatnonzero(~self.in_S if frozen is None else ~(self.in_S | frozen))
        idxS = model.support_idx
        fS = costs[idxS] if costs is not None else None
        room = (self.budget.cost_budget - self.budget.total_cost(self.in_S) + self.slack) if costs is not None else math.inf
        if costs is not None:  # outside coordinates that fit after some swap or as an addition
            outside = outside[costs[outside] <= room + (fS.max() if m else 0.0)]
        if outside.size == 0 or k == 0 or (m == 0 and not can_add):
            return [], True
        keep = None if frozen is None else ~frozen[idxS]
        if frozen is None and self.pool is not None and self.pool_uses < _POOL_REUSE:
            J = self.pool[~self.in_S[self.pool]]
            moves = self._evaluate(J, fS, room, can_add, threshold, None, n_best) if J.size else []
            if moves:
                self.pool_uses += 1
                return moves, False
        self.pool = None
        c_full = self.op.rmatvec(model.r) + model.lam * self.data.w_bar  # one pass over A
        score = c_full * c_full / self.screen_den
        exhaustive = outside.size <= self.candidates
        J = _top(score, outside, self.candidates)
        if can_add and costs is not None and not exhaustive:
            addable = outside[costs[outside] <= room]
            if addable.size:
                J = np.union1d(J, _top(score, addable, max(1, self.candidates // 4)))
        moves = self._evaluate(J, fS, room, can_add, threshold, keep, n_best)
        pool = J
        if not moves and not exhaustive and self.drop_candidates > 0 and m > 0:
            J2 = np.setdiff1d(self._secondary(c_full, score, outside, fS, room, keep), J)
            if J2.size:
                moves = self._evaluate(J2, fS, room, can_add, threshold, keep, n_best)
                pool = np.union1d(J, J2)
        if frozen is None and not exhaustive:
            self.pool, self.pool_uses = pool, 1
        return moves, exhaustive

    def _evaluate(self, J, fS, room, can_add, threshold, keep, n_best) -> list[_Move]:
        """Exact gains of every (kept slot, J) swap and J addition; the best admissible ones."""
        swap_gain, add_gain = self.model.move_gains(J)
        if self.costs is not None:
            fJ = self.costs[J]
            if swap_gain.size:
                swap_gain = np.where(fJ[None, :] - fS[:, None] <= room, swap_gain, np.inf)
            add_gain = np.where(fJ <= room, add_gain, np.inf)
        if keep is not None and swap_gain.size:
            swap_gain = np.where(keep[:, None], swap_gain, np.inf)
        if not can_add:
            add_gain = np.full_like(add_gain, np.inf)
        gains = np.concatenate([swap_gain.ravel(), add_gain])
        n_best = min(n_best, gains.size)
        order = np.argpartition(gains, n_best - 1)[:n_best] if n_best < gains.size else np.arange(gains.size)
        order = order[np.argsort(gains[order], kind="stable")]
        moves = []
        q = J.size
        for flat in order:
            g = float(gains[flat])
            if not math.isfinite(g) or g >= threshold:
                break
            if flat < swap_gain.size:
                moves.append(_Move(int(self.model.idx[flat // q]), int(J[flat % q]), g))
            else:
                moves.append(_Move(None, int(J[flat - swap_gain.size]), g))
        return moves

    def _secondary(self, c_full, score, outside, fS, room, keep) -> np.ndarray:
        """Replacement candidates for the kept coordinates that are cheapest to drop.

        After dropping slot t the gradient is ``c + (w_t / d_t) A^T u_t``; its best entries
        (screened like the primary neighbourhood) are the candidates.
        """
        model = self.model
        drop_cost = model.drop_costs()
        if keep is not None:
            drop_cost = np.where(keep, drop_cost, np.inf)
        slots = np.argsort(drop_cost, kind="stable")[: self.drop_candidates]
        slots = slots[np.isfinite(drop_cost[slots])]
        if slots.size == 0:
            return np.zeros(0, dtype=np.int64)
        Z = _rmatmat(self.op, model.drop_directions(slots))
        scale = model.w[slots] / model.d[slots]
        per_drop = max(2, self.candidates // len(slots))
        found = []
        score = np.zeros_like(c_full)
        for col, t in enumerate(slots):
            pool = outside if self.costs is None else outside[self.costs[outside] - fS[t] <= room]
            if pool.size == 0:
                continue
            c_after = c_full[pool] + scale[col] * Z[pool, col]
            score[pool] = c_after * c_after / self.screen_den[pool]
            found.append(_top(score, pool, per_drop))
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    def applicable(self, move: _Move) -> bool:
        """``move`` drops a coordinate of the current support and adds one outside it (a move
        evaluated on an earlier support can be stale after a variable-depth chain is undone)."""
        held = self.model.idx[: self.model.m]
        return (move.drop is None or bool(np.any(held == move.drop))) and (move.add is None or not bool(np.any(held == move.add)))

    def apply(self, move: _Move) -> int | None:
        """Apply ``move`` to the model and the mask; returns the coordinate dropped (or None)."""
        slot = None
        if move.drop is not None:
            slot = int(np.flatnonzero(self.model.idx[: self.model.m] == move.drop)[0])
            self.in_S[move.drop] = False
        self.model.apply(slot, move.add)
        if move.add is not None:
            self.in_S[move.add] = True
        return move.drop


def swap_search(
    problem: L0Regression,
    support: Any,
    *,
    deadline: Deadline | None = None,
    candidates: int = 32,
    drop_candidates: int = 8,
    depth: int = 4,
    breadth: int = 4,
    max_swaps: int | None = None,
    refactor_every: int | None = None,
    tol: float = 1e-10,
    final_solve: bool = True,
    data: L0Data | None = None,
) -> SwapOutcome:
    """Improve the feasible ``support`` of ``problem`` by swaps and additions (module docstring).

    Parameters
    ----------
    problem : an ``L0Regression`` (NumPy, torch or CuPy data). The passes over A (gradient,
        column gathers) run in A's own library and dtype; the factor and all vectors are host
        float64 NumPy arrays.
    support : boolean (p,) mask or integer indices of a feasible support (``|S| <= k``, FLOPs
        within budget); ``ValueError`` otherwise.
    deadline : a :class:`~combprune.result.Deadline` (default: none).
    candidates : outside coordinates screened per neighbourhood (>= 1).
    drop_candidates : kept coordinates whose replacements are screened when the primary
        neighbourhood has no improving move (>= 0; 0 disables the secondary neighbourhood).
    depth : length of the variable-depth (Kernighan-Lin) chains tried at each local optimum
        (>= 0; 0 = plain descent).
    breadth : number of first moves a variable-depth pass starts from (>= 1).
    max_swaps : cap on accepted moves (None: until no improving move).
    refactor_every : accepted moves between fresh factorisations (>= 1). Default (None):
        ``max(25, min(n, |S|))``, so that the O(min(n,|S|)^2 max(n,|S|)) refactorisation costs
        about as much as the O(n (n + |S|)) updates it follows.
    tol : a move must lower Q by more than ``tol * |Q|`` (relative, >= 0).
    final_solve : re-solve the final support from scratch (``ridge_solve_on_support`` of the
        backsolve module) and keep it when it is at least as good as the factor's weights.
    data : the problem's host vectors (:class:`L0Data`), when the caller already has them.

    Returns
    -------
    SwapOutcome with host float64 NumPy weights.

    Longer than 80 lines on purpose: the search loop (candidate scoring, the depth/breadth
    exchange, refactorisation and deadline checks) shares the support model's state; the
    linear algebra is in the kernels.
    """
    if not isinstance(problem, L0Regression):
        raise TypeError(f"problem: swap_search needs an L0Regression, got {type(problem).__name__}")
    candidates = check_positive_int("candidates", candidates)
    drop_candidates = check_positive_int("drop_candidates", drop_candidates, low=0)
    depth = check_positive_int("depth", depth, low=0)
    breadth = check_positive_int("breadth", breadth)
    max_swaps = check_positive_int("max_swaps", max_swaps, allow_none=True, low=0)
    refactor_every = check_positive_int("refactor_every", refactor_every, allow_none=True)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
    deadline = deadline if deadline is not None else Deadline(None)
    data = data if data is not None else L0Data(problem)
    mask = support_mask(problem, support, "support")
    zero_ridge = data.ridge == 0.0

    search = _Search(data, mask, candidates, drop_candidates, tol)
    history = History(deadline, "min")
    history.record(search.model.objective)
    out = SwapOutcome(support=mask, weights=np.zeros(data.p), objective=search.model.objective, initial_objective=search.model.objective)
    since_refactor = 0

    def budget_left() -> bool:
        if deadline.expired():
            out.timed_out = True
            return False
        return max_swaps is None or out.moves < max_swaps

    def count(dropped: int | None) -> None:
        if dropped is None:
            out.additions += 1
        else:
            out.swaps += 1

    while budget_left():
        model = search.model
        threshold = -tol * max(abs(model.objective), 1e-300)
        moves, exhaustive = search.best_moves(threshold=threshold)
        if not moves:
            out.exhaustive = exhaustive
            if depth == 0 or not _chain(search, depth, breadth, threshold, deadline, out, count):
                out.local_optimum = not out.timed_out
                break
            history.record(search.model.objective)
            since_refactor = 0
            continue
        move = moves[0]
        before, old_idx = model.objective, model.support_idx
        dropped = search.apply(move)
        since_refactor += 1
        period = refactor_every or max(25, min(data.n, model.m))
        if zero_ridge or since_refactor >= period:
            model.refactor()
            since_refactor = 0
        if not model.objective < before:
            model.refactor()
            since_refactor = 0
            if not model.objective < before:
                logger.debug("swap: move %s predicted %.3g but did not lower Q; stopping", move, move.gain)
                search.reset(old_idx)
                out.local_optimum = True
                break
        count(dropped)
        history.record(model.objective)
        logger.debug("swap: %s -> %s, Q %.12g -> %.12g (predicted %.3g)", dropped, move.add, before, model.objective, move.gain)

    model = search.model
    out.refactorizations = search.refactorizations + model.refactorizations
    idx = model.support_idx
    weights = np.zeros(data.p)
    weights[idx] = model.w
    del model
    search.model = None  # free the kept columns and the factor before the final solve
    out.objective = data.objective(weights)
    if final_solve:
        exact = ridge_solve_on_support(problem.A, data.b, data.w_bar, data.ridge, idx)
        exact_obj = data.objective(exact)
        if exact_obj <= out.objective:
            weights, out.objective = exact, exact_obj
    out.support = np.zeros(data.p, dtype=bool)
    out.support[idx] = True
    out.weights = weights
    out.history = history.points
    return out


def _chain(search: _Search, depth: int, breadth: int, threshold: float, deadline: Deadline, out: SwapOutcome, count) -> bool:
    """Variable-depth (Kernighan-Lin) passes from a local optimum.

    From each of the ``breadth`` best first moves, applies up to ``depth`` best moves in
    total *even when they worsen Q*, each coordinate moving at most once (moved coordinates
    are frozen). If some prefix of a chain ends below the starting objective by more than
    ``-threshold``, the moves after the best prefix are undone (reverse rank-one moves) and
    True is returned; otherwise the whole chain is undone and the next first move is tried.
    """
    start_obj = search.model.objective
    search.pool = None
    first_moves, _ = search.best_moves(threshold=math.inf, n_best=breadth)
    search.pool = None
    for first in first_moves:
        if deadline.expired():
            break
        out.chains += 1
        frozen = np.zeros(search.data.p, dtype=bool)
        applied: list[_Move] = []
        best_obj, best_len = start_obj, 0
        move = first
        for step in range(depth):
            if step:
                nxt, _ = search.best_moves(threshold=math.inf, frozen=frozen)
                if not nxt or deadline.expired():
                    break
                move = nxt[0]
            if not search.applicable(move):
                break
            search.apply(move)
            frozen[move.add] = True
            if move.drop is not None:
                frozen[move.drop] = True
            applied.append(move)
            if search.model.objective < best_obj + threshold:
                best_obj, best_len = search.model.objective, len(applied)
        for move in reversed(applied[best_len:]):
            search.apply(_Move(move.add, move.drop, -move.gain))
        if best_len and search.model.objective < start_obj:
            out.chains_accepted += 1
            for move in applied[:best_len]:
                count(move.drop)
            return True
        if abs(search.model.objective - start_obj) > 1e-9 * max(abs(start_obj), 1e-300):
            search.model.refactor()  # undo drifted: start afresh on the same support
    return False


def _rmatmat(op: ColumnOperator, U: np.ndarray) -> np.ndarray:
    """``A^T U`` (p x c, host float64) for a host (n, c) matrix: one BLAS product on NumPy."""
    if op.is_numpy:
        return np.asarray(op.A.T @ U.astype(op.dtype, copy=False), dtype=np.float64)
    return np.stack([op.rmatvec(U[:, c]) for c in range(U.shape[1])], axis=1)


# ----------------------------------------------------------------------------------------------
# Warm starts and the registered solver
# ----------------------------------------------------------------------------------------------


@register_solver(
    "swap",
    problems=L0Regression,
    exact=False,
    description="Swap local search on the support with low-rank (Schur complement) gains.",
    params={
        "warm_start": [None, InstanceOf(Result), ArrayLike()],
        "candidates": Interval(int, 1, None),
        "drop_candidates": Interval(int, 0, None),
        "depth": Interval(int, 0, None),
        "breadth": Interval(int, 1, None),
        "max_swaps": [None, Interval(int, 0, None)],
        "refactor_every": [None, Interval(int, 1, None)],
        "tol": Interval(float, 0, None),
    },
)
@scale_invariant
def swap(
    problem: L0Regression,
    *,
    deadline: Deadline,
    seed: int | None = None,
    warm_start: Any = None,
    candidates: int = 32,
    drop_candidates: int = 8,
    depth: int = 4,
    breadth: int = 4,
    max_swaps: int | None = None,
    refactor_every: int | None = None,
    tol: float = 1e-10,
) -> Result:
    """Swap local search from ``warm_start`` (default: magnitude / FLOP-aware magnitude support).

    ``warm_start``: a :class:`Result` (e.g. of ``chita``), a weight vector (its nonzeros are
    the support) or a boolean support mask, in any supported array namespace; ``None`` starts
    from top-k ``|w_bar|`` (FLOP-aware magnitude pruning, the FLOP-NNZ ILP with values
    ``w_bar^2``, under a FLOP budget). Other options: see :func:`swap_search`.

    ``iterations`` = accepted moves (swaps + pure additions); ``x`` = the exact ridge least
    squares on the final support (or the warm start's own weights when those are at least as
    good, e.g. when no move was accepted); ``info``: ``swaps``, ``additions``,
    ``initial_objective`` (Q* of the starting support), ``local_optimum``, ``exhaustive``,
    ``refactorizations``, ``chains`` / ``chains_accepted`` (variable-depth passes).
    The search is deterministic (``seed`` is accepted and unused). Status ``feasible`` (``time_limit`` when the deadline stopped it).
    """
    data = L0Data(problem)
    mask, x0 = warm_start_support(problem, data, warm_start)
    outcome = swap_search(
        problem, mask, deadline=deadline, candidates=candidates, drop_candidates=drop_candidates,
        depth=depth, breadth=breadth, max_swaps=max_swaps, refactor_every=refactor_every, tol=tol, data=data,
    )
    x, objective, support = final_objective(problem, data, outcome.weights)
    if x0 is not None:
        x_start, start_obj, start_support = final_objective(problem, data, x0)
        if start_obj <= objective and not problem.check(x_start):
            x, objective, support = x_start, start_obj, start_support
    status = Status.TIME_LIMIT if outcome.timed_out else Status.FEASIBLE
    return Result(
        x=x, support=support, objective=objective, status=status, iterations=outcome.moves,
        history=outcome.history,
        info={
            "swaps": outcome.swaps,
            "additions": outcome.additions,
            "initial_objective": outcome.initial_objective,
            "local_optimum": outcome.local_optimum,
            "exhaustive": outcome.exhaustive,
            "refactorizations": outcome.refactorizations,
            "chains": outcome.chains,
            "chains_accepted": outcome.chains_accepted,
        },
    )
