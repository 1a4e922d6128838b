"""``Pruner``: a pruning method with its budgets and options, validated once, applied to models.

>>> import combprune.torch as cpt
>>> pruner = cpt.Pruner("chita++", sparsity=0.9, l2=1e-2)        # doctest: +SKIP
>>> report = pruner.prune(model, loader)                         # doctest: +SKIP
>>> report = pruner.with_budget(sparsity=0.95).prune(model, loader)  # doctest: +SKIP

``combprune.torch.prune(model, calibration, **config)`` is ``Pruner(**config).prune(model,
calibration)``. The conventions (sparsity = fraction removed, FLOPs = 2 x MACs) are those of
``docs/torch_adapter.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._autotune import AUTO_STAGES, DEFAULT_HOLDOUT, DEFAULT_L2_GRID
from ._fisher import FISHER_KINDS
from ._structured_ridge import check_ridge
from .methods import Method, resolve_method
from .prune import run
from .report import PruneReport
from .sequential import prune_sequential

__all__ = ["Pruner", "PruneConfig", "prune"]

APPLY_MODES = ("mask", "permanent", "physical")
SCHEDULES = ("poly", "exp", "linear", "const")
DEFAULT_STAGES = 10
#: Most polishing stages at the final budget (multi-stage methods, per-stage automatic choice).
DEFAULT_POLISH_STAGES = 5


def _fraction(name: str, value: Any, *, low_open: bool, high_open: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (math.isfinite(v) and lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name}: must lie in {interval}, got {value!r}")
    return v


def _sparsity_sequence(schedule: Any, sparsity: float | None) -> tuple[float, ...]:
    try:
        seq = tuple(float(v) for v in schedule)
    except (TypeError, ValueError):
        raise TypeError(f"schedule: expected a schedule name or a sequence of sparsities, got {schedule!r}") from None
    if not seq:
        raise ValueError("schedule: empty sequence")
    if any(not (0.0 <= v < 1.0) for v in seq) or any(b < a for a, b in zip(seq, seq[1:])):
        raise ValueError(f"schedule: sparsities must be non-decreasing in [0, 1), got {seq}")
    if sparsity is not None and abs(seq[-1] - sparsity) > 1e-12:
        raise ValueError(f"schedule: the last sparsity {seq[-1]} must equal sparsity={sparsity}")
    return seq


def _default_first_order(first_order: bool | str | None, l2: Any, stages: int) -> bool | str | None:
    """``first_order`` as given; its default (``None``) stays automatic only where it is chosen
    per stage (a multi-stage method with the automatic ``l2``), else it means ``False``.

    On the validation splits of ``benchmarks/auto_l2.py`` the held-back samples never kept the
    term for a one-shot solve, while the multi-stage methods keep it in their last, sparsest
    stages (``docs/torch_adapter.md``, "Automatic l2").
    """
    if first_order is not None:
        return first_order
    return None if stages > 1 and (l2 is None or l2 == "auto") else False


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _grid(values: Any) -> tuple[float, ...]:
    try:
        grid = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"l2_grid: expected a sequence of positive numbers, got {values!r}") from None
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise ValueError(f"l2_grid: expected a non-empty sequence of positive finite numbers, got {values!r}")
    return grid


@dataclass(frozen=True)
class PruneConfig:
    """A validated pruning configuration (build it with :meth:`PruneConfig.build`).

    The fields are the keyword arguments of :func:`combprune.torch.prune`, documented there;
    ``spec`` is the method's row of :data:`combprune.torch.METHODS`.
    """

    method: str
    spec: Method
    sparsity: float | None
    flop_budget: float | None
    targets: Any = None
    ignore: Any = None
    n_samples: int | None = 1000
    stages: int = 1
    schedule: str | tuple[float, ...] = "poly"
    base_sparsity: float = 0.0
    structured: bool = False
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    fisher: str | None = None
    distill: bool | None = None
    l2: float | str | None = None
    first_order: bool | str | None = None
    holdout: float = DEFAULT_HOLDOUT
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    auto_stages: str = "per-stage"
    fresh_samples: bool = False
    polish_stages: int = DEFAULT_POLISH_STAGES
    solver: str | None = None
    solver_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    time_limit: float | None = None
    seed: int | None = 0
    apply: str = "mask"
    max_memory: int = 2 * 1024**3
    chunk_size: int = 128
    device: torch.device | str | None = None
    progress: bool = True
    pairs: Any = None
    gqa: str = "kv"
    pattern: str | None = None
    granularity: str = "layer"
    blocks: Any = None
    ridge: float | str = 1e-2
    offload: str | None = None
    offload_dir: str | None = None
    sequential: bool | None = None

    @property
    def runs_sequentially(self) -> bool:
        """Whether the sequential engine runs this configuration: always for the layer-wise
        methods; for the structured ones with ``sequential=True`` or when ``blocks`` or
        ``offload`` is given (``sequential=None``)."""
        if self.spec.kind == "layerwise":
            return True
        if self.sequential is None:
            return self.spec.kind == "structured" and (self.blocks is not None or self.offload is not None)
        return self.sequential

    @property
    def solver_name(self) -> str | None:
        """The solver actually run: the ``solver`` override or the method's own."""
        return self.solver or self.spec.solver

    @classmethod
    def build(cls, method: str = "chita", **kwargs: Any) -> "PruneConfig":
        """Validate every argument once (errors name the argument) and return the config.

        Longer than 80 lines on purpose: one flat list of checks, one per argument, read top
        to bottom like the parameter list it validates; splitting it would scatter the
        cross-argument rules (method kind against budgets, sequential, gqa, pattern).
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"method", "spec"}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"{unknown[0]}: unknown option of combprune.torch.Pruner; options are {', '.join(sorted(names))}")
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default) for f in dataclasses.fields(cls) if f.name in names}
        defaults.update(sparsity=None, flop_budget=None, stages=None)
        a = {**defaults, **kwargs}
        if not isinstance(a["structured"], bool):
            raise TypeError(f"structured: expected True or False, got {a['structured']!r}")
        spec = resolve_method(method, a["structured"])
        if isinstance(a["sparsity"], Mapping) and spec.kind == "structured":  # per kind / consumer fractions
            from .structured import _check_sparsity

            sparsity = MappingProxyType(_check_sparsity(a["sparsity"]))
        else:
            sparsity = _fraction("sparsity", a["sparsity"], low_open=False, high_open=True)
        flop_budget = _fraction("flop_budget", a["flop_budget"], low_open=True, high_open=False)
        if sparsity is None and flop_budget is None and not (spec.kind == "layerwise" and a["pattern"] is not None):
            raise ValueError("sparsity: give sparsity (fraction removed) and/or flop_budget (fraction of FLOPs kept)")
        if spec.kind == "layerwise" and flop_budget is not None:
            raise ValueError("flop_budget: the layer-wise methods take sparsity or pattern='n:m'")
        if spec.kind == "structured" and flop_budget is not None and isinstance(sparsity, Mapping):
            raise ValueError("flop_budget: with a FLOP budget the structured methods take one sparsity fraction (or none), not a dict per kind / layer")
        if spec.kind == "structured" and flop_budget is not None and (a["sequential"] or (a["sequential"] is None and (a["blocks"] is not None or a["offload"] is not None))):
            raise ValueError("flop_budget: the sequential engine (sequential=True, blocks, offload) takes sparsity only; "
                             "run the structured method on the whole model (sequential=False) for a FLOP budget")
        if a["pairs"] is not None and spec.kind != "structured":
            raise ValueError("pairs: producer/consumer pairs declare structured units; they need a structured method ('osscar', 'group-magnitude')")
        if a["gqa"] not in ("kv", "query"):
            raise ValueError(f"gqa: expected 'kv' (KV heads with their query heads) or 'query' (query heads evenly per KV head), got {a['gqa']!r}")
        if a["gqa"] != "kv" and spec.kind != "structured":
            raise ValueError("gqa: grouped-query attention heads are pruned by the structured methods ('osscar', 'group-magnitude')")
        if a["sequential"] is not None and not isinstance(a["sequential"], bool):
            raise TypeError(f"sequential: expected True, False or None (automatic), got {a['sequential']!r}")
        if a["sequential"] is False and spec.kind == "layerwise":
            raise ValueError("sequential: the layer-wise methods always run block by block; leave sequential at None or True")
        if a["sequential"] and spec.kind not in ("layerwise", "structured"):
            raise ValueError(f"sequential: the sequential engine runs the layer-wise and structured methods, not {method!r}")
        if a["pattern"] is not None and spec.kind != "layerwise":
            raise ValueError("pattern: only the layer-wise methods ('layerwise', 'sparsegpt', 'wanda') take it")
        block_only = [n for n in ("blocks", "offload", "offload_dir") if a[n] is not None]
        if block_only and (spec.kind not in ("layerwise", "structured") or a["sequential"] is False):
            raise ValueError(f"{block_only[0]}: only the sequential engine (layer-wise methods, structured methods with "
                             "sequential=True) takes it")
        if spec.kind == "layerwise" and a["apply"] != "mask":
            raise ValueError("apply: the layer-wise methods write the pruned weights in place (zeros included); leave apply at its default")
        if a["apply"] not in APPLY_MODES:
            raise ValueError(f"apply: expected one of {', '.join(APPLY_MODES)}, got {a['apply']!r}")
        a["ridge"] = check_ridge(a["ridge"])
        if a["ridge"] == "auto" and spec.kind != "structured":
            raise ValueError("ridge: 'auto' is offered by the structured methods ('osscar', ...); the layer-wise methods take a number")
        if a["apply"] == "physical" and spec.kind != "structured":
            raise ValueError("apply: 'physical' removal needs a structured method (structured=True, 'osscar' or 'group-magnitude')")
        schedule, stages = a["schedule"], a["stages"]
        if isinstance(schedule, str):
            if schedule not in SCHEDULES:
                raise ValueError(f"schedule: expected one of {', '.join(map(repr, SCHEDULES))} or a sequence of sparsities, got {schedule!r}")
        else:
            schedule = _sparsity_sequence(schedule, sparsity)
            if stages is not None and stages != len(schedule):
                raise ValueError(f"stages: {stages} given but the schedule has {len(schedule)} stages")
            stages = len(schedule)
        stages = _positive_int("stages", DEFAULT_STAGES if stages is None and spec.multistage else (1 if stages is None else stages))
        base_sparsity = _fraction("base_sparsity", a["base_sparsity"], low_open=False, high_open=True)
        l2 = a["l2"]
        if l2 is not None and l2 != "auto" and (isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0):
            raise ValueError(f"l2: expected 'auto' or a finite number >= 0, got {l2!r}")
        if not isinstance(a["progress"], bool):
            raise TypeError(f"progress: expected True or False, got {a['progress']!r}")
        if a["first_order"] is not None and a["first_order"] != "auto" and not isinstance(a["first_order"], bool):
            raise TypeError(f"first_order: expected True, False or 'auto', got {a['first_order']!r}")
        holdout = _fraction("holdout", a["holdout"], low_open=True, high_open=True)
        if holdout is None or holdout > 0.5:
            raise ValueError(f"holdout: expected a fraction of the calibration samples in (0, 0.5], got {a['holdout']!r}")
        l2_grid = _grid(a["l2_grid"])
        if a["auto_stages"] not in AUTO_STAGES:
            raise ValueError(f"auto_stages: expected one of {', '.join(map(repr, AUTO_STAGES))}, got {a['auto_stages']!r}")
        if not isinstance(a["fresh_samples"], bool):
            raise TypeError(f"fresh_samples: expected True or False, got {a['fresh_samples']!r}")
        if a["fresh_samples"] and a["n_samples"] is None:
            raise ValueError("fresh_samples: fresh subsets per stage need a finite n_samples (the size of each subset)")
        polish = a["polish_stages"]
        if isinstance(polish, bool) or not isinstance(polish, int) or polish < 0:
            raise ValueError(f"polish_stages: expected a number of stages >= 0, got {polish!r}")
        options = a["solver_options"]
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise TypeError(f"solver_options: expected a dict, got {type(options).__name__}")
        if a["fisher"] is not None and a["fisher"] not in FISHER_KINDS:
            raise ValueError(f"fisher: expected one of {', '.join(map(repr, FISHER_KINDS))} or None (automatic), got {a['fisher']!r}")
        if a["fisher"] not in (None, "empirical") and spec.kind != "gradient":
            raise ValueError(f"fisher: only the gradient-based methods (chita, chita++, falcon, ...) build a Fisher, not {method!r}")
        if a["distill"] is not None and not isinstance(a["distill"], bool):
            raise TypeError(f"distill: expected True, False or None (automatic), got {a['distill']!r}")
        if a["distill"] and spec.kind != "gradient":
            raise ValueError(f"distill: only the gradient-based methods (chita, chita++, falcon, ...) build a local model to distil into, not {method!r}")
        if a["distill"] and a["fisher"] == "empirical":
            raise ValueError("distill: the empirical Fisher's rows are the per-sample gradients, all zero against the unpruned model's "
                             "own predictions; distill=True needs fisher='true' (or None)")
        if a["loss_fn"] is not None and not callable(a["loss_fn"]):
            raise TypeError(f"loss_fn: expected a callable loss_fn(outputs, targets), got {a['loss_fn']!r}")
        if a["solver"] is not None:
            resolve_method(a["solver"], spec.kind == "structured")  # a registered solver, error names it
        time_limit = a["time_limit"]
        if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0 or not math.isfinite(time_limit)):
            raise ValueError(f"time_limit: expected a positive finite number of seconds or None, got {time_limit!r}")
        return cls(
            method=method, spec=spec, sparsity=sparsity, flop_budget=flop_budget, targets=a["targets"], ignore=a["ignore"],
            n_samples=_positive_int("n_samples", a["n_samples"], allow_none=True), stages=stages, schedule=schedule,
            base_sparsity=base_sparsity, structured=a["structured"], loss_fn=a["loss_fn"], fisher=a["fisher"], distill=a["distill"], l2=l2 if l2 is None or l2 == "auto" else float(l2),
            first_order=_default_first_order(a["first_order"], l2, stages), holdout=holdout, l2_grid=l2_grid, auto_stages=a["auto_stages"], fresh_samples=a["fresh_samples"],
            polish_stages=polish,
            solver=a["solver"], solver_options=MappingProxyType(dict(options)), time_limit=time_limit, seed=a["seed"], apply=a["apply"],
            max_memory=_positive_int("max_memory", a["max_memory"]), chunk_size=_positive_int("chunk_size", a["chunk_size"]),
            device=a["device"], progress=a["progress"], gqa=a["gqa"],
            pairs=None if a["pairs"] is None else tuple(tuple(p) if not isinstance(p[-1], (list, tuple)) else (*p[:-1], tuple(p[-1])) for p in a["pairs"]),
            pattern=a["pattern"], granularity=a["granularity"], blocks=a["blocks"], ridge=a["ridge"], offload=a["offload"],
            offload_dir=a["offload_dir"], sequential=a["sequential"],
        )

    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this configuration (``method`` included)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        out["solver_options"] = dict(self.solver_options)
        return out


class Pruner:
    """A pruning method with budgets and options, validated once; ``prune(model, calibration)``.

    Parameters
    ----------
    method : a name of :data:`combprune.torch.METHODS` or of a registered ``L0Regression`` /
        ``FlopNnzILP`` solver.
    sparsity, flop_budget, targets, ignore, **options : as for :func:`combprune.torch.prune`.

    The object is immutable; :meth:`with_budget` returns a copy with other budgets (gradual
    pruning re-prunes at rising sparsity with one configuration).
    """

    def __init__(self, method: str = "chita", *, sparsity: float | None = None, flop_budget: float | None = None, targets: Any = None, ignore: Any = None, **options: Any) -> None:
        self.config = PruneConfig.build(method, sparsity=sparsity, flop_budget=flop_budget, targets=targets, ignore=ignore, **options)

    @classmethod
    def from_config(cls, config: PruneConfig) -> "Pruner":
        obj = cls.__new__(cls)
        obj.config = config
        return obj

    @property
    def method(self) -> str:
        return self.config.method

    def prune(self, model: nn.Module, calibration: Any) -> PruneReport:
        """Prune ``model`` in place; the model is restored exactly when anything fails.

        Returns a :class:`PruneReport`; when the sequential engine ran
        (:func:`combprune.torch.prune_sequential`: the layer-wise methods, and the structured
        ones with ``sequential=True``) it has per-block rows, the peak memory and the relative
        reconstruction error of every layer.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        c = self.config
        if c.runs_sequentially:
            structured = c.spec.kind == "structured"
            return prune_sequential(
                model, calibration, method=c.solver_name, sparsity=c.sparsity, pattern=c.pattern, granularity=c.granularity,
                blocks=c.blocks, ridge=c.ridge, device=c.device, n_samples=c.n_samples, time_limit=c.time_limit,
                solver_options=dict(c.solver_options), offload=c.offload, offload_dir=c.offload_dir, progress=c.progress,
                targets=c.targets, ignore=c.ignore, **(dict(pairs=c.pairs, apply=c.apply, gqa=c.gqa) if structured else {}),
            )
        return run(model, calibration, c)

    def with_budget(self, *, sparsity: float | None = None, flop_budget: float | None = None) -> "Pruner":
        """A copy of this pruner with other budgets (validated).

        An explicit sequence ``schedule`` ends at the old ``sparsity``, so the copy uses the
        default ``"poly"`` schedule (with the default number of stages) instead.
        """
        opts = self.config.options()
        opts.update(sparsity=sparsity, flop_budget=flop_budget)
        if not isinstance(opts["schedule"], str):
            opts["schedule"], opts["stages"] = "poly", None
        method = opts.pop("method")
        return Pruner.from_config(PruneConfig.build(method, **opts))

    def get_params(self) -> dict[str, Any]:
        """The configuration as keyword arguments (scikit-learn style)."""
        return self.config.options()

    def __repr__(self) -> str:
        c = self.config
        budgets = ", ".join(f"{k}={v!r}" for k, v in (("sparsity", c.sparsity), ("flop_budget", c.flop_budget)) if v is not None)
        return f"Pruner({c.method!r}, {budgets})"


