"""Gradual pruning: pruning events at a rising sparsity interleaved with training.

:class:`GradualPruner` wraps the one-shot :func:`combprune.torch.prune` (any method: magnitude,
CHITA, FALCON, OSSCAR, ...) in a schedule of pruning events (:mod:`.schedules`). Between events
the pruned weights stay exactly zero (:mod:`.masking`). Each event

1. computes its targets from the schedules at the event's position ``t``: the sparsity ``s_t``
   and/or the FLOP budget ``f_t = 1 - r_t`` (``r_t`` the scheduled fraction of FLOPs removed);
2. recomputes the problem at the current weights (per-sample gradients for CHITA/FALCON, layer
   inputs for OSSCAR) from the calibration data and solves it with ``cpt.prune(apply="mask")``;
3. keeps every weight pruned so far pruned (see below), zeroes the optimiser state of the pruned
   entries (or resets it all, ``reset_optimizer=True``, as CHITA does), and records a row of
   :attr:`GradualPruner.history`.

**Pruned weights stay pruned.** ``cpt.prune`` sees the current effective weights, in which the
pruned entries are 0. Magnitude methods never select a zero over a nonzero weight. For the
gradient methods the event runs with an extra forward pre-hook that multiplies each weight by
its current mask, so the per-sample gradient of a pruned entry is 0 as well: in the local model
``1/2 ||b - A w||^2 + ridge/2 ||w - w_bar||^2`` such a coordinate has a zero column of ``A``
and ``w_bar_i = 0``, so its optimal value is 0 on any support and an IHT step never moves it.
The new mask is then intersected with the old one anyway (any revived entry is dropped and
logged: the reached sparsity can only exceed the target).

Under ``torch.distributed`` (world size > 1) rank 0 computes each event and broadcasts the
masks and the values of the pruned layers, so every rank ends each event identical.

A failing event leaves the model (``cpt.prune``'s snapshot) and the optimiser (its
``state_dict``) exactly as before the event and re-raises. See ``docs/gradual_pruning.md``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._calibration import check_device, collect, eval_mode, forward
from ._gradients import batch_loss, default_loss
from .masking import MaskedTraining, apply_masks, base_optimizer, clear_optimizer_state, get_masks, make_permanent, masked_parameters, zero_pruned
from ._select import select_parameters
from .prune import PruningError, _Snapshot, require_one_kept
from .pruner import Pruner
from .report import PruneReport
from .schedules import Schedule

logger = logging.getLogger(__name__)

__all__ = ["GradualPruner", "EventRecord"]

_UNITS = ("step", "epoch")
_STATE_VERSION = 1


@dataclass
class EventRecord:
    """One pruning event: where, the targets, what was reached, the calibration loss, the cost."""

    position: int
    unit: str
    sparsity_target: float | None
    flop_budget_target: float | None
    sparsity: float
    flop_fraction: float
    loss_before: float | None
    loss_after: float | None
    method: str
    solver: str
    revived: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _freeze_pruned(model: nn.Module) -> list[Any]:
    """Forward pre-hooks ``weight <- weight * mask`` (masks fixed now) on every masked module.

    Registered after torch's pruning hook, they keep pruned entries at zero even when
    ``per_sample_gradients`` substitutes ``weight_mask = 1``, so their gradients are zero.
    """
    handles = []
    for name, _, mask in masked_parameters(model):
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        fixed = mask.detach().clone()

        def hook(mod: nn.Module, args: Any, pname: str = pname, fixed: torch.Tensor = fixed) -> None:
            setattr(mod, pname, getattr(mod, pname) * fixed)

        handles.append(module.register_forward_pre_hook(hook))
    return handles


def _world_size() -> int:
    """Number of processes of the default ``torch.distributed`` group (1 when not initialised)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _check_flop_budget(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
        raise ValueError(f"{name}: must lie in (0, 1] (fraction of the FLOPs kept), got {value!r}")
    return v


class GradualPruner:
    """Prune ``model`` gradually during training with any method of :func:`combprune.torch.prune`.

    Parameters
    ----------
    model : the network being trained (pruned in place, torch mask convention).
    calibration : re-iterable calibration data (a DataLoader, a list of batches, a tensor or an
        ``(X, y)`` pair); every event reads it again (at the current weights).
    method : any method of :func:`combprune.torch.prune` (``"magnitude"``, ``"chita"``,
        ``"falcon"``, ``"osscar"``, ... or a registered solver name).
    sparsity : final fraction of the prunable weights removed, in ``[0, 1)``.
    flop_budget : final fraction of the model's FLOPs kept, in ``(0, 1]``. At least one of the two.
    schedule : ``"cubic"`` (default), ``"linear"``, ``"exponential"``, ``"constant"`` or an
        explicit sequence of sparsities, one per event (:class:`~.schedules.Schedule`).
    flop_schedule : the same for the FLOP budget (fractions kept, non-increasing, when a
        sequence); default: the kind of ``schedule`` (``"cubic"`` when that is a sequence).
    initial_sparsity, initial_flop_budget : the schedules' starting values ``s_0`` (default 0)
        and ``f_0`` (default 1). CHITA's code starts at 0.5.
    start, end, every : events at positions ``start, start + every, ...`` and at ``end``.
    unit : ``"step"`` (positions count :meth:`step` calls, i.e. optimiser steps) or
        ``"epoch"`` (positions count :meth:`epoch_end` calls).
    optimizer : the training optimiser: its state of pruned entries is cleared at every event
        and :class:`~.masking.MaskedTraining` hooks keep pruned entries exactly zero.
    reset_optimizer : drop the whole optimiser state at every event (CHITA resets momentum).
    step_with_optimizer : count a step automatically after every ``optimizer.step()`` (the
        optimiser-wrapper path; then do not call :meth:`step`).
    progress : tqdm bar over the events and ``cpt.prune``'s bars; ``False`` silences them.
    stage_schedule : passed to ``cpt.prune`` as its ``schedule`` (stages of ``chita++``).
    **prune_options : any other option of :func:`combprune.torch.prune` (``targets``,
        ``ignore``, ``n_samples``, ``l2``, ``stages``, ``loss_fn``, ``structured``,
        ``solver_options``, ...), used at every event. ``apply`` is not one: events mask,
        :meth:`finalize` makes the result permanent.
    """

    def __init__(
        self,
        model: nn.Module,
        calibration: Any,
        *,
        method: str,
        sparsity: float | None = None,
        flop_budget: float | None = None,
        schedule: str | Sequence[float] = "cubic",
        flop_schedule: str | Sequence[float] | None = None,
        initial_sparsity: float = 0.0,
        initial_flop_budget: float = 1.0,
        start: int,
        end: int,
        every: int,
        unit: str = "step",
        optimizer: torch.optim.Optimizer | None = None,
        reset_optimizer: bool = False,
        step_with_optimizer: bool = False,
        progress: bool = True,
        stage_schedule: Any = None,
        **prune_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if unit not in _UNITS:
            raise ValueError(f"unit: expected one of {_UNITS}, got {unit!r}")
        if "apply" in prune_options:
            raise ValueError("apply: events always mask; choose the final form with finalize(apply=...)")
        if sparsity is None and flop_budget is None and isinstance(schedule, str):
            raise ValueError("sparsity: give a final sparsity and/or a flop_budget")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if step_with_optimizer and optimizer is None:
            raise ValueError("step_with_optimizer: needs the optimizer")
        self.sparsity_schedule: Schedule | None = None
        if sparsity is not None or not isinstance(schedule, str):
            self.sparsity_schedule = Schedule.build(schedule, sparsity, initial=initial_sparsity, start=start, end=end, every=every)
        self.flop_schedule: Schedule | None = None
        if flop_budget is not None:
            final = 1.0 - _check_flop_budget("flop_budget", flop_budget)
            initial = 1.0 - _check_flop_budget("initial_flop_budget", initial_flop_budget)
            if initial > final:
                raise ValueError(f"initial_flop_budget: the FLOP budget must fall, but {initial_flop_budget} is below the final {flop_budget}")
            kind = flop_schedule if flop_schedule is not None else (schedule if isinstance(schedule, str) else "cubic")
            if not isinstance(kind, str):
                kind = [1.0 - _check_flop_budget("flop_schedule", v) for v in kind]
            self.flop_schedule = Schedule.build(kind, final, initial=initial, start=start, end=end, every=every, name="flop_budget")
        if hasattr(calibration, "__next__"):
            raise TypeError("calibration: an iterator is read once; give a re-iterable source (a DataLoader, a list of batches, a tensor or an (X, y) pair)")
        self.device = check_device(model, prune_options.get("device"))
        self.loss_fn: Callable[[Any, Any], torch.Tensor] = prune_options.get("loss_fn") or default_loss
        self.n_samples = prune_options.get("n_samples", 1000)
        collect(calibration, 1, self.device)  # raises "calibration: ... empty" early
        if stage_schedule is not None:
            prune_options["schedule"] = stage_schedule
        # Every option of the one-shot method is validated once, here, at the final budgets;
        # each event then prunes with the same configuration at its own budgets.
        self.pruner = Pruner(
            method, sparsity=None if self.sparsity_schedule is None else self.sparsity_schedule.final,
            flop_budget=flop_budget, apply="mask", progress=bool(progress), **prune_options,
        )
        self.spec = self.pruner.config.spec
        final = self.pruner.config.sparsity
        if final is not None and self.spec.kind in ("gradient", "magnitude"):  # one global count: the last event keeps one weight
            require_one_kept(final, sum(q.numel for q in select_parameters(model, self.pruner.config.targets, self.pruner.config.ignore)))
        self.model, self.calibration, self.method = model, calibration, method
        self.unit, self.progress, self.reset_optimizer = unit, bool(progress), bool(reset_optimizer)
        self.prune_options = prune_options
        self.optimizer = optimizer
        self.position = 0
        self.last_event = -1
        self.history: list[EventRecord] = []
        self.reports: list[PruneReport] = []
        self._hooks = MaskedTraining(model, optimizer) if optimizer is not None else None
        self._auto = base_optimizer(optimizer).register_step_post_hook(lambda opt, args, kwargs: self.step()) if step_with_optimizer else None
        self._bar = tqdm(total=len(self.events), desc="pruning events", unit="event", disable=not self.progress, leave=False)

    # Schedule ----------------------------------------------------------------------------------
    @property
    def _schedule(self) -> Schedule:
        return self.sparsity_schedule if self.sparsity_schedule is not None else self.flop_schedule

    @property
    def events(self) -> tuple[int, ...]:
        """Positions of the pruning events."""
        return self._schedule.events

    def targets(self, t: int) -> tuple[float | None, float | None]:
        """``(sparsity, flop_budget)`` scheduled at position ``t`` (``None`` when not pruned for)."""
        s = self.sparsity_schedule(t) if self.sparsity_schedule is not None else None
        f = 1.0 - self.flop_schedule(t) if self.flop_schedule is not None else None
        return s, f

    # Training-loop interface -----------------------------------------------------------------------
    def step(self) -> EventRecord | None:
        """Call after every ``optimizer.step()``: keeps pruned weights at zero and, with
        ``unit="step"``, counts the step and runs the event that is due (if any)."""
        if self._hooks is None:
            zero_pruned(self.model)
        if self.unit != "step":
            return None
        return self._advance(self.position + 1)

    def epoch_end(self) -> EventRecord | None:
        """Call at the end of every epoch when ``unit="epoch"``: counts it, runs the due event."""
        if self.unit != "epoch":
            raise RuntimeError("epoch_end: this pruner counts optimiser steps (unit='step'); call step() after optimizer.step()")
        return self._advance(self.position + 1)

    def _advance(self, position: int) -> EventRecord | None:
        """Move to ``position``; run the latest event at or before it not run yet (earlier ones
        that were skipped over, e.g. ``start=0``, are superseded by it)."""
        self.position = int(position)
        due = [e for e in self.events if self.last_event < e <= self.position]
        if not due:
            return None
        record = self._event(due[-1])
        self.last_event = due[-1]
        self._bar.update(len(due))
        if self.last_event == self.events[-1]:
            self._bar.close()
        return record

    @property
    def done(self) -> bool:
        """True once the last event (at ``end``) has run."""
        return self.last_event >= self.events[-1]

    # One event ---------------------------------------------------------------------------------------
    def calibration_loss(self) -> float | None:
        """Mean ``loss_fn`` over the calibration samples at the current weights (eval mode);
        ``None`` when the batches have no targets and no ``loss_fn`` was given (e.g. OSSCAR on
        inputs alone)."""
        batches = collect(self.calibration, self.n_samples, self.device)
        if self.prune_options.get("loss_fn") is None and any(b.targets is None for b in batches):
            return None
        total, n = 0.0, 0
        with eval_mode(self.model), torch.no_grad():
            for b in batches:
                total += float(batch_loss(self.loss_fn, forward(self.model, b.inputs), b.targets, b.size)) * b.size
                n += b.size
        return total / n

    def _event(self, t: int) -> EventRecord | None:
        sparsity, flop_budget = self.targets(t)
        if (sparsity is None or sparsity <= 0.0) and (flop_budget is None or flop_budget >= 1.0):
            logger.info("gradual pruning: event at %s %d has nothing to prune (sparsity 0, all FLOPs)", self.unit, t)
            return None
        if _world_size() > 1:
            return self._event_distributed(t, sparsity, flop_budget)
        return self._event_local(t, sparsity, flop_budget)

    def _event_distributed(self, t: int, sparsity: float | None, flop_budget: float | None) -> EventRecord:
        """Rank 0 runs the event; its status, masks, weight values and record are broadcast.

        Every rank ends the event with rank 0's masks and pruned-layer weights (bit-identical),
        and clears its optimiser state the same way; a failure on rank 0 raises on every rank
        with the model unchanged.
        """
        import torch.distributed as dist

        rank = dist.get_rank()
        status: list[Any] = [None]
        record = None
        if rank == 0:
            try:
                record = self._event_local(t, sparsity, flop_budget)
                status = [("ok", record.to_dict(), {n: m.cpu() for n, m in get_masks(self.model).items()})]
            except BaseException as exc:
                dist.broadcast_object_list([("error", f"{type(exc).__name__}: {exc}", None)], src=0)
                raise
        dist.broadcast_object_list(status, src=0)
        kind, row, masks = status[0]
        if kind == "error":
            raise PruningError(f"gradual pruning: the event at {self.unit} {t} failed on rank 0 ({row}); model unchanged")
        if rank != 0:
            apply_masks(self.model, masks)
        with torch.no_grad():
            for _, orig, _ in sorted(masked_parameters(self.model), key=lambda item: item[0]):
                dist.broadcast(orig.data, src=0)
        if rank != 0:
            zero_pruned(self.model)
            if self.optimizer is not None:
                clear_optimizer_state(self.optimizer, self.model, reset=self.reset_optimizer)
            record = EventRecord(**row)
            self.history.append(record)
        return record

    def _event_local(self, t: int, sparsity: float | None, flop_budget: float | None) -> EventRecord:
        t0 = time.perf_counter()
        snapshot = _Snapshot(self.model)
        opt_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        old = get_masks(self.model)
        try:
            loss_before = self.calibration_loss()
            handles = _freeze_pruned(self.model)
            try:
                report = self.pruner.with_budget(sparsity=sparsity, flop_budget=flop_budget).prune(self.model, self.calibration)
            finally:
                for h in handles:
                    h.remove()
            new = get_masks(self.model)
            revived = sum(int((new[n] & ~m).sum()) for n, m in old.items() if n in new)
            if revived:
                logger.warning("gradual pruning: %d weights pruned earlier were selected again at %s %d; kept at zero", revived, self.unit, t)
            apply_masks(self.model, {n: new[n] & old[n] if n in old else new[n] for n in new})
            if self.optimizer is not None:
                clear_optimizer_state(self.optimizer, self.model, reset=self.reset_optimizer)
            loss_after = self.calibration_loss()
        except BaseException:
            snapshot.restore()
            if opt_state is not None:
                self.optimizer.load_state_dict(opt_state)
            logger.warning("gradual pruning: the event at %s %d failed; model and optimiser restored", self.unit, t)
            raise
        kept = sum(int(m.sum()) for m in get_masks(self.model).values())
        total = sum(m.numel() for m in get_masks(self.model).values())
        record = EventRecord(
            position=t, unit=self.unit, sparsity_target=sparsity, flop_budget_target=flop_budget,
            sparsity=1.0 - kept / total if revived else report.sparsity, flop_fraction=report.flop_fraction,
            loss_before=loss_before, loss_after=loss_after, method=self.method, solver=str(report.info.get("solver") or report.method),
            revived=revived, time=time.perf_counter() - t0,
        )
        self.history.append(record)
        self.reports.append(report)
        logger.info(
            "gradual pruning: %s %d -> sparsity %.4f (target %s), FLOPs kept %.4f, calibration loss %s -> %s, %.2fs",
            self.unit, t, record.sparsity, sparsity, record.flop_fraction,
            *("-" if v is None else f"{v:.4g}" for v in (loss_before, loss_after)), record.time,
        )
        return record

    # Checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Schedule position, last event, masks and history (save it with the model/optimiser)."""
        return {
            "version": _STATE_VERSION,
            "position": self.position,
            "last_event": self.last_event,
            "schedule": self._schedule.to_dict(),
            "masks": {n: m.cpu() for n, m in get_masks(self.model).items()},
            "history": [r.to_dict() for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` onto a model built like the original one.

        Installs the masks (so the model then has ``weight_orig`` / ``weight_mask`` and accepts
        the saved model ``state_dict``): load the pruner's state first, then the model's, then
        the optimiser's.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"state: not a GradualPruner state_dict (version {_STATE_VERSION})")
        if state["schedule"] != self._schedule.to_dict():
            raise ValueError(f"state: saved for the schedule {state['schedule']}, this pruner has {self._schedule.to_dict()}")
        apply_masks(self.model, state["masks"])
        self.position, self.last_event = int(state["position"]), int(state["last_event"])
        self.history = [EventRecord(**r) for r in state["history"]]
        self._bar.reset(total=len(self.events))
        self._bar.update(sum(1 for e in self.events if e <= self.last_event))

    # End of training -----------------------------------------------------------------------------------
    def finalize(self, apply: str | None = None) -> nn.Module:
        """Make the pruning permanent and detach the pruner's hooks; returns the model.

        ``apply="permanent"`` (default for unstructured methods): ``weight = weight_orig * mask``
        becomes a plain parameter (:func:`torch.nn.utils.prune.remove`, same Parameter object).
        ``apply="physical"`` (default for structured methods): the removed neurons / channels /
        heads are cut out (:func:`combprune.torch.physical.remove_pruned`; new, smaller
        parameters: build a new optimiser to train further).
        """
        if apply is None:
            apply = "physical" if self.spec.kind == "structured" else "permanent"
        if apply not in ("permanent", "physical"):
            raise ValueError(f"apply: expected 'permanent' or 'physical', got {apply!r}")
        if apply == "physical":
            if self.spec.kind != "structured" or not self.reports:
                raise ValueError("apply: 'physical' needs a structured method (osscar, group-magnitude) and at least one event")
            from .physical import remove_pruned

            remove_pruned(self.model, self._structured_plan())
        make_permanent(self.model)
        self.detach()
        self._bar.close()
        return self.model

    def _structured_plan(self) -> Any:
        """The last event's structured plan with the groups kept read off the current masks."""
        from .structured import StructuredPlan, StructuredUnit

        saved = self.reports[-1].info["structured_plan"]
        units = [StructuredUnit(**dict(u, producers=tuple(u["producers"]), norms=tuple(u["norms"]))) for u in saved["units"]]
        masks = get_masks(self.model)
        keep = {}
        for u in units:
            if u.consumer not in saved["keep"]:
                continue
            cols = masks[f"{u.consumer}.weight"].transpose(0, 1).reshape(u.n_groups, -1)
            keep[u.consumer] = cols.any(dim=1).cpu().numpy()
        example = collect(self.calibration, 8, self.device)[0].inputs
        return StructuredPlan(units=units, keep=keep, example=example)

    def detach(self) -> None:
        """Remove the optimiser hooks (masks stay on the model; events still run on step())."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        if self._auto is not None:
            self._auto.remove()
            self._auto = None

    # Hugging Face -----------------------------------------------------------------------------------------
    def hf_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` driving this pruner from ``Trainer``.

        Positions follow ``state.global_step`` (``unit="step"``) or ``state.epoch``
        (``unit="epoch"``), so a Trainer resumed from a checkpoint stays on schedule; the
        Trainer's optimiser gets the masking hooks at ``on_train_begin``; the pruner's
        ``state_dict`` is saved next to each Trainer checkpoint as ``combprune_gradual.pt``.
        Needs the ``hf`` extra (``pip install combprune[hf]``).
        """
        try:
            from transformers import TrainerCallback
        except ImportError as exc:  # pragma: no cover - exercised only without transformers
            raise ImportError("hf_callback needs transformers: pip install combprune[hf]") from exc
        pruner = self

        class GradualPruningCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
                if optimizer is not None and pruner.optimizer is not optimizer:
                    pruner.detach()
                    pruner.optimizer = optimizer
                    pruner._hooks = MaskedTraining(pruner.model, optimizer)

            def on_step_end(self, args, state, control, **kwargs):
                if pruner._hooks is None:
                    zero_pruned(pruner.model)
                if pruner.unit == "step":
                    pruner._advance(state.global_step)

            def on_epoch_end(self, args, state, control, **kwargs):
                if pruner.unit == "epoch":
                    pruner._advance(int(round(state.epoch)))

            def on_save(self, args, state, control, **kwargs):
                import os

                folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
                if os.path.isdir(folder):
                    torch.save(pruner.state_dict(), os.path.join(folder, "combprune_gradual.pt"))

        return GradualPruningCallback()
