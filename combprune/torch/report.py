"""Pruning reports: what was pruned, per layer and in total, and whether the budgets hold.

Conventions
-----------
* ``sparsity`` is the **fraction of weights removed** (``1 - kept / params``), never density.
* FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which reports
  **FLOPs = 2 x multiply-accumulates (MACs)** per forward pass of the calibration input shape
  used to count them. ``flop_unit`` says which unit a figure is in ("FLOPs" by default).
* ``dense_flops`` of a layer is its cost with every weight kept; ``effective_flops`` is the cost
  with only the kept weights (per-weight cost ``dense_flops / params`` times ``kept`` for an
  unstructured layer; the smaller layer's count for a structured one).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerReport", "BlockReport", "PruneReport", "BudgetError"]


class BudgetError(RuntimeError):
    """A pruning result does not meet the budget it was asked for."""


@dataclass
class LayerReport:
    """One pruned parameter (a layer's weight).

    Attributes
    ----------
    name : qualified parameter name, e.g. ``"features.0.weight"``.
    kind : ``"unstructured"`` (individual weights) or ``"structured"`` (neurons, channels, heads).
    params : number of weights of the parameter before pruning.
    kept : number of nonzero (kept) weights after pruning.
    sparsity : fraction removed, ``1 - kept / params``.
    dense_flops : FLOPs of the layer with all weights (``flop_unit``; FLOPs = 2 x MACs).
    effective_flops : FLOPs of the layer after pruning (same unit).
    flop_unit : unit of the two FLOP figures (``"FLOPs"``).
    solver : the solver / method that chose the kept weights.
    objective, bound, gap : of the optimisation problem this layer took part in (a global
        unstructured problem is shared by all its layers), ``None`` where not applicable.
    time : seconds spent on the layer (a share of a global solve is not split: the global
        solve's time is reported in :attr:`PruneReport.time`).
    groups, groups_kept : for structured layers, the number of groups (neurons, channels,
        heads) before and after pruning; ``None`` for unstructured layers.
    block : index of the block the layer belongs to (sequential engine), else ``None``.
    relative_error : ``||X (W - W_hat)||^2 / ||X W_hat||^2`` on the calibration inputs the layer
        saw (sequential engine: the layer's input in the already-pruned model), else ``None``.
    rank : the ``torch.distributed`` rank that solved the layer (sequential engine), else ``None``.
    """

    name: str
    kind: str
    params: int
    kept: int
    sparsity: float
    dense_flops: float
    effective_flops: float
    flop_unit: str = "FLOPs"
    solver: str = ""
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    time: float = 0.0
    groups: int | None = None
    groups_kept: int | None = None
    block: int | None = None
    relative_error: float | None = None
    rank: int | None = None

    @property
    def nnz(self) -> int:
        """Nonzero weights kept (= ``kept``)."""
        return self.kept

    def __post_init__(self) -> None:
        if self.kind not in ("unstructured", "structured"):
            raise ValueError(f"kind: expected 'unstructured' or 'structured', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BlockReport:
    """One block of the sequential engine: its index, layers solved, wall time (s) and the peak
    memory (bytes, of kind :attr:`PruneReport.memory_kind`) measured after it."""

    index: int
    layers: int
    time: float
    peak_memory_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt_num(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax >= 1e6 or ax < 1e-3):
        return f"{x:.3e}"
    return f"{x:,.4g}" if ax < 1e4 else f"{x:,.0f}"


@dataclass
class PruneReport:
    """The result of :func:`combprune.torch.prune`: per-layer rows, totals, budgets.

    Attributes
    ----------
    layers : one :class:`LayerReport` per pruned parameter.
    method : the pruning method (``"chita++"``, ``"osscar"``, ...).
    sparsity_requested : requested fraction of prunable weights removed (or ``None``).
    flop_budget_requested : requested fraction of dense FLOPs kept (or ``None``).
    k : the NNZ budget derived from ``sparsity_requested`` (``None`` when not requested).
    flop_limit : the FLOP budget F in absolute FLOPs (``None`` when not requested).
    time : wall-clock seconds of the whole pruning call.
    apply : how the result was applied (``"mask"``, ``"permanent"``, ``"physical"``).
    stages : per-stage records of multi-stage methods (k, F, objective, time).
    not_pruned : structures of the model the method left alone, ``(module name, reason)``
        (e.g. grouped-query attention heads for the structured methods); the budgets were met
        over the pruned layers only.
    info : free-form extras (options used, number of calibration samples, ...).
    blocks : per-block rows of the sequential engine (:class:`BlockReport`), empty otherwise.
    peak_memory_bytes : the largest peak over the blocks (sequential engine), else ``None``.
    memory_kind : what the peak measures: ``"cpu_max_rss"`` (the process's max resident set
        size) or ``"cuda_max_allocated"``.
    """

    layers: list[LayerReport]
    method: str
    sparsity_requested: float | None = None
    flop_budget_requested: float | None = None
    k: int | None = None
    flop_limit: float | None = None
    time: float = 0.0
    apply: str = "mask"
    flop_unit: str = "FLOPs"
    stages: list[dict[str, Any]] = field(default_factory=list)
    not_pruned: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    blocks: list[BlockReport] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None

    # Totals ---------------------------------------------------------------------------------
    @property
    def params(self) -> int:
        """Prunable weights before pruning."""
        return sum(layer.params for layer in self.layers)

    @property
    def kept(self) -> int:
        """Nonzero prunable weights after pruning (the NNZ reached)."""
        return sum(layer.kept for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed (reached)."""
        return 1.0 - self.kept / self.params if self.params else 0.0

    @property
    def dense_flops(self) -> float:
        """FLOPs of the prunable layers before pruning (FLOPs = 2 x MACs)."""
        return math.fsum(layer.dense_flops for layer in self.layers)

    @property
    def effective_flops(self) -> float:
        """FLOPs of the prunable layers after pruning (FLOPs = 2 x MACs)."""
        return math.fsum(layer.effective_flops for layer in self.layers)

    @property
    def flop_fraction(self) -> float:
        """Fraction of the dense FLOPs kept (reached)."""
        return self.effective_flops / self.dense_flops if self.dense_flops else 1.0

    # Budgets --------------------------------------------------------------------------------
    def budget_violations(self) -> list[str]:
        """Budgets requested but not reached (empty when all hold).

        NNZ: ``kept <= k`` exactly (integers). FLOPs: ``effective_flops <= flop_limit`` up to a
        relative 1e-12 (summation-order slack only, as in the formulations).
        """
        from combprune.problems.budget import within_budget

        out = []
        if self.k is not None and self.kept > self.k:
            out.append(f"nnz: {self.kept} weights kept > k = {self.k}")
        if self.flop_limit is not None and not within_budget(self.effective_flops, self.flop_limit):
            out.append(f"flops: {self.effective_flops:.17g} {self.flop_unit} kept > budget {self.flop_limit:.17g}")
        return out

    def check_budgets(self) -> "PruneReport":
        """Raise :class:`BudgetError` unless ``NNZ <= k`` and ``FLOPs <= F``; returns ``self``."""
        violations = self.budget_violations()
        if violations:
            raise BudgetError("budget not met: " + "; ".join(violations))
        return self

    # Export ---------------------------------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "kept": self.kept,
            "sparsity": self.sparsity,
            "dense_flops": self.dense_flops,
            "effective_flops": self.effective_flops,
            "flop_fraction": self.flop_fraction,
            "flop_unit": self.flop_unit,
            "sparsity_requested": self.sparsity_requested,
            "flop_budget_requested": self.flop_budget_requested,
            "k": self.k,
            "flop_limit": self.flop_limit,
            "budgets_met": not self.budget_violations(),
            "time": self.time,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "apply": self.apply,
            "totals": self.totals(),
            "layers": [layer.to_dict() for layer in self.layers],
            "stages": self.stages,
            "not_pruned": [list(item) for item in self.not_pruned],
            "info": self.info,
            "blocks": [b.to_dict() for b in self.blocks],
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_kind": self.memory_kind,
        }

    def to_json(self, path: str | None = None, **kwargs: Any) -> str:
        """The report as JSON (written to ``path`` too when given)."""
        kwargs.setdefault("indent", 2)
        text = json.dumps(self.to_dict(), default=_json_default, **kwargs)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    def to_csv(self, path: str | None = None) -> str:
        """One CSV row per layer plus a ``TOTAL`` row (written to ``path`` too when given)."""
        buf = io.StringIO()
        names = [f for f in LayerReport.__dataclass_fields__]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for layer in self.layers:
            writer.writerow(layer.to_dict())
        writer.writerow(
            {
                "name": "TOTAL",
                "kind": "",
                "params": self.params,
                "kept": self.kept,
                "sparsity": self.sparsity,
                "dense_flops": self.dense_flops,
                "effective_flops": self.effective_flops,
                "flop_unit": self.flop_unit,
                "solver": self.method,
                "time": self.time,
            }
        )
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        return text

    # Display --------------------------------------------------------------------------------
    _COLUMNS = ("layer", "kind", "params", "kept", "sparsity", "dense FLOPs", "eff. FLOPs", "solver", "objective", "gap", "time [s]")

    def _columns(self) -> list[str]:
        extra = ["rel. error"] if any(lr.relative_error is not None for lr in self.layers) else []
        return list(self._COLUMNS) + extra

    def _rows(self) -> list[list[str]]:
        extra = len(self._columns()) > len(self._COLUMNS)
        rows = []
        for lr in self.layers:
            rows.append(
                [
                    lr.name,
                    lr.kind,
                    _fmt_num(lr.params),
                    _fmt_num(lr.kept),
                    f"{lr.sparsity:.4f}",
                    _fmt_num(lr.dense_flops),
                    _fmt_num(lr.effective_flops),
                    lr.solver,
                    _fmt_num(lr.objective),
                    _fmt_num(lr.gap),
                    f"{lr.time:.3f}",
                ]
                + ([_fmt_num(lr.relative_error)] if extra else [])
            )
        return rows

    def _total_row(self) -> list[str]:
        return [
            "TOTAL",
            "",
            _fmt_num(self.params),
            _fmt_num(self.kept),
            f"{self.sparsity:.4f}",
            _fmt_num(self.dense_flops),
            _fmt_num(self.effective_flops),
            self.method,
            "",
            "",
            f"{self.time:.3f}",
        ] + [""] * (len(self._columns()) - len(self._COLUMNS))

    def _caption(self) -> str:
        if "structures" in self.info:
            return self._structured_caption()
        req = []
        if self.sparsity_requested is not None:
            req.append(f"sparsity {self.sparsity_requested:g}" + (f" (k={self.k})" if self.k is not None else ""))
        if self.flop_budget_requested is not None:
            req.append(f"FLOPs kept {self.flop_budget_requested:g} (F={self.flop_limit:.6g})")
        met = "met" if not self.budget_violations() else "NOT met"
        caption = (
            f"{self.method}: requested {', '.join(req) or 'nothing'}; reached sparsity {self.sparsity:.4f}, "
            f"FLOPs kept {self.flop_fraction:.4f}; budgets {met}"
            f"{' over the pruned layers only' if self.not_pruned else ''}. "
            f"{self.flop_unit} counted by torch.utils.flop_counter (FLOPs = 2 x MACs)."
        )
        if self.blocks:
            caption += (f" Sequential engine: {len(self.blocks)} blocks, peak memory "
                        f"{(self.peak_memory_bytes or 0) / 2**20:.0f} MiB ({self.memory_kind}); per block: "
                        + ", ".join(f"#{b.index} {b.time:.2f}s" for b in self.blocks) + ".")
        if self.not_pruned:
            caption += " Not pruned: " + "; ".join(f"{name} ({reason})" for name, reason in self.not_pruned) + "."
        return caption

    def _structured_caption(self) -> str:
        """Structured methods: the request is a fraction of the groups (structures) removed per
        unit; the reached counts per kind, the weights and FLOPs of the touched layers, the whole
        model's parameters, and what was left alone."""
        req = self.sparsity_requested
        req_text = f"{req:g}" if isinstance(req, (int, float)) else str(req)
        groups = ", ".join(f"{kind}s {v['removed']}/{v['groups']}" for kind, v in self.info["structures"].items())
        budget = self.info.get("flop_budget")
        if budget:
            asked = f"model {self.flop_unit} kept <= {budget['flop_budget']:g}" + (f" and {req_text} of the groups removed per unit" if req else "")
            caption = (
                f"{self.method}: requested {asked}; removed {budget['fraction']:.4f} of the groups of every unit "
                f"({groups}); model {self.flop_unit} kept {budget['reached']:.4f} of {budget['model_flops']:.4g} per sample, "
                f"budgets {'met' if not self.budget_violations() else 'NOT met'}. Touched layers: {self.sparsity:.4f} of their weights removed"
            )
        else:
            caption = (
                f"{self.method}: requested {req_text} of the groups removed per unit (a fraction of structures, not of "
                f"parameters); removed {groups}. Touched layers: {self.sparsity:.4f} of their weights removed, "
                f"{self.flop_unit} kept {self.flop_fraction:.4f}"
            )
        params = self.info.get("model_params") or {}
        if params.get("before"):
            after = params.get("after")
            caption += f"; model parameters {params['before']:,}" + (f" -> {after:,} ({after / params['before']:.4f})" if after else " (masked)")
        caption += "."
        if self.not_pruned:
            caption += " Budget met over the pruned units only. Not pruned: " + "; ".join(f"{name} ({reason})" for name, reason in self.not_pruned) + "."
        return caption

    def table(self) -> str:
        """A plain-text table (one row per layer and a total)."""
        rows = self._rows() + [self._total_row()]
        header = self._columns()
        widths = [max(len(header[j]), *(len(r[j]) for r in rows)) for j in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if j < 2 or j == 7 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

        sep = "  ".join("-" * w for w in widths)
        body = [line(header), sep] + [line(r) for r in rows[:-1]] + [sep, line(rows[-1])]
        return "\n".join(body + [self._caption()])

    def __str__(self) -> str:
        return self.table()

    def __rich__(self) -> Any:
        """A :class:`rich.table.Table` (``rich.print(report)`` shows it)."""
        from rich.table import Table

        table = Table(title=f"combprune.torch.prune: {self.method}", caption=self._caption(), show_footer=False)
        for j, col in enumerate(self._columns()):
            table.add_column(col, justify="left" if j in (0, 1, 7) else "right")
        for row in self._rows():
            table.add_row(*row)
        table.add_section()
        table.add_row(*self._total_row(), style="bold")
        return table

    def __repr__(self) -> str:
        return (
            f"PruneReport(method={self.method!r}, layers={len(self.layers)}, params={self.params}, kept={self.kept}, "
            f"sparsity={self.sparsity:.4f}, flop_fraction={self.flop_fraction:.4f}, time={self.time:.3g}s)"
        )


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
