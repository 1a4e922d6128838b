"""Per-sample gradients with :mod:`torch.func` (``vmap`` over ``grad``, chunked).

Row ``i`` of the returned matrix A is ``grad_w l_i(w)``: the gradient of sample ``i``'s loss
with respect to the selected (prunable) weights, flattened in the order of ``params`` (each
parameter flattened in C order). Other parameters and buffers are held fixed. The model is
evaluated in ``eval()`` mode (dropout off, batch-norm running statistics) and its mode is
restored afterwards.

``loss_fn(outputs, targets)`` must return the *mean* loss of its batch (or one loss per sample,
``reduction="none"``, which is averaged: :func:`batch_loss`); it is applied to a batch of one
sample at a time, so ``l_i`` is sample ``i``'s own loss.

``vmap`` cannot run models with data-dependent control flow (Hugging Face models check the
``attention_mask`` for padding with Python ``if`` statements), nor models whose custom
``torch.autograd.Function`` lacks ``setup_context`` (BLOOM's GeLU). When it fails that way the
gradients are computed one sample at a time with plain autograd instead (the gradient of the same
per-sample loss, slower), with a warning; ``info["method"]`` says which ran (``"vmap"`` or ``"per-sample loop"``). The default is
:func:`torch.nn.functional.cross_entropy` (on log-softmax outputs it equals the NLL loss,
since ``log_softmax`` is idempotent), or the model's own ``outputs.loss`` when it returns one
(:func:`default_loss`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._calibration import Batch, eval_mode
from ._select import PrunableParam

logger = logging.getLogger(__name__)

__all__ = ["per_sample_gradients", "default_loss", "batch_loss", "param_overrides", "flat_weights"]

LossFn = Callable[[Any, Any], torch.Tensor]


def default_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """The model's own loss when it computed one, else cross-entropy against class targets.

    A Hugging Face model given ``labels`` in its batch returns ``outputs.loss``: the shifted
    next-token loss of a causal language model, the masked-token loss, the classification (or
    regression) loss. Otherwise: cross-entropy of the logits (or log-probabilities) against
    integer class targets, with the classes on dim 1 (torch's convention: ``(N, C)``,
    ``(N, C, H, W)``) or, for token-level outputs ``(N, L, C)`` against ``(N, L)`` targets, on
    the last dim; targets of ``-100`` are ignored (torch's default ``ignore_index``).
    """
    loss = getattr(outputs, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if hasattr(outputs, "logits"):
        outputs = outputs.logits
    if targets is None:
        raise ValueError("loss_fn: the default loss needs targets or a model that returns its own loss (a Hugging Face batch "
                         "with labels); pass (inputs, targets) batches or a loss_fn, or prune layer by layer from the inputs "
                         "alone with method='layerwise', 'sparsegpt' or 'wanda'")
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"loss_fn: the default loss (cross-entropy) needs the model to return logits (a tensor, or an output "
                        f"with .logits or .loss); it returned a {type(outputs).__name__}: pass loss_fn=")
    if _classes_last(outputs, targets):
        outputs = outputs.movedim(-1, 1)
    return nn.functional.cross_entropy(outputs, targets)


def _classes_last(outputs: Any, targets: Any) -> bool:
    """Token-level logits ``(N, L, ..., C)`` for targets ``(N, L, ...)`` (not torch's ``(N, C, L, ...)``)."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return False
    if outputs.dim() < 3 or outputs.dim() != targets.dim() + 1:
        return False
    return outputs.shape[:-1] == targets.shape and outputs.shape[:1] + outputs.shape[2:] != targets.shape


def batch_loss(loss_fn: LossFn, outputs: Any, targets: Any, size: int) -> torch.Tensor:
    """``loss_fn(outputs, targets)`` of a batch of ``size`` samples as a scalar: its mean loss
    (a scalar, or one loss per sample, ``reduction="none"``, which is averaged); anything else
    is a ``TypeError`` / ``ValueError`` naming ``loss_fn``."""
    value = loss_fn(outputs, targets)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss_fn: expected a tensor (the mean loss of the batch), got {type(value).__name__}")
    if value.dim() == 0:
        return value
    if value.numel() == size:
        return value.mean()
    raise ValueError(f"loss_fn: expected the mean loss of a batch of {size} (a scalar) or one loss per sample, got a tensor of shape {tuple(value.shape)}")


def flat_weights(params: list[PrunableParam]) -> torch.Tensor:
    """Current effective weights of ``params`` as one flat vector (detached copy)."""
    return torch.cat([p.tensor.detach().reshape(-1) for p in params])


def param_overrides(params: list[PrunableParam], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """``functional_call`` overrides setting ``params`` to the values in ``flat``.

    For a module already pruned by :mod:`torch.nn.utils.prune`, ``weight_orig`` is set to the
    values and ``weight_mask`` to ones, so the effective weight is exactly ``flat``'s slice.
    """
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for p in params:
        n = p.numel
        value = flat[offset : offset + n].reshape(p.shape)
        offset += n
        prefix = f"{p.module_name}." if p.module_name else ""
        if p.is_masked:
            out[f"{prefix}{p.param_name}_orig"] = value
            mask = getattr(p.module, p.param_name + "_mask")
            out[f"{prefix}{p.param_name}_mask"] = torch.ones_like(mask)
        else:
            out[f"{prefix}{p.param_name}"] = value
    return out


def _names(params: list[PrunableParam]) -> list[str]:
    prefix = [f"{p.module_name}." if p.module_name else "" for p in params]
    return [f"{pre}{p.param_name}_orig" if p.is_masked else f"{pre}{p.param_name}" for pre, p in zip(prefix, params)]


#: The error raised wherever per-sample gradients turn out NaN or inf.
NON_FINITE_GRADIENTS = (
    "calibration: the per-sample gradients are not finite (NaN or inf); check the calibration inputs and targets, "
    "and the model's weights and outputs, for NaN or inf"
)


def per_sample_gradients(
    model: nn.Module,
    params: list[PrunableParam],
    batches: Iterable[Batch],
    *,
    weights: torch.Tensor | None = None,
    wrt: list[int] | None = None,
    columns: tuple[int, int] | None = None,
    loss_fn: LossFn | None = None,
    chunk_size: int = 128,
    dtype: torch.dtype = torch.float32,
    progress: Any = None,
    info: dict[str, Any] | None = None,
) -> torch.Tensor:
    """The n x p matrix of per-sample gradients at ``weights`` (default: current weights).

    Parameters
    ----------
    model : the network; not modified (weights are substituted with ``functional_call``).
    params : prunable weights (columns of the result, in order).
    batches : calibration batches on the model's device.
    weights : flat (p,) values of ``params`` at which to differentiate.
    wrt : indices into ``params`` of the weights to differentiate (default: all); the others
        are held at their values in ``weights``. The result has columns for ``wrt`` only.
    columns : keep only the columns ``[start, stop)`` of the ``wrt`` weights (flattened in
        order); default all.
    loss_fn : ``loss_fn(outputs, targets) -> mean loss``; default cross-entropy.
    chunk_size : samples differentiated together. Peak memory is the result (allocated once
        and filled in place) plus about ``chunk_size`` x (the ``wrt`` weights) floats of
        gradients and the activations of ``chunk_size`` samples.
    dtype : storage dtype of the result (float32 by default).
    progress : an optional tqdm bar advanced by the number of samples processed.
    info : an optional dict that receives ``"method"``: ``"vmap"`` or ``"per-sample loop"``.
    """
    loss_fn = loss_fn or default_loss
    if weights is None:
        weights = flat_weights(params)
    batches = list(batches)
    overrides = param_overrides(params, weights.detach())
    chosen = params if wrt is None else [params[j] for j in wrt]
    names = _names(chosen)
    diff = {name: overrides[name] for name in names}
    fixed = {k: v for k, v in overrides.items() if k not in diff}
    # every other parameter enters detached: only the prunable weights are differentiated, and
    # a parameter that requires grad can reach an operation that refuses it (Swin's relative
    # position bias becomes the attn_mask of a fused attention kernel)
    storages = {id(p.storage) for p in params}
    fixed.update({k: v.detach() for k, v in model.named_parameters() if k not in overrides and id(v) not in storages})
    offsets = [0]
    for p in chosen:
        offsets.append(offsets[-1] + p.numel)
    start, stop = columns if columns is not None else (0, offsets[-1])
    out = torch.empty(sum(b.size for b in batches), stop - start, dtype=dtype, device=weights.device)

    def sample_loss(dparams: dict[str, torch.Tensor], inputs: Any, targets: Any) -> torch.Tensor:
        one = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, inputs)
        tgt = targets.unsqueeze(0) if isinstance(targets, torch.Tensor) else targets
        if isinstance(one, dict):
            out = functional_call(model, {**dparams, **fixed}, (), one)
        elif isinstance(one, (tuple, list)):
            out = functional_call(model, {**dparams, **fixed}, tuple(one))
        else:
            out = functional_call(model, {**dparams, **fixed}, (one,))
        return batch_loss(loss_fn, out, tgt, 1)

    def write(row: int, g: dict[str, torch.Tensor], rows: int) -> None:
        """Copy the kept columns of the gradients ``g`` of ``rows`` samples into ``out[row:]``."""
        for name, lo, hi in zip(names, offsets[:-1], offsets[1:]):
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                out[row : row + rows, a - start : b - start] = g[name].reshape(rows, -1)[:, a - lo : b - lo]

    def loop_grad(dparams: dict[str, torch.Tensor], inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """One sample's gradient by plain autograd: also for models that torch.func cannot
        transform (e.g. a ``torch.autograd.Function`` without ``setup_context``)."""
        leaves = {k: v.detach().requires_grad_(True) for k, v in dparams.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad(sample_loss(leaves, inputs, targets), list(leaves.values()), allow_unused=True)
        return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}

    grad_fn = grad(sample_loss)
    method, row = "vmap", 0
    with eval_mode(model):
        for batch in batches:
            for s in range(0, batch.size, chunk_size):
                part = batch.slice(s, min(batch.size, s + chunk_size))
                if method == "vmap":
                    try:
                        tdim = 0 if isinstance(part.targets, torch.Tensor) else None
                        write(row, vmap(grad_fn, in_dims=(None, 0, tdim))(diff, part.inputs, part.targets), part.size)
                    except RuntimeError as exc:
                        if "vmap" not in str(exc):
                            raise
                        method = "per-sample loop"
                        logger.warning(
                            "per-sample gradients: vmap cannot run this model (%s); computing them one sample at a time "
                            "with autograd", str(exc).splitlines()[0][:200]
                        )
                if method != "vmap":
                    for i in range(part.size):
                        inputs = torch.utils._pytree.tree_map(lambda t: t[i] if isinstance(t, torch.Tensor) else t, part.inputs)
                        target = part.targets[i] if isinstance(part.targets, torch.Tensor) else part.targets
                        write(row + i, loop_grad(diff, inputs, target), 1)
                row += part.size
                if progress is not None:
                    progress.update(part.size)
    if info is not None:
        info["method"] = method
    return out
