"""Post-pruning training with the mask frozen and smoothing components annealed away.

Three components make the start of post-pruning training smooth and are annealed so that the
final network is an ordinary one (docs/sparse_training.md):

* **label smoothing**: cross-entropy against ``(1 - eps) onehot(y) + eps / C``; ``eps`` constant
  or annealed linearly to 0 over the post-training;
* **soft activations**: each ``nn.ReLU`` module is swapped for
  ``(1 - t) * soft(x) + t * relu(x)`` (``soft`` = SiLU or softplus), ``t`` rising linearly from 0
  to 1 over a fraction of the post-training; the original ``nn.ReLU`` modules are put back;
* **soft skip connections**: each chosen layer's output gets ``alpha * P(x)`` added, ``P`` the
  identity when the input and output shapes agree, else a trainable projection (a
  bias-free Linear, or a 1x1 convolution with the layer's stride) started at the ZerO matrix;
  ``alpha`` decays linearly from ``alpha_0`` to 0 over a fraction of the post-training, after
  which the path is removed.

Three options make the stage robust to a freshly pruned network whose first gradients are large
(docs/sparse_training.md, "Robust post-training"): a linear learning-rate warm-up before the
cosine decay (``warmup_fraction``), gradient-norm clipping (``max_grad_norm``), and
``restore_best``: with a validation loader, the weights of the epoch with the best validation
accuracy among the epochs whose network is already the final plain one (soft components fully
annealed) are kept and restored at the end; a non-finite training loss (divergence) ends the
training there.

Pruned weights stay exactly zero throughout, with the project's one masking mechanism
(:mod:`combprune.torch.masking`, shared with the gradual pruner): the masks are put on the model
as torch pruning masks (:func:`~.masking.apply_masks`), :class:`~.masking.MaskedTraining` hooks
zero the pruned gradients before and the pruned weights after each optimiser step, and
:func:`~.masking.make_permanent` turns them back into plain parameters at the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ._training import check_max_grad_norm, evaluate, train_epoch, warmup_cosine
from .masking import MaskedTraining, apply_masks, get_masks, make_permanent, mask_density, parameter_order
from .zero_init import zero_matrix

logger = logging.getLogger(__name__)

__all__ = ["SoftReLU", "SoftActivations", "SoftSkips", "PostTrainingConfig", "post_train", "ramp"]


def ramp(step: int, total_steps: int, fraction: float) -> float:
    """Linear ramp from 0 to 1 over the first ``fraction`` of ``total_steps`` steps, then 1."""
    span = fraction * total_steps
    return 1.0 if span <= 0 else min(1.0, step / span)


class SoftReLU(nn.Module):
    """``(1 - t) * soft(x) + t * relu(x)``; ``t = 1`` is exactly ReLU."""

    def __init__(self, kind: str = "silu", *, softplus_beta: float = 1.0) -> None:
        super().__init__()
        if kind not in ("silu", "softplus"):
            raise ValueError(f"soft_activation: expected 'silu' or 'softplus', got {kind!r}")
        self.kind, self.softplus_beta, self.t = kind, softplus_beta, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = F.relu(x)
        if self.t >= 1.0:
            return relu
        soft = F.silu(x) if self.kind == "silu" else F.softplus(x, beta=self.softplus_beta)
        return (1.0 - self.t) * soft + self.t * relu


class SoftActivations:
    """Swap every ``nn.ReLU`` module of ``model`` for a :class:`SoftReLU`; :meth:`remove` undoes it."""

    def __init__(self, model: nn.Module, kind: str = "silu", *, softplus_beta: float = 1.0) -> None:
        if kind not in ("silu", "softplus"):
            raise ValueError(f"soft_activation: expected 'silu' or 'softplus', got {kind!r}")
        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []
        self.soft: list[SoftReLU] = []
        sites = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if type(child) is nn.ReLU]
        if not sites:
            raise ValueError("soft_activation: the model has no nn.ReLU module to soften (functional relu calls cannot be swapped)")
        for parent, name, child in sites:
            soft = SoftReLU(kind, softplus_beta=softplus_beta)
            setattr(parent, name, soft)
            self._swapped.append((parent, name, child))
            self.soft.append(soft)

    def set(self, t: float) -> None:
        """Set the ReLU weight ``t`` in [0, 1] of every softened activation."""
        for s in self.soft:
            s.t = float(t)

    def remove(self) -> None:
        """Put the original ``nn.ReLU`` modules back."""
        for parent, name, child in self._swapped:
            setattr(parent, name, child)
        self._swapped, self.soft = [], []


class SoftSkips:
    """Skip paths ``alpha * P(x)`` added to the outputs of ``layers`` (module doc).

    ``layers``: Linear or Conv2d modules of the model (default: every Linear/Conv2d but the last
    one, whose output is the logits). ``alpha`` starts at ``alpha0``; :meth:`remove` drops the
    hooks and projections.
    """

    def __init__(self, model: nn.Module, layers: list[nn.Module] | None = None, *, alpha0: float = 0.3) -> None:
        if layers is None:
            found = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            layers = found[:-1]
        if not layers:
            raise ValueError("soft_skip: no layer to add a skip path to (the model needs at least two Linear/Conv2d layers)")
        self.alpha = float(alpha0)
        self.projections: dict[nn.Module, nn.Module | None] = {}
        for layer in layers:
            if isinstance(layer, nn.Linear):
                proj = None if layer.in_features == layer.out_features else nn.Linear(layer.in_features, layer.out_features, bias=False)
            elif isinstance(layer, nn.Conv2d):
                same = layer.in_channels == layer.out_channels and layer.stride == (1, 1)
                proj = None if same else nn.Conv2d(layer.in_channels, layer.out_channels, 1, stride=layer.stride, bias=False)
            else:
                raise ValueError(f"soft_skip: layers must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
            if proj is not None:
                with torch.no_grad():
                    proj.weight.zero_()
                    proj.weight.view(proj.weight.shape[0], proj.weight.shape[1], -1)[:, :, 0] = zero_matrix(proj.weight.shape[0], proj.weight.shape[1])
                proj.to(device=layer.weight.device, dtype=layer.weight.dtype)  # the layer's, not the default float32
            self.projections[layer] = proj
        self._hooks = [layer.register_forward_hook(self._hook(layer)) for layer in layers]

    def _hook(self, layer: nn.Module) -> Callable[..., torch.Tensor]:
        def add_skip(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            if self.alpha == 0.0:
                return out
            x = args[0]
            proj = self.projections[layer]
            skip = x if proj is None else proj(x)
            if skip.shape != out.shape:
                raise ValueError(f"soft_skip: the skip path of {type(layer).__name__} gives shape {tuple(skip.shape)}, the layer {tuple(out.shape)} (padding changes the spatial size?)")
            return out + self.alpha * skip

        return add_skip

    def parameters(self) -> list[nn.Parameter]:
        """The projections' trainable weights."""
        return [p for proj in self.projections.values() if proj is not None for p in proj.parameters()]

    def remove(self) -> None:
        """Remove the hooks (and with them the skip paths and projections)."""
        for h in self._hooks:
            h.remove()
        self._hooks, self.projections = [], {}


