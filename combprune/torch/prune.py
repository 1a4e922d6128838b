"""The one-shot pruning engine behind :class:`combprune.torch.Pruner` and ``combprune.torch.prune``.

The unstructured methods build one global problem over every prunable weight
(``docs/formulations/l0_regression.md``):

.. math::

    \\min_w \\tfrac12 \\|b - A w\\|^2 + \\tfrac{n\\,l2}{2} \\|w - \\bar w\\|^2
    \\quad \\text{s.t.} \\quad \\|w\\|_0 \\le k, \\quad \\sum_{i: w_i \\ne 0} f_i \\le F

with A the n x p per-sample gradients at the current weights ``w_bar`` (empirical Fisher
``A^T A / n``), ``f_i`` the FLOPs of weight i (its layer's dense FLOPs / its number of weights,
measured by :class:`torch.utils.flop_counter.FlopCounterMode`, FLOPs = 2 x MACs), ``k`` the
weights kept and ``F`` the FLOPs kept by the pruned layers.

Budget conventions
------------------
* ``sparsity`` = fraction of the prunable weights **removed**: ``k = p - removed`` with
  ``removed = ceil(sparsity * p)`` (rounded to the nearest integer when within 1e-9 of it), so
  the reached sparsity is never below the requested one.
* ``flop_budget`` = fraction of the **model's** dense FLOPs kept (FLOPs per sample of one
  forward pass, averaged over the first calibration batch, everything torch's counter sees). FLOPs of layers that are not pruned are
  fixed, so the pruned layers get ``F = flop_budget x model FLOPs - fixed FLOPs``; when that is
  negative the budget cannot be met and a ``ValueError`` says so.
* Both budgets are checked exactly after pruning: NNZ <= k, FLOPs <= F (``math.fsum``, 1e-12
  relative slack for summation order only).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from combprune import problems as _problems
from combprune.api import solve
from combprune.registry import free_warm_start

from . import _autotune
from ._calibration import Batch, check_device, check_finite_parameters, collect
from ._flops import layer_flops, model_flops
from ._fisher import FisherRows, fisher_rows, rows_per_sample, with_teacher
from ._gradients import NON_FINITE_GRADIENTS, flat_weights
from ._select import PrunableParam, select_parameters, with_unselected
from .methods import FLOP_SELECTION_SOLVER
from .report import BudgetError, LayerReport, PruneReport

if TYPE_CHECKING:
    from .pruner import PruneConfig

logger = logging.getLogger(__name__)

__all__ = ["run", "PruningError", "k_from_sparsity"]


class PruningError(RuntimeError):
    """Pruning failed; the model has been restored to its state before the call."""


def k_from_sparsity(sparsity: float, p: int) -> int:
    """Weights kept for a fraction ``sparsity`` removed: ``p - ceil(sparsity p)`` (see module doc)."""
    r = sparsity * p
    removed = round(r) if abs(r - round(r)) <= 1e-9 * max(1.0, p) else math.ceil(r)
    return int(p - min(p, max(0, removed)))


def require_one_kept(sparsity: float, size: int, what: str = "prunable weights") -> None:
    """``ValueError`` naming ``sparsity`` when it removes every one of ``size`` weights (k = 0)."""
    if size > 0 and k_from_sparsity(sparsity, size) == 0:
        raise ValueError(f"sparsity: {sparsity:g} removes all {size} {what} (the count removed is rounded up); the largest "
                         f"sparsity that keeps one is 1 - 1/{size} = {1.0 - 1.0 / size:.6g}")


# Model snapshot / restore ----------------------------------------------------------------------
class _Snapshot:
    """Everything :func:`prune` may change on a model, to put it back exactly on failure.

    Saves, per module: the parameter, buffer and child dicts, forward (pre-)hooks, the instance
    attributes, and a copy of every tensor's data; plus a deep copy of ``model.config`` when
    present (Hugging Face models).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = []
        for m in model.modules():
            self.modules.append(
                (
                    m,
                    OrderedDict(m._parameters),
                    OrderedDict(m._buffers),
                    OrderedDict(m._modules),
                    OrderedDict(m._forward_pre_hooks),
                    OrderedDict(m._forward_hooks),
                    {k: v for k, v in m.__dict__.items() if not k.startswith("_")},
                )
            )
        self.tensors: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        seen: set[int] = set()
        for m in model.modules():
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    self.tensors.append((t, t.detach().clone(), t.requires_grad))
        self.config = copy.deepcopy(model.config) if hasattr(model, "config") else None

    def restore(self) -> None:
        for m, params, buffers, modules, pre, post, attrs in self.modules:
            for d, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules), (m._forward_pre_hooks, pre), (m._forward_hooks, post)):
                d.clear()
                d.update(saved)
            for key in [k for k in m.__dict__ if not k.startswith("_") and k not in attrs]:
                del m.__dict__[key]
            m.__dict__.update(attrs)
        with torch.no_grad():
            for t, data, req in self.tensors:
                if t.shape == data.shape:
                    t.copy_(data)
                else:
                    t.data = data
                t.requires_grad_(req)
        if self.config is not None:
            self.model.config = self.config


# Budgets of the stages ------------------------------------------------------------------------
def _explicit_budgets(seq: tuple[float, ...], p: int, k: int, dense: float, F: float | None) -> list[Any]:
    """(k_t, F_t) of an explicit sparsity schedule: stage t goes ``s_t / s_T`` of the way."""
    target = seq[-1]
    out: list[Any] = []
    for s_t in seq:
        frac = s_t / target if target > 0 else 1.0
        k_t = max(k, min(p, int(round(p - frac * (p - k)))))
        out.append(k_t if F is None else (k_t, dense - frac * (dense - F)))
    out[-1] = k if F is None else (k, F)
    return out


