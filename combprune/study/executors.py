"""Executors: where the solves of a study run. All run :func:`~combprune.study.worker.execute_task`.

* :class:`SerialExecutor` (``"serial"``): one solve after another in this process. It cannot
  stop a solver that ignores its deadline.
* :class:`ProcessExecutor` (``"process"``, the default): a pool of worker processes that is
  restarted as needed. A solve still running ``time_limit + grace`` seconds after it started
  (counted from when the worker has received the task) is stopped by terminating its worker
  (a fresh worker replaces it) and recorded with status
  ``"killed"``; a worker that dies (segfault, out-of-memory kill) is recorded as ``"failed"``.
  Each worker keeps the last few problems it received, so an instance is pickled to a worker
  once, not once per solver.
* :class:`RayExecutor` (``"ray"``, ``pip install combprune[ray]``): the same tasks as Ray
  tasks on a local or remote Ray cluster. A watchdog thread in the task ends its worker
  process ``time_limit + grace`` seconds after the solve started (recorded as ``"killed"``);
  as a backstop the driver cancels a task still pending 30 s later with
  ``ray.cancel(force=True)``.

An executor's :meth:`run` takes the tasks and the problems by instance hash and yields
``(task, outcome)`` pairs as solves finish, in completion order.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from .worker import execute_task

logger = logging.getLogger(__name__)

__all__ = ["Task", "Executor", "SerialExecutor", "ProcessExecutor", "RayExecutor", "make_executor", "EXECUTORS"]

EXECUTORS = ("serial", "process", "ray")
DEFAULT_GRACE = 2.0
RAY_SLACK = 30.0  # extra seconds before the driver cancels a Ray task whose watchdog did not fire


@dataclass
class Task:
    """One solve: the record key, the instance hash, the worker payload and the kill delay.

    ``kill_after`` is ``time_limit + grace`` seconds (``None``: never stopped).
    """

    key: str
    instance_hash: str
    payload: dict[str, Any]
    kill_after: float | None = None
    head: dict[str, Any] = field(default_factory=dict)


def _killed(task: Task, elapsed: float) -> dict[str, Any]:
    limit = task.payload.get("time_limit")
    return {
        "status": "killed",
        "objective": None, "bound": None, "solver_gap": None,
        "time": elapsed, "wall_time": elapsed, "iterations": None, "nnz": None,
        "history": [], "info": {}, "peak_memory_mb": None, "memory_method": None,
        "feasible": None, "violations": [],
        "error": (
            f"TimeLimitExceeded: still running {elapsed:.3g} s after start "
            f"(time_limit={limit} s + grace); worker stopped"
        ),
    }


def crashed_outcome(message: str, elapsed: float) -> dict[str, Any]:
    """The outcome of a solve whose process died (status ``failed``, ``error`` = ``message``)."""
    out = _killed(Task("", "", {}), elapsed)
    out.update(status="failed", error=message)
    return out


class Executor:
    """Base class: ``run(tasks, problems)`` yields ``(task, outcome)`` as solves finish."""

    name = "executor"

    def run(self, tasks: Iterable[Task], problems: Mapping[str, Any]) -> Iterator[tuple[Task, dict[str, Any]]]:  # pragma: no cover
        raise NotImplementedError


class SerialExecutor(Executor):
    """Solves in the calling process, in task order. Time limits rely on the solvers' deadlines."""

    name = "serial"

    def run(self, tasks: Iterable[Task], problems: Mapping[str, Any]) -> Iterator[tuple[Task, dict[str, Any]]]:
        for task in tasks:
            yield task, execute_task(problems[task.instance_hash], task.payload)


