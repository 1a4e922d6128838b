"""Torch-Pruning baselines for the structured benchmarks, pruned to a FLOP budget.

Torch-Pruning (PyPI ``torch-pruning``, optional extra ``combprune[baselines]``) finds coupled
channel groups with its autograd-based dependency graph and ranks them by an importance score;
two scores are used here:

* ``tp-magnitude``: ``GroupMagnitudeImportance(p=2)``, the mean over the group's slices of the
  squared L2 norm of each channel's weights (conv/linear rows and columns, norm affine entries);
* ``tp-taylor``: ``GroupTaylorImportance``, the first-order Taylor estimate
  ``|w * dL/dw|`` summed the same way, with ``dL/dw`` accumulated over calibration batches
  (the caller's loss).

Torch-Pruning removes a fraction ``r`` (``pruning_ratio``) of every group, so its FLOPs are a
non-increasing step function of ``r``; :func:`prune_to_flops` bisects on ``r`` for the smallest
fraction whose FLOPs meet the target, every trial on a fresh copy of the dense model, with the
FLOPs measured by the caller's function (the same one used for every arm of a benchmark).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


def torch_pruning():
    """Import Torch-Pruning lazily; a missing install names the extra that provides it."""
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Torch-Pruning baselines need torch-pruning: pip install 'combprune[baselines]'"
        ) from exc
    return tp


def importance(name: str):
    """Torch-Pruning's importance for ``name`` in {'tp-magnitude', 'tp-taylor'}."""
    tp = torch_pruning()
    if name == "tp-magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "tp-taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"method: unknown Torch-Pruning baseline {name!r} (tp-magnitude, tp-taylor)")


def tp_prune(model: nn.Module, example_inputs, method: str, ratio: float, *, ignored_layers: list[nn.Module],
             backward: Callable[[nn.Module], None] | None = None, **pruner_kwargs) -> nn.Module:
    """Prune ``ratio`` of every group of ``model`` in place with Torch-Pruning's ``BasePruner``.

    ``backward(model)`` accumulates the calibration loss's gradients (needed by ``tp-taylor``);
    the model stays in eval mode so that tracing does not touch BatchNorm statistics.
    """
    if method == "tp-taylor" and backward is None:
        raise ValueError("backward: tp-taylor needs a function accumulating calibration gradients")
    tp = torch_pruning()
    model.eval()
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=importance(method), pruning_ratio=ratio,
                                  ignored_layers=ignored_layers, **pruner_kwargs)
    if method == "tp-taylor":
        model.zero_grad()
        backward(model)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def prune_to_flops(dense: nn.Module, prune: Callable[[nn.Module, float], nn.Module], flops: Callable[[nn.Module], float],
                   target: float, *, steps: int = 16, hi: float = 0.8) -> tuple[nn.Module, float, float]:
    """Smallest pruning ratio ``r`` in ``[0, hi]`` with ``flops(prune(copy(dense), r)) <= target``.

    Bisection over ``r`` (``steps`` halvings, resolution ``hi / 2**steps``): FLOPs do not
    increase with ``r``, so the ratio found is the smallest meeting the target to that resolution
    and the model returned is the one pruned with it. Returns ``(model, ratio, flops)``.
    """
    def trial(r: float) -> tuple[nn.Module, float]:
        model = prune(copy.deepcopy(dense), r)
        return model, flops(model)

    best = trial(hi)
    if best[1] > target:
        raise ValueError(f"target: {target:.4g} FLOPs not reached even with pruning ratio {hi}")
    lo, ratio = 0.0, hi
    for _ in range(steps):
        mid = (lo + ratio) / 2
        model, f = trial(mid)
        if f <= target:
            best, ratio = (model, f), mid
        else:
            lo = mid
    return best[0], ratio, best[1]
