r"""``flop_budget`` for the structured methods: one uniform fraction of groups removed per unit.

``flop_budget`` is the fraction of the **model's** dense FLOPs kept, counted as for the
unstructured methods (:func:`combprune.torch._flops.model_flops`: FLOPs per sample of one forward
pass, FLOPs = 2 x MACs, everything torch's counter sees, attention included). Removing groups
changes only the FLOPs of the layers the units touch (consumers, producers); a touched layer with
``w`` weights of which ``kept`` stay keeps ``dense x kept / w`` FLOPs
(:func:`combprune.torch.structured.kept_weights`), every other FLOP is fixed. So for a fraction
``f`` of groups removed in every unit (``floor(f x G)`` groups, as for ``sparsity``)

.. math::

    \mathrm{FLOPs}(f) = M - \sum_{l\ \mathrm{touched}} d_l \, (1 - \mathrm{kept}_l(f) / w_l)

with M the model's dense FLOPs and ``d_l`` the dense FLOPs of layer l. ``FLOPs(f)`` depends on
the counts of kept groups only (no solve needed) and does not increase with f; it changes only at
``f = j / n_u`` (``n_u`` the unit's groups, or blocks of groups for GQA query heads), so the
smallest f with ``FLOPs(f) <= flop_budget x M`` is found exactly by bisection over those
breakpoints, ``j < n_u`` (a unit never loses all its groups). Counting attention-score FLOPs as
fixed makes ``FLOPs(f)`` an upper bound when heads are removed (they shrink with the heads).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import numpy as np
from torch import nn

from combprune.problems.budget import within_budget

if TYPE_CHECKING:
    from .structured import StructuredPlan, StructuredSetup

__all__ = ["plan_model_flops", "uniform_fraction"]


def plan_model_flops(plan: "StructuredPlan", modules: Mapping[str, nn.Module], dense_flops: Mapping[str, float], model_flops: float) -> float:
    """The model's FLOPs per sample once ``plan``'s removed groups are gone (formula above)."""
    from .structured import kept_weights

    removed = math.fsum(dense_flops[name] * (1.0 - kept / params) for name, params, kept in kept_weights(plan, modules) if params)
    return model_flops - removed


def _candidates(setup: "StructuredSetup") -> np.ndarray:
    """Every fraction at which some unit's removed count changes: ``j / n_u``, ``0 <= j < n_u``."""
    fractions = [np.arange(n, dtype=np.float64) / n for n in {u.n_groups // max(u.even_blocks, 1) for u in setup.units}]
    return np.unique(np.concatenate(fractions))


def uniform_fraction(setup: "StructuredSetup", model_flops: float, flop_budget: float) -> tuple[float, float]:
    """``(f, FLOPs(f))``: the smallest uniform fraction of groups removed whose model FLOPs are
    within ``flop_budget x model_flops``, and those FLOPs. Sets nothing; raises ``ValueError``
    naming ``flop_budget`` when even the largest prunable fraction leaves too many FLOPs."""
    from .structured import StructuredPlan

    target = flop_budget * model_flops
    plan = StructuredPlan(setup.units)

    def flops_at(f: float) -> float:
        for unit in setup.units:
            keep = np.ones(unit.n_groups, dtype=bool)
            keep[: setup.n_remove(unit, f)] = False  # which groups go does not change the counts
            plan.keep[unit.consumer] = keep
        return plan_model_flops(plan, setup.modules, setup.dense_flops, model_flops)

    cands = _candidates(setup)
    lowest = flops_at(float(cands[-1]))
    if not within_budget(lowest, target):
        raise ValueError(
            f"flop_budget: {flop_budget:g} of the model's {model_flops:.6g} FLOPs cannot be met by structured pruning: "
            f"removing all but one group (or block of groups) of every unit still keeps {lowest:.6g} FLOPs "
            f"({lowest / model_flops:.4f} of the total); the rest is in layers no unit touches"
        )
    lo, hi = 0, len(cands) - 1  # invariant: cands[hi] meets the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if within_budget(flops_at(float(cands[mid])), target):
            hi = mid
        else:
            lo = mid + 1
    f = float(cands[hi])
    return f, flops_at(f)
