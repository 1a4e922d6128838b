"""Studies: run sets of instances against sets of solvers, collect gap/time records, report.

A study is instances x solver runs x seeds. Every solve produces one record (a JSON object
appended to a JSON-lines file as soon as the solve ends) with the objective, bound, status,
time, iterations and peak memory of the solve; gaps to the best known objective (exact where
an exact solver finished) are computed at report time from all records of an instance::

    import combprune as cp
    from combprune.study import Study, SolverRun, generate

    study = Study(
        instances=generate("l0_regression", seeds=range(3), n=30, p=12, k=4),
        solvers=["bruteforce", SolverRun("chita", options={"max_iter": 50}, label="chita-50")],
        time_limit=10.0,
        output="results/l0.jsonl",      # re-running resumes: finished solves are not redone
    )
    results = study.run(progress=True)
    print(results.summary_table())
    results.report("results/l0_report")  # summary .md/.csv, records .csv, plots .png

From a TOML file: ``combprune study CONFIG.toml`` or :func:`run_config`; see
``docs/studies.md`` for the configuration format and :mod:`combprune.study.worker` for how
peak memory is measured.
"""

from .config import ConfigError, StudyConfig, load_config, run_config
from .executors import EXECUTORS, Executor, ProcessExecutor, RayExecutor, SerialExecutor, Task, make_executor
from .instances import GENERATORS, Instance, as_instances, from_factory, from_files, generate, instance_hash
from .report import StudyResults, format_table, load_results
from .runner import SolverRun, Study, expand_solvers, record_key
from .store import RecordStore, read_records
from .worker import MEMORY_METHODS, PeakMemory, execute_task

__all__ = [
    "Study",
    "SolverRun",
    "Instance",
    "generate",
    "from_files",
    "from_factory",
    "as_instances",
    "instance_hash",
    "record_key",
    "expand_solvers",
    "StudyResults",
    "load_results",
    "format_table",
    "RecordStore",
    "read_records",
    "Executor",
    "SerialExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "Task",
    "make_executor",
    "EXECUTORS",
    "GENERATORS",
    "MEMORY_METHODS",
    "PeakMemory",
    "execute_task",
    "ConfigError",
    "StudyConfig",
    "load_config",
    "run_config",
]
