"""The one result object every solver returns (in the spirit of ``scipy.optimize.OptimizeResult``)."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend

__all__ = ["Status", "Result", "relative_gap", "Deadline", "History"]


class Status(str, enum.Enum):
    """Termination status.

    ``optimal``: proven optimal (exact solvers only; heuristics never claim it).
    ``feasible``: a feasible point, optimality unknown or not proven.
    ``time_limit``: stopped by ``time_limit``; ``x`` is the best feasible point found.
    ``infeasible``: the problem has no feasible point.
    """

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    TIME_LIMIT = "time_limit"
    INFEASIBLE = "infeasible"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    """MIP-style relative gap ``|objective - bound| / max(|objective|, 1e-12)`` (None if unknown)."""
    if objective is None or bound is None:
        return None
    if not (math.isfinite(objective) and math.isfinite(bound)):
        return None
    return abs(objective - bound) / max(abs(objective), 1e-12)


@dataclass
class Result:
    """Outcome of ``combprune.solve``.

    Attributes
    ----------
    x : the solution in the input's array namespace: weights ``w`` (p,) for ``L0Regression``,
        a 0/1 vector ``z`` (p,) for ``FlopNnzILP``, weights ``W`` (d, m) for ``StructuredMIQP``.
    support : boolean mask (NumPy) over coordinates (p,) or over groups (G,).
    objective : the formulation's objective at ``x`` (``problem.objective(x)``).
    bound : a proven bound on the optimum (lower when minimising, upper when maximising), or None.
    gap : ``|objective - bound| / max(|objective|, 1e-12)``, or None where ``bound`` is unknown.
    status : a :class:`Status`.
    time : wall-clock seconds spent in the solver.
    iterations : solver iterations (meaning is solver specific; documented per solver).
    solver : the registered name of the solver.
    history : ``(seconds since start, objective)`` pairs of improving incumbents.
    info : solver-specific extras (e.g. LP duals, a fractional LP solution, stage records).
    message : why the solver stopped, in words (set by the solver, or from the status by
        :func:`combprune.solve` when the solver leaves it empty).
    """

    x: Any
    support: np.ndarray
    objective: float
    status: Status
    solver: str = ""
    bound: float | None = None
    gap: float | None = None
    time: float = 0.0
    iterations: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        self.objective = float(self.objective)
        if self.bound is not None:
            self.bound = float(self.bound)
        if self.gap is None:
            self.gap = relative_gap(self.objective, self.bound)
        self.support = np.asarray(backend.to_numpy(self.support), dtype=bool)

    @property
    def nnz(self) -> int:
        """Number of selected coordinates (or groups)."""
        return int(self.support.sum())

    def to_dict(self, *, include_x: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (``x`` only when asked; it can be large)."""
        out: dict[str, Any] = {
            "solver": self.solver,
            "status": self.status.value,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "time": self.time,
            "iterations": self.iterations,
            "nnz": self.nnz,
            "message": self.message,
            "history": [list(map(float, h)) for h in self.history],
        }
        if include_x:
            out["x"] = backend.to_numpy(self.x).tolist()
            out["support"] = self.support.tolist()
        return out

    def __repr__(self) -> str:
        gap = "None" if self.gap is None else f"{self.gap:.3g}"
        bound = "None" if self.bound is None else f"{self.bound:.10g}"
        return (
            f"Result(solver={self.solver!r}, status={self.status.value!r}, objective={self.objective:.10g}, "
            f"bound={bound}, gap={gap}, nnz={self.nnz}, time={self.time:.3g}s, iterations={self.iterations})"
        )


#: The message of a result whose solver did not say why it stopped.
STATUS_MESSAGES: dict[Status, str] = {
    Status.OPTIMAL: "optimality proven",
    Status.FEASIBLE: "finished with a feasible point (optimality not proven)",
    Status.TIME_LIMIT: "time limit reached; best feasible point returned",
    Status.INFEASIBLE: "the problem has no feasible point",
}


class Deadline:
    """Wall-clock budget of a solve: ``expired()`` and ``remaining()`` in seconds."""

    def __init__(self, time_limit: float | None) -> None:
        self.start = time.perf_counter()
        self.time_limit = time_limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        if self.time_limit is None:
            return math.inf
        return self.time_limit - self.elapsed()

    def expired(self) -> bool:
        return self.time_limit is not None and self.elapsed() >= self.time_limit


class History:
    """Records ``(elapsed seconds, objective)`` whenever the incumbent improves.

    ``sense`` is ``"min"`` or ``"max"``.
    """

    def __init__(self, deadline: Deadline, sense: str = "min") -> None:
        self.deadline = deadline
        self.sense = sense
        self.points: list[tuple[float, float]] = []

    def record(self, objective: float) -> None:
        objective = float(objective)
        if self.points:
            best = self.points[-1][1]
            if (self.sense == "min" and objective >= best) or (self.sense == "max" and objective <= best):
                return
        self.points.append((self.deadline.elapsed(), objective))