@dataclass
class PostTrainingConfig:
    """Options of :func:`post_train` (defaults: docs/sparse_training.md)."""

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    anneal_label_smoothing: bool = True
    soft_activation: str | None = "silu"
    softplus_beta: float = 1.0
    soft_activation_fraction: float = 0.5
    soft_skip: bool = True
    skip_alpha: float = 0.3
    soft_skip_fraction: float = 0.5
    soft_activation_epochs: int | None = None
    soft_skip_epochs: int | None = None
    warmup_fraction: float = 0.0
    max_grad_norm: float | None = None
    restore_best: bool = False

    def fraction(self, component: str) -> float:
        """The fraction of the post-training over which ``component`` (``"soft_activation"`` or
        ``"soft_skip"``) is annealed: ``<component>_epochs / epochs`` when given, else
        ``<component>_fraction``."""
        epochs = getattr(self, f"{component}_epochs")
        return epochs / self.epochs if epochs is not None else getattr(self, f"{component}_fraction")

    def validate(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"post_epochs: expected a positive integer, got {self.epochs!r}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing", "skip_alpha", "softplus_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing: must lie in [0, 1), got {self.label_smoothing!r}")
        for name in ("soft_activation_fraction", "soft_skip_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
                raise ValueError(f"{name}: a fraction of the post-training in (0, 1], got {v!r}")
        for name in ("soft_activation_epochs", "soft_skip_epochs"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive number of epochs, got {v!r}")
            if v > self.epochs:
                raise ValueError(f"{name}: the schedule ({v} epochs) is longer than the post-training (post_epochs={self.epochs})")
        if isinstance(self.warmup_fraction, bool) or not isinstance(self.warmup_fraction, (int, float)) or not (0 <= self.warmup_fraction < 1):
            raise ValueError(f"warmup_fraction: a fraction of the post-training in [0, 1), got {self.warmup_fraction!r}")
        check_max_grad_norm(self.max_grad_norm)
        if not isinstance(self.restore_best, bool):
            raise ValueError(f"restore_best: expected a bool, got {self.restore_best!r}")
        if self.soft_activation not in (None, "silu", "softplus"):
            raise ValueError(f"soft_activation: expected None, 'silu' or 'softplus', got {self.soft_activation!r}")


class _BestState:
    """The model state of the best validation accuracy seen so far (``restore_best``)."""

    def __init__(self) -> None:
        self.accuracy, self.epoch, self.state = -math.inf, 0, None

    def offer(self, model: nn.Module, accuracy: float, epoch: int) -> None:
        """Keep a copy of ``model``'s state if ``accuracy`` beats the best so far (ties: the later)."""
        if accuracy >= self.accuracy:
            self.accuracy, self.epoch = accuracy, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> int | None:
        """Load the kept state into ``model``; its epoch, or ``None`` when nothing was kept."""
        if self.state is None:
            return None
        model.load_state_dict(self.state)
        return self.epoch


def post_train(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    train_loader: Any,
    config: PostTrainingConfig | None = None,
    *,
    val_loader: Any = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    gradual: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` with ``masks`` frozen and the soft components annealed; returns the history.

    SGD with momentum; learning rate ``lr * warmup_cosine(step, T, W)`` (a linear warm-up over
    ``W = round(warmup_fraction * T)`` steps, then cosine decay; ``T`` the number of steps),
    gradients clipped to ``max_grad_norm``. Each history row has ``epoch, loss, train_accuracy,
    val_accuracy (with val_loader), density, label_smoothing, relu_weight, skip_alpha, lr``. With
    ``restore_best`` (module doc) the last row also has ``restored_epoch``, the epoch whose weights
    the model ends with. At the end the ReLUs and the model structure are the original ones and
    the pruned weights exact zeros.

    ``gradual``: ``gradual(optimizer)`` builds a :class:`~combprune.torch.GradualPruner` on the
    post-training optimiser once ``masks`` are in place; its :meth:`~combprune.torch.GradualPruner.step`
    runs after every optimiser step, so the masks shrink further on its schedule (the pipeline's
    gradual pruning step, ``prune_epochs``). Rows then report the density at the end of each
    epoch, and ``restore_best`` considers only epochs after its last event.
    """
    cfg = config or PostTrainingConfig()
    cfg.validate()
    if not isinstance(masks, dict) or not masks:
        raise ValueError("masks: expected a non-empty dict of weight name -> boolean mask")
    if cfg.restore_best and val_loader is None:
        raise ValueError("restore_best: needs a val_loader (the epoch to keep is chosen by validation accuracy)")
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_fraction * total)
    acts = SoftActivations(model, cfg.soft_activation, softplus_beta=cfg.softplus_beta) if cfg.soft_activation else None
    skips = SoftSkips(model, alpha0=cfg.skip_alpha) if cfg.soft_skip else None
    history: list[dict[str, Any]] = []
    masked, hooks, best, pruner = False, None, _BestState(), None
    try:
        if skips is not None:  # shape check before any training
            with torch.no_grad():
                model(next(iter(train_loader))[0].to(next(model.parameters()).device))
        order = parameter_order(model)
        apply_masks(model, masks)  # checks every mask before changing the model
        masked = True
        density = mask_density(get_masks(model))
        params = list(model.parameters()) + (skips.parameters() if skips else [])
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        hooks = MaskedTraining(model, opt)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup))
        pruner = gradual(opt) if gradual is not None else None
        state = {"eps": cfg.label_smoothing}

        def schedule(step: int) -> None:  # values of step `step`: the last step is fully annealed
            done = step + 1
            state["eps"] = cfg.label_smoothing * (1.0 - done / total) if cfg.anneal_label_smoothing else cfg.label_smoothing
            if acts is not None:
                acts.set(ramp(done, total, cfg.fraction("soft_activation")))
            if skips is not None:
                skips.alpha = cfg.skip_alpha * (1.0 - ramp(done, total, cfg.fraction("soft_skip")))

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y, label_smoothing=state["eps"])

        step = 0
        for epoch in range(cfg.epochs):
            lr = opt.param_groups[0]["lr"]
            row, step = train_epoch(model, train_loader, [opt], loss_fn, before_step=schedule, after_step=lambda s: (sched.step(), pruner.step() if pruner else None),
                                    step=step, progress=progress, desc=f"post-training {epoch + 1}/{cfg.epochs}", max_grad_norm=cfg.max_grad_norm)
            if pruner is not None:
                density = mask_density(get_masks(model))
            plain = (acts is None or acts.soft[0].t >= 1.0) and (skips is None or skips.alpha == 0.0) and (pruner is None or pruner.done)
            row = {"epoch": epoch + 1, **row, "density": density, "label_smoothing": state["eps"],
                   "relu_weight": acts.soft[0].t if acts else 1.0, "skip_alpha": skips.alpha if skips else 0.0, "lr": lr}
            diverged = not math.isfinite(row["loss"])
            if val_loader is not None:
                row["val_accuracy"] = evaluate(model, val_loader)
                if cfg.restore_best and plain and not diverged:
                    best.offer(model, row["val_accuracy"], epoch + 1)
            if cfg.restore_best and (diverged or epoch + 1 == cfg.epochs):
                row["restored_epoch"] = best.restore(model)
                if diverged:
                    logger.warning("post-training: non-finite loss at epoch %d; stopped (weights restored from epoch %s; None: no plain epoch before it)", epoch + 1, row["restored_epoch"])
            logger.info("post-training %s", row)
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if cfg.restore_best and diverged:
                break
    finally:
        if hooks is not None:
            hooks.remove()
        if pruner is not None:
            pruner.detach()
        if acts is not None:
            acts.remove()
        if skips is not None:
            skips.remove()
        if masked:
            make_permanent(model, order)
    return history
