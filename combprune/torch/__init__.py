"""Torch adapter: prune torch models with combprune's formulations and solvers.

>>> import combprune.torch as cpt
>>> report = cpt.prune(model, loader, method="chita++", sparsity=0.9)  # doctest: +SKIP
>>> print(report)                                                       # doctest: +SKIP

See ``docs/torch_adapter.md`` for conventions (sparsity = fraction removed; FLOPs = 2 x MACs).
"""

from ._calibration import model_device
from ._flops import layer_flops, measure, model_flops
from ._gradients import per_sample_gradients
from ._select import DEFAULT_TYPES, PrunableParam, select_parameters
from .prune import METHODS, PruningError, k_from_sparsity, prune
from .report import BudgetError, LayerReport, PruneReport
from .sequential import SequentialReport, prune_sequential

__all__ = [
    "prune",
    "prune_sequential", "SequentialReport",
    "PruneReport",
    "LayerReport",
    "BudgetError",
    "PruningError",
    "METHODS",
    "select_parameters",
    "PrunableParam",
    "DEFAULT_TYPES",
    "per_sample_gradients",
    "layer_flops",
    "model_flops",
    "measure",
    "model_device",
    "k_from_sparsity",
]
