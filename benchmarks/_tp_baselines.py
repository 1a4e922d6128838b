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

import torch
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


def bert_heads_and_neurons(model: nn.Module, batch: dict, method: str, ratio: float, heads: int | None = None) -> nn.Module:
    """Prune ``ratio`` of every FFN's neurons and of every attention layer's heads (or exactly
    ``heads`` heads per layer) of a Hugging Face BERT encoder in place (Torch-Pruning's head
    support: whole heads, head size kept; it removes ``n - int(n (1 - r))`` of ``n`` heads).

    The embeddings are ignored, which blocks every group of the hidden size (the residual
    stream); what remains are the heads (query/key/value rows with the attention output's
    columns) and the FFN neurons (intermediate rows with the output's columns). The attention
    modules' head counts are updated to their new widths afterwards.
    """
    from transformers.models.bert.modeling_bert import BertSelfAttention

    attentions = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    n = attentions[0].num_attention_heads
    head_ratio = ratio if heads is None else (heads - 0.5) / n  # n - int(n - heads + 0.5) = heads
    num_heads = {lin: att.num_attention_heads for att in attentions for lin in (att.query, att.key, att.value)}
    tp_prune(model, batch, method, ratio, ignored_layers=[model.embeddings] + ([model.pooler] if model.pooler else []),
             output_transform=lambda out: out.last_hidden_state.sum(), num_heads=num_heads, prune_num_heads=True,
             prune_head_dims=False, head_pruning_ratio=head_ratio)
    for att in attentions:
        att.num_attention_heads = att.query.out_features // att.attention_head_size
        att.all_head_size = att.query.out_features
    return model


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Indices of ``dense``'s rows that ``pruned``'s rows are (exact copies, order kept)."""
    match = (pruned[:, None, :] == dense[None, :, :]).all(-1)
    if not bool((match.sum(1) == 1).all()):
        raise AssertionError("a pruned row is not a unique row of the dense weight")
    return match.float().argmax(1)


def bert_masked_like(dense: nn.Module, pruned: nn.Module) -> nn.Module:
    """The dense BERT with the columns of every removed head / neuron zeroed in the layer that
    reads it (what the physically pruned model must compute)."""
    masked = copy.deepcopy(dense)
    for lm, lp in zip(masked.encoder.layer, pruned.encoder.layer):
        for reader, dense_rows, kept in (
            (lm.attention.output.dense, lm.attention.self.query.weight, lp.attention.self.query.weight),
            (lm.output.dense, lm.intermediate.dense.weight, lp.intermediate.dense.weight),
        ):
            keep = torch.zeros(dense_rows.shape[0], dtype=torch.bool)
            keep[_kept_rows(dense_rows, kept)] = True
            reader.weight.data[:, ~keep] = 0
    return masked
