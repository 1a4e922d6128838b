r"""``sparsegpt``: SparseGPT's column sweep for :class:`~combprune.problems.LayerwiseL0` (Frantar & Alistarh, 2023).

The sweep (adaptive mask selection by OBS saliencies, OBS updates, lazy batch updates, budgets
split over the blocks) is the kernel :mod:`combprune.solvers._kernels.obs_sweep`, whose
docstring states the maths; this module is the registered solver around it.
See ``docs/solvers/sparsegpt.md``.
"""

from __future__ import annotations


from combprune.params import Interval
from combprune.problems import LayerwiseL0
from combprune.registry import register_solver
from combprune.result import Deadline, Result

from ._kernels.layerwise import dense_f64, finish, lower_bound, single_thread
from ._kernels.obs_sweep import DEFAULT_BLOCK, sparsegpt_weights

__all__ = ["sparsegpt", "sparsegpt_weights"]


@register_solver(
    "sparsegpt",
    problems=LayerwiseL0,
    exact=False,
    description="SparseGPT: OBS column sweep with the Cholesky factor of the inverse Hessian and lazy block updates.",
    params={
        "block_size": Interval(int, 1, None),
        "damp": [None, Interval(float, 0, None)],
    },
)
def sparsegpt(problem: LayerwiseL0, *, deadline: Deadline, seed: int | None = None, block_size: int = DEFAULT_BLOCK,
              damp: float | None = None) -> Result:
    """SparseGPT (see the module docstring).

    Options
    -------
    block_size : columns per lazy-update block and per mask-selection block (paper: 128).
    damp : extra damping relative to ``mean(diag(K))``; default 0 when ``H + ridge I`` is
        positive definite, the paper's 0.01 otherwise.
    """
    K, W_hat, _ = dense_f64(problem)
    with single_thread():
        W = sparsegpt_weights(problem, K, W_hat, block_size=int(block_size), damp=damp)
    result = finish(problem, W, bound=lower_bound(problem, W_hat))
    result.history = [(deadline.elapsed(), result.objective)]
    return result
