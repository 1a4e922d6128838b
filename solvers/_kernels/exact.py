"""Shared helpers of the exact solvers: turning a MIP solver's floating-point answer into a
point that satisfies the formulation *exactly*, with an objective recomputed in float64.

A MIP solver works to tolerances (integrality ~1e-9, primal feasibility ~1e-9), so its binary
variables can come back as 0.9999999997 and its continuous weights as 3e-11 where the model
forces zero. These helpers

* round binaries to exact 0/1 and, in the rare case where rounding breaks a budget by more
  than :func:`~combprune.problems.l0_regression.within_budget` allows, repair the point by
  dropping selected coordinates (the caller then downgrades ``optimal`` to ``feasible``);
* for the two regressions, set the weights to exactly zero off the selected support and
  re-solve the ridge least squares on the support in float64 (``lstsq`` on the stacked
  system, so ridge = 0 and rank deficiency are fine), so that ``objective`` equals
  ``problem.objective(x)`` and is at least as good as the solver's continuous answer.
"""

from __future__ import annotations

import math

import numpy as np

from combprune import backend
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP
from combprune.problems.budget import flop_total, within_budget

from .flop_nnz import solve_flop_nnz_lp
from .selection import greedy_mask

__all__ = ["scaled_data", "greedy_ilp", "round_selection", "ilp_point", "pow2_above", "exact_lstsq", "cast_point", "l0_refit", "structured_refit",
           "weak_dual_bound", "ilp_lp_certificate", "ilp_bound_and_proof"]


