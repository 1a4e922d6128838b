"""What runs in a worker for one solve: :func:`execute_task` (the same for every executor).

Peak memory
-----------
``peak_memory_mb`` is the growth of the worker's resident set size (RSS) during the solve:
``(peak RSS during the solve - RSS just before it) / 2**20``, in MiB. It counts every
allocation (NumPy, BLAS workspaces, torch, HiGHS/CBC/SCIP C++ heaps), not only Python
objects. How the peak is measured is recorded in ``memory_method``:

* ``"rss_hwm"`` (Linux): the kernel's high-water mark ``VmHWM`` of ``/proc/self/status``,
  reset before the solve by writing ``5`` to ``/proc/self/clear_refs``; exact.
* ``"rss_sampled"`` (elsewhere, with psutil): RSS polled every 10 ms by a thread; a spike
  shorter than the period can be missed.
* ``"tracemalloc"`` (requested with ``memory="tracemalloc"``): peak of memory traced by
  Python's ``tracemalloc`` (Python objects and NumPy arrays; not BLAS, torch or C++ solver
  heaps), which also slows allocation-heavy solvers down.
* ``"none"``: not measured (``peak_memory_mb`` is ``None``).

Solver code subprocesses (e.g. CBC started by PuLP) are not counted.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from typing import Any

__all__ = ["execute_task", "MEMORY_METHODS", "PeakMemory"]

MEMORY_METHODS = ("rss", "tracemalloc", "none")
_MIB = float(2**20)
_MAX_VIOLATIONS = 5
MAX_HISTORY = 1000  # history points kept per record


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory growth of a block (see module docstring)."""

    def __init__(self, method: str = "rss") -> None:
        if method not in MEMORY_METHODS:
            raise ValueError(f"memory: expected one of {MEMORY_METHODS}, got {method!r}")
        self.requested = method
        self.method = "none"
        self.peak_mb: float | None = None
        self._before = 0.0
        self._sampled_peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.requested == "tracemalloc":
            import tracemalloc

            self._tracemalloc_was_on = tracemalloc.is_tracing()
            if not self._tracemalloc_was_on:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._before = tracemalloc.get_traced_memory()[0]
            self.method = "tracemalloc"
        elif self.requested == "rss":
            rss = _status_kib("VmRSS")
            if rss is not None and _reset_hwm():
                self._before = rss * 1024.0
                self.method = "rss_hwm"
            else:
                self._start_sampler()
        return self

    def _start_sampler(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        proc = psutil.Process()
        self._before = float(proc.memory_info().rss)
        self._sampled_peak = self._before

        def sample() -> None:
            while not self._stop.wait(0.01):
                self._sampled_peak = max(self._sampled_peak, float(proc.memory_info().rss))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        self.method = "rss_sampled"

    def __exit__(self, *exc: Any) -> None:
        if self.method == "tracemalloc":
            import tracemalloc

            peak = tracemalloc.get_traced_memory()[1]
            if not self._tracemalloc_was_on:
                tracemalloc.stop()
            self.peak_mb = max(0.0, peak - self._before) / _MIB
        elif self.method == "rss_hwm":
            hwm = _status_kib("VmHWM")
            self.peak_mb = None if hwm is None else max(0.0, hwm * 1024.0 - self._before) / _MIB
        elif self.method == "rss_sampled":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            import psutil

            peak = max(self._sampled_peak, float(psutil.Process().memory_info().rss))
            self.peak_mb = max(0.0, peak - self._before) / _MIB


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _thin(points: list[list[float]]) -> list[list[float]]:
    """At most :data:`MAX_HISTORY` points of an incumbent history (evenly spaced, the last kept)."""
    if len(points) <= MAX_HISTORY:
        return points
    step = len(points) / (MAX_HISTORY - 1)
    return [points[int(i * step)] for i in range(MAX_HISTORY - 1)] + [points[-1]]


def _scalar_info(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-scalar entries of ``Result.info`` (arrays and nested objects are left out)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, (int, float)) or type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
            number = value.item() if hasattr(value, "item") else value
            out[str(key)] = number if isinstance(number, int) else _finite(number)
    return out


def _ensure_registered(spec: Any) -> None:
    """Register ``spec`` in this process if its name is unknown (solvers registered by a user
    script or a test are not known to a freshly spawned worker)."""
    from combprune.registry import UnknownSolverError, get_solver, register_solver

    if spec is None:
        return
    try:
        get_solver(spec.name)
    except UnknownSolverError:
        register_solver(
            spec.name, problems=spec.problems, exact=spec.exact, requires=spec.requires,
            extra=spec.extra, description=spec.description,
        )(spec.func)


def execute_task(problem: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Solve ``problem`` as ``payload`` says and return the outcome fields of a record.

    ``payload``: ``solver`` (registered name), ``options`` (dict), ``seed``, ``time_limit``,
    ``memory`` (a :data:`MEMORY_METHODS` entry) and optionally ``spec`` (the parent's
    :class:`~combprune.registry.SolverSpec`, registered here if the name is unknown).

    Never raises for a solver error: the outcome then has ``status="failed"`` and the
    exception in ``error`` / ``traceback``. The returned solution is checked with
    ``problem.check``; ``feasible`` and ``violations`` say what it found.
    """
    import combprune

    out: dict[str, Any] = {"pid": os.getpid()}
    start = time.perf_counter()
    try:
        _ensure_registered(payload.get("spec"))
        with PeakMemory(payload.get("memory", "rss")) as mem:
            result = combprune.solve(
                problem, payload["solver"], time_limit=payload.get("time_limit"), seed=payload.get("seed"),
                **payload.get("options", {}),
            )
        out.update(
            status=result.status.value,
            objective=_finite(result.objective),
            bound=_finite(result.bound),
            solver_gap=_finite(result.gap),
            time=float(result.time),
            iterations=int(result.iterations),
            nnz=int(result.nnz),
            history=_thin([[float(t), v] for t, v in ((t, _finite(o)) for t, o in result.history) if v is not None]),
            info=_scalar_info(result.info),
            peak_memory_mb=mem.peak_mb,
            memory_method=mem.method,
            error=None,
        )
        if result.x is not None and result.status.value != "infeasible":
            violations = [str(v) for v in problem.check(result.x)]
            out["feasible"] = not violations
            out["violations"] = violations[:_MAX_VIOLATIONS]
            recomputed = _finite(problem.objective(result.x))
            # a NaN/Inf objective (reported or recomputed) is a mismatch, never a silent None
            out["objective_mismatch"] = (
                recomputed is None or out["objective"] is None
                or abs(recomputed - out["objective"]) > 1e-6 * max(1.0, abs(recomputed))
            )
        else:
            out["feasible"] = None
            out["violations"] = []
    except BaseException as exc:  # noqa: BLE001 - a failing solver must not stop the study
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        out.update(
            status="failed",
            objective=None, bound=None, solver_gap=None,
            time=time.perf_counter() - start,
            iterations=None, nnz=None, history=[], info={},
            peak_memory_mb=None, memory_method=None,
            feasible=None, violations=[],
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=-8),
        )
    out["wall_time"] = time.perf_counter() - start
    return out
