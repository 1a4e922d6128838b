"""The small training loop shared by the sparse-training stages (docs/sparse_training.md).

Batches are ``(inputs, targets)`` pairs of tensors; the loss is computed on the model's logits.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ._calibration import model_device

__all__ = ["StepHook", "train_epoch", "evaluate", "warmup_cosine", "check_max_grad_norm", "check_batch"]

#: Called after every optimiser step with the global step index.
StepHook = Callable[[int], None]


def check_batch(batch: Any, name: str = "train_loader") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` as ``(inputs, targets)``; ``TypeError`` naming the loader ``name`` unless the
    targets are class indices (an integer tensor of shape (batch,))."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"{name}: expected batches of (inputs, targets), got {type(batch).__name__}")
    x, y = batch
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or y.dim() != 1:
        what = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"{name}: the targets must be class indices (an integer tensor of shape (batch,)), got {what}")
    return x, y


def _pair(batch: Any, device: torch.device, name: str = "train_loader") -> tuple[torch.Tensor, torch.Tensor]:
    x, y = check_batch(batch, name)
    return x.to(device), y.to(device=device, dtype=torch.long)  # cross-entropy takes int64 class indices only


def train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizers: list[torch.optim.Optimizer],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: StepHook | None = None,
    step: int = 0,
    progress: bool = False,
    desc: str = "epoch",
    max_grad_norm: float | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; returns ``({"loss", "train_accuracy"}, next step index)``.

    ``before_step(step)`` runs before the forward pass (schedules), ``after_step(step)`` after the
    optimiser steps (masks); ``extra_loss()`` is added to the data loss (regularisers).
    ``max_grad_norm``: the gradients of the first optimiser's parameters (the weights; a second
    optimiser, e.g. Adam on learned-mask scores, is left alone) are rescaled together so that their
    Euclidean norm is at most this value (``torch.nn.utils.clip_grad_norm_``).
    """
    clipped = [p for group in optimizers[0].param_groups for p in group["params"]] if max_grad_norm is not None else []
    device = model_device(model)
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x, y = _pair(batch, device)
        if before_step is not None:
            before_step(step)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        full = loss + extra_loss() if extra_loss is not None else loss
        full.backward()
        if clipped:
            torch.nn.utils.clip_grad_norm_(clipped, max_grad_norm)
        for opt in optimizers:
            opt.step()
        if after_step is not None:
            after_step(step)
        step += 1
        total += y.shape[0]
        correct += int((out.argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * y.shape[0]
    if total == 0:
        raise ValueError("train_loader: no batches")
    return {"loss": loss_sum / total, "train_accuracy": correct / total}, step


def check_max_grad_norm(value: Any) -> None:
    """``ValueError`` naming ``max_grad_norm`` unless ``value`` is ``None`` or a finite number > 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
        raise ValueError(f"max_grad_norm: expected None or a finite number > 0, got {value!r}")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor at optimisation step ``step`` (0-based) of ``total``: a linear warm-up
    ``(step + 1) / warmup`` over the first ``warmup`` steps, then a cosine decay
    ``(1 + cos(pi (step - warmup) / (total - warmup))) / 2`` from 1 towards 0
    (``warmup = 0``: the plain cosine schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode; the mode is restored)."""
    device = model_device(model)
    was = model.training
    model.eval()
    total, correct = 0, 0
    try:
        for batch in loader:
            x, y = _pair(batch, device, "loader")
            correct += int((model(x).argmax(1) == y).sum())
            total += y.shape[0]
    finally:
        model.train(was)
    if total == 0:
        raise ValueError("loader: no batches")
    return correct / total
