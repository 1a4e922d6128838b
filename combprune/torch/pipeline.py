"""The end-to-end sparse-training pipeline (arXiv 2312.01653), built from its cited components.

Stages (each switchable; docs/sparse_training.md):

1. ZerO initialisation (:func:`combprune.torch.zero_init_`);
2. pre-pruning training, with Continuous-Sparsification learned masks
   (:class:`combprune.torch.LearnedMasks`): ``beta`` grows geometrically from 1 to ``beta_max``
   over ``beta_epochs`` epochs (default ``pre_epochs``; factor ``beta_max ** (1 / beta_epochs)``
   per epoch with ``beta_anneal="epoch"``, ``beta_max ** (1 / (beta_epochs * steps per epoch))``
   per optimisation step with ``beta_anneal="step"``);
3. pruning to ``density`` (:func:`combprune.torch.prune_to_density`): mask-guided top-k scores by
   default with learned masks, magnitude otherwise, or any :func:`combprune.torch.prune` method;
   one-shot by default, or gradual with ``prune_epochs > 0``: a first cut to the learned mask's
   support (or none without learned masks), then :class:`combprune.torch.GradualPruner` events
   every half epoch over the first ``prune_epochs`` epochs of the post-training, cubic schedule
   down to ``density``;
4. post-pruning training with the mask frozen, label smoothing, soft activations and soft skip
   connections (:func:`combprune.torch.post_train`).

With every component off (``zero_init=False, learned_masks=False``, magnitude pruning, no label
smoothing, no soft components) it is the plain baseline: dense training, magnitude pruning,
fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ._calibration import eval_mode
from ._select import select_parameters
from ._training import check_batch, check_max_grad_norm, evaluate, train_epoch
from .density_prune import check_density, prune_to_density
from .gradual import GradualPruner
from .learned_masks import LearnedMasks
from .masking import get_masks, mask_density
from .post_training import PostTrainingConfig, SoftActivations, SoftSkips, post_train
from .prune import k_from_sparsity
from .pruner import Pruner
from .zero_init import zero_init_

logger = logging.getLogger(__name__)

__all__ = ["SparseTrainingPipeline", "PipelineResult", "run_pipeline"]


@dataclass
class PipelineResult:
    """What :meth:`SparseTrainingPipeline.run` returns.

    ``masks``: boolean masks by weight name (``True`` = kept); ``density``: fraction of the
    prunable weights kept; ``history``: one row per epoch (``stage``, ``epoch``, ``loss``,
    ``train_accuracy``, ``val_accuracy`` with a validation loader, ``density``, ``beta``, ...) and
    one row for the pruning step; ``scores``: the learned scores (``None`` without learned masks).
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    density: float
    history: list[dict[str, Any]]
    scores: dict[str, torch.Tensor] | None = None


_STAGES = ("pre-training", "pruning", "post-training")


def _nonneg_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
    return v


