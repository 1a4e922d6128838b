"""The sparse-training stages in one namespace (docs/sparse_training.md).

``zero_init_`` (ZerO initialisation), ``LearnedMasks`` (Continuous Sparsification),
``prune_to_density`` (the pruning step), ``post_train`` / ``PostTrainingConfig`` (post-pruning
training with frozen masks and annealed soft components) and ``SparseTrainingPipeline`` /
``run_pipeline`` chaining them.
"""

from .density_prune import prune_to_density
from .learned_masks import LearnedMasks
from .pipeline import PipelineResult, SparseTrainingPipeline, run_pipeline
from .post_training import PostTrainingConfig, post_train
from .zero_init import zero_init_

__all__ = ["zero_init_", "LearnedMasks", "prune_to_density", "PostTrainingConfig", "post_train", "SparseTrainingPipeline", "PipelineResult", "run_pipeline"]
