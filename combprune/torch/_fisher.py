"""The factor ``A`` of the local model's curvature: the empirical or the true Fisher.

The local model of the mean calibration loss (``docs/torch_adapter.md``, "The curvature:
empirical or true Fisher") is ``Q(w) = 1/2 ||b - A w||^2 + ridge/2 ||w - w_bar||^2`` with
``A^T A / n`` the curvature and ``b = A w_bar - r`` (first-order term) or ``b = A w_bar``,
where ``A^T r`` is the sum of the per-sample loss gradients:

* ``"empirical"``: one row per sample, the gradient ``g_i`` of its loss; ``r = 1``. The
  empirical Fisher ``sum_i g_i g_i^T / n`` (the papers' choice).
* ``"true"``: for a classifier trained with the cross-entropy of ``softmax(z)``, the Fisher
  ``sum_i sum_c p_ic a_ic a_ic^T / n`` with ``a_ic = grad_w (-log p_ic)`` (the expectation over
  the model's own labels, equal to the Gauss-Newton matrix ``J^T (diag p - p p^T) J``): rows
  ``s_ic a_ic``, ``s_ic = sqrt(max(p_ic, PROB_FLOOR))``, for every class with
  ``p_ic >= MIN_CLASS_PROB`` and every class the sample's target puts weight on. The target
  ``t_i`` is the label ``y_i`` (one-hot), or with ``distill=True`` the unpruned model's class
  probabilities ``q_i`` (:attr:`Batch.teacher`; its classes below ``MIN_CLASS_PROB`` dropped
  and the rest renormalised). ``r_ic = t_ic / s_ic``, so that
  ``A^T r = sum_i J_i^T (p_i - t_i)``: exactly the summed gradient of the cross-entropy
  against ``t_i``. The curvature does not depend on the target; with ``t = q`` the first-order
  term pulls the pruned model towards the unpruned one's predictions (self-distillation)
  instead of the calibration labels. The floor only bounds ``r`` (a class the model all but
  rules out); it adds at most ``PROB_FLOOR a a^T`` to the curvature.

Rows are sample-major: sample ``i`` owns rows ``sample_rows[i]:sample_rows[i + 1]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ._calibration import Batch, eval_mode, functional_forward
from ._gradients import LossFn, batch_loss, default_loss, param_overrides, per_sample_gradients
from ._select import PrunableParam

__all__ = ["FISHER_KINDS", "MIN_CLASS_PROB", "PROB_FLOOR", "FisherRows", "fisher_rows", "class_probabilities", "rows_per_sample",
           "with_teacher"]

#: The curvatures the gradient methods offer.
FISHER_KINDS: tuple[str, ...] = ("empirical", "true")
#: ``fisher="true"`` keeps a class's row when the model gives it at least this probability (the
#: label's row always): a dropped row would carry at most ``sqrt(MIN_CLASS_PROB)`` of a gradient.
MIN_CLASS_PROB = 1e-2
#: The smallest probability a row is scaled by (module docstring): it bounds the residual ``t / s``.
PROB_FLOOR = 1e-4
#: Relative tolerance of the check that ``loss_fn`` is the cross-entropy of ``softmax(outputs)``.
_LOSS_RTOL = 1e-4


@dataclass(frozen=True)
class FisherRows:
    """Rows ``A`` of the curvature factor, the first-order residual ``r`` and the rows of each sample."""

    A: np.ndarray
    residual: np.ndarray
    sample_rows: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.sample_rows.shape[0] - 1)

    def head(self, n: int) -> "FisherRows":
        """The rows of the first ``n`` samples (views, no copy)."""
        stop = int(self.sample_rows[n])
        return FisherRows(self.A[:stop], self.residual[:stop], self.sample_rows[: n + 1])


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") and not isinstance(outputs, torch.Tensor) else outputs


def class_probabilities(model: nn.Module, params: list[PrunableParam], batch: Batch, weights: torch.Tensor, loss_fn: LossFn | None) -> torch.Tensor:
    """``softmax(outputs)`` of ``batch`` (float64, ``(size, C)``) at ``weights``.

    ``ValueError`` naming ``fisher`` unless the model returns class scores ``(size, C)`` (a
    tensor or ``.logits``), the targets are class indices and ``loss_fn`` is the cross-entropy
    of ``softmax(outputs)`` against them (the default loss, or the NLL loss of log-softmax
    outputs): the true Fisher is that loss's.
    """
    with eval_mode(model), torch.no_grad():
        outputs = functional_forward(model, param_overrides(params, weights), batch.inputs)
        logits = _logits(outputs)
        targets = batch.targets
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == batch.size):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"fisher: 'true' needs class scores of shape (samples, classes) from the model, got {shape}; use fisher='empirical'")
        if not (isinstance(targets, torch.Tensor) and targets.shape == (batch.size,) and not targets.is_floating_point()):
            raise ValueError("fisher: 'true' needs integer class targets, one per sample; use fisher='empirical'")
        if bool(((targets < 0) | (targets >= logits.shape[1])).any()):
            raise ValueError(f"fisher: 'true' needs every target to be a class index in [0, {logits.shape[1]}) (no ignored samples); "
                             "use fisher='empirical'")
        expected = float(nn.functional.cross_entropy(logits.double(), targets))
        actual = float(batch_loss(loss_fn or default_loss, outputs, targets, batch.size))
        if not math.isclose(actual, expected, rel_tol=_LOSS_RTOL, abs_tol=_LOSS_RTOL * 1e-3):
            raise ValueError(
                f"fisher: 'true' is the Fisher of the cross-entropy of softmax(outputs), but loss_fn gives {actual:.6g} where that "
                f"loss is {expected:.6g}; use fisher='empirical' for another loss"
            )
        probs = torch.softmax(logits.double(), dim=1)
        if not bool((probs[torch.arange(batch.size, device=probs.device), targets.to(probs.device)] > 0).all()):
            # a label the model rules out: its row would be 0 and its residual 1/sqrt(p) infinite
            raise ValueError("fisher: 'true' needs every label to have a positive probability, but the model's softmax gives "
                             "some calibration label exactly 0 (float64 underflow); use fisher='empirical'")
        return probs


def _kept_classes(probs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Which (sample, class) rows ``fisher="true"`` keeps: ``p >= MIN_CLASS_PROB``, and every
    class of the target (the label, or the teacher's classes with ``q >= MIN_CLASS_PROB``)."""
    keep = probs >= MIN_CLASS_PROB
    if batch.teacher is None:
        keep[torch.arange(probs.shape[0]), batch.targets.cpu()] = True
    else:
        keep |= batch.teacher >= MIN_CLASS_PROB
    return keep