@dataclass
class SparseTrainingPipeline:
    """Configuration and driver of the pipeline (module doc); :meth:`run` trains a model.

    ``density``: fraction of the prunable weights kept, in (0, 1]. Pre-training: ``pre_epochs``
    of SGD (``lr``, ``momentum``, ``weight_decay``, cosine learning rate; gradients of the weights
    (not the scores) clipped to the Euclidean norm ``max_grad_norm`` when given). Learned masks:
    ``mask_init`` (s_0), ``mask_penalty`` (lambda), ``mask_budget`` (penalise only the soft count
    above ``density``: :class:`~combprune.torch.LearnedMasks` ``target_density``), ``beta_max`` (reached after ``beta_epochs``
    epochs, default all of ``pre_epochs``), ``beta_anneal`` (``"epoch"`` or ``"step"``: when beta
    grows), ``score_lr`` (Adam on the scores). Pruning: ``prune_method`` (``None``: ``"mask"`` with learned masks, else
    ``"magnitude"``), ``per_layer``, ``warm_start`` (``"scores"``: learned support as the solver's
    warm start), ``prune_options`` (to :func:`combprune.torch.prune`), ``prune_epochs`` (0: one
    cut at the end of the pre-training; ``k > 0``: gradual over the first ``k`` post-training
    epochs, module doc). Post-training: ``post``.
    ``checkpoint_dir``: save the state after each stage there and resume from it (:meth:`run`).
    """

    density: float
    zero_init: bool = True
    pre_epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    learned_masks: bool = True
    mask_init: float = 0.5
    mask_penalty: float = 1e-5
    mask_budget: bool = False
    beta_max: float = 200.0
    beta_epochs: int | None = None
    beta_anneal: str = "epoch"
    score_lr: float = 0.01
    prune_method: str | None = None
    per_layer: bool = False
    warm_start: str | None = None
    prune_options: dict[str, Any] = field(default_factory=dict)
    prune_epochs: int = 0
    post: PostTrainingConfig = field(default_factory=PostTrainingConfig)
    targets: Any = None
    ignore: Any = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    progress: bool = True

    @property
    def method(self) -> str:
        """The pruning method actually used."""
        return self.prune_method or ("mask" if self.learned_masks else "magnitude")

    def validate(self, model: nn.Module, train_loader: Any, val_loader: Any = None) -> None:
        """Every check that can fail, before any training (``ValueError`` naming the option)."""
        check_density(self.density)
        _nonneg_int("pre_epochs", self.pre_epochs)
        for name in ("lr", "momentum", "weight_decay", "mask_penalty", "score_lr", "beta_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        check_max_grad_norm(self.max_grad_norm)
        if self.learned_masks and self.pre_epochs == 0:
            raise ValueError("pre_epochs: learned masks need at least one pre-training epoch")
        if self.learned_masks and self.beta_max < 1:
            raise ValueError(f"beta_max: must be >= 1 (beta starts at 1), got {self.beta_max!r}")
        if self.beta_epochs is not None:
            if isinstance(self.beta_epochs, bool) or not isinstance(self.beta_epochs, int) or self.beta_epochs < 1:
                raise ValueError(f"beta_epochs: expected a positive number of epochs, got {self.beta_epochs!r}")
            if self.beta_epochs > self.pre_epochs:
                raise ValueError(f"beta_epochs: the temperature schedule ({self.beta_epochs} epochs) is longer than the pre-training (pre_epochs={self.pre_epochs})")
        if self.beta_anneal not in ("epoch", "step"):
            raise ValueError(f"beta_anneal: expected 'epoch' or 'step', got {self.beta_anneal!r}")
        if self.method == "mask" and not self.learned_masks:
            raise ValueError("prune_method: 'mask' needs learned_masks=True")
        if not isinstance(self.mask_budget, bool):
            raise ValueError(f"mask_budget: expected a bool, got {self.mask_budget!r}")
        if self.warm_start is not None and not self.learned_masks:
            raise ValueError("warm_start: 'scores' needs learned_masks=True")
        if not isinstance(self.post, PostTrainingConfig):
            raise TypeError(f"post: expected a PostTrainingConfig, got {type(self.post).__name__}")
        self.post.validate()
        _nonneg_int("prune_epochs", self.prune_epochs)
        if self.prune_epochs > self.post.epochs:
            raise ValueError(f"prune_epochs: the gradual pruning ({self.prune_epochs} epochs) is longer than the post-training (post_epochs={self.post.epochs})")
        if self.prune_epochs and self.per_layer:
            raise ValueError("per_layer: the gradual pruning step (prune_epochs > 0) prunes globally; use per_layer with prune_epochs=0")
        if self.prune_epochs and self.warm_start is not None:
            raise ValueError("warm_start: only for the one-shot pruning step (prune_epochs=0)")
        if self.checkpoint_dir is not None:
            where = os.fspath(self.checkpoint_dir)
            if os.path.exists(where) and not os.path.isdir(where):
                raise ValueError(f"checkpoint_dir: {where} is a file, not a directory")
            try:
                os.makedirs(where, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"checkpoint_dir: cannot create {where} ({exc.strerror or exc})") from None
            if not os.access(where, os.W_OK | os.X_OK):
                raise ValueError(f"checkpoint_dir: {where} is not writable")
        if self.post.restore_best and val_loader is None:
            raise ValueError("restore_best: needs a val_loader (the post-training epoch to keep is chosen by validation accuracy)")
        try:
            params = select_parameters(model, self.targets, self.ignore)
        except ValueError as exc:
            if self.targets is not None or self.ignore is not None:
                raise
            raise ValueError(f"model: no prunable layer to sparsify ({exc})") from None
        pools = [(q.numel, f"layer {q.name}'s") for q in params] if self.per_layer else [(sum(q.numel for q in params), "model's")]
        for p, whose in pools:
            if k_from_sparsity(1.0 - self.density, p) == 0:
                raise ValueError(f"density: {self.density:g} keeps none of the {whose} {p} prunable weights; the smallest density that keeps one is 1/{p} = {1.0 / p:.3g}")
        if self.method in ("magnitude", "mask") and self.prune_options:
            raise TypeError(f"prune_options: {sorted(self.prune_options)} only apply to combprune.torch.prune methods, not prune_method={self.method!r}")
        if self.method not in ("magnitude", "mask"):  # the pruning step's method and options, checked before any training
            try:
                Pruner(self.method, sparsity=1.0 - self.density, **self.prune_options)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"prune_method={self.method!r} with prune_options={self.prune_options!r}: {exc}") from None
        try:
            batch = next(iter(train_loader))
        except StopIteration:
            raise ValueError("train_loader: no batches") from None
        inputs, targets = check_batch(batch, "train_loader")
        if val_loader is not None:
            try:
                check_batch(next(iter(val_loader)), "val_loader")
            except StopIteration:
                raise ValueError("val_loader: no batches") from None
        if self.post.soft_activation:
            SoftActivations(model, self.post.soft_activation).remove()
        # one forward pass in eval mode (no running statistics change): the skip paths' shapes
        # when soft skips are on, and the targets against the model's outputs
        skips = SoftSkips(model, alpha0=self.post.skip_alpha) if self.post.soft_skip else None
        try:
            with eval_mode(model), torch.no_grad():
                out = model(inputs.to(next(model.parameters()).device))
        finally:
            if skips is not None:
                skips.remove()
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError(f"model: expected logits of shape (batch, classes), got {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if targets.numel() and not (0 <= int(targets.min()) and int(targets.max()) < out.shape[1]):
            raise ValueError(f"train_loader: class indices must lie in [0, {out.shape[1]}) for the model's {out.shape[1]} outputs, "
                             f"got {int(targets.min())} .. {int(targets.max())}")

    def run(self, model: nn.Module, train_loader: Any, *, val_loader: Any = None, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> PipelineResult:
        """Run the enabled stages on ``model`` in place; returns a :class:`PipelineResult`.

        With ``checkpoint_dir``, the state after each stage is saved there (``pre-training.pt``,
        ``pruning.pt``, ``post-training.pt``) and a later run with the same configuration resumes
        after the last saved stage.
        """
        self.validate(model, train_loader, val_loader)
        history: list[dict[str, Any]] = []

        def record(row: dict[str, Any]) -> None:
            logger.info("%s", row)
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)

        done, saved = self._resume(model)
        scores: dict[str, torch.Tensor] | None = None
        if saved is not None:
            history.extend(saved["history"])
            scores = saved["scores"] or None
        if done < 0:
            if self.zero_init:
                zero_init_(model)
                logger.info("ZerO initialisation done")
            scores = self._pre_train(model, train_loader, val_loader, record) if self.pre_epochs else None
            self._save(0, model, history, scores, None)
        if done < 1:
            first = self._first_cut(scores)
            masks = prune_to_density(
                model, first, method=self.method, per_layer=self.per_layer, scores=scores,
                calibration=train_loader if self.method not in ("magnitude", "mask") else None,
                warm_start=self.warm_start, targets=self.targets, ignore=self.ignore, progress=self.progress, **self.prune_options,
            )
            row = {"stage": "pruning", "method": self.method, "density": mask_density(masks)}
            if first > self.density:
                row["gradual_to"] = self.density
            if val_loader is not None:
                row["val_accuracy"] = evaluate(model, val_loader)
            record(row)
            self._save(1, model, history, scores, masks)
        else:
            masks = saved["masks"]
        if done < 2:
            gradual = self._gradual(model, train_loader, mask_density(masks))
            final = dict(masks)

            def on_post(r: dict[str, Any]) -> None:
                if gradual is not None:  # the masks the events left (read before post_train makes them permanent)
                    final.update(get_masks(model))
                record({"stage": "post-training", **r})

            post_train(model, masks, train_loader, self.post, val_loader=val_loader, progress=self.progress, on_epoch=on_post, gradual=gradual)
            masks = final
            self._save(2, model, history, scores, masks)
        return PipelineResult(model=model, masks=masks, density=mask_density(masks), history=history, scores=scores)

    # Gradual pruning step ---------------------------------------------------------------------------
    def _first_cut(self, scores: dict[str, torch.Tensor] | None) -> float:
        """Density of the pruning stage's cut: ``density`` (one-shot), or with ``prune_epochs``
        the learned mask's density (``s > 0``; 1 without learned masks) when it is above
        ``density``; the post-training's events take it the rest of the way."""
        if not self.prune_epochs:
            return self.density
        if scores is None:
            return 1.0
        return max(self.density, mask_density({name: s > 0 for name, s in scores.items()}))

    def _gradual(self, model: nn.Module, loader: Any, start: float) -> Callable[[torch.optim.Optimizer], Any] | None:
        """The factory of the post-training's :class:`~combprune.torch.GradualPruner` (``None`` when
        one-shot or already at ``density``): events every half epoch from half an epoch in to the
        end of epoch ``prune_epochs``, cubic from ``1 - start`` to ``1 - density``, magnitude (or
        the chosen :func:`combprune.torch.prune` method with ``prune_options``)."""
        if not self.prune_epochs or start <= self.density * (1.0 + 1e-9):
            return None
        method = "magnitude" if self.method in ("magnitude", "mask") else self.method
        steps = len(loader)
        every = max(1, steps // 2)
        options = {"targets": self.targets, "ignore": self.ignore, **self.prune_options}
        return lambda opt: GradualPruner(
            model, loader, method=method, sparsity=1.0 - self.density, initial_sparsity=1.0 - start, schedule="cubic",
            start=min(every, self.prune_epochs * steps), end=self.prune_epochs * steps, every=every, unit="step", optimizer=opt, progress=self.progress, **options,
        )

    # Checkpoints ----------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        """The configuration as JSON (everything that changes the result)."""
        conf = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("progress", "checkpoint_dir", "post")}
        conf["post"] = dataclasses.asdict(self.post)
        return json.dumps(conf, sort_keys=True, default=repr)

    def _path(self, stage: int) -> str:
        return os.path.join(str(self.checkpoint_dir), f"{_STAGES[stage]}.pt")

    def _save(self, stage: int, model: nn.Module, history: list[dict[str, Any]], scores: Any, masks: Any) -> None:
        if self.checkpoint_dir is None:
            return
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        state = {"config": self._fingerprint(), "model": model.state_dict(), "history": history, "scores": scores or {}, "masks": masks or {}}
        torch.save(state, self._path(stage))
        logger.info("checkpoint %s written", self._path(stage))

    def _resume(self, model: nn.Module) -> tuple[int, dict[str, Any] | None]:
        """(index of the last saved stage, its state) from ``checkpoint_dir``; (-1, None) if none."""
        if self.checkpoint_dir is None:
            return -1, None
        for stage in reversed(range(len(_STAGES))):
            if os.path.exists(self._path(stage)):
                path = self._path(stage)
                try:
                    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
                except Exception as exc:  # truncated, corrupt or not a checkpoint: torch raises several kinds
                    raise ValueError(f"checkpoint_dir: {path} cannot be read ({type(exc).__name__}: {exc}); delete it or use another directory") from None
                if not isinstance(state, dict) or not {"config", "model", "history", "scores", "masks"} <= set(state):
                    raise ValueError(f"checkpoint_dir: {path} is not a pipeline checkpoint; delete it or use another directory")
                if state["config"] != self._fingerprint():
                    raise ValueError(f"checkpoint_dir: {path} was written by a different configuration; use another directory")
                backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
                try:
                    model.load_state_dict(state["model"])
                except RuntimeError as exc:  # the tensors that matched were copied already: put them back
                    model.load_state_dict(backup)
                    first = str(exc).strip().splitlines()[-1].strip()
                    raise ValueError(f"checkpoint_dir: {path} holds the weights of a different model ({first}); use another directory") from None
                logger.info("resuming after %s from %s", _STAGES[stage], self._path(stage))
                return stage, state
        return -1, None

    def _pre_train(self, model: nn.Module, loader: Any, val_loader: Any, record: Callable[[dict[str, Any]], None]) -> dict[str, torch.Tensor] | None:
        lm = None
        if self.learned_masks:
            increments = (self.beta_epochs or self.pre_epochs) * (len(loader) if self.beta_anneal == "step" else 1)
            growth = self.beta_max ** (1.0 / increments)
            lm = LearnedMasks(model, init=self.mask_init, penalty=self.mask_penalty, target_density=self.density if self.mask_budget else None, beta=1.0, beta_growth=growth, beta_max=self.beta_max,
                              anneal=self.beta_anneal, score_lr=self.score_lr, targets=self.targets, ignore=self.ignore)
        params = list(lm.model_parameters()) if lm else list(model.parameters())
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.pre_epochs * len(loader)))
        optimizers = [opt] + ([lm.optimizer] if lm else [])
        step = 0
        try:
            for epoch in range(self.pre_epochs):
                row, step = train_epoch(
                    model, loader, optimizers, F.cross_entropy, extra_loss=lm.penalty if lm else None,
                    after_step=lambda s: (sched.step(), lm.step_end() if lm else None), step=step, progress=self.progress, desc=f"pre-training {epoch + 1}/{self.pre_epochs}",
                    max_grad_norm=self.max_grad_norm,
                )
                row = {"stage": "pre-training", "epoch": epoch + 1, **row}
                if lm is not None:
                    row.update(beta=lm.beta, density=lm.density(), soft_density=lm.soft_density())
                if val_loader is not None:
                    row["val_accuracy"] = evaluate(model, val_loader)
                if lm is not None:
                    lm.epoch_end()
                record(row)
        finally:
            scores = lm.remove(bake=True) if lm is not None else None
        return scores


