r"""``combprune.torch.prune_sequential``: layer-wise pruning of block models, one block at a time.

For a model made of repeated blocks (Hugging Face decoders and encoders; an encoder-decoder
model has two stacks, pruned in forward order), the calibration inputs are run up to a stack's
block 0 once; then, for each block b:

1. forward pre-hooks accumulate ``H_l = sum X_l^T X_l`` (float64) of the input of every linear
   layer l of the block while the block runs on its current inputs;
2. every layer's :class:`~combprune.problems.LayerwiseL0`
   ``min 1/2 tr((W - W_hat)^T (H_l + lam I)(W - W_hat))`` under the pattern is solved with the
   chosen solver (``lam = ridge * mean(diag H_l)``), and the pruned weights are written back in
   the model's dtype;
3. the block's outputs are recomputed with the pruned weights and become block b+1's inputs.

Peak memory is the model plus one block's statistics (``d^2`` float64 per layer) and the
calibration activations at one block's entrance. With ``device=`` the block being processed
(and the activations) move to that device and go back afterwards, so the rest of the model may
stay on the CPU; with ``offload="disk"`` they wait in safetensors files instead. With ``torch.distributed`` initialised, each rank keeps the calibration
batches ``rank, rank + world, ...``, the H of every layer is all-reduced (sum), layer i of a
block is solved on rank ``i % world`` and its weights are broadcast: every rank ends with the
same weights. See ``docs/large_models.md``.

The structured methods (``osscar``, ``group-magnitude``) run on the same loop: step 1-2 become
one ``StructuredMIQP`` per FFN / attention-head unit of the block, in forward order
(:mod:`combprune.torch._sequential_structured`); masks (or physical removal) are applied at the end.

On any error the weights of the layers already pruned are restored (from a CPU copy) and the
error is raised again: the model is unchanged. The result is a
:class:`~combprune.torch.report.PruneReport` with per-block rows, the peak memory and the
relative reconstruction error of every layer.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from combprune.api import solve
from combprune.problems import LayerwiseL0, StructuredMIQP
from combprune.problems.layerwise import parse_nm
from combprune.registry import UnknownSolverError, get_solver

from ._calibration import check_finite_parameters, collect, eval_mode, model_device
from ._attention import fused_attention_off
from ._sequential_blocks import (BlockInput, GramHooks, Slot, find_stacks, forward_order, input_sources, linear_layers, run_block,
                                 stack_inputs, weight_slots)
from ._sequential_dist import Dist
from ._sequential_offload import DiskOffload
from ._select import select_parameters, with_unselected
from ._sequential_structured import StructuredStep
from ._structured_ridge import check_ridge
from .prune import k_from_sparsity, require_one_kept
from .report import BlockReport, LayerReport, PruneReport
from .structured import KINDS

logger = logging.getLogger(__name__)

__all__ = ["prune_sequential", "SequentialReport", "SequentialLayerRow", "SequentialBlockRow", "SEQUENTIAL_METHODS"]

#: Method name -> registered solver of ``LayerwiseL0``.
SEQUENTIAL_METHODS = {"layerwise": "layerwise", "sparsegpt": "sparsegpt", "wanda": "wanda", "magnitude": "magnitude"}

#: Former names of the report classes (the sequential engine returns a :class:`PruneReport`).
SequentialReport = PruneReport
SequentialLayerRow = LayerReport
SequentialBlockRow = BlockReport


def _pattern(sparsity: Any, pattern: Any, granularity: str) -> tuple[str, Any]:
    if (sparsity is None) == (pattern is None):
        raise ValueError("sparsity: give exactly one of sparsity (fraction removed, e.g. 0.5) and pattern ('2:4')")
    if granularity not in ("layer", "output"):
        raise ValueError(f"granularity: expected 'layer' or 'output', got {granularity!r}")
    if pattern is not None:
        n, m = parse_nm(pattern, "pattern")
        return "nm", f"{n}:{m}"
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity: expected a fraction removed in [0, 1), got {sparsity!r}")
    return granularity, float(sparsity)


def _problem(H: np.ndarray, W_hat: np.ndarray, kind: str, value: Any, ridge: float) -> tuple[LayerwiseL0, int]:
    """The layer's problem and its largest number of nonzeros (the NNZ budget k)."""
    d, m = W_hat.shape
    lam = ridge * float(np.mean(np.diag(H)))
    if kind == "nm":
        n, group = parse_nm(value)
        if d % group:
            raise ValueError(f"pattern: group size {group} does not divide a layer's input size {d}")
        return LayerwiseL0(H, W_hat, nm=value, ridge=lam), d // group * n * m
    if kind == "output":
        k_col = k_from_sparsity(value, d)
        return LayerwiseL0(H, W_hat, k_col=k_col, ridge=lam), k_col * m
    k = k_from_sparsity(value, d * m)
    return LayerwiseL0(H, W_hat, k=k, ridge=lam), k


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def _kind(method: Any) -> str:
    """``"layerwise"`` for the LayerwiseL0 methods, ``"structured"`` for a StructuredMIQP solver."""
    if method in SEQUENTIAL_METHODS:
        return "layerwise"
    try:
        spec = get_solver(method) if isinstance(method, str) else None
    except UnknownSolverError:
        spec = None
    if spec is not None and any(issubclass(StructuredMIQP, c) for c in spec.problems):
        return "structured"
    raise ValueError(f"method: expected one of {', '.join(SEQUENTIAL_METHODS)} (unstructured) or a StructuredMIQP "
                     f"solver such as 'osscar', 'group-magnitude' (structured), got {method!r}")


