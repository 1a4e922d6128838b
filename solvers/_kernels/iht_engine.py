r"""IHT engine for ``L0Regression``: exact piecewise-quadratic line search and an active set.

Notation: ``Q(w) = 1/2 ||b - A w||^2 + ridge/2 ||w - w_bar||^2``, gradient
``g = A^T (A w - b) + ridge (w - w_bar)``, projection ``P`` = top-k of ``|u|`` (or, under a FLOP
budget, FALCON's Lemma 1: the FLOP-NNZ ILP with values ``u^2``).

Line search (one IHT step from ``w`` with support slots ``S``, ``|S| = k``)
-------------------------------------------------------------------------
``phi(tau) = Q(P(w - tau g))`` is piecewise quadratic in ``tau``: on an interval where the
selected support ``T`` does not change, ``x(tau) = (w - tau g)|_T`` and, with
``e0 = A w|_T - b``, ``v = A g|_T``,

    q_T(tau) = c0 - c1 tau + c2 tau^2 / 2,
    c0 = Q(w|_T),  c1 = e0.v + ridge (w - w_bar)_T . g_T,  c2 = ||v||^2 + ridge ||g_T||^2 .

1. First piece (``T = S``): its exact minimiser is ``tau_S = c1 / c2``. The first breakpoint
   ``tau_1`` (the smallest tau at which an outside coordinate overtakes an inside one) has a
   closed form for top-k: with ``G = max_{j not in S} |g_j|`` (outside ``w_j = 0``) and
   ``s_i = sign(w_i) g_i``, coordinate i is overtaken at ``|w_i| / (G + s_i)`` when
   ``G + s_i > 0``, so ``tau_1 = min_i |w_i| / (G + s_i)``. If ``tau_S <= tau_1`` no support
   change happens before the minimiser: the step is ``tau_S`` and it is the exact minimiser of
   ``phi`` over the first piece. (Under a FLOP budget the same test is made by projecting at
   ``tau_S``.)
2. Otherwise the breakpoints are searched: for trial steps ``tau_c`` (``tau_1`` and a geometric
   ladder ``tau_S 2^j``, j = -3..12, stopped after two trials without improvement; when the
   first piece is flat, e.g. after a back-solve, the ladder starts from ``min_i |w_i| / G``) the support ``T_c = supp P(w - tau_c g)`` is formed and ``q_{T_c}``
   is minimised *exactly* over ``tau >= 0``; the point ``(w - tau* g)|_{T_c}`` is feasible for
   any tau, and its value ``q_{T_c}(tau*) <= q_{T_c}(tau_c) = phi(tau_c)``, so this dominates
   evaluating ``phi`` at the trial steps. Together with the first piece clipped at ``tau_1``
   (value ``<= Q(w)``) the accepted point never increases the objective.
   Each trial costs one selection O(|C|) and ``O(n |S delta T_c|)`` column updates
   (``e0`` and ``v`` are updated from the first piece's, never recomputed).
3. Fallback: when no trial decreases Q, the classical step ``tau = 1/L``,
   ``L = sigma_max(A_C)^2 + ridge`` (power iteration), is tried once.

Per iteration: ``A_C^T e`` and ``A_C g_S`` (two passes over the active columns, like plain IHT's
``A^T r`` and ``A x``); the residual is carried along (``e <- e0 - tau v``) and recomputed
exactly every ``refresh_every`` iterations.

Active set
----------
IHT runs on a candidate set C of about ``active_factor * k`` columns (gathered into a
contiguous block): the current support plus the outside coordinates with the largest
gradient (half the room) and the largest ``|w_bar|`` (the other half). When it has converged on C, one full gradient ``A^T e`` is computed and the
coordinates outside C that a full projected step ``P(w - tau g)`` (tau = the largest accepted
step) would select are added to C; this repeats until no coordinate is added. When C would
exceed ~0.33 of A's bytes the whole matrix is used in place (no copy). (The outside check
uses the steps ``tau, 2 tau, ..., 16 tau``, the range the line search explores.)

Conjugate directions: while the support does not change, the search direction on the support
is made conjugate (Polak-Ribiere+, restarted at every support change or loss of descent);
with the exact line search this is the conjugate-gradient method on the support's quadratic,
which removes steepest descent's dependence on ``cond(A_S^T A_S + ridge I)`` (huge when
``|S| > n`` and the ridge is small). Outside the support the direction is the gradient, so the
projection and the breakpoint search are unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from combprune.result import Deadline, History

from .columns import ACTIVE_FRACTION, GATHER_FRACTION, ColumnOperator
from .l0_data import L0Data
from .linalg import vdot
from .projections import Projector
from .ridge import ridge_solve_on_support, solve_with_factor
from .support_factor import SupportFactor

logger = logging.getLogger(__name__)


@dataclass
class IHTOutcome:
    w: np.ndarray
    residual: np.ndarray
    objective: float
    iterations: int = 0
    outer: int = 0
    converged: bool = False
    timed_out: bool = False
    active_size: int = 0
    steps: list[float] = field(default_factory=list)
    fallback_steps: int = 0
    active_idx: np.ndarray | None = None
    active_op: ColumnOperator | None = None
    backsolved: bool = False
    factor: SupportFactor | None = None
    lipschitz: float | None = None


def power_lipschitz(op: ColumnOperator, ridge: float, iters: int = 30, seed: int = 0) -> float:
    """``sigma_max(A)^2 + ridge`` by power iteration on ``A^T A`` (stopped at 1e-3 relative
    change, then inflated by 5 % so that ``1/L`` stays a safe step)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(op.m)
    x /= np.linalg.norm(x)
    lam = 0.0
    for _ in range(iters):
        y = op.rmatvec(op.matvec(x))
        lam_new = float(np.linalg.norm(y))
        if lam_new == 0:
            return ridge if ridge > 0 else 1.0
        x = y / lam_new
        if abs(lam_new - lam) <= 1e-3 * lam_new:
            lam = lam_new
            break
        lam = lam_new
    return 1.05 * lam + ridge


