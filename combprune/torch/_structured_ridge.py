"""``ridge="auto"`` for the structured methods: OSSCAR's ridge chosen per unit on held-back samples.

OSSCAR's layer problem (``docs/structured_pruning.md``) for one unit with consumers i is

    minimize_W  sum_i 1/2 tr((W_i - W_hat_i)^T (H_i + lam_i I)(W_i - W_hat_i))
    s.t.        at most s groups of rows nonzero (shared by the consumers),

with ``H_i = X_i^T X_i`` and ``lam_i = c * mean(diag H_i)``; the default factor is ``c = 1e-2``.
No fixed ``c`` is best everywhere (``benchmarks/results/osscar_ridge*.md``: 1e-1 on MiniLM, 1e-3
on the CNNs), so ``ridge="auto"`` chooses it for every unit:

1. the calibration samples are split once, deterministically (:func:`split_batches`):
   ``floor(N / HOLDOUT_EVERY)`` whole samples (all their tokens / output positions) are held
   back, spread over the batches in proportion to their sizes (taken from each batch's end);
2. each consumer's ``H`` is accumulated separately on the fitting samples (``H_fit``) and on
   the held-back ones (``H_held``) -- the same forward passes as one ``H``;
3. for each factor c of :data:`AUTO_RIDGE_GRID` the unit is solved on ``H_fit`` with
   ``lam_i = c * mean(diag H_fit_i)`` and scored by the problem's own objective without the
   ridge on the held-back samples, ``sum_i 1/2 ||X_held_i (W_c,i - W_hat_i)||_F^2 =
   sum_i 1/2 tr(D_i^T H_held_i D_i)`` (the producer is only shrunk along the kept groups, so
   the consumers' reconstruction is the whole layer-wise error of the unit);
4. the factor with the smallest held-back error (the smaller factor on ties) is kept and the
   unit is solved again on ``H = H_fit + H_held`` with it: the result is exactly a fixed-ridge
   run at that factor on all samples.

Cost: ``len(AUTO_RIDGE_GRID) + 1`` solves per unit (the calibration passes are not repeated).
The chosen factor and the held-back errors per unit are recorded (``report.info["ridge_auto"]``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .structured import StructuredSetup, StructuredUnit

logger = logging.getLogger(__name__)

__all__ = ["AUTO_RIDGE_GRID", "HOLDOUT_EVERY", "check_ridge", "split_batches", "solve_unit_auto"]

#: Ridge factors c (``lam = c * mean(diag H)``) tried by ``ridge="auto"``: a decade apart around
#: OSSCAR's default 1e-2, covering the best fixed factors measured on the CNNs (1e-3) and MiniLM (1e-1).
AUTO_RIDGE_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)

#: One calibration sample in this many is held back by ``ridge="auto"`` (20 %).
HOLDOUT_EVERY = 5


def check_ridge(ridge: Any, name: str = "ridge") -> float | str:
    """``ridge`` validated: ``"auto"`` or a non-negative finite number (``ValueError`` naming ``name``)."""
    if isinstance(ridge, str):
        if ridge == "auto":
            return ridge
        raise ValueError(f"{name}: expected a non-negative number or 'auto', got {ridge!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"{name}: expected a non-negative number or 'auto', got {ridge!r}")
    return float(ridge)


def split_batches(batches: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(fitting batches, held-back batches) of calibration :class:`~combprune.torch._calibration.Batch` es.

    The batch holding samples ``[a, b)`` (0-based over all batches, in order) holds back its last
    ``floor(b / HOLDOUT_EVERY) - floor(a / HOLDOUT_EVERY)`` samples: ``floor(N / HOLDOUT_EVERY)``
    whole samples in all, spread over the batches. ``ValueError`` naming ``ridge`` when fewer
    than ``HOLDOUT_EVERY`` samples leave none to hold back.
    """
    total = sum(b.size for b in batches)
    if total // HOLDOUT_EVERY < 1:
        raise ValueError(f"ridge: 'auto' holds back 1 calibration sample in {HOLDOUT_EVERY} and needs at least "
                         f"{HOLDOUT_EVERY} samples, got {total}; give more calibration data (n_samples) or a fixed ridge")
    fit, held, start = [], [], 0
    for b in batches:
        n_held = (start + b.size) // HOLDOUT_EVERY - start // HOLDOUT_EVERY
        if b.size - n_held:
            fit.append(b.slice(0, b.size - n_held) if n_held else b)
        if n_held:
            held.append(b.slice(b.size - n_held, b.size))
        start += b.size
    return fit, held


def solve_unit_auto(setup: "StructuredSetup", unit: "StructuredUnit", layers: Sequence[nn.Module],
                    fit: Sequence[torch.Tensor], held: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], np.ndarray, Any, dict[str, Any]]:
    """Steps 3-4 of the module docstring for one unit: ``(Ws, keep, result, choice)`` as
    :meth:`StructuredSetup.solve_unit` returns on ``H_fit + H_held`` at the chosen factor, and
    ``choice = {"factor": c, "held_errors": {c: error for each grid factor}}``."""
    from .structured import layer_problem

    s = unit.n_groups - setup.n_remove(unit)
    scorers = [layer_problem(unit, layer, H, s, ridge=0.0) for layer, H in zip(layers, held)]
    errors: dict[float, float] = {}
    for c in AUTO_RIDGE_GRID:
        Ws, _, _ = setup.solve_unit(unit, layers, fit, relative_ridge=c)
        errors[c] = math.fsum(p.objective(W.numpy()) for p, W in zip(scorers, Ws))
    best = min(AUTO_RIDGE_GRID, key=lambda c: errors[c])  # first (smallest) factor on ties
    logger.info("%s: ridge factor %g chosen on held-back samples (errors %s)", unit.consumer, best,
                ", ".join(f"{c:g}: {e:.6g}" for c, e in errors.items()))
    full = [Hf + Hh for Hf, Hh in zip(fit, held)]
    Ws, keep, result = setup.solve_unit(unit, layers, full, relative_ridge=best)
    return Ws, keep, result, {"factor": best, "held_errors": errors}