class _Backup:
    """CPU copies of the dense weights written so far (a layer's ``weight``, or a slot's rows),
    restored on error."""

    def __init__(self) -> None:
        self.saved: list[tuple[Slot, torch.Tensor]] = []

    def keep(self, target: nn.Module | Slot) -> None:
        slot = target if isinstance(target, Slot) else Slot("weight", target)
        self.saved.append((slot, slot.tensor.to("cpu", copy=True)))

    def restore(self) -> None:
        with torch.no_grad():
            for slot, w in reversed(self.saved):
                slot.tensor.copy_(w.to(slot.tensor.device))


def _relative_error(problem: LayerwiseL0, result: Any, W_hat: torch.Tensor, out_sq: float) -> float:
    """See :meth:`_LayerStep._solve` (clamped at 0 against rounding in the subtraction)."""
    D = np.asarray(result.x, dtype=np.float64) - W_hat.to("cpu", torch.float64).numpy()
    num = 2.0 * float(result.objective) - problem.ridge * float(np.sum(D * D))
    return max(num, 0.0) / out_sq if out_sq > 0 else 0.0


class _LayerStep:
    """The unstructured layer-wise methods: every linear layer of a block from one statistics pass."""

    def __init__(self, method: str, kind: str, value: Any, ridge: float, time_limit: float | None,
                 solver_options: dict[str, Any] | None, selected: set[int] | None = None) -> None:
        self.method, self.kind, self.value, self.ridge = method, kind, value, ridge
        self.time_limit, self.solver_options = time_limit, solver_options
        self.selected = selected  # ids of the weights targets / ignore leave prunable (None: every one)
        self.pattern_text = f"{kind}={value}"
        self.rows: list[LayerReport] = []
        self.unreached: list[tuple[str, str]] = []  # layers no calibration sample reached (report.not_pruned)
        self.k = 0
        self.samples = 1

    @classmethod
    def build(cls, model: nn.Module, method: str, sparsity: Any, pattern: Any, granularity: str, ridge: float, time_limit: float | None,
              solver_options: dict[str, Any] | None, apply: str, targets: Any = None, ignore: Any = None) -> "_LayerStep":
        """Validate the unstructured budget (errors name the argument) and the weights
        ``targets`` / ``ignore`` select (:func:`combprune.torch.select_parameters`)."""
        kind, value = _pattern(sparsity, pattern, granularity)
        if apply != "mask":
            raise ValueError("apply: the unstructured layer-wise methods write the pruned weights in place; leave apply='mask'")
        selected = None
        if targets is not None or ignore is not None:
            selected = {id(p.storage) for p in select_parameters(model, targets, ignore)}
        return cls(method, kind, value, ridge, time_limit, solver_options, selected)

    def slots(self, block: nn.Module) -> list[Slot]:
        """The block's weight slots this step prunes (those ``targets`` / ``ignore`` leave)."""
        slots = weight_slots(block)
        return slots if self.selected is None else [s for s in slots if id(getattr(s.module, s.param)) in self.selected]

    def check_blocks(self, prefixes: list[str]) -> None:
        """Every linear layer of the blocks is pruned: nothing to check."""

    def finish(self, model: nn.Module, report: PruneReport) -> None:
        report.k = self.k
        report.not_pruned = [*report.not_pruned, *self.unreached]
        report.info["flops"] = "2 x d_in x d_out per token of the calibration samples (per sample; FLOPs = 2 x MACs)"

    def prepare(self, model: nn.Module, batches: list[Any]) -> list[Any]:
        self.samples = max(1, sum(b.size for b in batches))
        return batches

    def prune_block(self, index: int, block: nn.Module, prefix: str, inputs: list[BlockInput], dist: Dist,
                    keep_backup: Callable[[Slot], None]) -> int:
        slots = self.slots(block)
        hooks = GramHooks(slots)
        try:
            with fused_attention_off():
                for inp in inputs:
                    run_block(block, inp)
        finally:
            hooks.remove()
        # the ranks agree on the layers that saw input (one rank's batches may never reach a
        # layer, e.g. an expert no token is routed to): collectives must match on every rank
        device = slots[0].tensor.device if slots else torch.device("cpu")  # the block's (the work device: NCCL needs CUDA)
        here = torch.tensor([float(slot.name in hooks.H) for slot in slots], dtype=torch.float64, device=device)
        anywhere = dist.all_reduce(here).cpu() > 0
        for slot, reached in zip(slots, anywhere.tolist()):
            if not reached:
                logger.warning("block %d: %s%s saw no input; left dense", index, prefix, slot.name)
                self.unreached.append((f"{prefix}{slot.name}", "saw no input on the calibration data (never called as a module): left dense"))
            elif slot.name not in hooks.H:  # seen on another rank only: this rank adds nothing
                d = slot.matrix().shape[0]
                hooks.H[slot.name] = torch.zeros(d, d, dtype=torch.float64, device=slot.tensor.device)
                hooks.out_sq[slot.name] = torch.zeros((), dtype=torch.float64, device=slot.tensor.device)
                hooks.rows[slot.name] = 0
        seen = [(i, slot.name, slot) for i, slot in enumerate(slots) if slot.name in hooks.H]
        # 1. statistics of every layer summed over ranks; 2. each rank solves its own layers (in
        # parallel across ranks); 3. the results are broadcast and written in layer order
        stats = {name: (dist.all_reduce(hooks.H[name]), float(dist.all_reduce(hooks.out_sq[name]))) for _, name, _ in seen}
        for name, (H, out_sq) in stats.items():  # the same reduced values on every rank: all raise together
            if not (bool(torch.isfinite(H).all()) and math.isfinite(out_sq)):
                raise ValueError(
                    f"calibration: the inputs or outputs of layer {prefix}{name} (block {index}) are not finite (NaN or inf); "
                    "check the calibration inputs, and the model's weights and activations, for NaN or inf"
                )
        mine: dict[str, Any] = {}
        for i, name, slot in seen:
            if i % dist.world == dist.rank:
                H, out_sq = stats[name]
                mine[name] = self._solve(f"{prefix}{name}", slot, H, hooks.rows[name] / self.samples, out_sq)
                mine[name][0][0].block, mine[name][0][0].rank = index, dist.rank
        for i, name, slot in seen:
            owner = i % dist.world
            row, W = mine.get(name, (None, torch.empty_like(slot.matrix(), dtype=torch.float64)))
            W = dist.broadcast(W, owner)
            row, k = dist.broadcast_object(row, owner)
            keep_backup(slot)
            slot.write(W)
            self.rows.append(row)
            self.k += k
        return len(slots)

    def _solve(self, name: str, slot: Slot, H: torch.Tensor, tokens: float,
               out_sq: float) -> tuple[tuple[LayerReport, int], torch.Tensor]:
        """Solve one layer: ``((report row, k), W)``; FLOPs = 2 x d_in x d_out per token.

        The relative error ``||X D||^2 / ||X W_hat||^2`` (``D = W - W_hat``) takes its numerator
        from the objective, ``tr(D^T H D) = 2 objective - lam ||D||_F^2``, and its denominator
        ``out_sq`` from the layer's dense outputs: no ``d^2 m`` product beyond the solver's."""
        W_hat = slot.matrix()
        problem, k = _problem(H.cpu().numpy(), W_hat.to("cpu", torch.float64).numpy(), self.kind, self.value, self.ridge)
        result = solve(problem, SEQUENTIAL_METHODS[self.method], time_limit=self.time_limit, **(self.solver_options or {}))
        violations = problem.check(result.x)
        if violations:  # never write an infeasible point into the model
            raise RuntimeError(f"method: {self.method} returned an infeasible point for {name}: {violations[0]}")
        W = torch.as_tensor(np.asarray(result.x), dtype=torch.float64).to(W_hat.device)
        nnz, params = int(np.count_nonzero(result.x)), problem.d * problem.m
        dense = 2.0 * params * tokens
        row = LayerReport(name=name, kind="unstructured", params=params, kept=nnz, sparsity=1.0 - nnz / params,
                          dense_flops=dense, effective_flops=dense * nnz / params, solver=self.method,
                          objective=result.objective, bound=result.bound, gap=result.gap, time=result.time,
                          relative_error=_relative_error(problem, result, W_hat, out_sq))
        return (row, k), W

    def layer_reports(self, block_of: dict[str, int]) -> list[LayerReport]:
        return self.rows


