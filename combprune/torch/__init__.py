"""Torch adapter: prune torch models with combprune's formulations and solvers.

>>> import combprune.torch as cpt
>>> report = cpt.prune(model, loader, method="chita++", sparsity=0.9)  # doctest: +SKIP
>>> pruner = cpt.Pruner("chita++", sparsity=0.9)  # the same, validated once, reusable  # doctest: +SKIP
>>> print(report)                                                       # doctest: +SKIP

See ``docs/torch_adapter.md`` for conventions (sparsity = fraction removed; FLOPs = 2 x MACs).
"""

from ._calibration import model_device
from ._flops import layer_flops, measure, model_flops
from ._gradients import per_sample_gradients
from .gradual import EventRecord, GradualPruner
from ._select import DEFAULT_TYPES, PrunableParam, select_parameters
from .methods import METHODS, Method, resolve_method
from .prune import PruningError, k_from_sparsity
from .pruner import PruneConfig, Pruner, prune
from .report import BudgetError, LayerReport, PruneReport
from .sequential import SequentialReport, prune_sequential
from .sparse_training import LearnedMasks, PipelineResult, PostTrainingConfig, SparseTrainingPipeline, post_train, prune_to_density, run_pipeline, zero_init_

__all__ = [
    "prune",
    "Pruner",
    "PruneConfig",
    "Method",
    "resolve_method",
    "prune_sequential",
    "SequentialReport",
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
    "GradualPruner",
    "EventRecord",
    "zero_init_",
    "LearnedMasks",
    "prune_to_density",
    "PostTrainingConfig",
    "post_train",
    "SparseTrainingPipeline",
    "PipelineResult",
    "run_pipeline",
]