# Running one configuration ---------------------------------------------------------------------
def run(model: nn.Module, calibration: Any, cfg: "PruneConfig") -> PruneReport:
    """Prune ``model`` in place with a validated configuration (see :class:`combprune.torch.Pruner`).

    On any failure the model is restored exactly (one snapshot serves every path) and the
    error re-raised: ``ValueError`` / ``TypeError`` / ``BudgetError`` as they are, anything else
    as :class:`PruningError`.
    """
    t0 = time.perf_counter()
    dev = check_device(model, cfg.device)
    check_finite_parameters(model)
    snapshot = _Snapshot(model)
    try:
        if cfg.spec.kind == "structured":
            report = _prune_structured(model, calibration, cfg)
        else:
            report = _prune_unstructured(model, calibration, cfg, dev)
    except BaseException as exc:
        snapshot.restore()
        logger.warning("prune %s failed (%s: %s); the model was restored", cfg.method, type(exc).__name__, exc)
        if isinstance(exc, (ValueError, TypeError, KeyboardInterrupt, BudgetError)):
            raise
        raise PruningError(f"pruning with {cfg.method!r} failed: {exc}; the model was restored unchanged") from exc
    if cfg.targets is None:
        report.not_pruned = with_unselected(model, report.not_pruned, f"prune {cfg.method}")
    report.time = time.perf_counter() - t0
    logger.info("prune %s done: %r", cfg.method, report)
    return report


def _prune_unstructured(model: nn.Module, calibration: Any, cfg: "PruneConfig", dev: torch.device) -> PruneReport:
    spec = cfg.spec
    params = select_parameters(model, cfg.targets, cfg.ignore)
    need_grads = spec.kind == "gradient"
    fresh = need_grads and cfg.stages > 1 and cfg.fresh_samples
    pool_size = cfg.n_samples * cfg.stages if fresh else cfg.n_samples
    batches = collect(calibration, pool_size, dev, need_targets=need_grads and cfg.loss_fn is None)
    if need_grads:
        cfg, batches = _resolve_curvature(model, params, batches, cfg)
    pool: list[list[Batch]] = []
    if fresh:
        batches, pool = _fresh_subsets(batches, cfg.n_samples)
    n = sum(b.size for b in batches)
    ctx = _Context(model, params, batches, dev, cfg.progress)
    ctx.pool = pool
    if need_grads:
        ctx.rows_per_sample = rows_per_sample(model, params, batches, cfg.fisher, ctx.w0, cfg.loss_fn)
    k = ctx.p if cfg.sparsity is None else k_from_sparsity(cfg.sparsity, ctx.p)
    if cfg.sparsity is not None:
        require_one_kept(cfg.sparsity, ctx.p)
    if ctx.uncounted:
        if cfg.flop_budget is not None:
            raise ValueError(f"flop_budget: torch's FLOP counter attributes no FLOPs to {', '.join(ctx.uncounted[:4])}: a FLOP "
                             "budget would treat them as free; leave them out of targets or give sparsity instead")
        logger.warning("prune %s: torch's FLOP counter attributes no FLOPs to %s; the report's FLOPs leave them out",
                       cfg.method, ", ".join(ctx.uncounted[:4]))
    F = None
    if cfg.flop_budget is not None:
        F = cfg.flop_budget * ctx.model_flops - ctx.fixed_flops
        if F < -1e-9 * ctx.model_flops:
            raise ValueError(
                f"flop_budget: {cfg.flop_budget:g} of the model's {ctx.model_flops:.6g} FLOPs cannot be met: layers that are not "
                f"pruned already take {ctx.fixed_flops:.6g} FLOPs ({ctx.fixed_flops / ctx.model_flops:.4f} of the total)"
            )
        F = max(F, 0.0)
    logger.info(
        "prune %s: %d prunable weights in %d layers, %d calibration samples, k=%d, F=%s",
        cfg.method, ctx.p, len(params), n, k, "-" if F is None else f"{F:.6g}",
    )
    auto: dict[str, Any] | None = None
    if need_grads and (_autotune.is_auto(cfg.l2) or _autotune.is_auto(cfg.first_order)):
        cfg, auto, ctx = _choose_auto(ctx, cfg, k, F)
    if spec.kind == "magnitude":
        new_w, solves = _solve_magnitude(ctx, cfg, k, F)
        stage_records: list[dict[str, Any]] = []
    else:
        solve_cfg = cfg
        if ctx.warm is not None:  # one-shot after l2="auto": start from the chosen candidate
            solve_cfg = dataclasses.replace(cfg, solver_options=MappingProxyType({**cfg.solver_options, "warm_start": ctx.warm}))
        new_w, solves, stage_records = _solve_gradient(ctx, solve_cfg, k, F)
        if ctx.per_stage:  # report the last stage's values; every stage's choice under info["auto"]["stages"]
            auto["stages"] = [{key: v for key, v in c.items() if key != "holdout"} for c in ctx.stage_choices]
            final = kept_choices(ctx.stage_choices)[-1]
            cfg = dataclasses.replace(cfg, l2=final["l2"], first_order=final["first_order"])
    report = _apply_and_report(ctx, new_w, apply=cfg.apply, method=cfg.method, solves=solves, k=k if cfg.sparsity is not None else None, F=F)
    report.sparsity_requested, report.flop_budget_requested = cfg.sparsity, cfg.flop_budget
    report.stages = stage_records
    multi = need_grads and cfg.stages > 1
    report.info.update(
        n_samples=n, fisher=cfg.fisher if need_grads else None, distill=cfg.distill if need_grads else None, l2=cfg.l2 if need_grads else None,
        first_order=cfg.first_order if need_grads else None,
        stages=cfg.stages if need_grads else 1, schedule=cfg.schedule if multi else None,
        base_sparsity=cfg.base_sparsity if multi else None, fresh_samples=1 + len(ctx.pool) if multi and cfg.fresh_samples else None,
        solver=cfg.solver_name, solver_options=dict(cfg.solver_options), model_flops=ctx.model_flops, fixed_flops=ctx.fixed_flops,
        flop_unit="FLOPs (= 2 x MACs, torch.utils.flop_counter, per sample)",
    )
    if auto is not None:
        report.info["auto"] = auto
    if need_grads:
        report.info["gradients"] = ctx.gradient_info.get("method", "vmap")
        report.info["gradients_degenerate"] = bool(ctx.gradient_info.get("degenerate", False))
        chosen = auto is not None and "skipped" not in auto
        report.info["same_support_as_magnitude"] = _same_as_magnitude(ctx, cfg, new_w, k, F, chosen=chosen)
    report.check_budgets()
    return report


