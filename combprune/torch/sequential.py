r"""``combprune.torch.prune_sequential``: layer-wise pruning of block models, one block at a time.

For a model made of repeated blocks (Hugging Face decoders and encoders), the calibration
inputs are run up to block 0 once; then, for each block b:

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

On any error the weights of the layers already pruned are restored (from a CPU copy) and the
error is raised again: the model is unchanged.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from combprune._table import text_table
from combprune.api import solve
from combprune.problems import LayerwiseL0
from combprune.problems.layerwise import parse_nm

from ._calibration import collect, model_device
from ._sequential_blocks import (BlockInput, GramHooks, capture_block_inputs, find_blocks, linear_layers, run_block,
                                 set_weight_matrix, weight_matrix)
from ._sequential_dist import Dist
from ._sequential_offload import DiskOffload
from .prune import k_from_sparsity

logger = logging.getLogger(__name__)

__all__ = ["prune_sequential", "SequentialReport", "SequentialLayerRow", "SequentialBlockRow", "SEQUENTIAL_METHODS"]

#: Method name -> registered solver of ``LayerwiseL0``.
SEQUENTIAL_METHODS = {"layerwise": "layerwise", "sparsegpt": "sparsegpt", "wanda": "wanda", "magnitude": "magnitude"}


@dataclass
class SequentialLayerRow:
    """One pruned layer: the solver's objective and the relative reconstruction error."""

    block: int
    name: str
    d_in: int
    d_out: int
    nnz: int
    sparsity: float
    objective: float
    bound: float | None
    relative_error: float  # ||X (W - W_hat)||^2 / ||X W_hat||^2 on this block's calibration inputs
    solve_time: float
    rank: int


@dataclass
class SequentialBlockRow:
    """One block: wall time and the peak memory after it (bytes)."""

    index: int
    layers: int
    time: float
    peak_memory_bytes: int


