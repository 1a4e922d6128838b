r"""Structured methods (``osscar``, ``group-magnitude``, any ``StructuredMIQP`` solver) on the
sequential engine: FFN neurons and attention heads of each block, one block at a time.

The units (producer -> consumer pairs), their forward order, the plan and the dense FLOPs come
from :class:`combprune.torch.structured.StructuredSetup`, exactly as in the whole-model path
(:func:`~combprune.torch.structured.prune_structured`). Inside block b the units whose consumer
lies in the block are taken in forward order; for each, the block is run on its current inputs
until the consumer (:func:`~combprune.torch.structured.layer_grams`), accumulating
``H = X^T X`` (float64) of the consumer's input, and

    minimize_W  1/2 tr((W - W_hat)^T (H + lam I)(W - W_hat))   s.t. at most s groups of rows nonzero

(:class:`~combprune.problems.StructuredMIQP`, ``lam = ridge * mean(diag H)``) is solved and W
written into the consumer; later units of the block therefore see the pruned earlier ones, as in
OSSCAR. The block's outputs are then recomputed by the engine. For a model of one block this is
the whole-model procedure step for step. With ``torch.distributed``, H is all-reduced and the
unit is solved on rank ``i % world`` and broadcast (units of a block depend on each other, so
ranks share the calibration work, not the solves). See ``docs/large_models.md``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from combprune.problems.layerwise import reconstruction_error

from ._sequential_blocks import BlockInput, run_block
from ._sequential_dist import Dist
from ._structured_ridge import solve_unit_auto, split_batches
from .prune import _apply_structured
from .report import LayerReport, PruneReport
from .structured import (KINDS, StructuredSetup, StructuredUnit, UnsupportedGraphError, _reports, _set_weight_matrix, check_finite_grams,
                         layer_grams, weight_matrix)

__all__ = ["StructuredStep"]

logger = logging.getLogger(__name__)


class StructuredStep:
    """Prunes the structured units of one block at a time (see the module docstring)."""

    def __init__(self, model: nn.Module, *, method: str, sparsity: Any, targets: Any, ignore: Any,
                 solver_options: dict[str, Any] | None, kinds: Iterable[str] = KINDS, pairs: Any = None,
                 ridge: float | str = 1e-2, time_limit: float | None = None, apply: str = "mask", gqa: str = "kv") -> None:
        if apply not in ("mask", "permanent", "physical"):
            raise ValueError(f"apply: expected 'mask', 'permanent' or 'physical', got {apply!r}")
        if sparsity is None:
            raise ValueError(f"sparsity: {method!r} needs sparsity, the fraction of the groups of each unit removed")
        self.apply = apply
        options = dict(solver_options or {})
        if time_limit is not None:
            options.setdefault("time_limit", time_limit)
        self.setup = StructuredSetup.build(model, method=method, sparsity=sparsity, targets=targets, ignore=ignore,
                                           solver_options=options, kinds=kinds, pairs=pairs, gqa=gqa, ridge=ridge)
        self.n_fit: int | None = None  # ridge="auto": inputs[:n_fit] fit, the rest are held back
        self.pattern_text = f"groups={self.setup.sparsity}"
        self.solved: dict[str, Any] = {}
        self.extra: dict[str, tuple[int, float, int]] = {}  # consumer -> (block, relative error, rank)

    def prepare(self, model: nn.Module, batches: list[Any]) -> list[Any]:
        """Forward order, plan and dense FLOPs from one pass of the first batch (whole model);
        returns the batches to run, with ``ridge="auto"`` the fitting ones then the held-back
        ones (:func:`~combprune.torch._structured_ridge.split_batches`)."""
        if self.setup.auto_ridge:
            fit, held = split_batches(batches)
            self.n_fit, batches = len(fit), fit + held
        self.setup.prepare(model, batches)
        return batches

    def check_blocks(self, prefixes: list[str]) -> None:
        """Units outside every block are left dense (a warning and a ``not_pruned`` entry)."""
        for u in self.setup.units:
            if not any(u.consumer.startswith(p) for p in prefixes):
                logger.warning("%s: outside the repeated blocks; not pruned by the sequential engine", u.consumer)
                self.setup.plan.not_pruned.append((u.consumer, "outside the repeated blocks (sequential engine)"))

    def finish(self, model: nn.Module, report: PruneReport) -> None:
        """Apply the plan (masks, zeros or physical removal) and record it in the report."""
        _apply_structured(model, self.setup.plan, self.apply)
        report.not_pruned = list(self.setup.plan.not_pruned)
        report.info["structured_plan"] = self.setup.plan.to_dict()
        if self.setup.plan.ridge_auto:
            report.info["ridge_auto"] = self.setup.plan.ridge_auto

    def units_of(self, prefix: str) -> list[StructuredUnit]:
        return [u for u in self.setup.units if u.consumer.startswith(prefix)]

    def prune_block(self, index: int, block: nn.Module, prefix: str, inputs: list[BlockInput], dist: Dist,
                    keep_backup: Callable[[nn.Module], None]) -> int:
        """Prune every unit of the block in forward order; returns the number of units solved."""
        setup, plan = self.setup, self.setup.plan
        done = 0
        for i, unit in enumerate(self.units_of(prefix)):
            layers = [setup.modules[name] for name in unit.consumers]
            t0 = time.perf_counter()
            if setup.n_remove(unit) == 0:
                plan.keep[unit.consumer] = np.ones(unit.n_groups, dtype=bool)
                continue
            parts = [inputs] if self.n_fit is None else [inputs[: self.n_fit], inputs[self.n_fit :]]
            local, failure = [], None
            try:
                local = [layer_grams(layers, [lambda inp=inp: run_block(block, inp) for inp in part]) for part in parts]
            except UnsupportedGraphError as exc:
                failure = exc
            # every rank raises together (a rank that raised alone would leave the others waiting in a collective)
            flag = torch.tensor([float(failure is not None)], dtype=torch.float64, device=weight_matrix(layers[0]).device)
            if float(dist.all_reduce(flag)[0]) > 0:
                raise failure or UnsupportedGraphError(
                    f"{unit.consumer}: a layer of the unit was not called on another process's calibration batches; "
                    "cannot calibrate it")
            fit, *held = [[dist.all_reduce(H) for H in grams] for grams in local]
            grams = fit if not held else [Hf + Hh for Hf, Hh in zip(fit, held[0])]
            check_finite_grams(grams, unit.consumers)  # reduced: every rank raises together
            owner = i % dist.world
            Ws = [torch.empty(weight_matrix(layer).shape, dtype=torch.float64) for layer in layers]
            keep_result = None
            if owner == dist.rank:
                if held:
                    Ws, keep, result, choice = solve_unit_auto(setup, unit, layers, fit, held[0])
                else:
                    Ws, keep, result = setup.solve_unit(unit, layers, grams)
                    choice = None
                keep_result = (keep, result, choice)
            Ws = [dist.broadcast(W, owner) for W in Ws]
            keep, result, choice = dist.broadcast_object(keep_result, owner)
            if choice is not None:
                plan.ridge_auto[unit.consumer] = choice
            for name, layer, H, W in zip(unit.consumers, layers, grams, Ws):
                W_hat = weight_matrix(layer).detach().cpu().double()
                keep_backup(layer)
                _set_weight_matrix(layer, W.to(layer.weight.device))
                self.extra[name] = (index, reconstruction_error(H.cpu().numpy(), W_hat.numpy(), W.numpy()), owner)
            plan.keep[unit.consumer] = keep
            self.solved[unit.consumer] = (result, time.perf_counter() - t0)
            done += 1
        return done

    def layer_reports(self, block_of: dict[str, int]) -> list[LayerReport]:
        """The whole-model path's rows (consumers and producers), with block, error and rank."""
        rows = _reports(self.setup.plan, self.setup.modules, self.solved, self.setup.dense_flops, self.setup.method)
        for row in rows:
            layer = row.name.rsplit(".", 1)[0]
            row.block = block_of.get(layer)
            if layer in self.extra:
                row.block, row.relative_error, row.rank = self.extra[layer]
        return rows
