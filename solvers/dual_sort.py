r"""``dual-sort``: FALCON's FLOP-NNZ ILP through the one-dimensional dual of its LP relaxation.

Problem (docs/formulations/flop_nnz_ilp.md, :class:`~combprune.problems.FlopNnzILP`)::

    maximize_z  sum_i v_i z_i   s.t.  sum_i z_i <= k,  sum_i f_i z_i <= F,  z in {0,1}^p

The algorithm (Kelley's method on the 1-D dual, primal recovery with at most two fractional
entries, greedy fill and 1-swap rounding) is the kernel
:mod:`combprune.solvers._kernels.flop_nnz` (also the FLOP-aware projection of the L0 solvers);
this module is the registered solver around it (docs/solvers/dual_sort.md).
"""

from __future__ import annotations

import numpy as np

from combprune import backend
from combprune.params import Boolean
from combprune.problems import FlopNnzILP
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._kernels.flop_nnz import DualSortSolution, flop_nnz_select, solve_flop_nnz_lp

__all__ = ["dual_sort", "flop_nnz_select", "solve_flop_nnz_lp", "DualSortSolution"]


@register_solver(
    "dual-sort",
    problems=FlopNnzILP,
    exact=False,
    description="FALCON's LP dual search by sorting/selection, certified rounding + greedy fill.",
    params={
        "use_layers": Boolean(),
    },
)
def dual_sort(problem: FlopNnzILP, *, deadline: Deadline, seed: int | None = None, use_layers: bool = True) -> Result:
    """LP relaxation through its 1-D dual, rounded; ``bound`` = LP value, ``gap`` certified.

    Options
    -------
    use_layers : use the per-layer fast path when the problem has a ``layer`` index, or when
        its costs come in long runs of equal cost (default True).

    ``result.info``: ``lp_value``, ``mu``, ``nu``, ``lp_x`` (the LP primal, input namespace),
    ``fractional`` (indices), ``dropped_value`` (sum of dropped fractional values),
    ``path``, ``gap_abs``. ``iterations`` counts dual evaluations. Status ``optimal`` only when
    the integer value equals the LP bound (to 1e-12 relative), otherwise ``feasible``.
    """
    layer = problem.layer if use_layers else None
    sol = solve_flop_nnz_lp(problem.values, problem.costs, problem.k, problem.flop_budget, layer, check_input=False,
                            auto_layers=use_layers)
    like = problem.values
    x_np = sol.support.astype(np.float64)
    x = backend.from_numpy(x_np, like=like, keep_dtype=True)
    if backend.is_numpy(like) and like.dtype == np.float64:
        # the same float64 dot as FlopNnzILP.objective, without its two defensive copies
        objective = float(np.dot(like, x_np))
    else:
        objective = problem.objective(x)
    optimal = objective >= sol.bound - 1e-12 * max(abs(sol.bound), 1e-300)
    info = {
        "lp_value": sol.lp_value,
        "mu": sol.mu,
        "nu": sol.nu,
        "lp_x": backend.from_numpy(sol.z, like=like, keep_dtype=True),
        "fractional": sol.fractional,
        "dropped_value": float(np.asarray(backend.to_numpy(problem.values)[sol.dropped], dtype=np.float64).sum()),
        "path": sol.path,
        "gap_abs": max(sol.bound - objective, 0.0),
    }
    status = Status.OPTIMAL if optimal else Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    return Result(
        x=x, support=sol.support, objective=objective, status=status,
        bound=sol.bound, iterations=sol.iterations, history=[(deadline.elapsed(), objective)],
        info=info,
    )