def greedy_ilp(problem: FlopNnzILP) -> np.ndarray:
    """The better of two greedy fills of a ``FlopNnzILP``: by value and by value per FLOP."""
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    budget = problem.budget
    by_value = greedy_mask(budget, np.argsort(-v, kind="stable"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(f > 0, v / np.where(f > 0, f, 1.0), np.inf)
    order = np.lexsort((-v, -ratio))  # ratio first, then value (zero-cost coordinates first)
    by_ratio = greedy_mask(budget, order)
    return by_value if v[by_value].sum() >= v[by_ratio].sum() else by_ratio


def round_selection(
    frac: np.ndarray, values: np.ndarray, k: int | None, costs: np.ndarray | None, budget: float | None
) -> tuple[np.ndarray, bool]:
    """Round a near-binary selection to a feasible boolean mask.

    Returns ``(mask, repaired)``; ``repaired`` is True when coordinates had to be dropped
    (count above ``k`` or cost above ``budget``), lowest ``values`` first (among those with a
    positive cost when the cost budget is the violated one).
    """
    mask = np.asarray(frac, dtype=np.float64) > 0.5
    repaired = False
    if k is not None:
        while int(mask.sum()) > k:
            sel = np.flatnonzero(mask)
            mask[sel[np.argmin(values[sel])]] = False
            repaired = True
    if costs is not None:
        while not within_budget(flop_total(costs, mask), budget):
            sel = np.flatnonzero(mask & (costs > 0))
            mask[sel[np.argmin(values[sel])]] = False
            repaired = True
    return mask, repaired


def ilp_point(problem: FlopNnzILP, frac: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(z, support, repaired)`` for a ``FlopNnzILP`` from a solver's (near-)binary vector.

    ``frac=None`` (no incumbent) gives the always-feasible ``z = 0``.
    """
    if frac is None:
        z = np.zeros(problem.p)
        return z, z.astype(bool), False
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    mask, repaired = round_selection(frac, v, problem.k, f, problem.flop_budget)
    return mask.astype(np.float64), mask, repaired


#: Relative cut-offs of the singular values tried by :func:`exact_lstsq` (LAPACK's default
#: ``eps * max(M.shape)``, a tighter one, and every nonzero singular value).
_RCONDS = (None, 1e-13, 0.0)


def pow2_above(x: float) -> float:
    """The power of two ``2^e`` with ``x / 2^e`` in [0.5, 1) (1.0 for ``x <= 0``): dividing by
    it is exact, so it scales data without rounding."""
    return math.ldexp(1.0, math.frexp(x)[1]) if x > 0 else 1.0


def exact_lstsq(M: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """A minimiser of ``||M x - rhs||_F`` that is exact in float64 as far as float64 allows.

    Numerical rank is the weak point of a least-squares "exact" refit: LAPACK's default
    cut-off (``eps * max(M.shape) * sigma_max``) can drop a tiny but genuine singular value and
    lose its reduction of the residual, while keeping a pure-rounding one amplifies noise into
    huge cancelling weights. So the system is scaled by a power of two (exact; no overflow or
    underflow in the SVD at extreme data scales), one SVD gives the pseudo-inverse solutions
    for the cut-offs :data:`_RCONDS` (rank increasing), each improved by one step of iterative
    refinement, and a higher rank replaces a lower one only when its float64 residual is
    smaller by more than the rounding error of evaluating it,
    ``e(x) = 4 eps max(M.shape) || |M| |x| + |rhs| ||_F``: never worse than LAPACK's default,
    never a gain that is only rounding noise.
    """
    sc = pow2_above(float(np.abs(M).max(initial=0.0)))
    Ms, rs = M / sc, rhs / sc
    U, sv, Vt = np.linalg.svd(Ms, full_matrices=False)
    top = float(sv[0]) if sv.size else 0.0
    eps = np.finfo(np.float64).eps
    best, best_res, best_err, tried = None, math.inf, 0.0, set()
    for rcond in _RCONDS:
        cut = (eps * max(M.shape) if rcond is None else rcond) * top
        r = int(np.count_nonzero(sv > cut))
        if r in tried:
            continue
        tried.add(r)

        def apply(y: np.ndarray, r: int = r) -> np.ndarray:
            c = U[:, :r].T @ y
            return Vt[:r].T @ (c / (sv[:r, None] if c.ndim == 2 else sv[:r]))

        x = apply(rs)
        x = x + apply(rs - Ms @ x)
        if not np.all(np.isfinite(x)):
            continue
        res = float(np.linalg.norm(Ms @ x - rs))
        err = 4 * eps * max(M.shape) * float(np.linalg.norm(np.abs(Ms) @ np.abs(x) + np.abs(rs)))
        if best is None or res + err < best_res - best_err:
            best, best_res, best_err = x, res, err
    return best if best is not None else np.zeros((M.shape[1],) + rhs.shape[1:])


def cast_point(problem, x64: np.ndarray, like) -> tuple[object, float, bool]:
    """``(x, objective, exact)``: the float64 optimum ``x64`` in ``like``'s namespace and dtype.

    ``exact`` is False when casting to a lower precision (float32 data) made the objective
    worse than ``x64``'s by more than rounding of the objective itself: the returned point is
    then not the optimum (callers report ``feasible``, with ``x64``'s value as the bound).
    """
    x = backend.from_numpy(x64, like=like, keep_dtype=True)
    objective = problem.objective(x)
    own = problem.objective(x64)
    sense = 1.0 if problem.sense == "min" else -1.0
    return x, objective, sense * (objective - own) <= 1e-12 * max(abs(own), 1e-300)


def l0_refit(problem: L0Regression, support: np.ndarray) -> np.ndarray:
    """Exact minimiser of ``Q`` over weights supported on ``support`` (float64, zeros elsewhere).

    ``Q(w) = 1/2 ||M w_S - rhs||^2`` with ``M = [A_S; sqrt(ridge) I]`` and
    ``rhs = [b; sqrt(ridge) w_bar_S]``, solved by :func:`exact_lstsq` (ridge = 0 and rank
    deficiency included)."""
    A = backend.to_numpy(problem.A).astype(np.float64)
    b = backend.to_numpy(problem.b).astype(np.float64)
    w_bar = backend.to_numpy(problem.w_bar).astype(np.float64)
    w = np.zeros(problem.p)
    idx = np.flatnonzero(support)
    if idx.size:
        sr = math.sqrt(problem.ridge)
        M = np.vstack([A[:, idx], sr * np.eye(idx.size)])
        rhs = np.concatenate([b, sr * w_bar[idx]])
        w[idx] = exact_lstsq(M, rhs)
        # the solution can have exact zeros on the support (rank deficiency); that only helps the budgets
    return w


def structured_refit(problem: StructuredMIQP, group_sel: np.ndarray) -> np.ndarray:
    """Exact ``W`` for the selected groups, zero rows elsewhere.

    With ``K = H + ridge I`` PSD, the objective over rows S is
    ``1/2 tr(W_S^T K_SS W_S) - tr(W_S^T G_S) + const`` (``G = K W_hat``); its minimisers solve
    ``K_SS W_S = G_S``, a consistent system (G_S lies in the range of K_SS), solved by
    :func:`exact_lstsq`."""
    H = backend.to_numpy(problem.H).astype(np.float64)
    W_hat = backend.to_numpy(problem.W_hat).astype(np.float64)
    K = H + problem.ridge * np.eye(problem.d)
    rows = problem.rows_of(group_sel)
    W = np.zeros_like(W_hat)
    if rows.any():
        W[rows] = exact_lstsq(K[np.ix_(rows, rows)], (K @ W_hat)[rows])
    return W


def weak_dual_bound(problem: FlopNnzILP, mu: float, nu: float) -> float:
    """``k mu + F nu + sum_i max(0, v_i - mu - nu f_i)`` in float64 (``math.fsum``).

    By weak duality of the LP relaxation this is an upper bound on the ILP optimum for *any*
    ``mu, nu >= 0``, whatever the accuracy of the method that produced them.
    """
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    return _dual_value(v, f, problem.k, problem.flop_budget, mu, nu)


def _dual_value(v: np.ndarray, f: np.ndarray, k: int, F: float, mu: float, nu: float) -> float:
    """The LP dual objective at ``(mu, nu)`` clipped to ``>= 0``, summed exactly."""
    mu, nu = max(float(mu), 0.0), max(float(nu), 0.0)
    return math.fsum([k * mu, F * nu, *np.maximum(0.0, v - mu - nu * f).tolist()])


#: Relative slack of the ILP bound checks (rounding of float64 sums only): a MIP solver's
#: bound more than this below a feasible value is rejected, and a gap within it is a proof.
ILP_BOUND_RTOL = 1e-12
#: A MIP solver's bound may lie this much (relative) below the float64 value of its own point:
#: its feasibility/optimality tolerances (1e-9 here); further below, the bound is rejected.
ILP_SOLVER_RTOL = 1e-9


def ilp_lp_certificate(problem: FlopNnzILP) -> tuple[float, np.ndarray]:
    """``(bound, support)``: the LP relaxation's weak-duality bound in float64 and its rounded
    integer point (dual-sort, one sort). The bound is valid whatever a MIP solver's
    tolerances do to extreme values.

    Coordinates whose cost alone exceeds the FLOP budget are 0 in every integer point, so they
    are left out of the relaxation (a valid, tighter bound: the LP could otherwise take a
    fraction of them), and the data are scaled by powers of two so the duals are of order one.
    """
    f_all = backend.to_numpy(problem.costs).astype(np.float64)
    fits = np.array([within_budget(c, problem.flop_budget) for c in f_all.tolist()], dtype=bool)
    support = np.zeros(problem.p, dtype=bool)
    if not fits.any():
        return 0.0, support
    v, f, F, s_v, s_f = scaled_data(problem)  # duals of order one, whatever the data's units
    layer = None if problem.layer is None else backend.to_numpy(problem.layer)[fits]
    lp = solve_flop_nnz_lp(v[fits], f[fits], problem.k, F, layer, check_input=False)
    v_fit = backend.to_numpy(problem.values).astype(np.float64)[fits]
    bound = _dual_value(v_fit, f_all[fits], problem.k, problem.flop_budget, lp.mu * s_v, lp.nu * s_v / s_f)
    support[np.flatnonzero(fits)] = np.asarray(lp.support, dtype=bool)
    return bound, support


def ilp_bound_and_proof(objective: float, solver_bound: float | None, lp_bound: float, solver_optimal: bool,
                        rel_gap: float) -> tuple[float, bool, bool]:
    """``(bound, optimal, trusted)`` for a maximisation from a MIP solver's answer.

    The solver's bound is trusted only when it is not below the float64 value of the point
    returned by more than ``ILP_SOLVER_RTOL`` (further below a feasible value it is provably
    wrong: lost offsets, tolerances);
    the reported bound is the smaller trusted one of it and the LP certificate. ``optimal``:
    the LP certificate closes the gap, or the solver proved optimality with a trusted bound
    within ``max(rel_gap, ILP_BOUND_RTOL)``. Status and bound cannot contradict each other.
    """
    trusted = solver_bound is not None and math.isfinite(solver_bound) and solver_bound >= objective - ILP_SOLVER_RTOL * abs(objective)
    # within the solver's tolerance below the point, the point's value is the bound it proved
    bound = min(max(solver_bound, objective), lp_bound) if trusted else lp_bound
    gap = (bound - objective) / max(abs(objective), 1e-300) if objective else (0.0 if bound <= 0 else math.inf)
    optimal = gap <= ILP_BOUND_RTOL or (solver_optimal and trusted and gap <= max(rel_gap, ILP_BOUND_RTOL))
    return bound, optimal, trusted


def scaled_data(problem: FlopNnzILP) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """``(v / s_v, f / s_f, F / s_f, s_v, s_f)`` with powers of two ``s_v = 2^ceil(log2 max v)`` and
    ``s_f`` likewise for ``max(max f, F)``: the model the MIP solver (HiGHS, CBC) sees has entries of order one, and
    the scaling is exact (objective = ``s_v`` x the solver's objective, the same feasible set)."""
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    s_v = pow2_above(float(v.max()))
    s_f = pow2_above(max(float(f.max()), float(problem.flop_budget)))
    return v / s_v, f / s_f, float(problem.flop_budget) / s_f, s_v, s_f
