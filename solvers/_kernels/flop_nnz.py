r"""The FLOP-NNZ ILP kernel (solver ``dual-sort``, FALCON's projection): the ILP through the one-dimensional dual of its LP relaxation.

Problem (docs/formulations/flop_nnz_ilp.md, :class:`~combprune.problems.FlopNnzILP`)::

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
are constant per layer, a multi-pivot selection in ``L`` per-layer sorted lists (each layer
sorted once; each evaluation then costs a few rounds of ``L`` binary searches, independent of
``p``, warm-started from the previous evaluation's set).

Primal recovery: the final left/right sets ``T_L`` (cost >= F) and ``T_R`` (cost <= F) are both
maximisers of the Lagrangian at ``nu*``; ``z = lam 1_{T_L} + (1 - lam) 1_{T_R}`` with
``lam = (F - f(T_R)) / (f(T_L) - f(T_R))`` spends exactly F and has value equal to the lower
bound, so it is LP-optimal. It is reduced to a *basic* optimal solution with at most two
fractional entries without decreasing the value: fractional mass among coordinates of equal
cost is moved to the largest values, then three fractional coordinates at a time are moved
along the null direction of the two constraint rows, ``d = (f_l - f_j, f_i - f_l, f_j - f_i)``,
in the non-decreasing-value sense until one becomes 0 or 1.

Integer solution: drop the (at most two) fractional entries, then fill what is left of both
budgets greedily by decreasing value, then a 1-swap local search (exchange one kept for one
left-out coordinate while the value rises and both budgets hold). Certificate: ``LP bound - integer value <=`` the values of
the dropped coordinates; the returned ``bound`` is ``min g`` (a valid upper bound) and the status
is ``optimal`` only when the integer value reaches it (to 1e-12 relative).

Public API (stable: used by the IHT / DFO / FALCON solvers as the FLOP-aware projection)
-------------------------------------------------------------------------------------
``flop_nnz_select(values, costs, k, flop_budget, layer=None) -> np.ndarray``
    Boolean support (p,) of the integer solution (NumPy 1-D inputs; float64 internally).
``solve_flop_nnz_lp(values, costs, k, flop_budget, layer=None, *, check_input=True,
auto_layers=True) -> DualSortSolution``
    The whole solve: LP primal ``z`` (<= 2 fractional), ``lp_value``, ``bound``, duals
    ``mu, nu``, integer ``support`` and ``value``, iteration count and path.

``layer`` (optional int array, p) groups coordinates whose cost is constant (a network layer,
or any grouping by equal cost); it enables the per-layer fast path: one sort per layer
(about the cost of one ``np.sort`` of p values) and a p-independent dual search. Without it,
long contiguous runs of equal cost are detected and used as layers (``auto_layers``);
otherwise every dual evaluation is an ``O(p)`` partition over a shrinking candidate set
(typically 10-20 evaluations). Below p = 50 000 the general path is used (it is faster).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from combprune import backend

from .selection import greedy_fill

__all__ = ["DualSortSolution", "solve_flop_nnz_lp", "flop_nnz_select"]

logger = logging.getLogger(__name__)

#: Relative tolerance at which Kelley's upper and lower bounds on min g are considered equal.
_KELLEY_RTOL = 1e-12
_MAX_ITER = 200
#: Below this many active candidates the layered selection gathers them and partitions.
_GATHER = 4096
#: Sample size and number of pivots per round of the layered multi-pivot selection.
_SAMPLES = 256
_PIVOTS = 31
#: Up to this many layers, per-layer counts use one np.searchsorted per layer; beyond, a
#: binary search vectorised over (layers x pivots).
_LOOP_LAYERS = 256
#: Below this p a layer index is validated but the general path is used (it is faster there:
#: the layered path's per-evaluation cost is Python overhead over the L layers).
_LAYERED_MIN_P = 50_000
#: Warm start of the dual search: sample size, relative first probe step, number of probes.
_SAMPLE_P = 16384
_PROBE_STEP = 0.02
_PROBES = 8
#: Without a layer index, runs of equal cost this long on average are used as layers.
_AUTO_RUN_LENGTH = 1000
#: General path: candidate shrinking starts once this many candidates remain.
_NARROW_MIN = 1024
#: Layered 1-swap local search after the rounding: at most this many exchanges, and only
#: when there are at most this many layers (the exchange table is L x L).
_SWAP_ROUNDS = 64
_SWAP_MAX_LAYERS = 1024
#: General path's 1-swap: the best unselected values considered per round.
_SWAP_CANDIDATES = 256
#: Block length of the layered path's running sums.
_BLOCK = 2048


@dataclass
class DualSortSolution:
    """Outcome of :func:`solve_flop_nnz_lp` (NumPy arrays, float64).

    Attributes
    ----------
    lp_support : (p,) bool, the entries equal to 1 in the basic LP solution.
    dropped : (<= 2,) indices of its fractional entries (sorted), dropped by the rounding.
    dropped_frac : their LP values, in (0, 1).
    lp_value : ``v @ z`` (the LP optimum, to ~1e-12 relative).
    bound : ``min_nu g(nu)`` found, a valid upper bound on the LP and ILP optima.
    mu, nu : optimal duals of the count and FLOP rows.
    support : (p,) bool, the integer solution (fractional entries dropped, then greedy fill).
    value : ``v[support].sum()``, the integer objective.
    iterations : dual evaluations (Kelley steps).
    path : ``"layered"`` or ``"general"``.

    ``z`` (the dense LP solution, built on first access), ``fractional`` (= ``dropped``) and
    ``gap`` (certified, ``bound - value``) are properties.
    """

    lp_support: np.ndarray
    dropped: np.ndarray
    dropped_frac: np.ndarray
    lp_value: float
    bound: float
    mu: float
    nu: float
    support: np.ndarray
    value: float
    iterations: int
    path: str

    @functools.cached_property
    def z(self) -> np.ndarray:
        """(p,) optimal basic LP solution, entries in [0, 1], at most two strictly fractional."""
        z = self.lp_support.astype(np.float64)
        z[self.dropped] = self.dropped_frac
        return z

    @property
    def gap(self) -> float:
        """Certified absolute gap ``bound - value`` (>= 0 up to rounding)."""
        return max(self.bound - self.value, 0.0)

    @property
    def fractional(self) -> np.ndarray:
        """Indices where ``0 < z < 1`` (the dropped entries)."""
        return self.dropped


# --------------------------------------------------------------------------------------------
# Oracles: evaluate g(nu) and a maximising set T; both paths expose the same interface.
# --------------------------------------------------------------------------------------------


class _GeneralOracle:
    """Arbitrary costs: each evaluation partitions the scores ``a = v - nu f``.

    Candidate shrinking: once Kelley's bracket ``[nu_L, nu_R]`` is known (with
    ``mu(nu_L) >= mu(nu) >= mu(nu_R)``, mu being non-increasing in nu), a coordinate with
    ``v_i - nu_R f_i > mu(nu_L)`` is in every maximising set inside the bracket and one with
    ``v_i - nu_L f_i < mu(nu_R)`` in none; only the others (``U``) are partitioned again.
    """

    path = "general"

    def __init__(self, v: np.ndarray, f: np.ndarray, k: int, F: float) -> None:
        self.v, self.f, self.k, self.F = v, f, k, F
        self.p = v.shape[0]
        self.uidx: np.ndarray | None = None  # None: every coordinate is a candidate
        self.vU, self.fU = v, f
        self.in_mask = np.zeros(self.p, dtype=bool)
        self.n_in, self.v_in, self.f_in = 0, 0.0, 0.0
        self._mu: dict[float, float] = {}
        self.nu_star = 0.0  # set before finish(): ranks the swap candidates

    def mu(self, nu: float) -> float:
        """(k+1)-th largest of ``a(nu)`` floored at 0 (0 when k = p)."""
        if nu not in self._mu:
            self.evaluate(nu)
        return self._mu[nu]

    def evaluate(self, nu: float) -> tuple[float, float, float, np.ndarray]:
        """``(g(nu), v(T), f(T), T)`` for a maximising set T (bool mask over all p)."""
        vU, fU = self.vU, self.fU
        a = vU if nu == 0.0 else vU - nu * fU
        nU = a.shape[0]
        r = self.k + 1 - self.n_in  # rank of the (k+1)-th largest among the candidates
        if self.k == 0:
            mu = max(float(a.max(initial=0.0)), 0.0) if nU else 0.0
            TU = np.zeros(nU, dtype=bool)
        else:
            mu = 0.0 if r > nU else max(float(np.partition(a, nU - r)[nU - r]), 0.0)
            TU = a > mu
            if mu > 0.0:
                need = self.k - self.n_in - int(np.count_nonzero(TU))
                if need > 0:  # ties at the (k+1)-th value: take the first ones by index
                    TU[np.flatnonzero(a == mu)[:need]] = True
        self._mu[nu] = mu
        vT = self.v_in + float(vU[TU].sum())
        fT = self.f_in + float(fU[TU].sum())
        g = self.F * nu + (self.v_in - nu * self.f_in) + float(a[TU].sum())
        if self.uidx is None:
            T = TU
        else:
            T = self.in_mask.copy()
            T[self.uidx[TU]] = True
        return g, vT, fT, T

    def narrow(self, nu_L: float, nu_R: float) -> None:
        """Fix the coordinates that are in / out of every maximising set on [nu_L, nu_R]."""
        mu_L, mu_R = self._mu.get(nu_L), self._mu.get(nu_R)
        if mu_L is None or mu_R is None or self.vU.shape[0] < _NARROW_MIN:
            return
        vU, fU = self.vU, self.fU
        tol = 1e-12 * (vU + nu_R * fU + mu_L) + 1e-300
        sure_in = vU - nu_R * fU > mu_L + tol
        sure_out = vU - nu_L * fU < mu_R - tol
        keep = ~(sure_in | sure_out)
        n_keep = int(np.count_nonzero(keep))
        if n_keep > 0.7 * vU.shape[0]:
            return  # not worth a copy yet
        uidx = np.arange(self.p) if self.uidx is None else self.uidx
        if self.uidx is None:
            self.in_mask = sure_in.copy()
        else:
            self.in_mask[uidx[sure_in]] = True
        self.n_in += int(np.count_nonzero(sure_in))
        self.v_in += float(vU[sure_in].sum())
        self.f_in += float(fU[sure_in].sum())
        self.uidx, self.vU, self.fU = uidx[keep], vU[keep], fU[keep]

    def diff(self, TL: np.ndarray, TR: np.ndarray) -> tuple[float, float]:
        """``(v(TL) - v(TR), f(TL) - f(TR))`` summed over the symmetric difference only.

        The two sets agree outside the current candidates, so only those are looked at.
        """
        if self.uidx is not None:
            TL, TR = TL[self.uidx], TR[self.uidx]
        A, B = TL & ~TR, TR & ~TL
        vU, fU = self.vU, self.fU
        return (float(vU[A].sum() - vU[B].sum()), float(fU[A].sum() - fU[B].sum()))

    def nu_upper(self) -> float:
        pos = self.f > 0
        if not pos.any():
            return 0.0
        return float(np.max(self.v[pos] / self.f[pos]))

    def finish(self, T: Any, lam: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
        """``(lp_support, dropped, dropped_frac, support, lp_value, value)``.

        ``lp_support``: entries at 1 in the basic LP solution; ``dropped``/``dropped_frac``:
        its fractional entries and their values; ``support``: the integer solution.
        """
        z = T.astype(np.float64) if lam is None else self.combine(T[0], T[1], lam)
        lp_value = float(np.dot(self.v, z))
        lp_support = z >= 1.0
        dropped = np.flatnonzero((z > 0) & (z < 1))
        support = lp_support.copy()
        k_rem = self.k - int(np.count_nonzero(support))
        F_rem = self.F - float(self.f[support].sum())
        greedy_fill(self.v, self.f, support, k_rem, F_rem)
        _swap_in(self.v, self.f, support, dropped, self.k, self.F, self.nu_star)
        return lp_support, dropped, z[dropped], support, lp_value, float(self.v[support].sum())

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
    """Costs constant per layer: sort each layer once, select across the L sorted lists.

    Storage: ``na`` holds minus each layer's values sorted ascending (so the values in
    descending order, layers contiguous), plus block sums for the top-m sums. A set T of the
    dual oracle is a vector of per-layer counts (the top m_l values of each layer).
    """

    path = "layered"

    @staticmethod
    def _check_constant(f: np.ndarray, lay: np.ndarray) -> None:
        """ValueError unless ``f`` is constant within each layer of ``lay``."""
        order = np.argsort(lay, kind="stable")
        ls, fs = lay[order], f[order]
        bad = (ls[1:] == ls[:-1]) & (fs[1:] != fs[:-1])
        if bad.any():
            raise ValueError(f"layer: costs must be constant within a layer (layer {int(ls[1:][bad][0])} has several costs)")

    def __init__(self, v: np.ndarray, f: np.ndarray, layer: np.ndarray | None, k: int, F: float,
                 check_input: bool = True, runs: np.ndarray | None = None) -> None:
        """``layer``: int label per coordinate; or ``layer=None`` and ``runs``: the start
        indices (after 0) of contiguous runs of equal cost, each run used as a layer."""
        self.k, self.F = k, F
        self.p = v.shape[0]
        self.v, self.f = v, f
        if layer is None:
            change, check_input = np.asarray(runs, dtype=np.int64), False
            lay = np.zeros(0, dtype=np.int64)
            contiguous = True
        else:
            lay = np.asarray(layer)
            change = np.flatnonzero(lay[1:] != lay[:-1]) + 1
            run_labels = lay[np.concatenate(([0], change))] if self.p else lay[:0]
            contiguous = np.unique(run_labels).size == run_labels.size
        if contiguous:  # every layer is one contiguous run
            self.order = None
            w, fw = v, f
        else:
            lmin, lmax = int(lay.min()), int(lay.max())
            key = lay.astype(np.int16) if lmin >= -32768 and lmax < 32767 else lay
            self.order = np.argsort(key, kind="stable")  # radix sort for 16-bit labels
            w, fw = v[self.order], f[self.order]
            ls = lay[self.order]
            change = np.flatnonzero(ls[1:] != ls[:-1]) + 1
        self.starts = np.concatenate(([0], change)).astype(np.int64)
        self.ends = np.concatenate((change, [self.p])).astype(np.int64)
        self.c = fw[self.starts].astype(np.float64)
        if check_input:
            cmax = np.maximum.reduceat(fw, self.starts)
            cmin = np.minimum.reduceat(fw, self.starts)
            if np.any(cmax != cmin):
                bad_pos = self.starts[np.flatnonzero(cmax != cmin)[0]]
                bad = int(lay[bad_pos] if self.order is None else lay[self.order[bad_pos]])
                raise ValueError(f"layer: costs must be constant within a layer (layer {bad} has several costs)")
        self.w = w  # values in layer-grouped order
        na = np.negative(w)  # each layer sorted ascending below: na = -(values, descending)
        for s, e in zip(self.starts.tolist(), self.ends.tolist()):
            na[s:e].sort()
        self.na = na
        self.n = self.ends - self.starts
        # block sums of na (blocks never straddle layers) and their per-layer running sums
        nb = -(-self.n // _BLOCK)
        self.bfirst = np.concatenate(([0], np.cumsum(nb)[:-1])).astype(np.int64)
        bst = np.repeat(self.starts, nb) + _BLOCK * (np.arange(int(nb.sum())) - np.repeat(self.bfirst, nb))
        bsum = np.add.reduceat(na, bst) if bst.size else np.zeros(0)
        bcum = np.empty_like(bsum)
        for j0, cnt in zip(self.bfirst.tolist(), nb.tolist()):
            np.cumsum(bsum[j0:j0 + cnt], out=bcum[j0:j0 + cnt])
        self.bcum = bcum
        self._last: np.ndarray | None = None  # counts of the last top-k (warm start)
        self._mu_at: tuple[float, float] | None = None  # (nu, mu) of the last selection

    # counting / selection ------------------------------------------------------------------
    # An element (l, j) has dual score a = sd[j] - nu c_l, sd = -na (values, descending).
    # Comparisons with a threshold t are made as ``sd[j] > fl(t + nu c_l)`` (one binary search per layer); this matches the exact
    # order of the a's up to ties at the rounding level, which cannot change g(nu) beyond
    # rounding: any prefix-count set of size <= k gives a valid tangent line.
    def _count_gt(self, lo: np.ndarray, hi: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """(L, P) counts of ``sd[j] > keys[l, p]`` for j in [lo_l, hi_l) (sd descending)."""
        L, P = keys.shape
        if L <= _LOOP_LAYERS:
            out = np.zeros((L, P), dtype=np.int64)
            na = self.na
            for i in np.flatnonzero(hi > lo).tolist():
                out[i] = np.searchsorted(na[lo[i]:hi[i]], -keys[i], side="left")
            return out
        lo2 = np.repeat(lo[:, None], P, axis=1)
        hi2 = np.repeat(hi[:, None], P, axis=1)
        base = lo2.copy()
        na = self.na
        while True:
            act = lo2 < hi2
            if not act.any():
                return lo2 - base
            mid = (lo2 + hi2) >> 1
            pred = na[np.where(act, mid, 0)] < -keys  # sd > key
            lo2 = np.where(act & pred, mid + 1, lo2)
            hi2 = np.where(act & ~pred, mid, hi2)

    def _topk(self, nu: float) -> tuple[np.ndarray, float]:
        """Per-layer counts m of the k largest positive a's, and mu = (k+1)-th largest a, >= 0.

        Multi-pivot selection: pivots at weighted quantiles of a sample of the active
        elements, counts for all (layer, pivot) pairs, the active ranges shrink to the bracket
        of rank k+1; the last few thousand candidates are gathered and sorted.
        """
        nuc = nu * self.c
        L = self.c.shape[0]
        starts, ends, na = self.starts, self.ends, self.na
        if self.k == 0 or self.k >= self.p:
            m = (np.zeros(L, dtype=np.int64) if self.k == 0
                 else self._count_gt(starts, ends, nuc[:, None])[:, 0])
            mu = 0.0 if self.k >= self.p else max(self._kth(nuc, 1), 0.0)
            return m, mu
        r = self.k + 1
        lo, hi = starts.copy(), ends.copy()
        prev = -1
        warm = self._warm_pivots(nuc)
        while True:
            n = hi - lo
            tot = int(n.sum())
            above = int((lo - starts).sum())
            if tot <= _GATHER or tot == prev:
                break
            prev = tot
            if warm is not None:
                piv, warm = warm, None
                piv = np.unique(piv)[::-1]
                cnt = self._count_gt(lo, hi, piv[None, :] + nuc[:, None])
                cnt_gt = above + cnt.sum(axis=0)
                pa = int(np.searchsorted(cnt_gt, r, side="left"))
                new_lo = lo + cnt[:, pa - 1] if pa > 0 else lo
                if pa < piv.size:
                    hi = lo + cnt[:, pa]
                lo = new_lo
                prev = -1
                continue
            live = np.flatnonzero(n)
            nl = n[live]
            s_l = np.minimum(nl, 1 + (_SAMPLES * nl) // tot)
            lay = np.repeat(live, s_l)
            srep = np.repeat(s_l, s_l)
            kin = np.arange(lay.size) - np.repeat(np.cumsum(s_l) - s_l, s_l)
            pos = lo[lay] + ((2 * kin + 1) * n[lay]) // (2 * srep)
            sv = -na[pos] - nuc[lay]
            o = np.argsort(-sv, kind="stable")
            cw = np.cumsum((n[lay] / srep)[o])
            q = np.arange(1, _PIVOTS + 1) * (tot / (_PIVOTS + 1))
            piv = np.unique(sv[o][np.minimum(np.searchsorted(cw, q), o.size - 1)])[::-1]  # descending
            cnt = self._count_gt(lo, hi, piv[None, :] + nuc[:, None])  # (L, P)
            cnt_gt = above + cnt.sum(axis=0)  # non-decreasing along the descending pivots
            pa = int(np.searchsorted(cnt_gt, r, side="left"))  # first pivot with cnt_gt >= r
            new_lo = lo + cnt[:, pa - 1] if pa > 0 else lo
            if pa < piv.size:
                hi = lo + cnt[:, pa]
            lo = new_lo
        live = np.flatnonzero(hi > lo)
        vals = np.concatenate([-na[lo[i]:hi[i]] - nuc[i] for i in live.tolist()])
        labs = np.repeat(live, (hi - lo)[live])
        rr = r - above  # rank of the (k+1)-th among the gathered, largest first
        o = np.argsort(-vals, kind="stable")
        x = float(vals[o[rr - 1]])
        if x <= 0.0:  # fewer than k+1 positive scores: take exactly the positive ones
            self._mu_at = (nu, 0.0)
            return self._count_gt(starts, ends, nuc[:, None])[:, 0], 0.0
        m = (lo - starts) + np.bincount(labs[o[: rr - 1]], minlength=L)
        self._last = m
        self._mu_at = (nu, x)
        return m, x

    def _warm_pivots(self, nuc: np.ndarray) -> np.ndarray | None:
        """Bracket of the (k+1)-th largest a from the last top-k counts (Kelley steps are close).

        With T the last set (k elements), the (k+1)-th largest lies between the smallest score
        kept and the largest score left out (both orders), so these two pivots bracket it.
        """
        m = self._last
        if m is None:
            return None
        has_in, has_out = m > 0, m < self.n
        if not has_in.any() or not has_out.any():
            return None
        na, st = self.na, self.starts
        worst_in = float(np.min(-na[st[has_in] + m[has_in] - 1] - nuc[has_in]))
        best_out = float(np.max(-na[st[has_out] + m[has_out]] - nuc[has_out]))
        return np.array([worst_in, best_out])

    def _kth(self, nuc: np.ndarray, r: int) -> float:
        """The r-th largest a (small r: only the top r of each layer can matter)."""
        live = np.flatnonzero(self.n)
        vals = np.concatenate([-self.na[self.starts[i]:self.starts[i] + min(r, int(self.n[i]))] - nuc[i]
                               for i in live.tolist()])
        return float(np.partition(vals, vals.size - r)[vals.size - r])

    def mu(self, nu: float) -> float:
        if self._mu_at is not None and self._mu_at[0] == nu:
            return self._mu_at[1]
        return self._topk(nu)[1]

    def _top(self, m: np.ndarray) -> np.ndarray:
        """Per-layer sums of the top m values (block running sums + one partial block)."""
        nb = m // _BLOCK
        out = np.zeros(m.shape[0])
        full = nb > 0
        out[full] = self.bcum[self.bfirst[full] + nb[full] - 1]
        rem = m - nb * _BLOCK
        na, st = self.na, self.starts
        for i in np.flatnonzero(rem).tolist():
            a = int(st[i] + nb[i] * _BLOCK)
            out[i] += na[a:a + int(rem[i])].sum()
        return -out

    def evaluate(self, nu: float) -> tuple[float, float, float, np.ndarray]:
        m = self._topk(nu)[0]
        top = self._top(m)
        vT = float(top.sum())
        fT = float(np.dot(self.c, m))
        g = self.F * nu + float(np.sum(top - nu * self.c * m))
        return g, vT, fT, m

    def diff(self, mL: np.ndarray, mR: np.ndarray) -> tuple[float, float]:
        dv = 0.0
        for i in np.flatnonzero(mL != mR).tolist():
            s = int(self.starts[i])
            a, b = int(mL[i]), int(mR[i])
            if a > b:
                dv -= float(self.na[s + b:s + a].sum())
            else:
                dv += float(self.na[s + a:s + b].sum())
        return dv, float(np.dot(self.c, (mL - mR).astype(np.float64)))

    def nu_upper(self) -> float:
        pos = (self.c > 0) & (self.n > 0)
        if not pos.any():
            return 0.0
        return float(np.max(-self.na[self.starts[pos]] / self.c[pos]))

    def _layer_mask(self, i: int, cnt: int, out: np.ndarray) -> None:
        """Write into ``out`` (layer i's slice) the mask of its top ``cnt``, ties by position."""
        s, e = int(self.starts[i]), int(self.ends[i])
        if cnt <= 0:
            out[:] = False
            return
        if cnt >= e - s:
            out[:] = True
            return
        thr = -self.na[s + cnt - 1]
        seg = self.w[s:e]
        np.greater(seg, thr, out=out)
        need = cnt - int(np.count_nonzero(out))
        if need > 0:
            out[np.flatnonzero(seg == thr)[:need]] = True

    def _mask_grouped(self, m: np.ndarray) -> np.ndarray:
        """Bool mask (grouped order) of the top ``m_l`` of each layer, ties by position."""
        out = np.zeros(self.p, dtype=bool)
        for i in np.flatnonzero(m).tolist():
            self._layer_mask(i, int(m[i]), out[self.starts[i]:self.ends[i]])
        return out

    def _rank_item(self, i: int, r: int) -> int:
        """Grouped position of the element of rank r (0-based, ties by position) of layer i."""
        s, e = int(self.starts[i]), int(self.ends[i])
        thr = -self.na[s + r]
        seg = self.w[s:e]
        above = int(np.count_nonzero(seg > thr))
        return s + int(np.flatnonzero(seg == thr)[r - above])

    def _ungroup(self, g: np.ndarray) -> np.ndarray:
        if self.order is None:
            return g
        out = np.empty_like(g)
        out[self.order] = g
        return out

    def finish(self, T: Any, lam: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
        """``(lp_support, dropped, dropped_frac, support, lp_value, value)`` (see _finish)."""
        if lam is None:
            base, frac = T.copy(), np.zeros(T.shape[0])
        else:
            mL, mR = T
            x = mR + lam * (mL - mR).astype(np.float64)  # concentrated per-layer counts
            base = np.minimum(np.floor(x).astype(np.int64), self.n)
            frac = np.where(base < self.n, x - base, 0.0)
            fl = np.flatnonzero(frac > 0)
            if fl.size > 2:
                vnext = -self.na[self.starts[fl] + base[fl]]
                frac[fl] = _pivot_reduce(frac[fl], self.c[fl], vnext)
                up = fl[frac[fl] >= 1.0]
                base[up] += 1
                frac[up] = 0.0
                frac[fl[frac[fl] <= 0.0]] = 0.0
        fl = np.flatnonzero(frac > 0)
        lp_value = float(self._top(base).sum()) + float(np.dot(frac[fl], -self.na[self.starts[fl] + base[fl]]))
        # integer: drop the fractional entries, greedy fill over the layers' next items
        m = base.copy()
        self._greedy(m, self.k - int(m.sum()), self.F - float(np.dot(self.c, m)))
        self._swap(m)
        value = float(self._top(m).sum())
        support_g = self._mask_grouped(m)
        lp_g = support_g
        changed = np.flatnonzero(m != base)
        if changed.size:
            lp_g = support_g.copy()
            for i in changed.tolist():
                self._layer_mask(i, int(base[i]), lp_g[self.starts[i]:self.ends[i]])
        dropped = np.array([self._rank_item(i, int(base[i])) for i in fl.tolist()], dtype=np.int64)
        if self.order is not None:
            dropped = self.order[dropped]
        o = np.argsort(dropped)
        return self._ungroup(lp_g), dropped[o], frac[fl][o], self._ungroup(support_g), lp_value, value

    def _swap(self, m: np.ndarray) -> None:
        """1-swap local search across layer boundaries (in place on m), then greedy refill.

        Exchanges the last kept value of one layer for the next value of another while this
        increases the kept value and both budgets still hold (best exchange first).
        """
        L = m.shape[0]
        if L < 2 or L > _SWAP_MAX_LAYERS:
            return
        na, st, c, n = self.na, self.starts, self.c, self.n
        for _ in range(_SWAP_ROUNDS):
            F_rem = self.F - float(np.dot(c, m))
            nxt = np.where(m < n, -na[np.minimum(st + m, self.p - 1)], -np.inf)  # best value left out
            last = np.where(m > 0, -na[np.maximum(st + m - 1, 0)], np.inf)  # worst value kept
            gain = nxt[:, None] - last[None, :]  # add from layer a (row), remove from layer b
            fits = (c[:, None] - c[None, :]) <= F_rem
            np.fill_diagonal(fits, False)
            gain = np.where(fits, gain, -np.inf)
            best = int(np.argmax(gain))
            a, b = divmod(best, L)
            if not gain[a, b] > 0:
                return
            m[a] += 1
            m[b] -= 1
            self._greedy(m, self.k - int(m.sum()), self.F - float(np.dot(c, m)))

    def _greedy(self, m: np.ndarray, k_rem: int, F_rem: float) -> None:
        """Greedy fill by decreasing value, merging the layers' next items (in place on m)."""
        na, starts, c = self.na, self.starts, self.c
        while k_rem > 0:
            ok = (m < self.n) & (c <= F_rem)
            if not ok.any():
                return
            cand = np.flatnonzero(ok)
            nxt = -na[starts[cand] + m[cand]]
            o = np.argsort(-nxt, kind="stable")
            best = cand[o[0]]
            if nxt[o[0]] <= 0:
                return
            second = nxt[o[1]] if o.size > 1 else 0.0
            s, e, mb = int(starts[best]), int(self.ends[best]), int(m[best])
            # items of this layer not below the runner-up's next value (at least one)
            cnt = max(1, int(np.searchsorted(na[s + mb:e], -second, side="right")))
            cnt = min(cnt, k_rem)
            if c[best] > 0:
                cnt = min(cnt, int(F_rem // c[best]))
                while cnt > 0 and cnt * c[best] > F_rem:
                    cnt -= 1
                cnt = max(cnt, 1)
            m[best] += cnt
            k_rem -= cnt
            F_rem -= cnt * float(c[best])


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


def _swap_in(v: np.ndarray, f: np.ndarray, support: np.ndarray, cand: np.ndarray, k: int, F: float,
             nu: float = 0.0) -> None:
    """1-swap local search on the integer solution (in place), then greedy refill.

    Each round looks at the dropped coordinates ``cand`` and the ``_SWAP_CANDIDATES`` best
    unselected coordinates by value and by reduced value ``v - nu f``; for a candidate j the coordinate removed is the smallest-value kept i
    whose cost frees enough FLOPs (``f_i >= f_j - F_rem``, from a cost-sorted table of the kept
    coordinates with suffix minima); the best exchange with ``v_j > v_i`` is made.
    """
    rounds = 16 if int(np.count_nonzero(support)) <= 50_000 else 2
    for _ in range(rounds):
        kept = np.flatnonzero(support)
        if kept.size == 0:
            return
        F_rem = F - float(f[kept].sum())
        out = ~support & (v > 0)
        n_out = int(np.count_nonzero(out))
        if n_out == 0:
            return
        outs = np.flatnonzero(out)
        if n_out > _SWAP_CANDIDATES:
            by_v = outs[np.argpartition(-v[outs], _SWAP_CANDIDATES - 1)[:_SWAP_CANDIDATES]]
            red = v[outs] - nu * f[outs]
            by_a = outs[np.argpartition(-red, _SWAP_CANDIDATES - 1)[:_SWAP_CANDIDATES]]
            outs = np.concatenate((by_v, by_a))
        extra = cand[~support[cand] & (v[cand] > 0)]
        js = np.unique(np.concatenate((outs, extra)))
        o = np.argsort(f[kept], kind="stable")
        fk, vk = f[kept][o], v[kept][o]
        rev = vk[::-1]
        acc = np.minimum.accumulate(rev)
        last = np.maximum.accumulate(np.where(rev == acc, np.arange(rev.size), 0))
        suf_arg = (rev.size - 1 - last)[::-1]  # position (in o) of the min value among o[t:]
        pos = np.searchsorted(fk, f[js] - F_rem, side="left")
        ok = pos < fk.size
        if not ok.any():
            return
        js, pos = js[ok], pos[ok]
        gain = v[js] - vk[suf_arg[pos]]
        best = int(np.argmax(gain))
        if not gain[best] > 0:
            return
        i = kept[o[suf_arg[pos[best]]]]
        support[i] = False
        support[js[best]] = True
        greedy_fill(v, f, support, k - int(np.count_nonzero(support)), F - float(f[support].sum()))


# --------------------------------------------------------------------------------------------
# The solve
# --------------------------------------------------------------------------------------------


def _as_vector(name: str, x: Any, p: int | None = None, check: bool = True) -> np.ndarray:
    arr = np.asarray(backend.to_numpy(x), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if p is not None and arr.shape[0] != p:
        raise ValueError(f"{name}: expected length {p}, got {arr.shape[0]}")
    if check and arr.size:
        lo, hi = float(arr.min()), float(arr.max())  # NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}: contains NaN or Inf")
        if lo < 0:
            raise ValueError(f"{name}: must be non-negative")
    return arr


def solve_flop_nnz_lp(
    values: Any, costs: Any, k: int, flop_budget: float, layer: Any = None, *, check_input: bool = True,
    auto_layers: bool = True,
) -> DualSortSolution:
    """Solve the LP relaxation of the FLOP-NNZ ILP exactly and round it (see module docstring).

    Parameters
    ----------
    values : (p,) non-negative values v (NumPy, or anything ``combprune.backend.to_numpy`` takes).
    costs : (p,) non-negative costs f (same unit as ``flop_budget``).
    k : count budget, ``0 <= k`` (values above p mean "no count limit").
    flop_budget : F ``>= 0``.
    layer : optional (p,) integer group index with ``costs`` constant per group (fast path).
    check_input : validate finiteness/signs and the per-layer constancy of the costs (two
        passes over the data); callers that already validated (e.g. a ``FlopNnzILP``) skip it.
    auto_layers : without ``layer``, use contiguous runs of equal cost as layers when they
        are long (on average at least ``_AUTO_RUN_LENGTH`` = 1000 coordinates, p >= 50 000):
        the usual case of costs laid out layer after layer. One pass over ``costs``.

    Returns
    -------
    DualSortSolution (NumPy arrays).
    """
    v = _as_vector("values", values, check=check_input)
    p = v.shape[0]
    f = _as_vector("costs", costs, p, check=check_input)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected a non-negative integer, got {k!r}")
    k = int(min(k, p))
    F = float(flop_budget)
    if not math.isfinite(F) or F < 0:
        raise ValueError(f"flop_budget: expected a finite number >= 0, got {flop_budget!r}")
    oracle: Any = None
    if layer is None and auto_layers and p >= _LAYERED_MIN_P:
        runs = np.flatnonzero(f[1:] != f[:-1]) + 1  # contiguous runs of equal cost
        if (runs.size + 1) * _AUTO_RUN_LENGTH <= p:
            oracle = _LayeredOracle(v, f, None, k, F, False, runs=runs)
    if layer is not None and p > 0:
        lay = backend.to_numpy(layer)
        if lay.shape != (p,):
            raise ValueError(f"layer: expected shape ({p},), got {lay.shape}")
        if lay.dtype.kind not in "iu":
            raise ValueError(f"layer: expected an integer array, got dtype {lay.dtype}")
        if p >= _LAYERED_MIN_P:
            oracle = _LayeredOracle(v, f, lay, k, F, check_input)
        elif check_input:  # small p: the general path is faster, but still validate the layers
            _LayeredOracle._check_constant(f, lay)
    if oracle is None:
        oracle = _GeneralOracle(v, f, k, F)
    T, lam, nu, bound, iters = _kelley(oracle, F)
    oracle.nu_star = nu
    lp_support, dropped, dropped_frac, support, lp_value, value = oracle.finish(T, lam)
    mu = oracle.mu(nu)
    bound = max(bound, lp_value)  # rounding noise: the bound can never be below a feasible LP value
    return DualSortSolution(
        lp_support=lp_support, dropped=dropped, dropped_frac=dropped_frac, lp_value=lp_value, bound=bound,
        mu=mu, nu=nu, support=support, value=value, iterations=iters, path=oracle.path,
    )


def _estimate_nu(oracle: Any) -> float | None:
    """Optimal nu of a strided sample of about ``_SAMPLE_P`` coordinates (None for small p).

    Budgets are scaled by the sampling fraction; the sample's dual optimum is close to the
    full one, so Kelley can start from a tight bracket (fewer full evaluations).
    """
    p = oracle.p
    stride = p // _SAMPLE_P
    if stride < 4:
        return None
    vs = np.ascontiguousarray(oracle.v[::stride])
    fs = np.ascontiguousarray(oracle.f[::stride])
    frac = vs.shape[0] / p
    sub = _GeneralOracle(vs, fs, int(round(oracle.k * frac)), oracle.F * frac)
    return _kelley(sub, sub.F)[2]


def _kelley(oracle: Any, F: float) -> tuple[Any, float | None, float, float, int]:
    """Minimise g(nu) over nu >= 0 (Kelley's cutting planes in 1-D).

    Returns ``(T, lam, nu*, best upper bound, evaluations)``: the LP primal is the integral set
    T when ``lam`` is None, else ``lam T[0] + (1 - lam) T[1]``.
    """
    g0, v0, f0, T0 = oracle.evaluate(0.0)
    it = 1
    if F - f0 >= 0:  # slope >= 0 at nu = 0: optimal there, T0 is an integral LP optimum
        return T0, None, 0.0, g0, it
    bound = g0
    nu_L, fL, vL, TL = 0.0, f0, v0, T0
    right: tuple | None = None
    # Warm bracket: nu* of a strided sample (budgets scaled), then geometric probes around it.
    est = _estimate_nu(oracle)
    if est is not None and est > 0.0:
        step, nu = _PROBE_STEP, est
        for _ in range(_PROBES):
            g, vT, fT, T = oracle.evaluate(nu)
            it += 1
            bound = min(bound, g)
            if F - fT == 0:  # tangent of slope 0: optimal
                return T, None, nu, bound, it
            if F - fT < 0:
                nu_L, fL, vL, TL = nu, fT, vT, T
                if right is not None:
                    break
                nu = est * (1.0 + step)
            else:
                right = (nu, fT, vT, T)
                if nu_L > 0.0 or est * (1.0 - step) <= 0.0:
                    break
                nu = est * (1.0 - step)
            step *= 4.0
    if right is None:
        nu_R = 2.0 * oracle.nu_upper() + 1e-300
        gR, vR, fR, TR = oracle.evaluate(nu_R)
        it += 1
        bound = min(bound, gR)
        if F - fR <= 0:  # slope F - 0 = F: here F == 0, flat line, optimal
            return TR, None, nu_R, gR, it
    else:
        nu_R, fR, vR, TR = right
    nu = nu_L
    narrow = getattr(oracle, "narrow", None)
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
            return T, None, nu, min(bound, g), it
        if narrow is not None:
            narrow(nu_L, nu_R)
    else:  # pragma: no cover - Kelley is finite; guard against floating-point cycling
        logger.warning("dual-sort: no convergence in %d steps (bound gap %.3g)", _MAX_ITER, g - lower)
    _, df = oracle.diff(TL, TR)
    lam = (F - fR) / df
    lam = min(max(lam, 0.0), 1.0)
    return (TL, TR), lam, nu, bound, it


def flop_nnz_select(values: Any, costs: Any, k: int, flop_budget: float, layer: Any = None) -> np.ndarray:
    """Boolean support (p,) maximising ``sum values`` under ``|S| <= k`` and ``costs(S) <= F``.

    The integer solution of :func:`solve_flop_nnz_lp` (LP dual search, drop the <= 2 fractional
    entries, greedy fill). For the Euclidean projection of ``u`` onto
    ``{w : ||w||_0 <= k, sum_{w_i != 0} f_i <= F}`` pass ``values = u**2`` and keep ``u`` on the
    returned support (FALCON's Lemma 1).
    """
    return solve_flop_nnz_lp(values, costs, k, flop_budget, layer).support
