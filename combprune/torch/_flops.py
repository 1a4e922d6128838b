"""Per-layer FLOP counts measured with :class:`torch.utils.flop_counter.FlopCounterMode`.

Unit: **FLOPs = 2 x multiply-accumulates (MACs)**, per calibration *sample* (one row of the
first calibration batch: an image, a sequence of tokens), as torch's counter reports them.

The FLOP cost of one weight of a layer is the layer's dense count divided by its number of
weights: ``2 x tokens`` for a Linear layer applied to ``tokens`` positions, ``2 x H_out x W_out``
for a 2-d convolution (bias additions are not counted by torch's counter). Nothing is
tabulated per architecture: every figure comes from running the layer once on the input it
actually receives in the model.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._calibration import Batch, forward
from ._select import PrunableParam

__all__ = ["layer_flops", "model_flops"]


def _one_sample(batch: Batch) -> Batch:
    return batch.slice(0, 1)


def model_flops(model: nn.Module, batch: Batch) -> float:
    """Dense FLOPs of one forward pass of ``model`` (in eval mode) on one sample of ``batch``."""
    sample = _one_sample(batch)
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(model, sample.inputs)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Run in ``eval()`` (batch-norm statistics untouched) and restore each module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def layer_flops(model: nn.Module, params: list[PrunableParam], batch: Batch) -> list[float]:
    """Dense FLOPs (per sample) of each parameter's module, in the order of ``params``.

    The module's inputs are captured with forward hooks during one pass of the model on one
    sample; each module is then re-run alone under ``FlopCounterMode`` (every call of a module
    used several times is counted). A module that the forward pass never calls gets 0 FLOPs.
    """
    captured: dict[int, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {id(p.module): [] for p in params}
    handles = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        captured[id(module)].append((args, kwargs))

    seen: set[int] = set()
    for p in params:
        if id(p.module) not in seen:
            seen.add(id(p.module))
            handles.append(p.module.register_forward_hook(hook, with_kwargs=True))
    try:
        with _eval_mode(model), torch.no_grad():
            forward(model, _one_sample(batch).inputs)
    finally:
        for h in handles:
            h.remove()
    per_module: dict[int, float] = {}
    with _eval_mode(model), torch.no_grad():
        for p in params:
            if id(p.module) in per_module:
                continue
            total = 0.0
            for args, kwargs in captured[id(p.module)]:
                with FlopCounterMode(display=False) as counter:
                    p.module(*args, **kwargs)
                total += float(counter.get_total_flops())
            per_module[id(p.module)] = total
    # A module with several prunable weights would split its FLOPs by weight count.
    by_module: dict[int, int] = {}
    for p in params:
        by_module[id(p.module)] = by_module.get(id(p.module), 0) + p.numel
    return [per_module[id(p.module)] * p.numel / by_module[id(p.module)] for p in params]


def measure(model: nn.Module, example: Any, *, targets: Any = None, ignore: Any = None) -> dict[str, float]:
    """Weights and FLOPs of ``model`` as it is now (masks applied), on one sample of ``example``.

    ``example`` is anything :func:`combprune.torch.prune` takes as calibration (its first sample
    is used). Returns ``params`` / ``nonzero`` prunable weights, ``sparsity`` (fraction of them
    that are zero), ``model_flops`` (dense FLOPs of the whole model, FLOPs = 2 x MACs),
    ``effective_flops`` (the model's FLOPs counting only nonzero prunable weights: each weight
    costs its layer's dense FLOPs / its number of weights) and ``flops_kept`` (their ratio).
    """
    from ._calibration import check_device, iter_batches
    from ._select import select_parameters

    params = select_parameters(model, targets, ignore)
    batch = next(iter(iter_batches(example, 1, check_device(model, None))))
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