def _resolve_curvature(model: nn.Module, params: list[PrunableParam], batches: list[Batch],
                       cfg: "PruneConfig") -> tuple["PruneConfig", list[Batch]]:
    """``fisher`` / ``distill`` left at ``None`` made concrete on the calibration data, and the
    batches the local models use (with the unpruned model's probabilities when distilling).

    A multi-stage run without a FLOP budget (``chita++``) gets the true Fisher when it applies
    (class scores, class targets, the cross-entropy loss: :func:`._fisher.class_probabilities`),
    with distillation; anything else the empirical Fisher (``docs/torch_adapter.md``, "The
    curvature": FALCON's FLOP-budgeted solves were not measured with the true Fisher).
    """
    weights = flat_weights(params)
    fisher, taught = cfg.fisher, None
    if fisher is None and (cfg.distill or (cfg.stages > 1 and cfg.flop_budget is None)):
        try:
            taught = with_teacher(model, params, batches, weights, cfg.loss_fn)  # checks that the true Fisher applies
            fisher = "true"
        except ValueError as exc:
            if cfg.distill:  # asked for: distillation needs the true Fisher
                raise ValueError(f"distill: distillation needs the true Fisher, which does not apply here ({exc})") from None
            logger.info("prune %s: the empirical Fisher (the true Fisher does not apply here: %s)", cfg.method, exc)
    fisher = fisher or "empirical"
    distill = cfg.distill if cfg.distill is not None else fisher == "true" and cfg.stages > 1
    if distill and taught is None:
        taught = with_teacher(model, params, batches, weights, cfg.loss_fn)
    return dataclasses.replace(cfg, fisher=fisher, distill=distill), taught if distill else batches


def _same_as_magnitude(ctx: "_Context", cfg: "PruneConfig", new_w: np.ndarray, k: int, F: float | None, *, chosen: bool) -> bool:
    """Whether ``new_w`` keeps exactly magnitude pruning's support.

    Logged as a warning when ``l2`` was fixed by hand (a ridge that dominates the Fisher makes
    this certain), as information when ``l2="auto"`` chose it (``chosen``): the held-back
    samples then preferred it, which is common for a small step from an already sparse model
    (a gradual-pruning event)."""
    same = bool(np.array_equal(new_w != 0, _magnitude_support(ctx, cfg, k, F)))
    if same and chosen:
        logger.info("prune %s: the solution keeps exactly magnitude pruning's support (l2=%g, chosen on held-back samples)", cfg.method, cfg.l2)
    elif same:
        logger.warning(
            "prune %s: the solution keeps exactly magnitude pruning's support (only the kept values differ); a ridge that "
            "dominates the Fisher makes this certain: l2='auto' sizes it against the Fisher (l2 was %g)", cfg.method, cfg.l2,
        )
    return same


def _magnitude_support(ctx: "_Context", cfg: "PruneConfig", k: int, F: float | None) -> np.ndarray:
    """The support magnitude pruning keeps under the same budgets (top-k, or FALCON's selection)."""
    w0 = ctx.w0.detach().cpu().double().numpy()
    if F is None:
        return _topk_mask(np.abs(w0), k)
    return _flop_magnitude_support(w0, ctx.costs, ctx.layer, k, F, solver=FLOP_SELECTION_SOLVER, options={}, time_limit=None, seed=cfg.seed)[0]


def _choose_auto(ctx: "_Context", cfg: "PruneConfig", k: int, F: float | None) -> tuple["PruneConfig", dict[str, Any], "_Context"]:
    """Resolve ``l2="auto"`` / ``first_order="auto"`` on held-back samples (:mod:`._autotune`).

    Returns the concrete configuration, the record for the report and the context the pruning
    then runs in: the same samples, kept ones first, with their per-sample gradients at the
    starting weights already computed when they fit ``max_memory`` in one block (then they are
    computed once for the scale, every candidate and the final run's first solve). With
    ``auto_stages="per-stage"`` (multi-stage, one block) nothing is chosen here: the returned
    context makes every stage choose (:func:`_stage_choice`).
    """
    n = sum(b.size for b in ctx.batches)
    skipped = _autotune.fallback(cfg, n)
    if skipped is not None:
        return (*skipped, ctx)
    kept, held = _autotune.split_holdout(ctx.batches, cfg.holdout, cfg.seed)
    n_kept = sum(b.size for b in kept)
    full = ctx.with_batches(kept + held, cache_gradients=True)
    full.held, full.n_kept = held, n_kept
    single = len(_blocks(full, n * full.rows_per_sample, cfg.max_memory, 4)) == 1
    if cfg.auto_stages == "per-stage" and cfg.stages > 1:
        if single:
            full.per_stage = True
            return cfg, {"mode": "per-stage", "holdout": cfg.holdout, "held_back_samples": n - n_kept}, full
        logger.warning("auto_stages='per-stage' needs the gradients in one block (max_memory); choosing once instead")
    fit = ctx.with_batches(kept, cache_gradients=True)
    if single:
        w0 = full.w0.detach().cpu().double().numpy()
        G = _gradients(full, cfg, full.w0, 0, full.p, full.batches)
        full.gradient_cache[(0, full.p, id(full.batches))] = (w0, G)
        fit.gradient_cache[(0, fit.p, id(fit.batches))] = (w0, G.head(n_kept))  # views: the kept samples come first
        scale = _autotune.gram_scale(G.head(n_kept).A, n_kept)
    else:
        scale = _autotune.fisher_scale(ctx.model, ctx.params, kept, fisher=cfg.fisher, rows_per_sample=ctx.rows_per_sample,
                                       loss_fn=cfg.loss_fn, chunk_size=cfg.chunk_size, max_memory=cfg.max_memory)
    scale = _autotune.check_scale(scale)
    warm_startable = free_warm_start(cfg.solver_name, cfg.solver_options)

    def one_shot(trial: "PruneConfig", warm: np.ndarray | None) -> np.ndarray:
        if warm is not None and warm_startable and single:
            trial = dataclasses.replace(trial, solver_options=MappingProxyType({**trial.solver_options, "warm_start": warm}))
        return _solve_gradient(fit, trial, k, F)[0]

    def loss(w: np.ndarray) -> float:
        return _autotune.held_out_loss(ctx.model, ctx.params, held, w, cfg.loss_fn)

    def sample_losses(w: np.ndarray) -> np.ndarray:
        return _autotune.held_out_losses(ctx.model, ctx.params, held, w, cfg.loss_fn)

    with ctx.bar(total=None, desc="choosing l2 / first_order on held-back samples", unit="candidate"):
        cfg, record, best = _autotune.search(cfg, scale, one_shot, loss, _magnitude_support(ctx, cfg, k, F), sample_losses=sample_losses)
    record.update(mode="once", held_back_samples=n - n_kept)
    full.warm = best if warm_startable and single and cfg.stages == 1 else None
    return cfg, record, full