def prune_sequential(
    model: nn.Module,
    calibration: Any,
    *,
    method: str = "layerwise",
    sparsity: Any = None,
    pattern: str | tuple[int, int] | None = None,
    granularity: str = "layer",
    blocks: Any = None,
    ridge: float = 1e-2,
    device: str | torch.device | None = None,
    n_samples: int | None = None,
    time_limit: float | None = None,
    solver_options: dict[str, Any] | None = None,
    offload: str | None = None,
    offload_dir: str | None = None,
    progress: bool = True,
    targets: Any = None,
    ignore: Any = None,
    kinds: Any = KINDS,
    pairs: Any = None,
    apply: str = "mask",
    gqa: str = "kv",
) -> PruneReport:
    """Prune the repeated blocks of ``model``, one block at a time.

    Parameters
    ----------
    model : a module made of repeated blocks (found from the module tree, see ``blocks``).
    calibration : batches as for :func:`combprune.torch.prune` (tensors, (inputs, targets),
        Hugging Face dicts); targets are ignored (reconstruction needs inputs only).
    method : unstructured: ``"layerwise"`` (default solver of LayerwiseL0), ``"sparsegpt"``,
        ``"wanda"`` or ``"magnitude"``; structured: ``"osscar"``, ``"group-magnitude"`` (or any
        registered StructuredMIQP solver), pruning FFN neurons and attention heads.
    sparsity : unstructured: fraction of each layer's weights removed (``k = p - ceil(sparsity p)``);
        structured: fraction of the groups of each unit removed (a float or a dict by kind /
        consumer name, as for :func:`combprune.torch.structured.prune_structured`).
    pattern : unstructured only, instead of ``sparsity``: ``"n:m"``, e.g. ``"2:4"`` (at most n of
        every m consecutive inputs of each output).
    granularity : unstructured, with ``sparsity``: ``"layer"`` (a count per layer) or
        ``"output"`` (the same count for every output).
    blocks : dotted path or ``nn.ModuleList`` of the blocks, or a list of dotted paths for several
        stacks (default: every stack found, e.g. ``model.layers``, ``encoder.layer``,
        ``transformer.h``, or the encoder and the decoder of an encoder-decoder model). Stacks
        are pruned in the order the forward pass enters them (an encoder before its decoder, whose
        calibration inputs then come from the pruned encoder); ``report.info["stacks"]``.
    ridge : lam relative to ``mean(diag(H))`` (SparseGPT's damping, OSSCAR's ridge: 1e-2); for the
        structured methods ``solver_options["ridge"]`` (absolute) takes precedence, and
        ``"auto"`` chooses the factor per unit on held-back samples
        (:mod:`combprune.torch._structured_ridge`; ``report.info["ridge_auto"]``).
    device : where each block is processed (default: the model's device); other blocks stay put.
    n_samples : use at most this many calibration samples.
    time_limit : seconds per layer solve.
    solver_options : extra options of the solver (``combprune.solve``).
    offload : ``None`` or ``"disk"``: blocks live in safetensors files (``offload_dir``, default a
        temporary directory) except during their turn; the model is whole again at the end.
    progress : a tqdm bar over the blocks.
    targets, ignore : which weights are pruned (:func:`combprune.torch.select_parameters`; for
        the structured methods, which units by consumer layer); the unstructured methods
        reconstruct the selected weights inside the blocks and leave the others as they are.
    kinds, pairs : structured only: which kinds (``"neuron"``, ``"head"``, ``"channel"``),
        explicit producer/consumer pairs.
    apply : structured only: ``"mask"`` (torch pruning masks on consumers and producers),
        ``"permanent"`` (zeros written) or ``"physical"`` (smaller layers); the unstructured
        methods write the pruned weights (zeros included) in place.
    gqa : structured only: grouped-query attention heads, ``"kv"`` (a KV head with its query
        heads) or ``"query"`` (query heads evenly per KV head), as for
        :func:`combprune.torch.structured.prune_structured`.

    Returns
    -------
    :class:`~combprune.torch.report.PruneReport` with one row per pruned weight (``block``,
    ``relative_error``, ``rank`` filled in), ``blocks`` (time and peak memory per block) and
    ``peak_memory_bytes``; ``info`` holds the pattern, world size, calibration samples, the
    ``stacks`` pruned and the linear layers ``outside_blocks`` (left dense).
    """
    start = time.perf_counter()
    kind = _kind(method)
    ridge = check_ridge(ridge)
    if ridge == "auto" and kind == "layerwise":
        raise ValueError(f"ridge: 'auto' is offered by the structured methods ('osscar', ...), not {method!r}; give a number")
    if offload not in (None, "disk"):
        raise ValueError(f"offload: expected None or 'disk', got {offload!r}")
    if kind == "layerwise":
        step: Any = _LayerStep.build(model, method, sparsity, pattern, granularity, ridge, time_limit, solver_options, apply, targets, ignore)
    else:
        if pattern is not None:
            raise ValueError(f"pattern: N:M patterns are unstructured; {method!r} prunes groups (give sparsity)")
        step = StructuredStep(model, method=method, sparsity=sparsity, targets=targets, ignore=ignore,
                              solver_options=solver_options, kinds=kinds, pairs=pairs, ridge=ridge,
                              time_limit=time_limit, apply=apply, gqa=gqa)
    check_finite_parameters(model)
    home = model_device(model)
    work = _work_device(device, home)
    stacks = find_stacks(model, blocks)
    dist = Dist.current()
    batches = collect(calibration, n_samples, home)[dist.rank::dist.world]
    if not batches:
        raise ValueError(f"calibration: {dist.world} ranks need at least {dist.world} calibration batches")
    with eval_mode(model), torch.no_grad():
        stacks = forward_order(model, stacks, batches[0])
        sources = input_sources(model, stacks, batches[0])
    block_list = [block for _, stack in stacks for block in stack]
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [f"{names[id(b)]}." if names.get(id(b)) else "" for b in block_list]
    if kind == "layerwise":
        _warn_dense_convolutions(block_list, prefixes)
        if step.selected is not None:
            _check_selection(model, step, block_list)
    inside = {id(m) for block in block_list for m in block.modules()}
    outside = [name for name, m in linear_layers(model) if id(m) not in inside]
    if outside:
        logger.info("linear layers outside the blocks stay dense: %s", ", ".join(outside))
    if kind == "layerwise" and step.kind == "nm":
        _check_nm(step.value, [step.slots(b) for b in block_list], prefixes)  # before anything changes
    elif kind == "layerwise":
        _check_keeps_one(step.kind, step.value, [step.slots(b) for b in block_list], prefixes)
    batches = step.prepare(model, batches)
    report = PruneReport(layers=[], method=method, sparsity_requested=sparsity if isinstance(sparsity, float) else None,
                         apply=apply)
    report.info.update(pattern=step.pattern_text, world_size=dist.world, engine="sequential",
                       calibration_samples=dist.total(sum(b.size for b in batches)), ridge=ridge,
                       stacks=[path for path, _ in stacks], outside_blocks=outside)
    backup = _Backup()
    step.check_blocks(prefixes)
    disks: list[DiskOffload] = []
    try:
        first = 0
        for (_, stack), own in zip(stacks, sources):
            # the inputs of every source block, from the model as it is now (earlier stacks pruned)
            with eval_mode(model), torch.no_grad():
                reps = sorted(set(own))
                captured = dict(zip(reps, stack_inputs(model, [stack[r] for r in reps], batches)))
            disk = DiskOffload(stack, offload_dir, first) if offload == "disk" else None
            disks += [disk] if disk is not None else []
            _run_blocks(model, stack, first, prefixes, captured, own, step, report, backup, work, dist, disk, progress)
            first += len(stack)
        block_of = {p[:-1]: i for i, p in enumerate(prefixes)}
        report.layers = step.layer_reports({n: _block_index(n, block_of) for n in names.values()})
        step.finish(model, report)
    except BaseException:
        for disk in disks:  # every stack's blocks back from their dense files
            disk.finish(success=False)
        backup.restore()
        raise
    finally:
        for disk in disks:
            disk.cleanup()
    report.peak_memory_bytes = max((b.peak_memory_bytes for b in report.blocks), default=0)
    if targets is None:
        report.not_pruned = with_unselected(model, report.not_pruned, f"prune {method}")
    report.time = time.perf_counter() - start
    logger.info("%s", report)
    return report