def run_pipeline(
    model: nn.Module, train_loader: Any, *, density: float, val_loader: Any = None, on_epoch: Callable[[dict[str, Any]], None] | None = None, **options: Any
) -> PipelineResult:
    """Build a :class:`SparseTrainingPipeline` from keyword options and run it.

    ``on_epoch(row)`` is called with every history row as it is recorded.
    Options are the pipeline's fields, and the post-training ones (:class:`PostTrainingConfig`)
    by name (``label_smoothing``, ``soft_skip``, ...) or with a ``post_`` prefix
    (``post_epochs``, ``post_lr``).
    """
    names = {f.name for f in dataclasses.fields(SparseTrainingPipeline)} - {"density", "post"}
    post_names = {f.name for f in dataclasses.fields(PostTrainingConfig)}
    main, post = {}, {}
    for key, value in options.items():
        if key in names:
            main[key] = value
        elif key.startswith("post_") and key[5:] in post_names:
            post[key[5:]] = value
        elif key in post_names:
            post[key] = value
        else:
            raise TypeError(f"run_pipeline: unknown option {key!r}")
    pipeline = SparseTrainingPipeline(density=density, post=PostTrainingConfig(**post), **main)
    return pipeline.run(model, train_loader, val_loader=val_loader, on_epoch=on_epoch)
