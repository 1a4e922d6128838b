r"""``dual-sort``: FALCON's FLOP-NNZ ILP through the one-dimensional dual of its LP relaxation.

Problem (SPEC 1.2, :class:`~combprune.problems.FlopNnzILP`)::

    maximize_z  sum_i v_i z_i   s.t.  sum_i z_i <= k,  sum_i f_i z_i <= F,  z in {0,1}^p

with ``v >= 0`` (``v = u**2`` for the Euclidean projection of ``u``) and ``f >= 0`` (FLOP costs,
in whatever unit the caller uses: FLOPs or MACs, only the ratio to ``F`` matters).

Maths
-----
The LP relaxation (``z in [0,1]^p``) has the Lagrangian dual
``min_{mu, nu >= 0} k mu + F nu + sum_i max(0, v_i - mu - nu f_i)``. For fixed ``nu`` the best
``mu`` is the (k+1)-th largest of ``a_i = v_i - nu f_i`` floored at 0, and the dual becomes

    g(nu) = F nu + (sum of the k largest positive a_i(nu)) = max_{|T| <= k} (F - f(T)) nu + v(T),

a convex piecewise-linear function of ``nu >= 0``: the upper envelope of the lines of all sets
``T`` of at most k coordinates. ``g(nu)`` is an upper bound on the LP (hence ILP) optimum for
*every* ``nu``. It is minimised exactly by Kelley's cutting-plane method in one dimension
(Newton's method for piecewise-linear convex functions): keep a left line (slope < 0) and a
right line (slope > 0), both tangent to ``g``; evaluate ``g`` where they cross; the lines' value
there is a lower bound on ``min g`` and ``g`` an upper bound, and the method stops when they meet
(to 1e-12 relative), replacing one line otherwise. Each evaluation is a selection of the
(k+1)-th largest ``a_i``: ``np.partition`` over all ``p`` values (general costs), or, when costs
are constant per layer, a selection in ``L`` per-layer sorted lists (each layer sorted once;
each evaluation then costs ``O(L log^2 p)``, independent of ``p``).

Primal recovery: the final left/right sets ``T_L`` (cost >= F) and ``T_R`` (cost <= F) are both
maximisers of the Lagrangian at ``nu*``; ``z = lam 1_{T_L} + (1 - lam) 1_{T_R}`` with
``lam = (F - f(T_R)) / (f(T_L) - f(T_R))`` spends exactly F and has value equal to the lower
bound, so it is LP-optimal. It is reduced to a *basic* optimal solution with at most two
fractional entries without decreasing the value: fractional mass among coordinates of equal
cost is moved to the largest values, then three fractional coordinates at a time are moved
along the null direction of the two constraint rows, ``d = (f_l - f_j, f_i - f_l, f_j - f_i)``,
in the non-decreasing-value sense until one becomes 0 or 1.

Integer solution: drop the (at most two) fractional entries, then fill what is left of both
budgets greedily by decreasing value. Certificate: ``LP bound - integer value <=`` the values of
the dropped coordinates; the returned ``bound`` is ``min g`` (a valid upper bound) and the status
is ``optimal`` only when the integer value reaches it (to 1e-12 relative).

Public API (stable: used by the IHT / DFO / FALCON solvers as the FLOP-aware projection)
-------------------------------------------------------------------------------------
``flop_nnz_select(values, costs, k, flop_budget, layer=None) -> np.ndarray``
    Boolean support (p,) of the integer solution (NumPy 1-D inputs; float64 internally).
``solve_flop_nnz_lp(values, costs, k, flop_budget, layer=None) -> DualSortSolution``
    The whole solve: LP primal ``z`` (<= 2 fractional), ``lp_value``, ``bound``, duals
    ``mu, nu``, integer ``support`` and ``value``, iteration count and path.

``layer`` (optional int array, p) groups coordinates whose cost is constant (a network layer,
or any grouping by equal cost); it enables the per-layer fast path: one sort per layer
(about the cost of one ``np.sort`` of p values) and a p-independent dual search. Without it
every dual evaluation is an ``O(p)`` partition (typically 5-20 evaluations).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from combprune import backend
from combprune.problems import FlopNnzILP
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

__all__ = ["DualSortSolution", "solve_flop_nnz_lp", "flop_nnz_select", "dual_sort"]

logger = logging.getLogger(__name__)

#: Relative tolerance at which Kelley's upper and lower bounds on min g are considered equal.
_KELLEY_RTOL = 1e-12
_MAX_ITER = 200
#: Below this many active candidates the layered selection gathers them and partitions.
_GATHER = 4096


@dataclass
class DualSortSolution:
    """Outcome of :func:`solve_flop_nnz_lp` (NumPy arrays, float64).

    Attributes
    ----------
    z : (p,) optimal basic LP solution, entries in [0, 1], at most two strictly fractional.
    lp_value : ``v @ z`` (the LP optimum, to ~1e-12 relative).
    bound : ``min_nu g(nu)`` found, a valid upper bound on the LP and ILP optima.
    mu, nu : optimal duals of the count and FLOP rows.
    support : (p,) bool, the integer solution (fractional entries dropped, then greedy fill).
    value : ``v[support].sum()``, the integer objective.
    dropped : indices of the fractional entries of ``z`` dropped by the rounding.
    iterations : dual evaluations (Kelley steps).
    path : ``"layered"`` or ``"general"``.
    """

    z: np.ndarray
    lp_value: float
    bound: float
    mu: float
    nu: float
    support: np.ndarray
    value: float
    dropped: np.ndarray
    iterations: int
    path: str

    @property
    def gap(self) -> float:
        """Certified absolute gap ``bound - value`` (>= 0 up to rounding)."""
        return max(self.bound - self.value, 0.0)

    @property
    def fractional(self) -> np.ndarray:
        """Indices where ``0 < z < 1``."""
        return np.flatnonzero((self.z > 0) & (self.z < 1))


# --------------------------------------------------------------------------------------------
# Oracles: evaluate g(nu) and a maximising set T; both paths expose the same interface.
# --------------------------------------------------------------------------------------------


class _GeneralOracle:
    """Arbitrary costs: each evaluation partitions the p values ``a = v - nu f``."""

    path = "general"

    def __init__(self, v: np.ndarray, f: np.ndarray, k: int, F: float) -> None:
        self.v, self.f, self.k, self.F = v, f, k, F
        self.p = v.shape[0]

    def a(self, nu: float) -> np.ndarray:
        return self.v if nu == 0.0 else self.v - nu * self.f

    def mu(self, nu: float) -> float:
        """(k+1)-th largest of ``a(nu)`` floored at 0 (0 when k = p)."""
        if self.k >= self.p:
            return 0.0
        a = self.a(nu)
        return max(float(np.partition(a, self.p - self.k - 1)[self.p - self.k - 1]), 0.0)

    def evaluate(self, nu: float) -> tuple[float, float, float, np.ndarray]:
        """``(g(nu), v(T), f(T), T)`` for a maximising set T (bool mask)."""
        a = self.a(nu)
        if self.k == 0:
            T = np.zeros(self.p, dtype=bool)
        else:
            mu = self.mu(nu)
            T = a > mu
            if mu > 0.0:
                need = self.k - int(np.count_nonzero(T))
                if need > 0:  # ties at the (k+1)-th value: take the first ones by index
                    T[np.flatnonzero(a == mu)[:need]] = True
        vT = float(self.v[T].sum())
        fT = float(self.f[T].sum())
        g = self.F * nu + float(a[T].sum())
        return g, vT, fT, T

    def diff(self, TL: np.ndarray, TR: np.ndarray) -> tuple[float, float]:
        """``(v(TL) - v(TR), f(TL) - f(TR))`` summed over the symmetric difference only."""
        A, B = TL & ~TR, TR & ~TL
        return (float(self.v[A].sum() - self.v[B].sum()), float(self.f[A].sum() - self.f[B].sum()))

    def nu_upper(self) -> float:
        pos = self.f > 0
        if not pos.any():
            return 0.0
        return float(np.max(self.v[pos] / self.f[pos]))

    def integral(self, T: np.ndarray) -> np.ndarray:
        return T.astype(np.float64)

    def combine(self, TL: np.ndarray, TR: np.ndarray, lam: float) -> np.ndarray:
        """Basic LP solution from ``lam TL + (1 - lam) TR`` (value never decreases)."""
        z = (TL & TR).astype(np.float64)
        A, B = TL & ~TR, TR & ~TL
        z[A] = lam
        z[B] = 1.0 - lam
        idx = np.flatnonzero(A | B)
        if idx.size:
            z[idx] = _concentrate(z[idx], self.f[idx], self.v[idx])
            frac = idx[(z[idx] > 0) & (z[idx] < 1)]
            if frac.size > 2:
                z[frac] = _pivot_reduce(z[frac], self.f[frac], self.v[frac])
        return z


class _LayeredOracle:
    """Costs constant per layer: sort each layer once, select across the L sorted lists."""

    path = "layered"

    def __init__(self, v: np.ndarray, f: np.ndarray, layer: np.ndarray, k: int, F: float) -> None:
        self.k, self.F = k, F
        self.p = v.shape[0]
        self.v, self.f = v, f
        lay = np.asarray(layer)
        if lay.shape != v.shape:
            raise ValueError(f"layer: expected shape {v.shape}, got {lay.shape}")
        if lay.size > 1 and bool(np.all(lay[1:] >= lay[:-1])):
            self.order = None
            w, fw, lw = v, f, lay
        else:
            lmax = int(lay.max()) if lay.size else 0
            key = lay.astype(np.int16) if 0 <= int(lay.min()) and lmax < 32767 else lay
            self.order = np.argsort(key, kind="stable")  # radix sort for small ints
            w, fw, lw = v[self.order], f[self.order], lay[self.order]
        change = np.flatnonzero(lw[1:] != lw[:-1]) + 1
        self.starts = np.concatenate(([0], change)).astype(np.int64)
        self.ends = np.concatenate((change, [self.p])).astype(np.int64)
        cmax = np.maximum.reduceat(fw, self.starts)
        cmin = np.minimum.reduceat(fw, self.starts)
        if np.any(cmax != cmin):
            bad = int(lw[self.starts[np.flatnonzero(cmax != cmin)[0]]])
            raise ValueError(f"layer: costs must be constant within a layer (layer {bad} has several costs)")
        self.c = cmin.astype(np.float64)
        self.w = w  # values in layer-grouped order
        sv = np.array(w, dtype=np.float64, copy=True)
        rs = np.empty_like(sv)
        for s, e in zip(self.starts.tolist(), self.ends.tolist()):
            seg = sv[s:e]
            seg.sort()
            rs[s:e] = np.cumsum(seg[::-1])[::-1]
        self.sv = sv  # ascending within each layer
        self.rs = rs  # rs[j] = sum sv[j:end of layer]
        self.n = self.ends - self.starts

    # counting / selection on a(nu) = sv - nu c_l, monotone within each layer -----------------
    def _first(self, lo: np.ndarray, hi: np.ndarray, nuc: np.ndarray, t: float, strict: bool) -> np.ndarray:
        """Per layer, first index j in [lo, hi) with ``sv[j] - nuc > t`` (``>=``), else hi."""
        lo = lo.copy()
        hi = hi.copy()
        sv = self.sv
        while True:
            act = lo < hi
            if not act.any():
                return lo
            mid = (lo + hi) >> 1
            val = sv[np.where(act, mid, 0)] - nuc
            pred = (val > t) if strict else (val >= t)
            hi = np.where(act & pred, mid, hi)
            lo = np.where(act & ~pred, mid + 1, lo)

    def _select(self, nuc: np.ndarray, r: int) -> float:
        """The r-th largest (1-based) of all ``sv - nuc`` (exact, an element's computed value)."""
        lo, hi = self.starts.copy(), self.ends.copy()
        above = 0
        sv = self.sv
        while True:
            n = hi - lo
            tot = int(n.sum())
            if tot <= _GATHER:
                live = np.flatnonzero(n)
                vals = np.concatenate([sv[lo[i]:hi[i]] - nuc[i] for i in live.tolist()])
                rr = r - above  # rank among the active ones, largest first
                return float(np.partition(vals, tot - rr)[tot - rr])
            live = np.flatnonzero(n)
            mv = sv[lo[live] + n[live] // 2] - nuc[live]
            o = np.argsort(mv, kind="stable")
            cw = np.cumsum(n[live][o])
            pivot = float(mv[o][int(np.searchsorted(cw, tot / 2.0))])
            gt = self._first(lo, hi, nuc, pivot, True)
            ge = self._first(lo, hi, nuc, pivot, False)
            cnt_gt = above + int((hi - gt).sum())
            cnt_ge = above + int((hi - ge).sum())
            if cnt_gt >= r:
                lo = gt
            elif cnt_ge >= r:
                return pivot
            else:
                above = cnt_ge
                hi = ge

    def mu(self, nu: float) -> float:
        if self.k >= self.p:
            return 0.0
        return max(self._select(nu * self.c, self.k + 1), 0.0)

    def _counts(self, nu: float) -> np.ndarray:
        """Per-layer counts m of a maximising set (top m of each layer)."""
        L = self.c.shape[0]
        if self.k == 0:
            return np.zeros(L, dtype=np.int64)
        nuc = nu * self.c
        mu = self.mu(nu)
        gt = self._first(self.starts, self.ends, nuc, mu, True)
        m = self.ends - gt
        if mu > 0.0:
            need = self.k - int(m.sum())
            if need > 0:
                ge = self._first(self.starts, self.ends, nuc, mu, False)
                avail = gt - ge
                before = np.cumsum(avail) - avail
                m = m + np.clip(need - before, 0, avail)
        return m

    def _top(self, m: np.ndarray) -> float:
        has = m > 0
        return float(self.rs[(self.ends - m)[has]].sum())

    def evaluate(self, nu: float) -> tuple[float, float, float, np.ndarray]:
        m = self._counts(nu)
        vT = self._top(m)
        fT = float(np.dot(self.c, m))
        has = m > 0
        # g = F nu + sum_l (top_l(m_l) - nu c_l m_l), summed per layer
        g = self.F * nu + float(np.sum(self.rs[(self.ends - m)[has]] - nu * self.c[has] * m[has]))
        return g, vT, fT, m

    def diff(self, mL: np.ndarray, mR: np.ndarray) -> tuple[float, float]:
        dv = 0.0
        for i in np.flatnonzero(mL != mR).tolist():
            e = int(self.ends[i])
            a, b = int(mL[i]), int(mR[i])
            if a > b:
                dv += float(self.sv[e - a:e - b].sum())
            else:
                dv -= float(self.sv[e - b:e - a].sum())
        return dv, float(np.dot(self.c, (mL - mR).astype(np.float64)))

    def nu_upper(self) -> float:
        pos = (self.c > 0) & (self.n > 0)
        if not pos.any():
            return 0.0
        return float(np.max(self.sv[self.ends[pos] - 1] / self.c[pos]))

    def _mask_grouped(self, m: np.ndarray) -> np.ndarray:
        """Bool mask (grouped order) of the top ``m_l`` of each layer, ties by position."""
        out = np.zeros(self.p, dtype=bool)
        for i in np.flatnonzero(m).tolist():
            s, e, cnt = int(self.starts[i]), int(self.ends[i]), int(m[i])
            if cnt >= e - s:
                out[s:e] = True
                continue
            thr = self.sv[e - cnt]
            seg = self.w[s:e]
            sel = seg > thr
            need = cnt - int(np.count_nonzero(sel))
            if need > 0:
                sel[np.flatnonzero(seg == thr)[:need]] = True
            out[s:e] = sel
        return out

    def _ungroup(self, zg: np.ndarray) -> np.ndarray:
        if self.order is None:
            return zg
        z = np.empty_like(zg)
        z[self.order] = zg
        return z

    def integral(self, m: np.ndarray) -> np.ndarray:
        return self._ungroup(self._mask_grouped(m).astype(np.float64))

    def combine(self, mL: np.ndarray, mR: np.ndarray, lam: float) -> np.ndarray:
        x = mR + lam * (mL - mR).astype(np.float64)  # concentrated per-layer fractional counts
        base = np.floor(x).astype(np.int64)
        base = np.minimum(base, self.n)
        frac = x - base
        fl = np.flatnonzero((frac > 0) & (base < self.n))
        if fl.size > 2:
            vnext = self.sv[self.ends[fl] - base[fl] - 1]
            frac[fl] = _pivot_reduce(frac[fl], self.c[fl], vnext)
            up = fl[frac[fl] >= 1.0]
            base[up] += 1
            frac[up] = 0.0
            frac[fl[frac[fl] <= 0.0]] = 0.0
            fl = np.flatnonzero((frac > 0) & (base < self.n))
        zg = self._mask_grouped(base).astype(np.float64)
        if fl.size:
            inc = base.copy()
            inc[fl] += 1
            nxt = self._mask_grouped(inc)
            pos = np.flatnonzero(nxt & (zg == 0))
            lay_of = np.searchsorted(self.ends, pos, side="right")
            zg[pos] = frac[lay_of]
        return self._ungroup(zg)


# --------------------------------------------------------------------------------------------
# Basic-solution reduction helpers
# --------------------------------------------------------------------------------------------


def _concentrate(z: np.ndarray, f: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Within each group of equal cost, move the mass ``sum z`` to the largest values.

    Count and cost are unchanged and the value never decreases; afterwards each cost group
    has at most one fractional entry.
    """
    order = np.lexsort((np.arange(z.size), -v, f))
    fs = f[order]
    new_group = np.concatenate(([True], fs[1:] != fs[:-1]))
    gid = np.cumsum(new_group) - 1
    mass = np.bincount(gid, weights=z[order])
    first = np.flatnonzero(new_group)
    rank = np.arange(z.size) - first[gid]
    # Snap masses that are integers up to rounding (e.g. lam + (1 - lam)).
    rm = np.round(mass)
    mass = np.where(np.abs(mass - rm) <= 1e-12 * np.maximum(1.0, rm), rm, mass)
    out = np.empty_like(z)
    out[order] = np.clip(mass[gid] - rank, 0.0, 1.0)
    return out


def _pivot_reduce(z: np.ndarray, f: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Reduce to at most two fractional entries keeping ``sum z`` and ``f @ z``, value >= before.

    Moves three fractional entries at a time along ``d`` with ``sum d = 0`` and ``f @ d = 0``
    (the cross product of (1,1,1) and their costs) in the direction where ``v @ d >= 0``.
    """
    z = z.astype(np.float64, copy=True)
    frac = [i for i in range(z.size) if 0.0 < z[i] < 1.0]
    while len(frac) >= 3:
        i, j, l = frac[-3], frac[-2], frac[-1]
        d = np.array([f[l] - f[j], f[i] - f[l], f[j] - f[i]], dtype=np.float64)
        if not np.any(d):
            d = np.array([1.0, -1.0, 0.0])
        if float(np.dot(d, v[[i, j, l]])) < 0:
            d = -d
        idx = (i, j, l)
        # largest t with 0 <= z + t d <= 1
        steps = []
        for q, dq in zip(idx, d):
            if dq > 0:
                steps.append(((1.0 - z[q]) / dq, q, 1.0))
            elif dq < 0:
                steps.append((z[q] / -dq, q, 0.0))
        t, q_hit, val = min(steps)
        for q, dq in zip(idx, d):
            z[q] = min(max(z[q] + t * dq, 0.0), 1.0)
        z[q_hit] = val
        frac = [q for q in frac if 0.0 < z[q] < 1.0]
    return z


def _greedy_fill(v: np.ndarray, f: np.ndarray, support: np.ndarray, k_rem: int, F_rem: float) -> int:
    """Add unselected coordinates by decreasing value while both budgets allow (in place).

    Candidates are processed in blocks of the largest values (``argpartition``), each block
    sorted by (value desc, index asc); a coordinate that does not fit is skipped. Returns the
    number of coordinates added.
    """
    added = 0
    if k_rem <= 0 or F_rem < 0:
        return 0
    cand = np.flatnonzero(~support & (v > 0) & (f <= F_rem))
    while k_rem > 0 and cand.size:
        B = min(cand.size, max(64, 4 * k_rem))
        if B == cand.size:
            top, rest = cand, cand[:0]
        else:
            part = np.argpartition(-v[cand], B - 1)
            top, rest = cand[part[:B]], cand[part[B:]]
        top = top[np.lexsort((top, -v[top]))]
        while top.size and k_rem > 0:
            cs = np.cumsum(f[top])
            fit = min(int(np.searchsorted(cs, F_rem, side="right")), k_rem)
            if fit:
                support[top[:fit]] = True
                F_rem -= float(cs[fit - 1])
                k_rem -= fit
                added += fit
            top = top[fit + 1:]  # top[fit] (if any) does not fit: skip it
            top = top[f[top] <= F_rem]
        cand = rest[f[rest] <= F_rem]
    return added


# --------------------------------------------------------------------------------------------
# The solve
# --------------------------------------------------------------------------------------------


def _as_vector(name: str, x: Any, p: int | None = None) -> np.ndarray:
    arr = np.asarray(backend.to_numpy(x), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if p is not None and arr.shape[0] != p:
        raise ValueError(f"{name}: expected length {p}, got {arr.shape[0]}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf")
    if arr.size and np.any(arr < 0):
        raise ValueError(f"{name}: must be non-negative")
    return arr


def solve_flop_nnz_lp(
    values: Any, costs: Any, k: int, flop_budget: float, layer: Any = None
) -> DualSortSolution:
    """Solve the LP relaxation of the FLOP-NNZ ILP exactly and round it (see module docstring).

    Parameters
    ----------
    values : (p,) non-negative values v (NumPy, or anything ``combprune.backend.to_numpy`` takes).
    costs : (p,) non-negative costs f (same unit as ``flop_budget``).
    k : count budget, ``0 <= k`` (values above p mean "no count limit").
    flop_budget : F ``>= 0``.
    layer : optional (p,) integer group index with ``costs`` constant per group (fast path).

    Returns
    -------
    DualSortSolution (NumPy arrays).
    """
    v = _as_vector("values", values)
    p = v.shape[0]
    f = _as_vector("costs", costs, p)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected a non-negative integer, got {k!r}")
    k = int(min(k, p))
    F = float(flop_budget)
    if not math.isfinite(F) or F < 0:
        raise ValueError(f"flop_budget: expected a finite number >= 0, got {flop_budget!r}")
    if layer is not None:
        lay = backend.to_numpy(layer)
        if lay.shape != (p,):
            raise ValueError(f"layer: expected shape ({p},), got {lay.shape}")
        if lay.dtype.kind not in "iu":
            raise ValueError(f"layer: expected an integer array, got dtype {lay.dtype}")
        oracle: Any = _LayeredOracle(v, f, lay, k, F) if p else _GeneralOracle(v, f, k, F)
    else:
        oracle = _GeneralOracle(v, f, k, F)
    z, nu, bound, iters = _kelley(oracle, F)
    lp_value = float(np.dot(v, z))
    mu = oracle.mu(nu)
    support = z >= 1.0
    dropped = np.flatnonzero((z > 0) & (z < 1))
    k_rem = k - int(np.count_nonzero(support))
    F_rem = F - float(f[support].sum())
    _greedy_fill(v, f, support, k_rem, F_rem)
    value = float(v[support].sum())
    bound = max(bound, lp_value)  # rounding noise: the bound can never be below a feasible LP value
    return DualSortSolution(
        z=z, lp_value=lp_value, bound=bound, mu=mu, nu=nu, support=support, value=value,
        dropped=dropped, iterations=iters, path=oracle.path,
    )


def _kelley(oracle: Any, F: float) -> tuple[np.ndarray, float, float, int]:
    """Minimise g(nu) over nu >= 0; returns (LP primal z, nu*, best upper bound, evaluations)."""
    g0, v0, f0, T0 = oracle.evaluate(0.0)
    it = 1
    if F - f0 >= 0:  # slope >= 0 at nu = 0: optimal there, T0 is an integral LP optimum
        return oracle.integral(T0), 0.0, g0, it
    nu_R = 2.0 * oracle.nu_upper() + 1e-300
    gR, vR, fR, TR = oracle.evaluate(nu_R)
    it += 1
    bound = min(g0, gR)
    if F - fR <= 0:  # slope F - 0 = F: here F == 0, flat line, optimal
        return oracle.integral(TR), nu_R, gR, it
    nu_L, fL, vL, TL = 0.0, f0, v0, T0
    nu = nu_L
    for _ in range(_MAX_ITER):
        dv, df = oracle.diff(TL, TR)  # vL - vR, fL - fR (> 0)
        nu = min(max(dv / df, nu_L), nu_R)
        lower = max((F - fL) * nu + vL, (F - fR) * nu + vR)
        g, vT, fT, T = oracle.evaluate(nu)
        it += 1
        bound = min(bound, g)
        if g - lower <= _KELLEY_RTOL * max(abs(g), 1e-300) or nu <= nu_L or nu >= nu_R:
            break
        s = F - fT
        if s < 0:
            nu_L, fL, vL, TL = nu, fT, vT, T
        elif s > 0:
            nu_R, fR, vR, TR = nu, fT, vT, T
        else:  # a tangent line of slope 0: nu is optimal and T spends exactly F
            return oracle.integral(T), nu, min(bound, g), it
    else:  # pragma: no cover - Kelley is finite; guard against floating-point cycling
        logger.warning("dual-sort: no convergence in %d steps (bound gap %.3g)", _MAX_ITER, g - lower)
    _, df = oracle.diff(TL, TR)
    lam = (F - fR) / df
    lam = min(max(lam, 0.0), 1.0)
    return oracle.combine(TL, TR, lam), nu, bound, it


def flop_nnz_select(values: Any, costs: Any, k: int, flop_budget: float, layer: Any = None) -> np.ndarray:
    """Boolean support (p,) maximising ``sum values`` under ``|S| <= k`` and ``costs(S) <= F``.

    The integer solution of :func:`solve_flop_nnz_lp` (LP dual search, drop the <= 2 fractional
    entries, greedy fill). For the Euclidean projection of ``u`` onto
    ``{w : ||w||_0 <= k, sum_{w_i != 0} f_i <= F}`` pass ``values = u**2`` and keep ``u`` on the
    returned support (FALCON's Lemma 1).
    """
    return solve_flop_nnz_lp(values, costs, k, flop_budget, layer).support


@register_solver(
    "dual-sort",
    problems=FlopNnzILP,
    exact=False,
    description="FALCON's LP dual search by sorting/selection, certified rounding + greedy fill.",
)
def dual_sort(problem: FlopNnzILP, *, deadline: Deadline, seed: int | None = None, use_layers: bool = True) -> Result:
    """LP relaxation through its 1-D dual, rounded; ``bound`` = LP value, ``gap`` certified.

    Options
    -------
    use_layers : use the per-layer fast path when the problem has a ``layer`` index (default).

    ``result.info``: ``lp_value``, ``mu``, ``nu``, ``lp_x`` (the LP primal, input namespace),
    ``fractional`` (indices), ``dropped_value`` (sum of dropped fractional values),
    ``path``, ``gap_abs``. ``iterations`` counts dual evaluations. Status ``optimal`` only when
    the integer value equals the LP bound (to 1e-12 relative), otherwise ``feasible``.
    """
    if not isinstance(use_layers, bool):
        raise ValueError(f"use_layers: expected a bool, got {use_layers!r}")
    layer = problem.layer if use_layers else None
    sol = solve_flop_nnz_lp(problem.values, problem.costs, problem.k, problem.flop_budget, layer)
    like = problem.values
    x = backend.from_numpy(sol.support.astype(np.float64), like=like, keep_dtype=True)
    objective = problem.objective(x)
    optimal = objective >= sol.bound - 1e-12 * max(abs(sol.bound), 1e-300)
    info = {
        "lp_value": sol.lp_value,
        "mu": sol.mu,
        "nu": sol.nu,
        "lp_x": backend.from_numpy(sol.z, like=like, keep_dtype=True),
        "fractional": sol.fractional,
        "dropped_value": float(backend.to_numpy(problem.values)[sol.dropped].astype(np.float64).sum()),
        "path": sol.path,
        "gap_abs": max(sol.bound - objective, 0.0),
    }
    return Result(
        x=x, support=sol.support, objective=objective, status=Status.OPTIMAL if optimal else Status.FEASIBLE,
        bound=sol.bound, iterations=sol.iterations, history=[(deadline.elapsed(), objective)],
        info=info,
    )
