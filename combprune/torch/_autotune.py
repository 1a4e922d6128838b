"""``l2="auto"`` / ``first_order="auto"``: choose the ridge on held-back calibration samples.

The ridge of the local model (``docs/formulations/l0_regression.md``) is ``ridge = n * l2``;
what matters is its size against the curvature ``A^T A / n`` (the empirical Fisher), whose mean
diagonal ``phi = ||A||_F^2 / (n p)`` varies by orders of magnitude between models (about 5e-3
on an MNIST MLP, 4e-7 on a sentence-embedding transformer). A fixed ``l2`` is therefore either
negligible or dominant depending on the model, and in the second case CHITA silently becomes
magnitude pruning. The automatic choice is relative and validated (``docs/torch_adapter.md``,
"Automatic l2 (the default) and first_order"):

1. hold back a fraction ``holdout`` of the calibration samples (a seeded random subset);
2. ``phi`` is the mean diagonal of the Fisher of the other (kept) samples;
3. candidates ``l2 = c * phi``, ``c`` from ``l2_grid`` (default 100, 10, 1, 0.1, extended a
   decade at a time down to ``MIN_RELATIVE_L2``), are solved on the kept samples and scored by
   the *true* loss of the pruned model on the held-back samples (a forward pass). The grid is
   walked (:func:`_bracket`): without the first-order term from ``c = 1`` toward smaller ridges
   while the held-back loss improves, else toward larger ones; with it from the largest ridge
   down. Each walk stops one candidate past its minimum; solves are warm started from the
   neighbouring candidate;
4. the candidate with the lowest held-back loss wins (:func:`search`).

The torch adapter (``combprune/torch/prune.py``) supplies the solves and the losses: once at
the final budget (one-shot methods, ``auto_stages="once"``) or at every stage of a multi-stage
method (``auto_stages="per-stage"``, the default), where later stages start the walk at the
previous stage's relative ridge; there every stage but the last moves to its winning candidate
(no re-solve: :class:`combprune.multistage.ChosenPoint`).

Left at its default (``None``) ``l2`` means "auto when the calibration set can spare the
held-back samples": with fewer than ``MIN_HELD_OUT / holdout`` samples the fixed value
``l2 = FALLBACK_L2`` is used instead, with a warning and the reason in ``report.info["auto"]``
(:func:`fallback`). ``first_order`` defaults to ``False`` (the adapter resolves ``None``
before this module sees it: on the validation splits the automatic choice never kept the term,
at about twice the candidates). Passing ``"auto"`` explicitly makes a too small
calibration set an error that says how many samples are needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from ._calibration import Batch, eval_mode, functional_forward
from ._fisher import fisher_rows
from ._gradients import NON_FINITE_GRADIENTS, batch_loss, default_loss, flat_weights, param_overrides

if TYPE_CHECKING:
    from .pruner import PruneConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_L2_GRID", "AUTO_STAGES", "DEFAULT_HOLDOUT", "MIN_HELD_OUT", "FALLBACK_L2", "is_auto", "fallback", "select_samples", "split_holdout", "fisher_scale",
    "gram_scale", "check_scale", "relative_grid", "held_out_loss", "held_out_losses", "one_se_rule", "search", "best_relative",
]

#: Candidate ridges relative to the Fisher's mean diagonal.
DEFAULT_L2_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
#: The walk down the grid continues past its small end (a decade at a time) while the
#: held-back loss improves, down to this relative ridge.
MIN_RELATIVE_L2 = 1e-3
#: How multi-stage methods choose: once at the final budget, or at every stage.
AUTO_STAGES: tuple[str, ...] = ("once", "per-stage")
#: Fraction of the calibration samples held back to choose.
DEFAULT_HOLDOUT = 0.2
#: Fewest samples the choice needs on each side of the split.
MIN_HELD_OUT = 8
#: ``l2`` used when the default automatic choice cannot hold samples back.
FALLBACK_L2 = 1e-3
#: At most this many samples estimate the Fisher's scale.
_SCALE_SAMPLES = 256


def select_samples(batches: list[Batch], index: np.ndarray) -> list[Batch]:
    """The samples ``index`` (positions in the concatenation of ``batches``) as batches."""
    out: list[Batch] = []
    start = 0
    for b in batches:
        local = index[(index >= start) & (index < start + b.size)] - start
        if local.size:
            sel = torch.as_tensor(local, dtype=torch.long)
            out.append(b.take(sel))
        start += b.size
    return out


def is_auto(value: Any) -> bool:
    """True for an option left to the automatic choice (``None``, the default, or ``"auto"``)."""
    return value is None or value == "auto"


def _too_few(n: int, fraction: float) -> str | None:
    """Why ``n`` samples cannot be split with ``fraction`` held back (None when they can)."""
    n_held = int(round(fraction * n))
    if n_held >= MIN_HELD_OUT and n - n_held >= MIN_HELD_OUT:
        return None
    need = math.ceil(MIN_HELD_OUT / min(fraction, 1 - fraction))
    return (
        f"{n} calibration samples are too few to hold back holdout={fraction:g} of them for the automatic l2/first_order "
        f"(need at least {need})"
    )


def split_holdout(batches: list[Batch], fraction: float, seed: int | None) -> tuple[list[Batch], list[Batch]]:
    """(kept, held-back) batches: a seeded random ``fraction`` of the samples is held back.

    Raises ``ValueError`` naming ``calibration`` when either side would have fewer than
    :data:`MIN_HELD_OUT` samples.
    """
    n = sum(b.size for b in batches)
    reason = _too_few(n, fraction)
    if reason:
        raise ValueError(f"calibration: {reason}; pass more samples or fixed values (e.g. l2=1e-3, first_order=False)")
    n_held = int(round(fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    held, kept = np.sort(order[:n_held]), np.sort(order[n_held:])
    return select_samples(batches, kept), select_samples(batches, held)


def fisher_scale(model: torch.nn.Module, params: list, batches: list[Batch], *, fisher: str = "empirical", rows_per_sample: float = 1.0,
                 loss_fn: Any, chunk_size: int, max_memory: int) -> float:
    """Mean diagonal ``||A||_F^2 / (n p)`` of the Fisher (``fisher``, :mod:`._fisher`) on (a bounded subset of) ``batches``.

    Its rows are computed a few samples at a time (``max_memory`` bytes at most, planning
    ``rows_per_sample`` rows per sample) and reduced on the fly, so the estimate never stores
    the whole factor.
    """
    p = sum(q.numel for q in params)
    per_call = max(1, min(_SCALE_SAMPLES, int(max_memory // max(1.0, 4 * p * rows_per_sample))))
    weights = flat_weights(params)
    total, seen = 0.0, 0
    for batch in batches:
        for start in range(0, batch.size, per_call):
            if seen >= _SCALE_SAMPLES:
                break
            part = batch.slice(start, min(batch.size, start + per_call, start + _SCALE_SAMPLES - seen))
            rows = fisher_rows(model, params, [part], fisher=fisher, weights=weights, loss_fn=loss_fn, chunk_size=chunk_size)
            total += float(np.einsum("ij,ij->", rows.A, rows.A, dtype=np.float64))
            seen += part.size
    return total / (seen * p) if seen and p else 0.0


def gram_scale(G: np.ndarray, n: int | None = None) -> float:
    """Mean diagonal ``||G||_F^2 / (n p)`` of the Fisher ``G^T G / n`` (``n``: the samples, default the rows of ``G``)."""
    rows, p = G.shape
    n = rows if n is None else n
    return float(np.einsum("ij,ij->", G, G, dtype=np.float64)) / (n * p) if n and p else 0.0


def held_out_loss(model: torch.nn.Module, params: list, batches: list[Batch], weights: np.ndarray, loss_fn: Any) -> float:
    """Mean loss on ``batches`` with the prunable weights set to ``weights`` (model untouched)."""
    loss_fn = loss_fn or default_loss
    like = params[0].storage
    overrides = param_overrides(params, torch.as_tensor(weights, dtype=like.dtype, device=like.device))
    total, n = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            out = functional_forward(model, overrides, batch.inputs)
            total += float(batch_loss(loss_fn, out, batch.targets, batch.size)) * batch.size
            n += batch.size
    return total / n


def held_out_losses(model: torch.nn.Module, params: list, batches: list[Batch], weights: np.ndarray, loss_fn: Any) -> np.ndarray:
    """Per-sample losses on ``batches`` with the prunable weights set to ``weights`` (a forward
    per sample, so any model and loss work; used for two candidates per decision only)."""
    return np.array([held_out_loss(model, params, [b.slice(i, i + 1)], weights, loss_fn) for b in batches for i in range(b.size)])


def one_se_rule(candidate: np.ndarray, incumbent: np.ndarray) -> dict[str, Any]:
    """The one-standard-error rule on paired per-sample losses: ``candidate`` replaces
    ``incumbent`` only when it lowers the mean loss by more than one standard error of the
    paired differences ``d_i = loss_i(candidate) - loss_i(incumbent)``: ``mean(d) < -std(d) / sqrt(n)``.

    Used for the first-order term (candidate: the best point with the term; its step is fitted
    on the kept samples, and a gain within the noise of a few hundred held-back samples cost
    accuracy on the validation splits, ``docs/torch_adapter.md``) and for the check of the last
    solve (candidate: the measured winner it started from).
    """
    d = np.asarray(candidate, dtype=np.float64) - np.asarray(incumbent, dtype=np.float64)
    se = float(np.std(d, ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.inf
    mean = float(np.mean(d))
    return {"mean_difference": mean, "standard_error": se, "kept": bool(mean < -se)}


def fallback(cfg: "PruneConfig", n: int) -> tuple["PruneConfig", dict[str, Any]] | None:
    """Fixed values when the defaults (``None``) cannot hold samples back; None otherwise.

    An explicit ``"auto"`` is never replaced: :func:`split_holdout` then raises instead.
    """
    reason = _too_few(n, cfg.holdout)
    if not reason or cfg.l2 == "auto" or cfg.first_order == "auto":
        return None
    l2 = FALLBACK_L2 if cfg.l2 is None else cfg.l2
    first_order = False if cfg.first_order is None else cfg.first_order
    logger.warning("auto: %s; using l2=%g, first_order=%s", reason, l2, first_order)
    return dataclasses.replace(cfg, l2=l2, first_order=first_order), {"skipped": reason, "l2": l2, "first_order": first_order}


def check_scale(scale: float) -> float:
    """``scale`` when it can anchor the grid; a ``ValueError`` naming ``l2`` when the loss is flat."""
    if math.isnan(scale) or math.isinf(scale):
        raise ValueError(NON_FINITE_GRADIENTS)
    if not scale > 0:
        raise ValueError(
            "l2: the per-sample gradients are zero on the calibration data (the loss is flat there), so l2='auto' has no "
            "scale and CHITA/FALCON would reduce to magnitude pruning; check loss_fn/targets, or prune layer by layer from "
            "the inputs alone with method='layerwise', 'sparsegpt' or 'wanda'"
        )
    return scale


def relative_grid(grid: tuple[float, ...], extend: bool) -> list[float]:
    """The grid from the largest ridge down, extended a decade at a time down to :data:`MIN_RELATIVE_L2`."""
    out = sorted(set(float(c) for c in grid), reverse=True)
    while extend and out[-1] / 10 >= MIN_RELATIVE_L2 * (1 - 1e-9):
        out.append(out[-1] / 10)
    return out


def _bracket(grid: list[float], first: int, loss_at: Callable[[float, float | None], float]) -> None:
    """Walk the descending ``grid`` from ``grid[first]`` to the held-back loss's first local minimum.

    Steps go toward smaller ridges while the loss strictly decreases; when the first step down
    does not improve, steps go toward larger ridges instead. ``loss_at(c, warm_from)``
    evaluates (and records) relative ridge ``c``, warm started from the solution at
    ``warm_from``. One candidate past the minimum is evaluated on each side explored, so a
    unimodal loss costs (grid steps to the minimum) + 2 candidates.
    """
    i = first
    current = loss_at(grid[i], None)
    moved = False
    while i + 1 < len(grid):
        nxt = loss_at(grid[i + 1], grid[i])
        if not nxt < current:
            break
        i, current, moved = i + 1, nxt, True
    if moved:
        return
    i = first
    while i > 0:
        nxt = loss_at(grid[i - 1], grid[i])
        if not nxt < current:
            break
        i, current = i - 1, nxt


def search(
    cfg: "PruneConfig",
    scale: float,
    solve_one_shot: Callable[["PruneConfig", np.ndarray | None], np.ndarray],
    loss: Callable[[np.ndarray], float],
    magnitude_support: np.ndarray | None,
    *,
    start: Mapping[bool, float] | None = None,
    sample_losses: Callable[[np.ndarray], np.ndarray] | None = None,
    minimiser_without: np.ndarray | None = None,
) -> tuple["PruneConfig", dict[str, Any], np.ndarray]:
    """Resolve ``l2="auto"`` / ``first_order="auto"`` of ``cfg``: (concrete cfg, record, best candidate's weights).

    ``solve_one_shot(cfg, warm)`` prunes at the final budget on the kept samples with a concrete
    one-stage ``cfg`` (warm started from the flat weights ``warm`` when given); ``loss(w)`` is
    the held-back loss of the flat weights ``w``. Without the first-order term the walk starts
    at the grid value nearest 1 (the ridge nearest ``scale``) and goes down while the
    held-back loss improves, else up; with it, it starts at the largest ridge and goes down
    (the gradient term makes each solve a Newton-like step that needs damping: on MLPNet its
    best ridge was 10-1000 x the Fisher scale, against 1e-3..100 without). See :func:`_bracket`.
    ``start`` maps ``first_order`` to a relative ridge (added to the grid when absent) that
    replaces that walk's starting point (the per-stage choice starts each walk at the previous
    stage's best value for it: :func:`best_relative`). ``magnitude_support`` is the
    support magnitude pruning keeps (for the report; None to skip the comparison). When both
    walks ran and the best candidate keeps the first-order term, ``sample_losses(w)`` (the
    held-back per-sample losses) decide whether it beats the best one without the term by more
    than one standard error (:func:`one_se_rule`); else the one without wins.
    ``minimiser_without`` is the local model's minimiser without the first-order term for every
    ridge, when it is known: the stage's own starting weights when they already meet the budget
    (a polishing stage), where the model's objective is 0 and cannot be lower. That walk is then
    replaced by this one candidate (one forward pass instead of a walk of solves).
    """
    auto_l2 = is_auto(cfg.l2)
    grid = relative_grid(cfg.l2_grid, extend=True) if auto_l2 else [float(cfg.l2) / scale]
    own = len(relative_grid(cfg.l2_grid, extend=False)) if auto_l2 else 1  # the grid's own values, then the extension
    middle = min(range(min(own, len(grid))), key=lambda i: abs(math.log(grid[i])))
    orders = [False, True] if is_auto(cfg.first_order) else [cfg.first_order]
    candidates: list[dict[str, Any]] = []
    for first_order in orders:
        if not first_order and minimiser_without is not None:
            c = float(start[False]) if start is not None and auto_l2 and start.get(False) is not None else grid[middle]
            value = loss(minimiser_without)
            candidates.append({"l2": c * scale if auto_l2 else float(cfg.l2), "l2_relative": c, "first_order": False,
                               "held_out_loss": value, "weights": minimiser_without,
                               "starting_point": True})
            logger.info("auto: first_order=False: the starting weights meet the budget (the minimiser for every l2): held-back loss %.6g", value)
            continue
        walk, first = grid, 0 if first_order else middle
        if start is not None and auto_l2 and start.get(first_order) is not None:
            walk = sorted(set(grid) | {float(start[first_order])}, reverse=True)
            first = walk.index(float(start[first_order]))
        tried: dict[float, tuple[float, np.ndarray]] = {}

        def loss_at(c: float, warm_from: float | None, first_order: bool = first_order, tried: dict = tried) -> float:
            if c not in tried:
                l2 = c * scale if auto_l2 else float(cfg.l2)
                trial = dataclasses.replace(cfg, l2=l2, first_order=first_order, stages=1, schedule="poly")
                w = solve_one_shot(trial, None if warm_from is None else tried[warm_from][1])
                value = loss(w)
                tried[c] = (value if math.isfinite(value) else math.inf, w)
                candidates.append({"l2": l2, "l2_relative": c, "first_order": first_order, "held_out_loss": value, "weights": w})
                logger.info("auto: l2=%.3g (%.3g x Fisher scale), first_order=%s: held-back loss %.6g", l2, c, first_order, value)
            return tried[c][0]

        _bracket(walk, first, loss_at)
    finite = [c for c in candidates if math.isfinite(c["held_out_loss"])]
    if not finite:
        raise ValueError("l2: every candidate of l2='auto' gave a non-finite held-back loss; pass l2 and first_order explicitly")
    best = min(finite, key=lambda c: c["held_out_loss"])
    without = [c for c in finite if not c["first_order"]]
    test = None
    if best["first_order"] and without and sample_losses is not None:
        plain = min(without, key=lambda c: c["held_out_loss"])
        test = one_se_rule(sample_losses(best["weights"]), sample_losses(plain["weights"]))
        logger.info("auto: first-order term %s (held-back loss difference %.3g, standard error %.3g)",
                    "kept" if test["kept"] else "dropped", test["mean_difference"], test["standard_error"])
        best = best if test["kept"] else plain
    record = {
        "l2": best["l2"], "first_order": best["first_order"], "held_out_loss": best["held_out_loss"], "fisher_scale": scale,
        "holdout": cfg.holdout,
        "candidate_same_support_as_magnitude": None if magnitude_support is None else bool(np.array_equal(best["weights"] != 0, magnitude_support)),
        "candidates": [{k: v for k, v in c.items() if k != "weights"} for c in candidates],
        "first_order_test": test,
    }
    return dataclasses.replace(cfg, l2=best["l2"], first_order=best["first_order"]), record, best["weights"]


def best_relative(record: dict[str, Any], previous: Mapping[bool, float] | None = None) -> dict[bool, float]:
    """Per ``first_order``, the relative ridge of the lowest held-back loss among the candidates
    of a :func:`search` record (``previous`` values kept for a term that was not tried)."""
    out = dict(previous or {})
    for first_order in (False, True):
        tried = [c for c in record["candidates"] if c["first_order"] == first_order and math.isfinite(c["held_out_loss"])]
        if tried:
            out[first_order] = min(tried, key=lambda c: c["held_out_loss"])["l2_relative"]
    return out