def first_breakpoint(w: np.ndarray, g: np.ndarray, T: np.ndarray) -> float:
    """Smallest tau > 0 at which top-k of ``|w - tau g|`` stops being ``T`` (w = 0 off T)."""
    out = ~T
    if not out.any():
        return math.inf
    G = float(np.max(np.abs(g), where=out, initial=0.0))
    idx = np.flatnonzero(T)
    wi, gi = w[idx], g[idx]
    s = np.sign(wi) * gi
    denom = G + s
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(denom > 0, np.abs(wi) / np.where(denom > 0, denom, 1.0), math.inf)
    zero = wi == 0
    if zero.any():  # a zero slot is overtaken at once by a larger outside gradient
        tau = np.where(zero, np.where(np.abs(gi) < G, 0.0, math.inf), tau)
    return float(tau.min()) if tau.size else math.inf


class InnerIHT:
    """IHT with the exact line search on the columns of ``op`` (an active set or all of A)."""

    def __init__(
        self,
        op: ColumnOperator,
        b: np.ndarray,
        w_bar: np.ndarray,
        ridge: float,
        proj: Projector,
        const: float,
        w: np.ndarray,
        mask: np.ndarray,
        e: np.ndarray | None = None,
        line_search: bool = True,
        lipschitz: float | None = None,
        gather_fraction: float = GATHER_FRACTION,
    ) -> None:
        self.gather_fraction = gather_fraction
        self.op, self.b, self.w_bar, self.ridge, self.proj, self.const = op, b, w_bar, ridge, proj, const
        self.w = w.copy()
        self.mask = mask.copy()
        self.e = op.cols_matvec(np.flatnonzero(self.w), self.w[self.w != 0]) - b if e is None else e.copy()
        self.f = self.value(self.w, self.e)
        # Q - const is never negative; below this it is rounding of the products with A (its
        # dtype's epsilon times Q at w = 0): nothing left to decrease (see run_inner)
        self.noise = _epsilon(op) * (0.5 * vdot(b, b) + 0.5 * ridge * vdot(w_bar, w_bar))
        self.line_search = line_search
        self.L = lipschitz
        self.fallbacks = 0
        self.at_solution = False  # True while w is the exact least squares on its support
        self.solved: tuple | None = None
        self.factor: SupportFactor | None = None  # of the last Woodbury back-solve
        self.last_g: np.ndarray | None = None
        # conjugate-gradient memory on a fixed support (Polak-Ribiere+, restarted on change)
        self.cg = True
        self._prev_gS: np.ndarray | None = None
        self._prev_dir: np.ndarray | None = None
        self._prev_T: np.ndarray | None = None

    def solve_on_support(self) -> bool:
        """Replace the iterate by the exact ridge least squares on its support (if better)."""
        mask = self.w != 0
        if not mask.any():
            return False
        w, e, factor = solve_with_factor(self.op, self.b, self.w_bar, self.ridge, mask, max_gather_fraction=self.gather_fraction)
        f = self.value(w, e)
        if not f <= self.f:
            return False
        self.factor = factor
        self.w, self.e, self.f = w, e, f
        self.mask = w != 0
        self._prev_T = None
        self.at_solution = True
        self.solved = (w, e, f, self.mask.copy())
        return True

    def restore_solved(self) -> None:
        """Return to the last back-solved point when the support is still its support (it is
        the exact minimiser there; later steps on that support only add rounding)."""
        if self.solved is not None and np.array_equal(self.mask, self.solved[3]):
            self.w, self.e, self.f, self.mask = self.solved[0], self.solved[1], self.solved[2], self.solved[3].copy()
            self.at_solution = True

    def value(self, w: np.ndarray, e: np.ndarray) -> float:
        d = w - self.w_bar
        return 0.5 * vdot(e, e) + 0.5 * self.ridge * vdot(d, d) + self.const

    def refresh(self) -> None:
        nz = np.flatnonzero(self.w)
        self.e = self.op.cols_matvec(nz, self.w[nz]) - self.b
        self.f = self.value(self.w, self.e)

    def lipschitz(self) -> float:
        if self.L is None:
            self.L = power_lipschitz(self.op, self.ridge)
        return self.L

    def _first_slots(self, g: np.ndarray) -> np.ndarray:
        """Support of ``P(w - tau g)`` for tau -> 0+ (the current slots, padded when |S| < k)."""
        T0 = self.mask
        short = self.proj.k - int(T0.sum())
        if short > 0 and not self.proj.has_flops:
            out = np.flatnonzero(~T0)
            if out.size:
                pick = out[np.argsort(-np.abs(g[out]), kind="stable")[:short]]
                T0 = T0.copy()
                T0[pick] = True
        return T0

    def _evaluate(self, T: np.ndarray, T0: np.ndarray, g: np.ndarray, v0: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """Exact minimum over tau >= 0 of q_T; returns (value, tau, e0, v)."""
        delta = np.flatnonzero(T != T0)
        if delta.size:
            X = np.empty((delta.size, 2))
            X[:, 0] = self.w[delta]
            X[:, 1] = np.where(T[delta], g[delta], -g[delta])
            AX = self.op.cols_matvec(delta, X)
            e0 = self.e - AX[:, 0]
            v = v0 + AX[:, 1]
        else:
            e0, v = self.e, v0
        x0 = np.where(T, self.w, 0.0)
        gT = np.where(T, g, 0.0)
        d = x0 - self.w_bar
        c0 = 0.5 * vdot(e0, e0) + 0.5 * self.ridge * vdot(d, d) + self.const
        c1 = vdot(e0, v) + self.ridge * vdot(d, gT)
        c2 = vdot(v, v) + self.ridge * vdot(gT, gT)
        tau = max(c1 / c2, 0.0) if c2 > 0 else 0.0
        return c0 - tau * c1 + 0.5 * tau * tau * c2, tau, e0, v

    def step(self) -> tuple[float, bool]:
        """One IHT step; returns (tau, support changed). Never increases the objective."""
        op = self.op
        g = op.rmatvec(self.e) + self.ridge * (self.w - self.w_bar)
        self.last_g = g
        T0 = self._first_slots(g)
        if not self.line_search:
            idx0 = np.flatnonzero(T0)
            v0 = op.cols_matvec(idx0, g[idx0])
            tau = 1.0 / self.lipschitz()
            T = self.proj.support(self.w - tau * g)
            return self._accept_fixed(T, T0, g, v0, tau)
        # search direction: the gradient, made conjugate on the support when it is unchanged
        gS = np.where(T0, g, 0.0)
        D = g
        if self.cg and self._prev_T is not None and np.array_equal(T0, self._prev_T):
            pg = self._prev_gS
            beta = max(0.0, vdot(gS, (gS - pg)) / max(vdot(pg, pg), 1e-300))
            if beta > 0:
                D = g + beta * self._prev_dir
                if vdot(D[T0], g[T0]) <= 0:  # not a descent direction: restart
                    D = g
        idx0 = np.flatnonzero(T0)
        v0 = op.cols_matvec(idx0, D[idx0])
        val0, tau0, e00, _ = self._evaluate(T0, T0, D, v0)
        tau, changed = self._search(T0, D, v0, val0, tau0, e00)
        if tau > 0 and not changed:
            self._prev_T, self._prev_gS, self._prev_dir = self.mask.copy(), gS, np.where(self.mask, D, 0.0)
        else:
            self._prev_T = None
        return tau, changed

    def _search(self, T0, g, v0, val0, tau0, e00) -> tuple[float, bool]:
        """Exact line search along ``-g`` (``g`` = the search direction) from the slots ``T0``."""
        if self.proj.has_flops:
            tau1 = tau0 if tau0 > 0 and np.array_equal(self.proj.support(self.w - tau0 * g), T0) else 0.0
        else:
            tau1 = first_breakpoint(self.w, g, T0)
        if tau0 <= tau1 and tau0 > 0:
            return self._accept(T0, tau0, val0, e00, v0, g)
        # first piece clipped at its breakpoint (value <= Q(w))
        c_tau = min(tau0, tau1)
        best = (self._q_from(e00, v0, T0, g, c_tau), c_tau, T0, e00, v0)
        if tau0 > 0:
            base = tau0
        else:  # flat first piece (e.g. after a back-solve): scale by the first overtaking step
            base = first_breakpoint(self.w, g, T0)
            if not (math.isfinite(base) and base > 0):
                base = 1.0 / self.lipschitz()
        ladder = sorted({t for t in [tau1 * (1 + 1e-7)] + [base * 2.0**j for j in range(-3, 13)] if t > tau1 and math.isfinite(t)})
        prev_T = None
        worse = 0
        for t in ladder:
            T = self.proj.support(self.w - t * g)
            if prev_T is not None and np.array_equal(T, prev_T):
                continue
            prev_T = T
            val, tau, e0, v = self._evaluate(T, T0, g, v0)
            if val < best[0]:
                best, worse = (val, tau, T, e0, v), 0
            else:
                worse += 1
                if worse >= 2:
                    break
        if best[0] >= self.f:
            # fallback: the classical 1/L step
            tau = 1.0 / self.lipschitz()
            T = self.proj.support(self.w - tau * g)
            _, _, e0, v = self._evaluate(T, T0, g, v0)
            val = self._q_from(e0, v, T, g, tau)
            if val < best[0]:
                self.fallbacks += 1
                best = (val, tau, T, e0, v)
        val, tau, T, e0, v = best
        if val >= self.f:
            return 0.0, False
        return self._accept(T, tau, val, e0, v, g)

    def _q_from(self, e0: np.ndarray, v: np.ndarray, T: np.ndarray, g: np.ndarray, tau: float) -> float:
        return self.value(np.where(T, self.w - tau * g, 0.0), e0 - tau * v)

    def _accept_fixed(self, T, T0, g, v0, tau) -> tuple[float, bool]:
        _, _, e0, v = self._evaluate(T, T0, g, v0)
        return self._accept(T, tau, self._q_from(e0, v, T, g, tau), e0, v, g)

    def _accept(self, T, tau, val, e0, v, g) -> tuple[float, bool]:
        self.at_solution = False
        changed = not np.array_equal(T, self.mask)
        self.w = np.where(T, self.w - tau * g, 0.0)
        self.e = e0 - tau * v
        self.mask = T.copy()
        self.f = val
        return tau, changed

def _epsilon(op: Any) -> float:
    """Machine epsilon of the operator's dtype (float64 when it has none NumPy knows)."""
    try:
        return float(np.finfo(np.dtype(str(op.dtype).replace("torch.", ""))).eps)
    except (TypeError, ValueError, AttributeError):
        return float(np.finfo(np.float64).eps)


def run_inner(
    inner: InnerIHT,
    *,
    deadline: Deadline,
    max_iter: int,
    tol: float,
    patience: int = 3,
    refresh_every: int | None = 25,
    on_iterate: Callable[[float], None] | None = None,
    stable_iters: int | None = None,
) -> tuple[int, list[float], bool]:
    """Iterate until ``patience`` consecutive steps decrease Q by less than ``tol * |Q|``
    (or a step cannot decrease Q at all, or ``Q - const`` is within the rounding of A's products
    of zero, ``inner.noise``: an exact fit, where relative decreases are rounding). The one
    stopping loop of the L0 family.

    ``refresh_every``: the residual is recomputed exactly every that many steps (None:
    never, the carried residual only). ``on_iterate(f)`` is called after every step that
    moved (and after a stabilisation back-solve).

    ``stable_iters``: once the support has not changed for that many consecutive steps, the
    weights are set to the exact ridge least squares on it (a back-solve on the current
    columns; never increases Q), after which IHT continues from that point; a step from a
    back-solved point that does not change the support ends the loop (a fixed point).
    """
    steps: list[float] = []
    slow = 0
    stable = 0
    it = 0
    converged = False
    solved_support: np.ndarray | None = None
    while it < max_iter and not deadline.expired():
        f_old = inner.f
        tau, changed = inner.step()
        it += 1
        if refresh_every is not None and (it % refresh_every) == 0:
            inner.refresh()
        if tau > 0:
            steps.append(tau)
            if on_iterate is not None:
                on_iterate(inner.f)
        if tau == 0.0:
            converged = True
            break
        stable = 0 if changed else stable + 1
        if solved_support is not None and not changed and np.array_equal(inner.mask, solved_support):
            converged = True  # the back-solved support is an IHT fixed point
            inner.restore_solved()
            break
        if stable_iters is not None and stable >= stable_iters and not deadline.expired():
            if inner.solve_on_support():
                solved_support = inner.mask.copy()
                if on_iterate is not None:
                    on_iterate(inner.f)
            stable = 0
            slow = 0
            continue
        if inner.f - inner.const <= inner.noise:
            converged = True  # at zero up to the rounding of A's products: further steps only chase rounding
            break
        if f_old - inner.f <= tol * max(abs(inner.f), 1e-300):
            slow += 1
            if slow >= patience:
                converged = True
                break
        else:
            slow = 0
    return it, steps, converged


def iht_active_set(
    data: L0Data,
    w0: np.ndarray,
    proj: Projector,
    *,
    deadline: Deadline,
    history: History,
    active_factor: float | None = 2.0,
    max_iter: int = 1000,
    max_outer: int = 20,
    tol: float = 1e-7,
    line_search: bool = True,
    stable_iters: int | None = None,
    refresh_every: int | None = 25,
    lipschitz: float | None = None,
    on_iterate: Callable[[float, np.ndarray], None] | None = None,
) -> IHTOutcome:
    """IHT from the feasible ``w0`` (host float64) with the active-set strategy of CHITA.

    ``active_factor=None`` runs on all columns (no gather). Records every iterate's objective in
    ``history`` (``on_iterate(f, support on the block)`` in its place when given).
    ``refresh_every``, ``stable_iters``: see :func:`run_inner`; ``lipschitz``: a known
    ``sigma_max(A)^2 + ridge`` (returned in ``IHTOutcome.lipschitz`` once computed).
    Returns the final iterate (not back-solved). (Long for a reason: one loop carries the
    iterate, its residual and the active set between rounds; its parts are helpers.)
    """
    op, b, ridge, p, k = data.op, data.b, data.ridge, data.p, data.k
    w = w0.copy()
    mask = w != 0
    nz = np.flatnonzero(w)
    e = op.cols_matvec(nz, w[nz]) - b
    f0 = data.objective(w, e)
    history.record(f0)
    out = IHTOutcome(w=w, residual=e, objective=f0)
    if k == 0:
        out.converged = True
        return out
    m = p if active_factor is None else min(p, max(k + 1, int(math.ceil(active_factor * k))))
    full = m >= p or m * op.n * op.itemsize > ACTIVE_FRACTION * op.nbytes
    C: np.ndarray | None = None
    tau_check = 0.0
    total_it = 0
    out.lipschitz = lipschitz
    for outer in range(max_outer):
        if deadline.expired():
            out.timed_out = True
            break
        if full:
            C_idx = np.arange(p)
            sub_op = op
        else:
            g_full = op.rmatvec(e) + ridge * (w - data.w_bar)
            if C is None:
                C = _initial_candidates(mask, m, g_full, data.w_bar)
            else:
                new = _entering(w, g_full, C, proj, tau_check) if tau_check > 0 else None
                if new is None or not new.any():
                    out.converged = True
                    break
                C = C | new
                if int(C.sum()) * op.n * op.itemsize > ACTIVE_FRACTION * op.nbytes:
                    full = True
            C_idx = np.arange(p) if full else np.flatnonzero(C)
            sub_op = op if full else op.sub(C_idx)
        const = 0.5 * ridge * float(data.wbar_sq.sum() - data.wbar_sq[C_idx].sum()) if C_idx.size < p else 0.0
        inner = InnerIHT(
            sub_op, b, data.w_bar[C_idx], ridge, proj.restrict(C_idx) if C_idx.size < p else proj,
            max(const, 0.0), w[C_idx], w[C_idx] != 0, e=e, line_search=line_search,
            lipschitz=out.lipschitz if sub_op is op else None,  # L of all columns; a block's own L otherwise
            gather_fraction=GATHER_FRACTION if sub_op is op else 1.0,  # a support inside the block is <= ~half of it
        )
        record = history.record if on_iterate is None else (lambda fv, inner=inner: on_iterate(fv, inner.w != 0))
        it, steps, conv = run_inner(
            inner, deadline=deadline, max_iter=max(1, max_iter - total_it), tol=tol, on_iterate=record, stable_iters=stable_iters,
            refresh_every=refresh_every,
        )
        if sub_op is op:
            out.lipschitz = inner.L
        total_it += it
        inner.refresh()
        w = np.zeros(p)
        w[C_idx] = inner.w
        mask = np.zeros(p, dtype=bool)
        mask[C_idx] = inner.mask
        e = inner.e
        out.steps.extend(steps)
        out.fallback_steps += inner.fallbacks
        tau_check = max(steps) if steps else tau_check
        out.outer = outer + 1
        out.active_size = int(C_idx.size)
        out.active_idx, out.active_op = C_idx, sub_op
        out.backsolved = inner.at_solution
        out.factor = inner.factor if inner.at_solution else None
        if full or total_it >= max_iter:
            out.converged = conv
            break
    out.w = w
    out.residual = e
    out.objective = data.objective(w, e)
    out.iterations = total_it
    out.timed_out = out.timed_out or deadline.expired()
    return out



def _initial_candidates(mask: np.ndarray, m: int, g_full: np.ndarray, w_bar: np.ndarray) -> np.ndarray:
    """The first active set: the support plus ~``m - |S|`` outside coordinates, half by the full
    gradient (what an IHT step would pick), half by ``|w_bar|`` (next in line after the cut)."""
    C = mask.copy()
    room = m - int(C.sum())
    if room <= 0 or C.all():
        return C
    for score, quota in ((np.abs(g_full), (room + 1) // 2), (np.abs(w_bar), room)):
        out_idx = np.flatnonzero(~C)
        quota = min(quota, m - int(C.sum()), out_idx.size)
        if quota <= 0:
            continue
        sc = score[out_idx]
        pick = out_idx[np.argpartition(-sc, quota - 1)[:quota]] if quota < out_idx.size else out_idx
        C[pick] = True
    return C


def _entering(w: np.ndarray, g_full: np.ndarray, C: np.ndarray, proj: Projector, tau: float) -> np.ndarray:
    """Coordinates outside ``C`` that a full projected step would select, over the range of
    steps the line search explores (``tau`` = the largest accepted step, up to 16x that)."""
    new = np.zeros(w.size, dtype=bool)
    for j in range(5):
        new |= proj.support(w - tau * 2.0**j * g_full) & ~C
    return new


def polish_on_support(
    data: L0Data,
    w: np.ndarray,
    *,
    deadline: Deadline,
    active_idx: np.ndarray | None = None,
    active_op: ColumnOperator | None = None,
    max_iter: int = 200,
    rtol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise Q over the support of ``w`` by conjugate gradients (exact line search).

    An iterative back-solve: the support is fixed, each iteration costs two products with
    ``A_S`` (gathered from the active block when ``supp(w)`` lies in it), and it stops when the
    relative decrease falls below ``rtol`` (or at ``max_iter``). Returns (w, A w - b).
    """
    S = np.flatnonzero(w)
    if S.size == 0:
        return w.copy(), -data.b.copy()
    if active_idx is not None and active_op is not None and active_op is not data.op and np.all(np.isin(S, active_idx, assume_unique=True)):
        opS = active_op.sub(np.searchsorted(active_idx, S))  # at most about half the active block
    elif S.size * data.n * data.op.itemsize <= GATHER_FRACTION * data.op.nbytes:
        opS = data.op.sub(S)
    else:  # too large to gather: the direct back-solve streams A_S in chunks
        return ridge_solve_on_support(data.op.A, data.b, data.w_bar, data.ridge, w != 0, return_residual=True)
    const = 0.5 * data.ridge * float(data.wbar_sq.sum() - data.wbar_sq[S].sum())
    inner = InnerIHT(opS, data.b, data.w_bar[S], data.ridge, Projector(S.size), max(const, 0.0), w[S], np.ones(S.size, bool))
    run_inner(inner, deadline=deadline, max_iter=max_iter, tol=rtol, patience=2, refresh_every=10)
    inner.refresh()
    out = np.zeros_like(w)
    out[S] = inner.w
    return out, inner.e

