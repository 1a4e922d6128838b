"""Per-layer FLOP counts measured with :class:`torch.utils.flop_counter.FlopCounterMode`.

Unit: **FLOPs = 2 x multiply-accumulates (MACs)**, per calibration *sample* (an image, a
sequence of tokens), as torch's counter reports them. Counts are averaged over the first
calibration batch (up to :data:`REPRESENTATIVE_SAMPLES` samples), not taken from its first
sample alone, so that one short (padded) sequence does not decide a layer's cost.

Scaled-dot-product attention is counted with torch's own formula
(:func:`torch.utils.flop_counter.sdpa_flop_count`: the two batched products ``Q K^T`` and
``softmax(.) V``) for every SDPA kernel, including the CPU flash kernel that torch's counter
leaves at 0, so that a model counts the same FLOPs with ``attn_implementation="sdpa"`` and
``"eager"``.

The FLOP cost of one weight of a layer is the layer's dense count divided by its number of
weights: ``2 x tokens`` for a Linear layer applied to ``tokens`` positions, ``2 x H_out x W_out``
for a 2-d convolution (bias additions are not counted by torch's counter). torch's own
``nn.MultiheadAttention`` is the exception: its in-projection and its ``out_proj`` (which the
attention does not call as a module) are counted from the attention's inputs, ``2 x embed_dim``
FLOPs per input value, the Linear-layer count; and every count runs with torch's fused attention
fast path off (one native kernel the counter does not see into). Nothing is
tabulated per architecture: every figure comes from running the layer once on the input it
actually receives in the model.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ._attention import attention_inputs, fused_attention_off
from ._calibration import Batch, check_device, eval_mode, forward, iter_batches
from ._select import PrunableParam

__all__ = ["layer_flops", "model_flops", "flop_counter", "REPRESENTATIVE_SAMPLES"]

#: Number of samples of the first calibration batch over which per-sample FLOPs are averaged.
REPRESENTATIVE_SAMPLES = 32


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (torch has no formula for it)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Any]:
    ops = []
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            ops.append(op)
    return {op: _sdpa_cpu_flops for op in ops}


def flop_counter() -> FlopCounterMode:
    """A silent :class:`FlopCounterMode` that also counts CPU scaled-dot-product attention."""
    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


def _representative(batch: Batch) -> Batch:
    return batch.slice(0, min(batch.size, REPRESENTATIVE_SAMPLES))


def _as_batch(model: nn.Module, data: Batch | Any) -> Batch:
    if isinstance(data, Batch):
        return data
    return next(iter(iter_batches(data, REPRESENTATIVE_SAMPLES, check_device(model, None))))


def model_flops(model: nn.Module, batch: Batch | Any) -> float:
    """Dense FLOPs per sample of one forward pass of ``model`` (in eval mode).

    ``batch`` is a calibration batch or anything :func:`combprune.torch.prune` accepts as
    calibration (a tensor, ``(X, y)``, a dict of tensors, a DataLoader); the count is averaged
    over up to :data:`REPRESENTATIVE_SAMPLES` samples of its first batch.
    """
    sample = _representative(_as_batch(model, batch))
    with _eval_mode(model), torch.no_grad(), flop_counter() as counter:
        forward(model, sample.inputs)
    return float(counter.get_total_flops()) / sample.size


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """:func:`~._calibration.eval_mode` with torch's fused attention fast path off
    (:func:`~._attention.fused_attention_off`): the layers run (and are counted) one by one."""
    with fused_attention_off(), eval_mode(model):
        yield


def layer_flops(model: nn.Module, params: list[PrunableParam], batch: Batch, *, uncounted: list[str] | None = None) -> list[float]:
    """Dense FLOPs (per sample) of each parameter's module, in the order of ``params``.

    The module's inputs are captured with forward hooks during one pass of the model on the
    representative samples of ``batch`` (see :func:`model_flops`); each module is then re-run
    alone under the counter (every call of a module
    used several times is counted). A module that the forward pass never calls gets 0 FLOPs.
    ``uncounted`` (a list) receives the names of the parameters whose module *was* called but
    to which the counter attributes no FLOPs (an operation it has no formula for, such as the
    grouped matrix products of transformers' mixture-of-experts blocks).
    """
    # the out_proj of an nn.MultiheadAttention is never called as a module: its cost comes from
    # the attention module's queries
    owner = {id(m.out_proj): m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    hooked = {id(p.module): p.module for p in params}
    hooked.update({id(owner[id(p.module)]): owner[id(p.module)] for p in params if id(p.module) in owner})
    captured: dict[int, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {key: [] for key in hooked}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        captured[id(module)].append((args, kwargs))

    handles = [module.register_forward_hook(hook, with_kwargs=True) for module in hooked.values()]
    sample = _representative(_as_batch(model, batch))
    try:
        with _eval_mode(model), torch.no_grad():
            forward(model, sample.inputs)
    finally:
        for h in handles:
            h.remove()
    per_module: dict[int, float] = {}
    with _eval_mode(model), torch.no_grad():
        for p in params:
            if id(p.module) in per_module:
                continue
            calls = captured[id(p.module)]
            if isinstance(p.module, nn.MultiheadAttention):  # only its in-projection is pruned
                total = sum(_in_projection_flops(p.module, args, kwargs) for args, kwargs in calls)
            elif id(p.module) in owner and not calls:
                total = sum(_out_projection_flops(p.module, args, kwargs) for args, kwargs in captured[id(owner[id(p.module)])])
            else:
                total = sum(_counted_flops(p.module, args, kwargs) for args, kwargs in calls)
            per_module[id(p.module)] = total / sample.size
            if uncounted is not None and calls and total == 0:
                uncounted.extend(q.name for q in params if q.module is p.module)
    # A module with several prunable weights would split its FLOPs by weight count.
    by_module: dict[int, int] = {}
    for p in params:
        by_module[id(p.module)] = by_module.get(id(p.module), 0) + p.numel
    return [per_module[id(p.module)] * p.numel / by_module[id(p.module)] for p in params]


def _counted_flops(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    """FLOPs of one call of ``module`` on its captured inputs, by torch's counter."""
    with flop_counter() as counter:
        module(*args, **kwargs)
    return float(counter.get_total_flops())


def _in_projection_flops(mha: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    """FLOPs of the q / k / v projections of one call: ``2 E`` per input feature of each token
    (``E = embed_dim`` outputs each), as torch's counter counts a Linear layer."""
    return float(sum(2 * mha.embed_dim * t.numel() for t in attention_inputs(args, kwargs)))


def _out_projection_flops(out_proj: nn.Linear, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    """FLOPs of the output projection of one attention call (one output row per query token)."""
    query = attention_inputs(args, kwargs)[0]
    return float(2 * out_proj.in_features * out_proj.out_features * (query.numel() // query.shape[-1]))


def measure(model: nn.Module, example: Any, *, targets: Any = None, ignore: Any = None) -> dict[str, float]:
    """Weights and FLOPs of ``model`` as it is now (masks applied), per sample of ``example``.

    ``example`` is anything :func:`combprune.torch.prune` takes as calibration (FLOPs are
    averaged over the representative samples of its first batch, see :func:`model_flops`). Returns ``params`` / ``nonzero`` prunable weights, ``sparsity`` (fraction of them
    that are zero), ``model_flops`` (dense FLOPs of the whole model, FLOPs = 2 x MACs),
    ``effective_flops`` (the model's FLOPs counting only nonzero prunable weights: each weight
    costs its layer's dense FLOPs / its number of weights) and ``flops_kept`` (their ratio).
    """
    from ._select import select_parameters, with_unselected

    params = select_parameters(model, targets, ignore)
    if targets is None:
        with_unselected(model, [], "measure")  # a warning naming large weights outside the measured ones
    batch = _as_batch(model, example)
    dense = layer_flops(model, params, batch)
    total = model_flops(model, batch)
    nnz = [int(torch.count_nonzero(p.tensor.detach())) for p in params]
    sizes = [p.numel for p in params]
    effective = total - math.fsum(dense) + math.fsum(d * z / s for d, z, s in zip(dense, nnz, sizes) if s)
    return {
        "params": float(sum(sizes)),
        "nonzero": float(sum(nnz)),
        "sparsity": 1.0 - sum(nnz) / sum(sizes),
        "model_flops": total,
        "effective_flops": effective,
        "flops_kept": effective / total if total else 1.0,
    }