# --------------------------------------------------------------------------- process pool
def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL this worker if the study process dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _LRU:
    """Which instance hashes a worker holds; parent and worker update identical copies."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def use(self, key: str, value: Any = None) -> bool:
        """Touch ``key`` (inserting ``value`` if absent); True if it was present."""
        if key in self.items:
            self.items.move_to_end(key)
            return True
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return False


def _worker_main(conn: multiprocessing.connection.Connection, cache_size: int) -> None:
    """Worker loop: receive ``(hash, problem or None, payload)``, send the outcome; exit on EOF/None."""
    _set_parent_death_signal()
    import combprune

    combprune.list_solvers()  # import the solver modules before the first task's clock starts
    cache = _LRU(cache_size)
    conn.send({"__ready__": os.getpid()})
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # unpicklable problem: report, then the parent restarts us
            conn.send({"__worker_error__": f"cannot receive task: {type(exc).__name__}: {exc}"})
            return
        if msg is None:
            return
        key, problem, payload = msg
        if problem is None:
            problem = cache.items[key]
        cache.use(key, problem)
        conn.send({"__started__": True})  # the parent's kill clock starts now
        conn.send(execute_task(problem, payload))


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class _Worker:
    def __init__(self, ctx: Any, cache_size: int, threads: int | None = None) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, cache_size), daemon=True, name="combprune-study-worker")
        saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
        try:
            if threads is not None:  # read by BLAS / OpenMP / torch when the spawned worker loads them
                os.environ.update({var: str(threads) for var in THREAD_VARIABLES})
            self.proc.start()
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        child.close()
        self.cache = _LRU(cache_size)
        self.task: Task | None = None
        self.ready = False
        self.started = math.inf  # the kill clock starts when the worker is up and has the task

    def submit(self, task: Task, problem: Any) -> None:
        has = task.instance_hash in self.cache.items
        self.conn.send((task.instance_hash, None if has else problem, task.payload))
        self.cache.use(task.instance_hash)
        self.task = task
        self.started = math.inf  # until the worker says it has unpickled the task

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.proc.join(timeout=None if kill else 5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class ProcessExecutor(Executor):
    """A restartable pool of ``workers`` processes (see the module docstring).

    Parameters
    ----------
    workers : number of concurrent solves (default: half the CPU count, at least 1). Solves
        running side by side compete for cores and memory bandwidth: use 1 for timing studies.
    start_method : multiprocessing start method; ``"spawn"`` (default) gives clean workers
        (no inherited threads); solvers registered in a script or test module are re-registered
        in the worker by pickling their function by reference.
    cache_size : problems kept per worker.
    threads : if given, the thread count of BLAS / OpenMP / torch in each worker (set through
        ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``... in the worker's
        environment; effective with ``start_method="spawn"`` or ``"forkserver"``). Keeps
        ``workers x threads`` within the cores; solver options such as HiGHS' ``threads``
        are separate.
    """

    name = "process"

    def __init__(
        self, workers: int | None = None, *, start_method: str = "spawn", cache_size: int = 4, threads: int | None = None
    ) -> None:
        self.workers = workers if workers is not None else max(1, (os.cpu_count() or 2) // 2)
        if self.workers < 1:
            raise ValueError(f"workers: expected >= 1, got {self.workers}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        self.ctx = multiprocessing.get_context(start_method)
        self.cache_size = cache_size
        self.threads = threads

    def run(self, tasks: Iterable[Task], problems: Mapping[str, Any]) -> Iterator[tuple[Task, dict[str, Any]]]:
        pending = collections.deque(tasks)
        if not pending:
            return
        pool: list[_Worker] = []
        try:
            pool = [_Worker(self.ctx, self.cache_size, self.threads) for _ in range(min(self.workers, len(pending)))]
            while True:
                for i, w in enumerate(pool):
                    if w.task is None and pending and not w.proc.is_alive():  # died while idle
                        w.stop(kill=True)
                        pool[i] = w = _Worker(self.ctx, self.cache_size, self.threads)
                    while w.task is None and pending:
                        task = pending.popleft()
                        try:
                            w.submit(task, problems[task.instance_hash])
                        except Exception as exc:  # e.g. the problem cannot be pickled
                            w.stop(kill=True)
                            pool[i] = w = _Worker(self.ctx, self.cache_size, self.threads)
                            yield task, crashed_outcome(f"cannot send the task to a worker: {type(exc).__name__}: {exc}", 0.0)
                busy = [w for w in pool if w.task is not None]
                if not busy:
                    return
                now = time.perf_counter()
                waits = [w.started + w.task.kill_after - now for w in busy if w.task.kill_after is not None and w.started < math.inf]
                timeout = max(0.0, min(waits)) if waits else None
                signalled = multiprocessing.connection.wait(
                    [w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=timeout
                )
                now = time.perf_counter()
                for i, w in enumerate(pool):
                    if w.task is None:
                        continue
                    task, elapsed = w.task, max(0.0, now - w.started)
                    if w.conn in signalled or w.proc.sentinel in signalled:
                        try:
                            outcome = w.conn.recv()
                        except (EOFError, OSError):
                            w.proc.join(timeout=1.0)
                            if not w.ready:
                                raise RuntimeError(
                                    f"process executor: a worker process failed to start (exit code {w.proc.exitcode}). "
                                    "A script using the process executor must start the study under "
                                    "`if __name__ == '__main__':`; or use executor='serial' or start_method='fork'."
                                ) from None
                            outcome = crashed_outcome(f"WorkerDied: worker process exited with code {w.proc.exitcode}", elapsed)
                        if "__ready__" in outcome:
                            w.ready = True
                            continue
                        if "__started__" in outcome:
                            w.started = now
                            continue
                        if "__worker_error__" in outcome:
                            raise RuntimeError(
                                f"process executor: {outcome['__worker_error__']}. Solvers and problem classes must be "
                                "importable by a fresh interpreter (not defined in __main__ or a notebook) for "
                                "start_method='spawn'; use executor='serial' or start_method='fork' otherwise."
                            )
                        if outcome["status"] == "failed" and "traceback" not in outcome:
                            w.stop(kill=True)
                            pool[i] = _Worker(self.ctx, self.cache_size, self.threads)
                        else:
                            w.task = None
                        yield task, outcome
                    elif task.kill_after is not None and elapsed >= task.kill_after:
                        logger.warning("%s: solve exceeded %.3g s, stopping its worker", task.key, task.kill_after)
                        w.stop(kill=True)
                        pool[i] = _Worker(self.ctx, self.cache_size, self.threads)
                        yield task, _killed(task, elapsed)
        finally:
            for w in pool:
                w.stop(kill=w.task is not None)


# --------------------------------------------------------------------------- ray
class RayExecutor(Executor):
    """Ray tasks (``pip install combprune[ray]``) running the same worker function.

    Parameters
    ----------
    workers : concurrent solves (default: the cluster's CPU count). At most this many tasks
        are in flight, so a task's kill clock starts about when it starts running.
    address : a Ray cluster address; ``None`` joins an initialised Ray or starts a local one
        (shut down again at the end).
    init_kwargs : extra ``ray.init`` keyword arguments for a local start (e.g. ``num_cpus``).
    """

    name = "ray"

    def __init__(self, workers: int | None = None, *, address: str | None = None, **init_kwargs: Any) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ImportError("executor 'ray' needs Ray: install it with `pip install combprune[ray]`") from exc
        self.workers = workers
        self.address = address
        self.init_kwargs = init_kwargs

    def run(self, tasks: Iterable[Task], problems: Mapping[str, Any]) -> Iterator[tuple[Task, dict[str, Any]]]:
        import ray

        pending = collections.deque(tasks)
        if not pending:
            return
        owns = not ray.is_initialized()
        if owns:
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address is None and self.workers is not None:
                kwargs.setdefault("num_cpus", self.workers)
            ray.init(address=self.address, **kwargs)
        inflight: dict[Any, tuple[Task, float]] = {}
        try:
            capacity = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
            warm = ray.remote(num_cpus=1, max_retries=0)(_ray_warmup)
            ray.get([warm.remote() for _ in range(min(capacity, len(pending)))])  # start and import workers
            refs: dict[str, Any] = {}
            while pending or inflight:
                while pending and len(inflight) < capacity:
                    task = pending.popleft()
                    if task.instance_hash not in refs:
                        refs[task.instance_hash] = ray.put(problems[task.instance_hash])
                    ref = remote.remote(refs[task.instance_hash], task.payload, task.kill_after)
                    inflight[ref] = (task, time.perf_counter())
                now = time.perf_counter()
                waits = [t0 + t.kill_after + RAY_SLACK - now for t, t0 in inflight.values() if t.kill_after is not None]
                timeout = max(0.0, min(waits)) if waits else None
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout)
                now = time.perf_counter()
                for ref in done:
                    task, t0 = inflight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # the watchdog ended the worker, a crash, a serialisation error
                        if task.kill_after is not None and now - t0 >= task.kill_after:
                            outcome = _killed(task, now - t0)
                        else:
                            outcome = crashed_outcome(f"{type(exc).__name__}: {exc}", now - t0)
                    yield task, outcome
                for ref, (task, t0) in list(inflight.items()):  # backstop: the watchdog did not fire
                    if task.kill_after is not None and now - t0 >= task.kill_after + RAY_SLACK:
                        ray.cancel(ref, force=True)
                        del inflight[ref]
                        yield task, _killed(task, now - t0)
        finally:
            for ref in inflight:
                ray.cancel(ref, force=True)
            if owns:
                ray.shutdown()


def _ray_execute(problem: Any, payload: dict[str, Any], kill_after: float | None) -> dict[str, Any]:
    """:func:`execute_task` under a watchdog that ends this Ray worker process ``kill_after``
    seconds after the task started (Ray then reports the task as failed; a fresh worker
    replaces the process)."""
    import threading

    timer = None
    if kill_after is not None:
        timer = threading.Timer(kill_after, os._exit, args=(137,))
        timer.daemon = True
        timer.start()
    try:
        return execute_task(problem, payload)
    finally:
        if timer is not None:
            timer.cancel()


def _ray_warmup() -> int:
    import combprune

    combprune.list_solvers()
    return os.getpid()


def make_executor(executor: str | Executor | None = None, *, workers: int | None = None, **kwargs: Any) -> Executor:
    """An executor from its name (``"serial"``, ``"process"``, ``"ray"``) or an instance (returned as is)."""
    if isinstance(executor, Executor):
        return executor
    name = executor or "process"
    if name == "serial":
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers, **kwargs)
    if name == "ray":
        return RayExecutor(workers, **kwargs)
    raise ValueError(f"executor: expected one of {EXECUTORS}, got {name!r}")
