"""The pruning step of the sparse-training pipeline: keep a fraction ``density`` of the weights.

``k = p - ceil((1 - density) p)`` of the ``p`` prunable weights are kept
(:func:`combprune.torch.k_from_sparsity`), chosen by

* ``"magnitude"``: the k largest ``|w|`` over all prunable weights (``per_layer=True``: the
  largest ``k_l`` of each layer with ``k_l`` from the same rule on the layer's size);
* ``"mask"``: the k largest learned scores ``s`` (:class:`combprune.torch.LearnedMasks`),
  globally or per layer, keeping the current weights on that support;
* any method of :func:`combprune.torch.prune` (``"chita"``, ``"chita++"``, ``"falcon"``, ...)
  at ``sparsity = 1 - density``; ``warm_start="scores"`` passes the mask-guided support
  (top-k scores) to the solver as its warm start (single-stage gradient methods, one block).

The zeros are written into the weights (no mask container) and the boolean masks returned, ready
for :func:`combprune.torch.post_train` (which keeps them with :mod:`combprune.torch.masking`).
See ``docs/sparse_training.md``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ._select import PrunableParam, select_parameters, with_unselected
from .prune import _topk_mask, k_from_sparsity
from .pruner import prune

logger = logging.getLogger(__name__)

__all__ = ["prune_to_density", "check_density"]


def check_density(density: Any) -> float:
    """``density`` as a float in (0, 1]; ``ValueError`` naming it otherwise."""
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating)):
        raise TypeError(f"density: expected a number in (0, 1], got {type(density).__name__}")
    d = float(density)
    if not (0.0 < d <= 1.0):
        raise ValueError(f"density: must lie in (0, 1], got {density!r}")
    return d


def _support(values: list[torch.Tensor], density: float, per_layer: bool) -> list[np.ndarray]:
    """Boolean masks of the top-``k`` ``values`` (global or per layer), flattened per tensor."""
    flat = [v.detach().cpu().double().flatten().numpy() for v in values]
    if per_layer:
        return [_topk_mask(v, k_from_sparsity(1.0 - density, v.size)) for v in flat]
    allv = np.concatenate(flat)
    mask = _topk_mask(allv, k_from_sparsity(1.0 - density, allv.size))
    return np.split(mask, np.cumsum([v.size for v in flat])[:-1])


def _scores_for(params: list[PrunableParam], scores: Any) -> list[torch.Tensor]:
    if not isinstance(scores, dict):
        raise ValueError("scores: the mask-guided step needs the learned scores (LearnedMasks.scores())")
    out = []
    for p in params:
        if p.name not in scores or tuple(scores[p.name].shape) != tuple(p.shape):
            raise ValueError(f"scores: no score of shape {tuple(p.shape)} for {p.name!r}")
        out.append(scores[p.name])
    return out


def prune_to_density(
    model: nn.Module,
    density: float,
    *,
    method: str = "magnitude",
    per_layer: bool = False,
    scores: dict[str, torch.Tensor] | None = None,
    calibration: Any = None,
    warm_start: str | None = None,
    targets: Any = None,
    ignore: Any = None,
    progress: bool = True,
    **prune_options: Any,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place to ``density`` (module doc); returns the masks by weight name.

    ``prune_options`` go to :func:`combprune.torch.prune` (``l2``, ``n_samples``, ``stages``,
    ...) for its methods.
    """
    density = check_density(density)
    params = select_parameters(model, targets, ignore)
    for p in params:
        if p.is_masked:
            raise ValueError(f"model: {p.name} carries a torch pruning mask; make it permanent first")
    if warm_start not in (None, "scores"):
        raise ValueError(f"warm_start: expected None or 'scores', got {warm_start!r}")
    if method in ("magnitude", "mask"):
        if targets is None:
            with_unselected(model, [], f"prune to density ({method})")  # a warning naming large weights left dense
        if warm_start is not None:
            raise ValueError(f"warm_start: only for combprune's gradient methods, not method={method!r}")
        if prune_options:
            raise TypeError(f"prune_options: {sorted(prune_options)} only apply to combprune.torch.prune methods")
        values = [p.storage.abs() for p in params] if method == "magnitude" else _scores_for(params, scores)
        masks = _support(values, density, per_layer)
        out = {}
        with torch.no_grad():
            for p, m in zip(params, masks):
                mask = torch.as_tensor(m.reshape(tuple(p.shape)), device=p.storage.device)
                p.storage.mul_(mask)
                out[p.name] = mask
        logger.info("prune_to_density %s: kept %d of %d weights", method, sum(int(m.sum()) for m in masks), sum(m.size for m in masks))
        return out
    if per_layer:
        raise ValueError(f"per_layer: only for method='magnitude' or 'mask', not {method!r}")
    if calibration is None:
        raise ValueError(f"calibration: method {method!r} needs calibration data")
    if warm_start == "scores":
        if prune_options.get("stages", 1) != 1 or method.endswith("++"):
            raise ValueError("warm_start: the scores' support warm-starts single-stage methods only (stages=1)")
        support = np.concatenate(_support(_scores_for(params, scores), density, per_layer=False))
        solver_options = dict(prune_options.pop("solver_options", None) or {})
        solver_options["warm_start"] = support
        prune_options["solver_options"] = solver_options
    report = prune(
        model, calibration, method=method, sparsity=1.0 - density, targets=targets, ignore=ignore,
        apply="permanent", progress=progress, **prune_options,
    )
    logger.info("prune_to_density %s: %s", method, report.info.get("objective"))
    return {p.name: (p.storage.detach() != 0) for p in params}