def _fresh_subsets(batches: list[Batch], n_samples: int) -> tuple[list[Batch], list[list[Batch]]]:
    """``fresh_samples``: the first ``n_samples`` samples and the further whole subsets of that size."""
    total = sum(b.size for b in batches)
    m = total // n_samples
    if m < 2:
        logger.warning(
            "fresh_samples: the calibration data holds %d samples, not two subsets of n_samples=%d; every stage uses the same", total, n_samples,
        )
    subsets = [_autotune.select_samples(batches, np.arange(j * n_samples, (j + 1) * n_samples)) for j in range(max(1, m))]
    if m < 1:
        subsets = [batches]
    return subsets[0], subsets[1:]


# Shared state of one call ----------------------------------------------------------------------
class _Context:
    """Prunable weights, their FLOPs and the calibration batches of one :func:`prune` call."""

    def __init__(self, model: nn.Module, params: list[PrunableParam], batches: list[Batch], device: torch.device, progress: bool) -> None:
        self.model, self.params, self.batches, self.device, self.progress = model, params, batches, device, progress
        self.sizes = [p.numel for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.p = int(self.offsets[-1])
        self.w0 = flat_weights(params)
        self.uncounted: list[str] = []  # weights whose module runs but whose FLOPs the counter cannot see
        self.dense = layer_flops(model, params, batches[0], uncounted=self.uncounted)
        self.model_flops = model_flops(model, batches[0])
        self.fixed_flops = max(0.0, self.model_flops - math.fsum(self.dense))
        per_weight = [d / s if s else 0.0 for d, s in zip(self.dense, self.sizes)]
        self.costs = np.repeat(np.asarray(per_weight, dtype=np.float64), self.sizes)
        self.layer = np.repeat(np.arange(len(params), dtype=np.int64), self.sizes)
        self.gradient_cache: dict[tuple[int, int], tuple[np.ndarray, FisherRows]] | None = None
        self.rows_per_sample = 1.0  # rows of the curvature factor per sample, planned (fisher="true": several)
        self.gradient_info: dict[str, Any] = {}
        #: the last local model built on cached gradients, reused (ridge replaced) by the next candidate
        self.problem_cache: dict[tuple, tuple[np.ndarray, _problems.L0Regression]] = {}
        self.warm: np.ndarray | None = None  # start of the final one-shot solve (the chosen candidate)
        self.held: list[Batch] | None = None  # held-back samples of the automatic choice
        self.n_kept: int | None = None  # rows of ``batches`` not held back (they come first)
        self.pool: list[list[Batch]] = []  # fresh calibration subsets of the later stages
        self.per_stage = False  # auto_stages="per-stage": every stage chooses its l2
        self.stage_choices: list[dict[str, Any]] = []

    def stage_data(self, t: int) -> tuple[list[Batch], int]:
        """(batches, rows not held back) of stage ``t``: the calibration samples, or fresh subsets in turn."""
        subsets = [self.batches, *self.pool]
        batches = subsets[t % len(subsets)]
        n = sum(b.size for b in batches)
        return batches, self.n_kept if batches is self.batches and self.n_kept is not None else n

    def with_batches(self, batches: list[Batch], *, cache_gradients: bool = False) -> "_Context":
        """The same model, weights and FLOP costs with other calibration batches.

        With ``cache_gradients`` the per-sample gradients of the whole weight vector at a given
        point are computed once and reused (one-shot solves of several candidates).
        """
        other = copy.copy(self)
        other.batches = batches
        other.gradient_cache = {} if cache_gradients else None
        other.problem_cache = {}
        return other

    def bar(self, **kwargs: Any) -> tqdm:
        return tqdm(disable=not self.progress, leave=False, dynamic_ncols=True, **kwargs)


@dataclass
class _Solve:
    """One solve's summary, attributed to the layers it covered."""

    layers: list[int]
    solver: str
    objective: float | None
    bound: float | None
    gap: float | None
    time: float


# Magnitude ---------------------------------------------------------------------------------------
def _topk_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest ``values`` (ties broken by position, stable)."""
    mask = np.zeros(values.shape[0], dtype=bool)
    if k > 0:
        order = np.argsort(-values, kind="stable")
        mask[order[:k]] = True
    return mask


def _flop_magnitude_support(w: np.ndarray, costs: np.ndarray, layer: np.ndarray, k: int, F: float, *, solver: str, options: dict[str, Any], time_limit: float | None, seed: int | None):
    """FALCON's FLOP-NNZ selection ``max sum w^2`` under both budgets, solved by ``solver``."""
    problem = _problems.FlopNnzILP(w.astype(np.float64) ** 2, costs, k, F, layer=layer)
    res = solve(problem, solver, time_limit=time_limit, seed=seed, **options)
    z = np.asarray(res.x if res.x is not None else res.support).astype(np.float64)
    violations = problem.check(z)
    if violations:
        raise PruningError(f"solver {solver!r} returned an infeasible FLOP/NNZ selection: {'; '.join(violations)}")
    return z == 1, res


def _solve_magnitude(ctx: _Context, cfg: "PruneConfig", k: int, F: float | None):
    t = time.perf_counter()
    w = ctx.w0.detach().cpu().double().numpy()
    if F is None and not (cfg.spec.flop_aware and cfg.solver):
        mask = _topk_mask(np.abs(w), k)
        name, obj, bound, gap = "top-k", float(np.sum(w[mask] ** 2)), None, None
    else:
        name = cfg.solver or cfg.spec.solver or FLOP_SELECTION_SOLVER
        budget = F if F is not None else math.fsum(ctx.costs.tolist())
        mask, res = _flop_magnitude_support(
            w, ctx.costs, ctx.layer, k, budget, solver=name, options=dict(cfg.solver_options), time_limit=cfg.time_limit, seed=cfg.seed
        )
        obj, bound, gap = res.objective, res.bound, res.gap
    new_w = np.where(mask, w, 0.0)
    return new_w, [_Solve(list(range(len(ctx.params))), name, obj, bound, gap, time.perf_counter() - t)]


# Gradient-based methods ---------------------------------------------------------------------------
#: Working bytes per weight of a block besides its gradient column: the solvers' float64
#: vectors (weights, w_bar, gradient steps, supports, FLOP costs), about 16 of them.
_COLUMN_BYTES = 128


def _blocks(ctx: _Context, n: float, max_memory: int, itemsize: int) -> list[tuple[int, int]]:
    """Contiguous coordinate ranges [start, stop) whose whole gradient path fits ``max_memory``
    (``n``: the rows of the gradient matrix planned for, samples x ``ctx.rows_per_sample``).

    A block of c weights costs its gradient matrix (``n c itemsize`` bytes), room for one
    working copy of it in the solver (a column subset, ``|A|``) and :data:`_COLUMN_BYTES` per
    weight: ``c (2 n itemsize + _COLUMN_BYTES) <= max_memory``.
    """
    cols = max(1, int(max_memory // max(1, 2 * n * itemsize + _COLUMN_BYTES)))
    if ctx.p <= cols:
        return [(0, ctx.p)]
    blocks: list[tuple[int, int]] = []
    start = 0
    for j in range(len(ctx.params)):
        lo, hi = int(ctx.offsets[j]), int(ctx.offsets[j + 1])
        if hi - start > cols and lo > start:  # close the current block before this layer
            blocks.append((start, lo))
            start = lo
        while hi - start > cols:  # a layer larger than the limit: split it
            blocks.append((start, start + cols))
            start += cols
    if start < ctx.p:
        blocks.append((start, ctx.p))
    return blocks


def _solve_gradient(ctx: _Context, cfg: "PruneConfig", k: int, F: float | None):
    n = sum(b.size for b in ctx.batches)
    blocks = _blocks(ctx, n * ctx.rows_per_sample, cfg.max_memory, 4)
    w_all = ctx.w0.detach().clone()
    solves: list[_Solve] = []
    stage_records: list[dict[str, Any]] = []
    if len(blocks) == 1:
        shares = [(k, F)]
    else:
        # Budgets of each block: its share of the global (FLOP-aware) magnitude solution.
        w = w_all.cpu().double().numpy()
        if F is None:
            mask = _topk_mask(np.abs(w), k)
        else:
            mask, _ = _flop_magnitude_support(w, ctx.costs, ctx.layer, k, F, solver=FLOP_SELECTION_SOLVER, options={}, time_limit=cfg.time_limit, seed=cfg.seed)
        shares = [(int(mask[a:b].sum()), None if F is None else math.fsum(ctx.costs[a:b][mask[a:b]].tolist())) for a, b in blocks]
        logger.info("gradient matrix %d x %d exceeds max_memory=%d bytes: solving %d blocks in turn", n, ctx.p, cfg.max_memory, len(blocks))
    bar = ctx.bar(total=len(blocks), desc="blocks", unit="block") if len(blocks) > 1 else None
    for (a, b), (k_b, F_b) in zip(blocks, shares):
        t = time.perf_counter()
        w_block, res, records = _solve_block(ctx, cfg, w_all, a, b, k_b, F_b)
        w_all[a:b] = torch.as_tensor(w_block, dtype=w_all.dtype, device=w_all.device)
        layers = [j for j in range(len(ctx.params)) if ctx.offsets[j] < b and ctx.offsets[j + 1] > a]
        solves.append(_Solve(layers, res.solver, res.objective, res.bound, res.gap, time.perf_counter() - t))
        stage_records.extend(dict(r, block=(a, b)) if len(blocks) > 1 else r for r in records)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return w_all.cpu().double().numpy(), solves, stage_records


#: Per-sample gradients are "near zero" when their RMS is below this fraction of the weights' RMS:
#: a unit gradient step would move the weights by less than 1e-8 of their size.
DEGENERATE_GRADIENT_RTOL = 1e-8


def _check_gradients(A: np.ndarray, w: np.ndarray, info: dict[str, Any]) -> None:
    """Raise when the per-sample gradients are not finite; warn (once per call, recorded in ``info["degenerate"]``) when they
    are (near) zero: the Fisher term ``||A (w - w_bar)||^2`` then carries nothing and the
    gradient-based methods reduce to their l2 term, i.e. to magnitude pruning."""
    rms_a = math.sqrt(_autotune.gram_scale(A))  # no float64 copy of A
    if not math.isfinite(rms_a):
        raise ValueError(NON_FINITE_GRADIENTS)
    rms_w = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) if w.size else 0.0
    if rms_a > DEGENERATE_GRADIENT_RTOL * max(rms_w, np.finfo(np.float32).tiny) or info.get("degenerate"):
        return
    info["degenerate"] = True
    logger.warning(
        "calibration: the per-sample gradients are (near) zero (RMS %.3g against weights' RMS %.3g): the loss is flat "
        "on these samples (saturated predictions, a constant loss_fn, or no real targets), so the gradient-based "
        "methods reduce to magnitude pruning. Prune by layer-wise reconstruction from the inputs alone instead: "
        "method='layerwise', 'sparsegpt' or 'wanda' (see docs/large_models.md).", rms_a, rms_w)


def _block_params(ctx: _Context, a: int, b: int):
    """Parameters overlapping [a, b) and, for each, the slice of its flat values inside."""
    out = []
    for j, p in enumerate(ctx.params):
        lo, hi = int(ctx.offsets[j]), int(ctx.offsets[j + 1])
        if lo < b and hi > a:
            out.append((j, max(a, lo) - lo, min(b, hi) - lo))
    return out


def _gradients(ctx: _Context, cfg: "PruneConfig", w: torch.Tensor, a: int, b: int, batches: list[Batch]) -> FisherRows:
    """The curvature factor (``cfg.fisher``; float32 rows of width b-a) of ``batches`` for the coordinates [a, b) at the flat
    weights ``w``: the per-sample gradients for the empirical Fisher (:mod:`._fisher`).

    The matrix is filled in place; samples are differentiated in chunks whose gradients of the
    block's layers take at most a quarter of ``max_memory``, so the peak of the gradient path
    stays near ``max_memory`` (the matrix) plus that chunk.
    """
    members = _block_params(ctx, a, b)
    lo = int(ctx.offsets[members[0][0]])
    width = int(ctx.offsets[members[-1][0] + 1]) - lo
    chunk = max(1, min(cfg.chunk_size, cfg.max_memory // (4 * 4 * max(1, width))))
    n = sum(bt.size for bt in batches)
    with ctx.bar(total=n, desc="per-sample gradients", unit="row") as bar:
        return fisher_rows(
            ctx.model, ctx.params, batches, fisher=cfg.fisher, weights=w, wrt=[j for j, _, _ in members], columns=(a - lo, b - lo),
            loss_fn=cfg.loss_fn, chunk_size=chunk, progress=bar, info=ctx.gradient_info,
        )


def _solve_block(ctx: _Context, cfg: "PruneConfig", w_all: torch.Tensor, a: int, b: int, k: int, F: float | None):
    """Solve the coordinates [a, b) (one- or multi-stage) with the rest of the weights fixed.

    Stage t of a multi-stage run linearises on ``ctx.stage_data(t)`` (the calibration samples,
    or with ``fresh_samples`` a fresh subset per stage) and, with ``auto_stages="per-stage"``,
    chooses its own ``l2`` (:func:`_stage_choice`); then up to ``polish_stages`` more stages at
    the final budget are kept while they lower the held-back loss (``docs/torch_adapter.md``).
    """
    solver, options, stages, schedule = cfg.solver_name, dict(cfg.solver_options), cfg.stages, cfg.schedule
    costs = ctx.costs[a:b]
    # the layer (prunable parameter) of each coordinate, numbered within the block
    members = _block_params(ctx, a, b)
    layer = np.searchsorted(ctx.offsets, np.arange(a, b), side="right") - 1 - members[0][0]

    def gradients(weights_block: np.ndarray, batches: list[Batch]) -> FisherRows:
        """The curvature factor (rows x (b-a)) of ``batches`` with the block set to ``weights_block``."""
        cache, key = ctx.gradient_cache, (a, b, id(batches))
        cacheable = cache is not None and b - a == ctx.p  # never hold more than one matrix
        if cacheable and key in cache and np.array_equal(cache[key][0], weights_block):
            return cache[key][1]
        w = w_all.clone()
        w[a:b] = torch.as_tensor(weights_block, dtype=w.dtype, device=w.device)
        G = _gradients(ctx, cfg, w, a, b, batches)
        _check_gradients(G.A, weights_block, ctx.gradient_info)
        if cacheable:
            cache.clear()
            cache[key] = (weights_block.copy(), G)
        return G

    def build(weights: Any, k_t: int, F_t: float | None, t: int = 0) -> tuple[_problems.L0Regression, np.ndarray | None]:
        """The local quadratic model at ``weights`` with budgets ``k_t`` / ``F_t`` (stage ``t``), and
        the winning candidate of the stage's ``l2`` choice (None without a per-stage choice)."""
        wb = np.asarray(weights, dtype=np.float64)
        batches, n_kept = ctx.stage_data(t)
        A = gradients(wb, batches)
        flop = {} if F_t is None else {"flop_costs": costs, "flop_budget": float(F_t)}
        l2, first_order, chosen = cfg.l2, cfg.first_order, None
        if ctx.per_stage and stages > 1:
            l2, first_order, record, chosen = _stage_choice(ctx, cfg, w_all, (a, b), A.head(n_kept), wb, (k_t, flop), ctx.stage_choices)
            ctx.stage_choices.append(record)
        key = (a, b, id(A), int(k_t), F_t, bool(first_order))
        cached = ctx.problem_cache.get(key) if ctx.gradient_cache is not None else None
        if cached is not None and np.array_equal(cached[0], wb):  # another candidate ridge of l2="auto"
            return cached[1].with_ridge(A.n_samples * float(l2)), chosen
        problem = _local_model(A, wb, int(k_t), l2, first_order, layer=layer, **flop)
        if ctx.gradient_cache is not None:
            ctx.problem_cache.clear()  # never hold more than one
            ctx.problem_cache[key] = (wb.copy(), problem)
        return problem, chosen

    w_start = w_all[a:b].detach().cpu().double().numpy()
    if stages == 1:
        problem, _ = build(w_start, k, F)
        res = solve(problem, solver, time_limit=cfg.time_limit, seed=cfg.seed, **options)
        violations = problem.check(res.x)
        if violations:
            raise PruningError(f"solver {solver!r} returned an infeasible point: {'; '.join(violations)}")
        x = np.asarray(res.x, dtype=np.float64)
        winner = ctx.warm if (a, b) == (0, ctx.p) else None  # the candidate l2="auto" chose
        if winner is not None and not _keeps_solve(ctx, cfg, w_all, (a, b), ctx.batches, x, winner):
            x = np.asarray(winner, dtype=np.float64)
            res = dataclasses.replace(res, x=x, support=x != 0, objective=problem.objective(x), message="the chosen candidate (the solve from it raised the calibration loss)")
        return x, res, []
    from combprune.multistage import ChosenPoint, multistage

    built: list[_problems.L0Regression] = []
    bar = ctx.bar(total=stages, desc=f"{solver} stages", unit="stage")

    stage_samples: dict[int, list[Batch]] = {}  # id(ChosenPoint) -> the samples of its stage

    def build_stage(weights: Any, k_t: int, F_t: float | None) -> _problems.L0Regression | ChosenPoint:
        """The stage's local model; with the per-stage choice, with its winning candidate
        (intermediate stages move to it, the last is solved from it: :class:`ChosenPoint`)."""
        problem, chosen = build(weights, k_t, F_t, len(built))
        built.append(problem)
        if chosen is None:
            return problem
        point = ChosenPoint(problem, chosen)
        stage_samples[id(point)] = ctx.stage_data(len(built) - 1)[0]
        return point

    def keep_solve(x: np.ndarray, point: ChosenPoint) -> bool:
        return _keeps_solve(ctx, cfg, w_all, (a, b), stage_samples[id(point)], x, np.asarray(point.x, dtype=np.float64))

    dense_b = math.fsum(costs.tolist())
    if not isinstance(schedule, str):  # explicit sparsities -> explicit (k_t, F_t) of this block
        schedule = _explicit_budgets(tuple(schedule), b - a, k, dense_b, F)
    polish = cfg.polish_stages if ctx.per_stage else 0

    def improves(point: ChosenPoint) -> bool:
        """A polishing stage is kept when its winner lowers the held-back loss of the point it started from."""
        new, old = ctx.stage_choices[-1], ctx.stage_choices[-2]
        keep = new["held_out_loss"] < old["held_out_loss"] * (1.0 - POLISH_RTOL)
        new["polish"] = "kept" if keep else "rejected"
        return keep

    try:
        res = multistage(
            build_stage, schedule, solver, weights=w_start, k=k, flop_budget=F,
            dense_flops=None if F is None else dense_b, n_stages=stages, base=cfg.base_sparsity,
            time_limit=cfg.time_limit, seed=cfg.seed, callback=lambda t, r: _advance(bar, t), polish=polish, accept=improves,
            keep_solve=keep_solve, **options,
        )
    finally:
        bar.close()
    if not res.info.get("completed", True):
        raise PruningError(f"multi-stage {solver!r}: time_limit expired before the last stage (budgets not reached)")
    x = np.asarray(res.x, dtype=np.float64)
    violations = built[-1].check(x)
    if violations:
        raise PruningError(f"multi-stage {solver!r} returned an infeasible point: {'; '.join(violations)}")
    records = [{key: v for key, v in r.items() if key != "result"} for r in res.info.get("stages", [])]
    for r, choice in zip(records, kept_choices(ctx.stage_choices) if ctx.per_stage else []):
        r.update(l2=choice["l2"], first_order=choice["first_order"])
    return x, res, records


def _advance(bar: Any, stage: int) -> None:
    """One stage done (polishing stages extend the bar's total)."""
    if bar.total is not None and stage + 1 > bar.total:
        bar.total = stage + 1
    bar.update(1)


#: A polishing stage must lower the held-back loss by more than this fraction to be kept (a
#: stage that returns to its own starting point changes it by rounding only).
POLISH_RTOL = 1e-3


def kept_choices(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-stage choices of the stages the run kept (a rejected polishing stage is only reported)."""
    return [c for c in choices if c.get("polish") != "rejected"]


def _with_block(w_all: torch.Tensor, a: int, b: int, x: np.ndarray) -> np.ndarray:
    """The flat weights ``w_all`` (float64 copy) with the coordinates [a, b) set to ``x``."""
    w = w_all.detach().cpu().double().numpy().copy()
    w[a:b] = x
    return w


def _keeps_solve(ctx: _Context, cfg: "PruneConfig", w_all: torch.Tensor, block: tuple[int, int], batches: list[Batch],
                 x: np.ndarray, winner: np.ndarray) -> bool:
    """Whether a solve on all of ``batches``, started from ``winner`` (a candidate fitted to the
    kept samples and measured on the held-back ones), is kept: unless the winner's true loss on
    those same samples is lower by more than one standard error of the paired per-sample
    differences (:func:`._autotune.one_se_rule`). A local model misleads where its curvature is
    far too small (a sample the model all but rules out its target on), and nothing else
    measures that last solve (``docs/torch_adapter.md``, "The last solve is checked")."""
    a, b = block
    solved, started = _with_block(w_all, a, b, x), _with_block(w_all, a, b, winner)
    new, old = (_autotune.held_out_loss(ctx.model, ctx.params, batches, w, cfg.loss_fn) for w in (solved, started))
    if new <= old:
        return True
    test = _autotune.one_se_rule(*(_autotune.held_out_losses(ctx.model, ctx.params, batches, w, cfg.loss_fn) for w in (started, solved)))
    if not test["kept"]:
        return True
    logger.info("prune %s: the final solve on all calibration samples raised their loss beyond one standard error (%.6g "
                   "against %.6g at the chosen candidate, standard error %.3g); keeping the candidate",
                   cfg.method, new, old, test["standard_error"])
    return False


def _local_model(rows: FisherRows, wb: np.ndarray, k: int, l2: float, first_order: bool, **extra: Any) -> _problems.L0Regression:
    """The local quadratic model of the curvature factor ``rows`` at the weights ``wb``."""
    return _problems.L0Regression.from_gradients(
        rows.A, wb.astype(rows.A.dtype), k, l2=l2, first_order=first_order, residual=rows.residual, n_samples=rows.n_samples, **extra)


def _stage_choice(ctx: _Context, cfg: "PruneConfig", w_all: torch.Tensor, block: tuple[int, int], A_kept: FisherRows, wb: np.ndarray,
                  budget: tuple[int, dict[str, Any]], previous: list[dict[str, Any]]) -> tuple[float, bool, dict[str, Any], np.ndarray]:
    """``auto_stages="per-stage"``: this stage's ``l2`` and ``first_order`` (when automatic), the
    record for the report and the winning candidate's block weights.

    Candidates are solved at the stage's budget on the kept rows ``A_kept`` (linearised at the
    stage's weights ``wb``) and scored by the true loss of the held-back samples
    (:func:`combprune.torch._autotune.search`). The first stage searches like the one-shot
    choice; later stages start each walk (with and without the first-order term) at the
    previous stages' best relative ridge for it (3 candidates when it is still the best), so
    the term can win in the sparse late stages after losing in the early ones.
    """
    a, b = block
    k_t, flop = budget
    warm_startable = free_warm_start(cfg.solver_name, cfg.solver_options)
    scale = _autotune.check_scale(_autotune.gram_scale(A_kept.A, A_kept.n_samples))

    base: dict[bool, _problems.L0Regression] = {}  # one local model per first_order; candidates replace its ridge

    def one_shot(trial: "PruneConfig", warm: np.ndarray | None) -> np.ndarray:
        if trial.first_order not in base:
            base[trial.first_order] = _local_model(A_kept, wb, int(k_t), trial.l2, trial.first_order, **flop)
        problem = base[trial.first_order].with_ridge(A_kept.n_samples * float(trial.l2))
        opts = dict(cfg.solver_options, **({"warm_start": warm} if warm is not None and warm_startable else {}))
        res = solve(problem, cfg.solver_name, time_limit=cfg.time_limit, seed=cfg.seed, **opts)
        return np.asarray(res.x, dtype=np.float64)

    def loss(x: np.ndarray) -> float:
        return _autotune.held_out_loss(ctx.model, ctx.params, ctx.held, _with_block(w_all, a, b, x), cfg.loss_fn)

    def sample_losses(x: np.ndarray) -> np.ndarray:
        return _autotune.held_out_losses(ctx.model, ctx.params, ctx.held, _with_block(w_all, a, b, x), cfg.loss_fn)

    prev = previous[-1]["best_relative"] if previous else None
    # starting weights within the budget (a polishing stage) minimise the model without the term
    minimiser = None
    if cfg.first_order is not True:
        base[False] = _local_model(A_kept, wb, int(k_t), 0.0, False, **flop)
        minimiser = None if base[False].check(wb) else wb
    _, record, best = _autotune.search(cfg, scale, one_shot, loss, None, start=prev, sample_losses=sample_losses,
                                       minimiser_without=minimiser)
    record["l2_relative"] = record["l2"] / scale
    record["best_relative"] = _autotune.best_relative(record, prev)
    return record["l2"], record["first_order"], record, best


# Applying the result -------------------------------------------------------------------------------
def _apply_param(p: PrunableParam, values: torch.Tensor, mask: torch.Tensor, apply: str) -> None:
    from torch.nn.utils import prune as torch_prune

    with torch.no_grad():
        if apply == "permanent":
            if p.is_masked:
                torch_prune.remove(p.module, p.param_name)
            p.storage.copy_(values * mask)
            return
        if p.is_masked:  # replace the existing mask and values
            p.storage.copy_(values)
            getattr(p.module, p.param_name + "_mask").copy_(mask)
            setattr(p.module, p.param_name, p.storage * getattr(p.module, p.param_name + "_mask"))
            return
        p.storage.copy_(values)
        torch_prune.custom_from_mask(p.module, p.param_name, mask)


def _apply_and_report(ctx: _Context, new_w: np.ndarray, *, apply: str, method: str, solves: list[_Solve], k: int | None, F: float | None) -> PruneReport:
    solve_of: dict[int, _Solve] = {}
    for s in solves:
        for j in s.layers:
            solve_of.setdefault(j, s)
    layers: list[LayerReport] = []
    with ctx.bar(total=len(ctx.params), desc="apply", unit="layer") as bar:
        for j, p in enumerate(ctx.params):
            lo, hi = int(ctx.offsets[j]), int(ctx.offsets[j + 1])
            vals = torch.as_tensor(new_w[lo:hi], dtype=p.storage.dtype, device=p.storage.device).reshape(p.shape)
            mask = (vals != 0).to(p.storage.dtype)
            kept = int(np.count_nonzero(new_w[lo:hi]))
            _apply_param(p, vals, mask, apply)
            s = solve_of.get(j)
            layers.append(
                LayerReport(
                    name=p.name, kind="unstructured", params=p.numel, kept=kept, sparsity=1.0 - kept / p.numel,
                    dense_flops=ctx.dense[j], effective_flops=ctx.dense[j] * kept / p.numel if p.numel else 0.0,
                    solver=s.solver if s else "", objective=s.objective if s else None, bound=s.bound if s else None,
                    gap=s.gap if s else None, time=s.time if s and len(s.layers) == 1 else 0.0,
                )
            )
            bar.update(1)
    report = PruneReport(layers=layers, method=method, k=k, flop_limit=F, apply=apply)
    # Effective FLOPs of the report are computed per layer (dense/params x kept); check them
    # against the per-weight costs used by the solver (same numbers, exact fsum).
    if F is not None:
        from combprune.problems.budget import Budget

        budget = Budget(None, ctx.costs, float(F))
        total = budget.total_cost(new_w != 0)
        if not budget.fits_cost(total):
            raise BudgetError(f"flops: {total:.17g} FLOPs kept > budget {F:.17g}")
    report.info["objective"] = solves[0].objective if len(solves) == 1 else None
    return report


# Structured methods (layer-wise, delegated) ----------------------------------------------------------
def _prune_structured(model: nn.Module, calibration: Any, cfg: "PruneConfig") -> PruneReport:
    from . import structured as _structured

    solver = cfg.spec.solver or cfg.method
    params_before = sum(p.numel() for p in model.parameters())
    layers, plan = _structured.prune_structured(
        model, calibration, method=solver, sparsity=cfg.sparsity, targets=cfg.targets, ignore=cfg.ignore,
        n_samples=cfg.n_samples, solver_options=dict(cfg.solver_options), progress=cfg.progress, pairs=cfg.pairs,
        gqa=cfg.gqa, flop_budget=cfg.flop_budget, ridge=cfg.ridge,
    )
    _apply_structured(model, plan, cfg.apply)
    requested = dict(cfg.sparsity) if isinstance(cfg.sparsity, Mapping) else cfg.sparsity
    report = PruneReport(layers=list(layers), method=cfg.method, sparsity_requested=requested, apply=cfg.apply)
    if plan.budget:  # F = FLOPs the touched layers may keep, as for the unstructured methods
        report.flop_budget_requested = cfg.flop_budget
        report.flop_limit = cfg.flop_budget * plan.budget["model_flops"] - (plan.budget["model_flops"] - report.dense_flops)
        report.info["flop_budget"] = dict(plan.budget, reached=(plan.budget["model_flops"] - report.dense_flops + report.effective_flops) / plan.budget["model_flops"])
    report.not_pruned = list(plan.not_pruned)
    structures: dict[str, dict[str, int]] = {}
    for unit in plan.units:
        entry = structures.setdefault(unit.kind, {"groups": 0, "removed": 0})
        entry["groups"] += unit.n_groups
        entry["removed"] += unit.n_groups - int(plan.keep[unit.consumer].sum()) if unit.consumer in plan.keep else 0
    report.info.update(
        structured_plan=plan.to_dict(), solver=solver, solver_options=dict(cfg.solver_options),
        budget_scope="fraction of groups (structures) removed in each recognised unit (the units listed in the report)",
        structures=structures, ridge=cfg.ridge,
        **({"ridge_auto": plan.ridge_auto} if plan.ridge_auto else {}),
        model_params={"before": params_before, "after": sum(p.numel() for p in model.parameters()) if cfg.apply == "physical" else None},
    )
    return report


def _apply_structured(model: nn.Module, plan: Any, apply: str) -> None:
    """Apply a structured plan: torch masks, zeros, or physical removal of the groups.

    The consumers already hold the solver's reconstructed weights (pruned input rows zero).
    ``"mask"`` adds ``weight_mask`` to consumers and producers; ``"permanent"`` writes the zeros
    into the producers' removed output rows too; ``"physical"`` builds the smaller dense layers
    (:mod:`combprune.torch.physical`).
    """
    from torch.nn.utils import prune as torch_prune

    if apply == "physical":
        from .physical import remove_pruned

        remove_pruned(model, plan)
        return
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in plan.masks(model).items():
            layer = modules[name]
            if apply == "mask":
                torch_prune.custom_from_mask(layer, "weight", mask)
            else:
                layer.weight.mul_(mask)