@dataclass
class SequentialReport:
    """What :func:`prune_sequential` did: per-block and per-layer rows, peak memory."""

    method: str
    pattern: str
    blocks: list[SequentialBlockRow] = field(default_factory=list)
    layers: list[SequentialLayerRow] = field(default_factory=list)
    time: float = 0.0
    peak_memory_bytes: int = 0
    memory_kind: str = "cpu_max_rss"
    world_size: int = 1
    calibration_samples: int = 0

    @property
    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights removed."""
        total = sum(r.d_in * r.d_out for r in self.layers)
        return 1.0 - sum(r.nnz for r in self.layers) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sparsity"] = self.sparsity
        return out

    def __str__(self) -> str:
        rows = [[str(r.block), r.name, f"{r.d_in}x{r.d_out}", f"{r.sparsity:.3f}", f"{r.relative_error:.4g}",
                 f"{r.solve_time:.2f}"] for r in self.layers]
        head = (f"prune_sequential: method={self.method} pattern={self.pattern} sparsity={self.sparsity:.3f} "
                f"blocks={len(self.blocks)} time={self.time:.1f}s peak={self.peak_memory_bytes / 2**20:.0f} MiB "
                f"({self.memory_kind}) world={self.world_size}")
        return head + "\n" + text_table(["block", "layer", "shape", "sparsity", "rel. error", "solve s"], rows)


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


def _problem(H: np.ndarray, W_hat: np.ndarray, kind: str, value: Any, ridge: float) -> LayerwiseL0:
    d, m = W_hat.shape
    lam = ridge * float(np.mean(np.diag(H)))
    if kind == "nm":
        if d % parse_nm(value)[1]:
            raise ValueError(f"pattern: group size {parse_nm(value)[1]} does not divide a layer's input size {d}")
        return LayerwiseL0(H, W_hat, nm=value, ridge=lam)
    if kind == "output":
        return LayerwiseL0(H, W_hat, k_col=k_from_sparsity(value, d), ridge=lam)
    return LayerwiseL0(H, W_hat, k=k_from_sparsity(value, d * m), ridge=lam)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


class _Backup:
    """CPU copies of the dense weights of the layers written so far (restored on error)."""

    def __init__(self) -> None:
        self.saved: list[tuple[nn.Module, torch.Tensor]] = []

    def keep(self, layer: nn.Module) -> None:
        self.saved.append((layer, layer.weight.detach().to("cpu", copy=True)))

    def restore(self) -> None:
        with torch.no_grad():
            for layer, w in reversed(self.saved):
                layer.weight.copy_(w.to(layer.weight.device))


def prune_sequential(
    model: nn.Module,
    calibration: Any,
    *,
    method: str = "layerwise",
    sparsity: float | None = None,
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
) -> SequentialReport:
    """Prune every linear layer of the repeated blocks of ``model``, one block at a time.

    Parameters
    ----------
    model : a module made of repeated blocks (found from the module tree, see ``blocks``).
    calibration : batches as for :func:`combprune.torch.prune` (tensors, (inputs, targets),
        Hugging Face dicts); targets are ignored (reconstruction needs inputs only).
    method : ``"layerwise"`` (default solver of LayerwiseL0), ``"sparsegpt"``, ``"wanda"`` or
        ``"magnitude"``.
    sparsity : fraction of each layer's weights removed (``k = p - ceil(sparsity p)``); or
    pattern : ``"n:m"``, e.g. ``"2:4"`` (at most n of every m consecutive inputs of each output).
    granularity : with ``sparsity``: ``"layer"`` (a count per layer) or ``"output"`` (the same
        count for every output).
    blocks : dotted path or ``nn.ModuleList`` of the blocks (default: ``model.layers``,
        ``decoder.layers``, ``encoder.layer``, ``transformer.h``, ...).
    ridge : lam relative to ``mean(diag(H))`` (SparseGPT's damping, OSSCAR's ridge: 1e-2).
    device : where each block is processed (default: the model's device); other blocks stay put.
    n_samples : use at most this many calibration samples.
    time_limit : seconds per layer solve.
    solver_options : extra options of the solver (``combprune.solve``).
    offload : ``None`` or ``"disk"``: blocks live in safetensors files (``offload_dir``, default a
        temporary directory) except during their turn; the model is whole again at the end.
    progress : a tqdm bar over the blocks.
    """
    start = time.perf_counter()
    if method not in SEQUENTIAL_METHODS:
        raise ValueError(f"method: expected one of {', '.join(SEQUENTIAL_METHODS)}, got {method!r}")
    kind, value = _pattern(sparsity, pattern, granularity)
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge: expected a non-negative number, got {ridge!r}")
    if offload not in (None, "disk"):
        raise ValueError(f"offload: expected None or 'disk', got {offload!r}")
    home = model_device(model)
    work = torch.device(device) if device is not None else home
    block_list = find_blocks(model, blocks)
    dist = Dist.current()
    batches = collect(calibration, n_samples, home)
    batches = batches[dist.rank::dist.world]
    if not batches:
        raise ValueError(f"calibration: {dist.world} ranks need at least {dist.world} calibration batches")
    report = SequentialReport(method=method, pattern=f"{kind}={value}", world_size=dist.world,
                              calibration_samples=dist.total(sum(b.size for b in batches)))
    was_training = model.training
    model.eval()
    backup = _Backup()
    disk = None
    try:
        with torch.no_grad():
            inputs = [inp.to(work) for inp in capture_block_inputs(model, block_list[0], batches)]
            if offload == "disk":
                disk = DiskOffload(block_list, offload_dir)
            bar = tqdm(block_list, desc="blocks", disable=not progress)
            for index, block in enumerate(bar):
                t0 = time.perf_counter()
                block_home = next((p.device for p in block.parameters()), work)
                if disk is not None:
                    disk.load(index, work)
                else:
                    block.to(work)
                layers = linear_layers(block)
                hooks = GramHooks(layers)
                try:
                    for inp in inputs:
                        run_block(block, inp)
                finally:
                    hooks.remove()
                for i, (name, layer) in enumerate(layers):
                    if name not in hooks.H:
                        logger.warning("block %d: layer %s saw no input; left dense", index, name)
                        continue
                    H = dist.all_reduce(hooks.H[name])
                    owner = i % dist.world
                    row = None
                    W = torch.empty_like(weight_matrix(layer), dtype=torch.float64)
                    if owner == dist.rank:
                        row, W = _solve_layer(index, name, layer, H, kind, value, ridge, method, time_limit,
                                              solver_options, dist.rank)
                    W = dist.broadcast(W, owner)
                    row = dist.broadcast_object(row, owner)
                    if disk is None:  # with disk offload the dense block file is the backup
                        backup.keep(layer)
                    set_weight_matrix(layer, W)
                    report.layers.append(row)
                inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]
                peak, report.memory_kind = _peak_memory(work)
                if disk is not None:
                    disk.release(index)
                else:
                    block.to(block_home)
                report.blocks.append(SequentialBlockRow(index, len(layers), time.perf_counter() - t0, peak))
    except BaseException:
        if disk is not None:
            disk.finish(success=False)
        backup.restore()
        raise
    finally:
        model.train(was_training)
    if disk is not None:
        disk.finish(success=True)
    report.peak_memory_bytes = max((b.peak_memory_bytes for b in report.blocks), default=0)
    report.time = time.perf_counter() - start
    logger.info("%s", report)
    return report


def _solve_layer(index: int, name: str, layer: nn.Module, H: torch.Tensor, kind: str, value: Any, ridge: float,
                 method: str, time_limit: float | None, solver_options: dict[str, Any] | None,
                 rank: int) -> tuple[SequentialLayerRow, torch.Tensor]:
    W_hat = weight_matrix(layer)
    H_np = H.cpu().numpy()
    problem = _problem(H_np, W_hat.to("cpu", torch.float64).numpy(), kind, value, ridge)
    result = solve(problem, SEQUENTIAL_METHODS[method], time_limit=time_limit, **(solver_options or {}))
    violations = problem.check(result.x)
    if violations:  # never write an infeasible point into the model
        raise RuntimeError(f"method: {method} returned an infeasible point for {name}: {violations[0]}")
    W = torch.as_tensor(np.asarray(result.x), dtype=torch.float64).to(W_hat.device)
    nnz = int(np.count_nonzero(result.x))
    row = SequentialLayerRow(block=index, name=name, d_in=problem.d, d_out=problem.m, nnz=nnz,
                             sparsity=1.0 - nnz / (problem.d * problem.m), objective=result.objective,
                             bound=result.bound, relative_error=problem.relative_error(result.x),
                             solve_time=result.time, rank=rank)
    return row, W