def _target(batch: Batch, keep: torch.Tensor) -> torch.Tensor:
    """The target distribution ``t`` (float64, ``(size, C)``): the one-hot label, or the teacher's
    probabilities on the kept classes, renormalised."""
    if batch.teacher is None:
        return nn.functional.one_hot(batch.targets.cpu(), keep.shape[1]).double()
    t = torch.where(keep, batch.teacher, torch.zeros_like(batch.teacher))
    return t / t.sum(1, keepdim=True)


def with_teacher(model: nn.Module, params: list[PrunableParam], batches: list[Batch], weights: torch.Tensor,
                 loss_fn: LossFn | None) -> list[Batch]:
    """``batches`` with :attr:`Batch.teacher` set to the class probabilities at ``weights`` (the
    unpruned model): the targets of ``distill=True`` (checked like ``fisher="true"``)."""
    return [dataclasses.replace(b, teacher=class_probabilities(model, params, b, weights, loss_fn).cpu()) for b in batches]


def rows_per_sample(model: nn.Module, params: list[PrunableParam], batches: list[Batch], fisher: str, weights: torch.Tensor,
                    loss_fn: LossFn | None) -> float:
    """Rows per sample to plan memory for: 1 for the empirical Fisher; for the true Fisher twice
    the mean at ``weights`` (a sparser model is less sure of its classes), at most the classes.

    Also checks, before any gradient is computed, that ``fisher="true"`` applies (:func:`class_probabilities`).
    """
    if fisher == "empirical":
        return 1.0
    kept, classes, n = 0, 1, 0
    for batch in batches:
        probs = class_probabilities(model, params, batch, weights, loss_fn).cpu()
        kept += int(_kept_classes(probs, batch).sum())
        classes, n = probs.shape[1], n + batch.size
    return float(min(classes, 2.0 * kept / max(1, n)))


def _class_loss(outputs: Any, classes: torch.Tensor) -> torch.Tensor:
    """``-log softmax(outputs)_c``: the cross-entropy whose Fisher the rows factor."""
    return nn.functional.cross_entropy(_logits(outputs), classes)


def fisher_rows(
    model: nn.Module,
    params: list[PrunableParam],
    batches: Iterable[Batch],
    *,
    fisher: str = "empirical",
    weights: torch.Tensor,
    loss_fn: LossFn | None = None,
    progress: Any = None,
    **gradient_options: Any,
) -> FisherRows:
    """The curvature factor of ``batches`` at ``weights`` (module docstring).

    ``gradient_options`` go to :func:`~combprune.torch._gradients.per_sample_gradients`
    (``wrt``, ``columns``, ``chunk_size``, ``info``); ``progress`` is advanced by rows.
    """
    batches = list(batches)
    if fisher == "empirical":
        A = per_sample_gradients(model, params, batches, weights=weights, loss_fn=loss_fn, progress=progress, **gradient_options)
        n = A.shape[0]
        return FisherRows(A.detach().cpu().numpy(), np.ones(n), np.arange(n + 1, dtype=np.int64))
    if fisher != "true":
        raise ValueError(f"fisher: expected one of {FISHER_KINDS}, got {fisher!r}")
    expanded, scale, residual, counts = [], [], [], []
    for batch in batches:
        probs = class_probabilities(model, params, batch, weights, loss_fn).cpu()
        keep = _kept_classes(probs, batch)
        sample, classes = keep.nonzero(as_tuple=True)  # sample-major
        s = probs[sample, classes].clamp_min(PROB_FLOOR).sqrt()
        rows = batch.take(sample)  # one sample per (sample, class) row, the class as its target
        expanded.append(Batch(rows.inputs, classes.to(batch.targets.device), rows.size))
        scale.append(s)
        residual.append(_target(batch, keep)[sample, classes] / s)
        counts.append(keep.sum(1))
    if progress is not None:
        progress.total = sum(b.size for b in expanded)
        progress.refresh()
    G = per_sample_gradients(model, params, expanded, weights=weights, loss_fn=_class_loss, progress=progress, **gradient_options)
    A = G.detach().cpu().numpy()
    A *= torch.cat(scale).numpy().astype(A.dtype)[:, None]
    rows = np.concatenate([[0], np.cumsum(torch.cat(counts).numpy())]).astype(np.int64)
    return FisherRows(A, torch.cat(residual).numpy(), rows)