def _work_device(device: Any, home: torch.device) -> torch.device:
    """The device blocks are processed on (``device`` or the model's); errors name ``device``."""
    if device is None:
        return home
    try:
        work = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc
    if work.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was requested but CUDA is not available")
    return work


def _check_nm(value: str, block_slots: list[list[Slot]], prefixes: list[str]) -> None:
    """Every pruned layer's input size must be a multiple of m (checked before anything changes)."""
    group = parse_nm(value)[1]
    for slots, prefix in zip(block_slots, prefixes):
        for slot in slots:
            d = slot.matrix().shape[0]
            if d % group:
                raise ValueError(f"pattern: group size m={group} does not divide the input size {d} of {prefix}{slot.name}; "
                                 f"choose m dividing every layer's input size")


def _check_selection(model: nn.Module, step: "_LayerStep", block_list: list[nn.Module]) -> None:
    """With ``targets`` / ``ignore``: a ``ValueError`` naming ``targets`` when no selected weight
    lies in the blocks, and a warning naming the selected weights the engine leaves dense
    (outside the blocks, or not a Linear / Conv1D / attention matrix)."""
    covered = {id(getattr(s.module, s.param)) for block in block_list for s in step.slots(block)}
    if not covered:
        raise ValueError("targets: no selected weight lies inside the repeated blocks the layer-wise methods reconstruct "
                         "(choose them with blocks=, or prune weights outside blocks with a one-shot method)")
    names = {id(p): n for n, p in model.named_parameters()}
    left = [names.get(i, "?") for i in step.selected if i not in covered]
    if left:
        logger.warning("targets: %d selected weight(s) are not reconstructed by the layer-wise methods (outside the blocks, "
                       "or not a Linear / Conv1D / attention matrix) and stay as they are: %s", len(left), ", ".join(sorted(left)[:6]))