def prune(
    model: nn.Module,
    calibration: Any,
    *,
    method: str = "chita",
    sparsity: float | None = None,
    flop_budget: float | None = None,
    targets: Any = None,
    ignore: Any = None,
    n_samples: int | None = 1000,
    stages: int | None = None,
    schedule: str | Sequence[float] = "poly",
    base_sparsity: float = 0.0,
    structured: bool = False,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    fisher: str | None = None,
    distill: bool | None = None,
    l2: float | str | None = None,
    first_order: bool | str | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    auto_stages: str = "per-stage",
    fresh_samples: bool = False,
    polish_stages: int = DEFAULT_POLISH_STAGES,
    solver: str | None = None,
    solver_options: dict[str, Any] | None = None,
    time_limit: float | None = None,
    seed: int | None = 0,
    apply: str = "mask",
    max_memory: int = 2 * 1024**3,
    chunk_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
    pairs: Sequence[Sequence[str]] | None = None,
    gqa: str = "kv",
    pattern: str | None = None,
    granularity: str = "layer",
    blocks: Any = None,
    ridge: float | str = 1e-2,
    offload: str | None = None,
    offload_dir: str | None = None,
    sequential: bool | None = None,
) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport` (``Pruner(...).prune(...)``).

    Parameters
    ----------
    model : the network (any ``nn.Module``), on one device.
    calibration : a DataLoader or an iterable of ``(inputs, targets)`` batches (inputs alone for
        the layer-wise structured methods, or with a ``loss_fn`` that ignores targets), or one
        tensor / one ``(X, y)`` pair; moved batch by batch to the model's device.
    method : ``"magnitude"``, ``"flop-magnitude"``, ``"chita"``, ``"chita++"``, ``"falcon"``,
        ``"falcon++"``, ``"osscar"``, ``"group-magnitude"``, the layer-wise ``"layerwise"``,
        ``"sparsegpt"``, ``"wanda"``, or the name of any registered ``L0Regression`` solver
        (e.g. ``"iht"``, ``"backsolve"``, ``"swap"``; gradient based), ``FlopNnzILP`` solver
        (magnitude based, values ``w^2``) or ``LayerwiseL0`` solver (block by block).
    sparsity : fraction of the prunable weights removed, in ``[0, 1)``; for the structured
        methods the fraction of **groups** (neurons, channels, heads) removed in each unit, or a
        dict ``{kind or consumer name or regex: fraction}`` (:func:`~combprune.torch.structured.prune_structured`).
    flop_budget : fraction of the model's dense FLOPs kept, in ``(0, 1]``. At least one of
        ``sparsity`` / ``flop_budget`` is required; both may be given. Structured methods: every
        unit loses the same fraction of its groups, the smallest meeting the budget (or
        ``sparsity`` when larger); whole-model path only, not the sequential engine.
    targets, ignore : which weights are prunable (see :func:`combprune.torch.select_parameters`;
        default: weights of Linear, Conv and Hugging Face Conv1D layers).
    n_samples : calibration samples used (rows of A); ``None`` for all.
    stages : number of stages of the multi-stage methods (default 10 for ``chita++`` /
        ``falcon++``, 1 otherwise); any gradient method with ``stages > 1`` is run multi-stage.
    schedule : budget schedule of the stages: ``"poly"`` (cubic, the papers' default),
        ``"exp"``, ``"linear"``, ``"const"`` (:func:`combprune.multistage.sparsity_schedule`), or an
        explicit non-decreasing sequence of sparsities ending at ``sparsity`` (``stages`` is then
        its length; repeating the target re-linearises at the final budget). With a FLOP budget,
        stage t gets the same fraction ``s_t / s_T`` of the way from the dense FLOPs to ``F``.
    base_sparsity : sparsity the schedule starts from (before the first stage); FLOP budgets
        follow the same schedule on the fraction of FLOPs removed.
    structured : prune groups (neurons, channels, heads) layer by layer instead of weights.
    loss_fn : ``loss_fn(outputs, targets) -> mean loss`` for the per-sample gradients
        (default: cross-entropy; on log-softmax outputs it is the NLL loss).
    fisher : the curvature of the local model: ``"empirical"`` (the papers': one row per
        sample, its loss gradient) or ``"true"`` (classifiers trained with the cross-entropy of
        ``softmax(outputs)``: the Fisher over the model's own class probabilities, one row per
        class the model gives at least 1 %; ``docs/torch_adapter.md``, "The curvature").
        ``None`` (default): ``"true"`` for a multi-stage method without a FLOP budget
        (``chita++``) when the model, targets and loss are such a classifier's, else
        ``"empirical"``.
    distill : with ``fisher="true"``, the local model's loss is the cross-entropy against the
        unpruned model's class probabilities (self-distillation) instead of the labels: the
        same curvature, a first-order term that pulls towards the unpruned model's predictions.
        The automatic choices still score the true loss (``loss_fn`` on the labels) of the
        held-back samples. ``None`` (default): on for a multi-stage method with the true Fisher.
        ``True`` with ``fisher`` left at ``None`` selects the true Fisher (a ``ValueError``
        naming ``distill`` where it does not apply); with ``fisher="empirical"`` it is an error.
    l2 : ridge of the local model (``ridge = n * l2``, ``docs/formulations/l0_regression.md``),
        or ``"auto"``: chosen among ``l2_grid`` x the empirical Fisher's mean diagonal by the
        true loss on ``holdout`` of the calibration samples held back (``docs/torch_adapter.md``,
        "Automatic l2"). Default ``None``: ``"auto"`` when the calibration set has enough samples
        to hold some back (40 with the default ``holdout``), else ``1e-3`` with a warning.
    first_order : keep the gradient term of the local model (``b = A w_bar - 1``); ``"auto"``
        chooses with and without it the same way as ``l2`` (about twice the candidates; at
        every stage of a multi-stage method). ``None`` (default): ``"auto"`` for a multi-stage
        method with the automatic ``l2`` (the term wins in the sparse last stages), else
        ``False`` (one-shot, the held-back samples never kept it on the validation splits of
        ``benchmarks/auto_l2.py``; ``docs/torch_adapter.md``).
    holdout : fraction of the calibration samples held back by the automatic choices.
    l2_grid : candidate ridges of ``l2="auto"``, relative to the Fisher's mean diagonal.
    auto_stages : multi-stage methods with ``l2="auto"``: ``"per-stage"`` (default: every stage
        chooses its ``l2``, and ``first_order`` when automatic, on the held-back samples, and
        moves to the winning candidate; the last stage, after any ``polish_stages``, re-solves on
        every sample from it) or
        ``"once"`` (choose one-shot at the final budget, then use the values at every stage);
        measured in ``benchmarks/results/auto_l2.md``.
    fresh_samples : multi-stage methods: when the calibration data holds more than
        ``n_samples`` samples, stage t linearises on the t-th subset of ``n_samples`` samples
        (in turn) instead of the same ones (as the CHITA paper's code does).
    polish_stages : multi-stage methods with the per-stage automatic choice: after the schedule,
        up to this many more stages at the final budget, each kept only while its winning
        candidate lowers the held-back loss (by more than 0.1 %); 0: none. See
        ``docs/torch_adapter.md``.
    solver : override the solver of the method (a registered name).
    solver_options : keyword options passed to the solver (its own names).
    time_limit : seconds per solve (the solver returns its best feasible point).
    seed : seed of solver randomness.
    apply : ``"mask"`` (torch's ``weight_orig`` / ``weight_mask`` through
        ``torch.nn.utils.prune.custom_from_mask``), ``"permanent"`` (zeros written into the
        weights, no mask) or ``"physical"`` (structured only: a smaller dense model).
    max_memory : bytes allowed for the gradient path of one block: its matrix A (n x c floats),
        one working copy in the solver and ~128 bytes per weight (``docs/torch_adapter.md``,
        "Blocks"); the per-sample gradients are computed in chunks sized to it. Above it the weights
        are split into blocks of whole layers (a layer larger than the limit is split into
        chunks) and each block is solved in turn, at the current weights, with its share of the
        budgets: the block's share of the global (FLOP-aware) magnitude solution
        (``k_b`` = its kept weights, ``F_b`` = their FLOPs), so the union meets both budgets.
    chunk_size : most samples differentiated together (fewer when ``max_memory`` asks).
    device : expected device of the model (a ``ValueError`` when the model is elsewhere).
    progress : show tqdm progress bars (samples, stages, blocks, layers).
    pairs : structured methods: declare the units as ``(producer, [batchnorm, ...,] consumer)``
        module names instead of discovering them (for models torch.fx cannot trace); the
        consumer may be a tuple of layers reading the same features.
    gqa : structured methods on grouped-query attention: ``"kv"`` removes KV heads with their
        query heads, ``"query"`` removes query heads, equally many in every KV group
        (``docs/structured_pruning.md``).
    pattern, granularity, blocks, ridge, offload, offload_dir : the layer-wise methods
        (``"layerwise"``, ``"sparsegpt"``, ``"wanda"``): an ``"n:m"`` pattern instead of
        ``sparsity``, a count per ``"layer"`` or per ``"output"``, the repeated blocks, the ridge
        relative to ``mean(diag(X^T X))``, and disk offload of the blocks; see
        :func:`combprune.torch.prune_sequential` and ``docs/large_models.md``. ``ridge`` is
        the same factor for the structured methods (OSSCAR's default 1e-2), which also take
        ``ridge="auto"``: the factor chosen per unit on held-back calibration samples
        (``docs/structured_pruning.md``; the choices in ``report.info["ridge_auto"]``).
    sequential : run on the sequential engine, one block at a time. ``None`` (automatic): always
        for the layer-wise methods; for ``"osscar"`` / ``"group-magnitude"`` when ``blocks`` or
        ``offload`` is given (``blocks``, ``offload``, ``ridge`` and ``device`` then apply to them
        too), otherwise the whole-model structured path. ``True`` forces it for the structured
        methods (their units must lie inside the blocks).

    Returns
    -------
    PruneReport with one row per pruned weight; its budgets have been checked.

    Raises
    ------
    ValueError / TypeError for bad arguments (naming them); :class:`PruningError` (or the
    original error) when pruning fails, after restoring the model exactly.
    """
    config = {name: value for name, value in locals().items() if name not in ("model", "calibration", "method")}
    return Pruner(method, **config).prune(model, calibration)
