r"""``wanda``: Wanda's pruning score for :class:`~combprune.problems.LayerwiseL0` (Sun et al., 2023).

Wanda ("pruning by weights and activations") scores weight ``(i, j)`` (input i, output j) by

.. math::  S_{ij} = |\hat W_{ij}| \cdot \|X_{:, i}\|_2 = |\hat W_{ij}| \sqrt{H_{ii}},

and compares scores *per output* (a row of the torch weight, a column here): every output keeps
the same number of weights. Kept weights are left at ``W_hat`` (no weight update). With the layer
count k the per-output budgets are ``k // m`` or one more; with ``k_col`` and N:M the pattern is
already per output. See ``docs/solvers/wanda.md``.
"""

from __future__ import annotations

import numpy as np

from combprune.problems import LayerwiseL0
from combprune.registry import register_solver
from combprune.result import Deadline, Result

from ._kernels.layerwise import dense_f64, finish, lower_bound, pattern_mask

__all__ = ["wanda", "wanda_mask"]


def wanda_mask(problem: LayerwiseL0, W_hat: np.ndarray, H_diag: np.ndarray) -> np.ndarray:
    """Mask of the largest Wanda scores per output under the problem's pattern."""
    scores = np.abs(W_hat) * np.sqrt(np.maximum(H_diag, 0.0))[:, None]
    return pattern_mask(problem, scores, per_output=True)


@register_solver(
    "wanda",
    problems=LayerwiseL0,
    exact=False,
    description="Wanda: keep the largest |W_ij| * ||X_i||_2 of every output (no weight update).",
)
def wanda(problem: LayerwiseL0, *, deadline: Deadline, seed: int | None = None) -> Result:
    """Wanda pruning (see the module docstring); ``bound`` is the ridge lower bound of the formulation."""
    K, W_hat, _ = dense_f64(problem)
    mask = wanda_mask(problem, W_hat, np.diag(K) - problem.ridge)
    result = finish(problem, np.where(mask, W_hat, 0.0), bound=lower_bound(problem, W_hat))
    result.history = [(deadline.elapsed(), result.objective)]
    return result
