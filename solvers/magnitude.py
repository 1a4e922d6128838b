r"""``magnitude``: magnitude pruning, the baseline every study compares against.

For :class:`~combprune.problems.L0Regression` (weights ``w_bar``, count budget k):

* **global** (default): keep the k largest ``|w_bar_i|``; ``w = w_bar`` on the kept support,
  0 elsewhere (no re-fit: this is plain magnitude pruning);
* **per layer** (``per_layer=True`` with ``layers``, an int array giving each coordinate's
  layer): every layer keeps the same density ``k / p``; the per-layer budgets
  ``k_l = floor(k n_l / p)`` are topped up by the largest remainders (ties to the lower layer
  label) so that they sum to exactly k; then the top ``k_l`` of each layer are kept;
* **FLOP-aware** (the problem has ``flop_costs``/``flop_budget``, FALCON's MP): the FLOP-NNZ
  ILP with values ``v = w_bar**2``, solved by ``dual-sort`` (LP dual search, certified rounding,
  greedy fill, see :mod:`combprune.solvers.dual_sort`); ``layers`` (costs constant within each
  layer) enables its per-layer fast path. ``info`` carries the ILP's LP bound and certified gap
  (in units of ``sum w_bar**2`` kept, not of the regression objective).

Selection is ``argpartition``-based (O(p)), never a full sort. Ties in ``|w_bar|`` go to the
smaller index, so the result is deterministic. Status is always ``feasible`` (a heuristic).

For :class:`~combprune.problems.FlopNnzILP` the same solver is the *value-greedy* baseline:
take coordinates by decreasing value (ties to the smaller index), skipping any that would
break the FLOP budget, until k are kept or nothing else fits. Without a binding FLOP budget
this is exactly top-k by value (optimal); with one it ignores costs when ranking, which is
what plain magnitude pruning does, and is what ``dual-sort`` improves on.

Public helper: :func:`topk_mask` (deterministic top-k boolean mask of a NumPy vector).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from combprune import backend
from combprune.params import ArrayLike, Boolean
from combprune.problems import FlopNnzILP, L0Regression, LayerwiseL0
from combprune.registry import register_solver
from combprune.result import Deadline, Result, Status

from ._kernels.layerwise import magnitude_layerwise
from ._kernels.flop_nnz import solve_flop_nnz_lp
from ._kernels.selection import greedy_fill, per_layer_budgets, topk_mask

__all__ = ["topk_mask", "per_layer_budgets", "magnitude"]


def _check_layers(layers: Any, p: int) -> np.ndarray:
    lay = backend.to_numpy(layers)
    if lay is None or lay.ndim != 1 or lay.shape[0] != p:
        raise ValueError(f"layers: expected an integer array of shape ({p},), got {None if lay is None else lay.shape}")
    if lay.dtype.kind not in "iu":
        if lay.dtype.kind == "f" and np.all(lay == np.round(lay)):
            lay = lay.astype(np.int64)
        else:
            raise ValueError(f"layers: expected integer layer labels, got dtype {lay.dtype}")
    return lay


def _per_layer_mask(scores: np.ndarray, k: int, lay: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    labels, inverse, sizes = np.unique(lay, return_inverse=True, return_counts=True)
    budgets = per_layer_budgets(sizes, k)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    mask = np.zeros(scores.shape[0], dtype=bool)
    for j in range(labels.size):
        idx = order[bounds[j]:bounds[j + 1]]  # ascending coordinates of layer j
        mask[idx[topk_mask(scores[idx], int(budgets[j]))]] = True
    return mask, {str(int(lab)): int(b) for lab, b in zip(labels, budgets)}


def _costs_constant_per_layer(costs: np.ndarray, lay: np.ndarray) -> bool:
    order = np.argsort(lay, kind="stable")
    ls, cs = lay[order], costs[order]
    same = ls[1:] == ls[:-1]
    return not bool(np.any(same & (cs[1:] != cs[:-1])))


def _l0(problem: L0Regression, per_layer: bool, layers: Any) -> Result:
    w_bar = backend.to_numpy(problem.w_bar).astype(np.float64)
    p = problem.p
    lay = None if layers is None else _check_layers(layers, p)
    info: dict[str, Any] = {}
    if problem.flop_costs is not None:
        if per_layer:
            raise ValueError(
                "per_layer: not available with a FLOP budget (FLOP-aware magnitude pruning chooses the "
                "layer budgets itself); pass layers=... without per_layer to speed it up"
            )
        costs = backend.to_numpy(problem.flop_costs).astype(np.float64)
        use = lay if lay is not None and _costs_constant_per_layer(costs, lay) else None
        sol = solve_flop_nnz_lp(w_bar * w_bar, costs, problem.k, problem.flop_budget, use)
        mask = sol.support
        info.update(mode="flop", ilp_value=sol.value, ilp_bound=sol.bound, ilp_gap_abs=sol.gap,
                    lp_value=sol.lp_value, mu=sol.mu, nu=sol.nu, path=sol.path)
    elif per_layer:
        if lay is None:
            raise ValueError("layers: per_layer=True needs layers, an int array giving each coordinate's layer")
        mask, budgets = _per_layer_mask(np.abs(w_bar), problem.k, lay)
        info.update(mode="per_layer", layer_budgets=budgets)
    else:
        mask = topk_mask(np.abs(w_bar), problem.k)
        info.update(mode="global")
    w = np.where(mask, w_bar, 0.0)
    x = backend.from_numpy(w, like=problem.w_bar, keep_dtype=True)
    return Result(x=x, support=mask, objective=problem.objective(x), status=Status.FEASIBLE, info=info)


def _ilp(problem: FlopNnzILP, per_layer: bool, layers: Any) -> Result:
    if per_layer or layers is not None:
        raise ValueError("per_layer: layer options apply to L0Regression only (FlopNnzILP has its own layer index)")
    v = backend.to_numpy(problem.values).astype(np.float64)
    f = backend.to_numpy(problem.costs).astype(np.float64)
    support = np.zeros(problem.p, dtype=bool)
    greedy_fill(v, f, support, problem.k, float(problem.flop_budget))
    x = backend.from_numpy(support.astype(np.float64), like=problem.values, keep_dtype=True)
    return Result(x=x, support=support, objective=problem.objective(x), status=Status.FEASIBLE,
                  info={"mode": "value_greedy"})


@register_solver(
    "magnitude",
    problems=(L0Regression, FlopNnzILP, LayerwiseL0),
    exact=False,
    description="Magnitude pruning: top-k |w_bar| (global or per layer); FLOP-aware via the dual-sort ILP.",
    params={
        "per_layer": Boolean(),
        "layers": [None, ArrayLike()],
    },
)
def magnitude(problem, *, deadline: Deadline, seed: int | None = None, per_layer: bool = False,
              layers: Any = None) -> Result:
    """Magnitude pruning (see the module docstring).

    Options
    -------
    per_layer : keep the same density k/p in every layer (needs ``layers``; L0Regression
        without a FLOP budget).
    layers : (p,) integer layer label of each coordinate (NumPy, torch or CuPy).
    """
    if not isinstance(per_layer, (bool, np.bool_)):
        raise ValueError(f"per_layer: expected a bool, got {per_layer!r}")
    if isinstance(problem, LayerwiseL0):  # docs/formulations/layerwise_l0.md
        result = magnitude_layerwise(problem, bool(per_layer), layers)
    elif isinstance(problem, L0Regression):
        result = _l0(problem, bool(per_layer), layers)
    else:
        result = _ilp(problem, bool(per_layer), layers)
    result.history = [(deadline.elapsed(), result.objective)]
    if deadline.expired():  # one pass, not interruptible: report that the limit was exceeded
        result.status = Status.TIME_LIMIT
    return result