def _warn_dense_convolutions(block_list: list[nn.Module], prefixes: list[str]) -> None:
    """The layer-wise methods reconstruct matrices (Linear, Conv1D, attention projections): say
    which convolutions inside the blocks they leave dense."""
    convs = [f"{prefix}{name}" if name else prefix[:-1] for block, prefix in zip(block_list, prefixes)
             for name, m in block.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if convs:
        logger.warning("the layer-wise methods prune Linear, Conv1D and attention weights; convolutions left dense: %s "
                       "(prune them with a one-shot method, e.g. cpt.prune(..., method='chita'))", ", ".join(convs))


def _check_keeps_one(kind: str, sparsity: float, block_slots: list[list[Slot]], prefixes: list[str]) -> None:
    """Every linear layer keeps at least one weight (per output with ``granularity="output"``),
    checked before anything changes on the smallest layer (the budget rule is :func:`_problem`'s)."""
    sizes = []
    for slots, prefix in zip(block_slots, prefixes):
        for slot in slots:
            d, m = slot.matrix().shape
            sizes.append((d if kind == "output" else d * m, f"{prefix}{slot.name}"))
    if not sizes:
        return
    size, where = min(sizes)
    require_one_kept(sparsity, size, f"{'inputs per output' if kind == 'output' else 'weights'} of {where}")


def _block_index(name: str, block_of: dict[str, int]) -> int | None:
    """Index of the block containing module ``name`` (``None`` outside every block)."""
    for prefix, index in block_of.items():
        if name == prefix or name.startswith(prefix + ".") or not prefix:
            return index
    return None


def _run_blocks(model: nn.Module, block_list: list[nn.Module], first: int, prefixes: list[str], captured: dict[int, list[BlockInput]],
                sources: list[int], step: Any, report: PruneReport, backup: _Backup, work: torch.device, dist: Dist,
                disk: DiskOffload | None, progress: bool) -> None:
    """The engine's loop over one stack (module docstring): per block, load, prune
    (``step.prune_block``), recompute the outputs, release. ``captured`` holds the inputs (per
    batch) of the source blocks of :func:`input_sources` (``sources``: each block's), block 0's
    first: block ``i`` runs on block ``i - 1``'s outputs with the other inputs of its source.
    ``first`` is the index of the stack's first block over all stacks. The caller restores the
    model on error."""
    with eval_mode(model), torch.no_grad():
        inputs = [inp.to(work) for inp in captured.pop(0)]  # block 0's hidden states live on here only
        others = {r: [inp.to(work) for inp in got] for r, got in captured.items()}  # hidden states already dropped
        others[0] = [inp.with_hidden(None) for inp in inputs]  # the same tensors, already on the work device
        for offset, block in enumerate(tqdm(block_list, desc="blocks", disable=not progress)):
            index = first + offset
            t0 = time.perf_counter()
            block_home = next((p.device for p in block.parameters()), work)
            if disk is not None:
                disk.load(offset, work)
            else:
                block.to(work)
            # with disk offload the dense block file is the backup (structured: consumers only, kept anyway)
            keep = backup.keep if disk is None or isinstance(step, StructuredStep) else (lambda slot: None)
            solved = step.prune_block(index, block, prefixes[index], inputs, dist, keep)
            if offset + 1 < len(block_list):
                nxt = others[sources[offset + 1]]
                inputs = [base.with_hidden(run_block(block, inp)) for base, inp in zip(nxt, inputs)]
            peak, report.memory_kind = _peak_memory(work)
            if disk is not None:
                disk.release(offset)
            else:
                block.to(block_home)
            report.blocks.append(BlockReport(index, solved, time.perf_counter() - t0, peak))
    if disk is not None:
        disk.finish(success=True)
