r"""``backsolve``: exact ridge least squares on a fixed support (CHITA's back-solve).

For a support S the best weights of ``L0Regression`` solve
``(A_S^T A_S + ridge I) w_S = A_S^T b + ridge w_bar_S`` with ``w = 0`` off S. The solve
(primal s x s system, n x n Woodbury system by Cholesky or conjugate gradients, the
``ridge = 0`` minimum-norm convention, block Gauss-Seidel) is the kernel
:func:`combprune.solvers._kernels.ridge.ridge_solve_on_support`, whose docstring states the
maths; this module is the registered solver around it (docs/solvers/chita.md).
"""

from __future__ import annotations

from typing import Any

from combprune.params import ArrayLike, Interval, Options
from combprune.problems import L0Regression
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.l0_data import L0Data, final_objective, scale_invariant
from ._kernels.projections import default_support
from ._kernels.ridge import METHODS, ridge_solve_on_support
from ._kernels.warm_start import support_mask

__all__ = ["ridge_solve_on_support", "backsolve", "METHODS"]


@register_solver(
    "backsolve",
    problems=L0Regression,
    exact=False,
    description="Exact ridge least squares on a given support (default: magnitude / FLOP-aware magnitude).",
    params={
        "support": [None, ArrayLike()],
        "block_size": [None, Interval(int, 1, None)],
        "blocks": [None, ArrayLike()],
        "sweeps": Interval(int, 1, None),
        "method": Options(METHODS),
    },
)
@scale_invariant
def backsolve(
    problem: L0Regression,
    *,
    deadline: Deadline,
    seed: int | None = None,
    support: Any = None,
    block_size: int | None = None,
    blocks: Any = None,
    sweeps: int = 1,
    method: str = "auto",
) -> Result:
    """Exact ridge least squares on ``support`` (a boolean mask or indices).

    Default support: top-k of ``|w_bar|`` (magnitude pruning), or FLOP-aware magnitude pruning
    (the FLOP-NNZ ILP with values ``w_bar^2``) under a FLOP budget. ``block_size`` /
    ``blocks`` (per-coordinate block index, e.g. layer) select the block Gauss-Seidel variant
    with ``sweeps`` sweeps. ``method`` (``"auto"``, ``"direct"``, ``"cg"``): how the n x n
    Woodbury system is solved when ``|S| > n`` (module docstring); always the exact solve.
    The support must satisfy both budgets (``ValueError`` otherwise).
    Status ``feasible``; ``iterations`` = 1 (or the number of sweeps);
    ``info["support_size"]``, ``info["mode"]`` (``"primal"``, ``"woodbury"`` or ``"block"``),
    ``info["method"]`` (``"direct"`` or ``"cg"``, the one that produced the result) and, when CG
    ran, ``info["cg_iterations"]`` (``info["cg_fallback"]`` when it fell back to direct).
    """
    history = History(deadline, "min")
    data = L0Data(problem)
    if block_size is not None and blocks is not None:
        raise ValueError("block_size, blocks: give at most one of them")
    mask = default_support(problem, data) if support is None else support_mask(problem, support, "support")
    solve_info: dict = {}
    w, e = ridge_solve_on_support(
        data.op.A, data.b, data.w_bar, data.ridge, mask, block_size=block_size, blocks=blocks, sweeps=sweeps,
        method=method, info=solve_info, return_residual=True,
    )
    x, objective, supp = final_objective(problem, data, w, e)
    history.record(objective)
    s = int(mask.sum())
    mode = "block" if (block_size is not None or blocks is not None) else ("primal" if s <= problem.n else "woodbury")
    status = Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    return Result(
        x=x, support=supp, objective=objective, status=status,
        iterations=sweeps if mode == "block" else 1, history=history.points,
        info={"support_size": s, "mode": mode, **solve_info},
    )
