"""Tests of combprune.study: gaps, resume after SIGKILL, failures, time-limit kills, config errors, reports."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune import registry
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP
from combprune.result import Result, Status
from combprune.study import (
    ConfigError,
    RecordStore,
    SolverRun,
    Study,
    StudyResults,
    generate,
    instance_hash,
    load_config,
    load_results,
    read_records,
)
from combprune.study.cli import main as study_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------- test-only solvers
# Module-level so that spawned workers can import them by reference (test_study.<name>);
# registered only for the duration of a test by the ``test_solvers`` fixture.
def first_fit(problem, *, deadline, seed=None):
    """Heuristic for FlopNnzILP: take coordinates in index order while both budgets allow."""
    v, f = np.asarray(problem.values), np.asarray(problem.costs)
    z = np.zeros(v.shape[0])
    used = 0.0
    for i in range(v.shape[0]):
        if z.sum() < problem.k and used + f[i] <= problem.flop_budget:
            z[i] = 1.0
            used += f[i]
    return Result(x=z, support=z > 0, objective=problem.objective(z), status=Status.FEASIBLE)


def raising(problem, *, deadline, seed=None):
    raise RuntimeError("deliberate failure for the test")


def sleeper(problem, *, deadline, seed=None, seconds: float = 60.0):
    """Ignores its deadline entirely."""
    time.sleep(seconds)
    raise AssertionError("should have been killed")


def env_reporter(problem, *, deadline, seed=None):
    """Reports the worker's OMP_NUM_THREADS in Result.info."""
    z = np.zeros(problem.values.shape[0])
    return Result(x=z, support=z > 0, objective=0.0, status=Status.FEASIBLE, info={"omp": os.environ.get("OMP_NUM_THREADS")})


TEST_SOLVERS = {
    "_test-env": (env_reporter, FlopNnzILP),
    "_test-first-fit": (first_fit, FlopNnzILP),
    "_test-raise": (raising, (L0Regression, FlopNnzILP)),
    "_test-sleep": (sleeper, (L0Regression, FlopNnzILP)),
}


@pytest.fixture
def test_solvers():
    for name, (fn, problems) in TEST_SOLVERS.items():
        registry.register_solver(name, problems=problems, exact=False)(fn)
    yield
    for name in TEST_SOLVERS:
        registry._REGISTRY.pop(name, None)


def tiny_instances():
    return generate("l0_regression", seeds=[0, 1], n=12, p=7, k=3) + generate("flop_nnz_ilp", seeds=[0, 1], p=8, k=3)


def tiny_structured():
    return generate("structured_miqp", seeds=[0], d=6, m=3, s=2) + generate(
        "structured_miqp", seeds=[1], d=8, m=2, group_size=2, correlated=True)


# ------------------------------------------------------------------------------------ gaps
def test_gaps_exact_zero_heuristics_match_manual(test_solvers, tmp_path):
    heuristics = [r["name"] for cls in (L0Regression, FlopNnzILP, StructuredMIQP) for r in cp.list_solvers(cls)
                  if r["kind"] == "heuristic" and r["available"] and not r["name"].startswith("_test-")]
    runs = ["bruteforce", "_test-first-fit", *dict.fromkeys(heuristics)]
    study = Study(tiny_instances() + tiny_structured(), runs, time_limit=20, executor="serial", output=tmp_path / "r.jsonl")
    res = study.run()
    assert not res.warnings, res.warnings
    by_label = {}
    for r in res.records:
        by_label.setdefault(r["label"], []).append(r)
        assert r["status"] in ("optimal", "feasible", "time_limit"), r["error"]
        assert r["feasible"] is True and r["gap"] is not None and r["gap"] >= 0
        assert r["reference"] == "exact"
        assert r["peak_memory_mb"] is None or r["peak_memory_mb"] >= 0
    assert len(by_label["bruteforce"]) == 6
    for r in by_label["bruteforce"]:
        assert r["gap"] == 0.0 and r["solved"] and r["status"] == "optimal" and r["exact"]
    for r in by_label["_test-first-fit"]:  # max sense: gap = (opt - obj) / opt
        opt = next(b["objective"] for b in by_label["bruteforce"] if b["instance_hash"] == r["instance_hash"])
        assert r["best_known"] == pytest.approx(opt)
        assert r["gap"] == pytest.approx(max(0.0, (opt - r["objective"]) / opt), abs=1e-10)
    for label, recs in by_label.items():  # every heuristic, recomputed independently
        for r in recs:
            opt = next(b["objective"] for b in by_label["bruteforce"] if b["instance_hash"] == r["instance_hash"])
            diff = (r["objective"] - opt) if r["sense"] == "min" else (opt - r["objective"])
            assert diff >= -1e-9 * max(1.0, abs(opt)), (label, r["objective"], opt)
    summary = {row["label"]: row for row in res.summary()}
    assert summary["bruteforce"]["solved"] == 1.0 and summary["bruteforce"]["mean_gap"] == 0.0
    assert summary["bruteforce"]["optimal"] == 6 and summary["bruteforce"]["failed"] == 0


def test_gap_for_max_sense_and_inconsistency_warning():
    base = {"instance": "i", "instance_hash": "h", "sense": "max", "seed": 0, "time": 1.0, "feasible": True}
    recs = [
        {**base, "key": "a", "label": "exact", "status": "optimal", "objective": 10.0, "bound": 10.0},
        {**base, "key": "b", "label": "heur", "status": "feasible", "objective": 8.0, "bound": None},
        {**base, "key": "c", "label": "bad", "status": "feasible", "objective": 7.0, "feasible": False},
        {**base, "key": "d", "label": "boom", "status": "failed", "objective": None},
    ]
    res = StudyResults(recs)
    gaps = {r["label"]: r["gap"] for r in res.records}
    assert gaps == {"exact": 0.0, "heur": pytest.approx(0.2), "bad": None, "boom": None}
    assert any("infeasible point" in w for w in res.warnings)
    # a heuristic beating a claimed optimum is flagged
    recs.append({**base, "key": "e", "label": "better", "status": "feasible", "objective": 11.0})
    res = StudyResults(recs)
    assert any("claims optimal" in w for w in res.warnings)
    assert {r["label"]: r["reference"] for r in res.records}["heur"] == "best-found"


_objectives = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    sense=st.sampled_from(["min", "max"]),
    objs=st.lists(st.tuples(_objectives, st.sampled_from(["optimal", "feasible", "time_limit", "failed"])), min_size=1, max_size=6),
    data=st.data(),
)
def test_gap_properties(sense, objs, data):
    base = {"instance": "i", "instance_hash": "h", "sense": sense, "seed": 0, "time": 1.0, "feasible": True}
    recs = [{**base, "key": str(i), "label": f"s{i}", "status": status, "objective": None if status == "failed" else obj}
            for i, (obj, status) in enumerate(objs)]
    res = StudyResults(recs)
    valid = [r for r in res.records if r["status"] != "failed"]
    if not valid:
        assert all(r["gap"] is None and not r["solved"] for r in res.records)
        return
    best = (min if sense == "min" else max)(r["objective"] for r in valid)
    for r in res.records:
        if r["status"] == "failed":
            assert r["gap"] is None
            continue
        assert r["gap"] >= 0 and r["best_known"] == best
        if r["objective"] == best:
            assert r["gap"] == 0.0 and r["solved"]
        else:
            expected = abs(r["objective"] - best) / max(abs(best), 1e-12)
            assert r["gap"] == pytest.approx(expected if expected >= 1e-10 else 0.0)
    # gaps do not depend on the order of the records
    shuffled = data.draw(st.permutations(recs))
    again = {r["key"]: r["gap"] for r in StudyResults(shuffled).records}
    assert again == {r["key"]: r["gap"] for r in res.records}


# ------------------------------------------------------------- failures, kills, process pool
def test_process_executor_failure_and_kill(test_solvers, tmp_path):
    inst = generate("flop_nnz_ilp", seeds=[0], p=8, k=3)
    runs = ["_test-raise", SolverRun("_test-sleep", label="sleepy"), "bruteforce", "_test-env"]
    study = Study(inst, runs, time_limit=0.3, grace=0.4, executor="process", workers=1, output=tmp_path / "r.jsonl",
                  executor_options={"threads": 1})
    res = study.run()
    recs = {r["label"]: r for r in res.records}
    assert recs["_test-env"]["info"] == {"omp": "1"}  # threads_per_worker reached the (restarted) worker
    assert recs["_test-raise"]["status"] == "failed"
    assert "RuntimeError: deliberate failure" in recs["_test-raise"]["error"]
    assert "traceback" in recs["_test-raise"]
    assert recs["sleepy"]["status"] == "killed" and "time_limit" in recs["sleepy"]["error"]
    assert recs["bruteforce"]["status"] == "optimal" and recs["bruteforce"]["gap"] == 0.0
    assert recs["bruteforce"]["memory_method"] == ("rss_hwm" if sys.platform == "linux" else "rss_sampled")
    summary = {row["label"]: row for row in res.summary()}
    assert summary["_test-raise"]["failed"] == 1 and summary["sleepy"]["killed"] == 1
    assert summary["sleepy"]["solved"] == 0.0
    # resuming runs nothing again; rerun_failed re-runs exactly the two failures
    assert len(Study(inst, runs, time_limit=0.3, grace=0.4, executor="serial", output=tmp_path / "r.jsonl").run()) == 4
    seen = []
    Study(inst, runs[:1] + runs[2:], time_limit=0.3, executor="serial", output=tmp_path / "r.jsonl",
          rerun_failed=True).run(callback=seen.append)
    assert [r["label"] for r in seen] == ["_test-raise"]


def test_serial_failure_does_not_stop_study(test_solvers):
    res = Study(tiny_instances(), ["_test-raise", "bruteforce"], executor="serial").run()
    statuses = [(r["label"], r["status"]) for r in res.records]
    assert statuses.count(("_test-raise", "failed")) == 4
    assert statuses.count(("bruteforce", "optimal")) == 4


# ------------------------------------------------------------------------ resume after kill
_SLOW_MODULE = '''
import time
from combprune.problems import L0Regression, FlopNnzILP
from combprune.registry import register_solver
from combprune.solvers.bruteforce import bruteforce

@register_solver("_test-slow", problems=(L0Regression, FlopNnzILP), exact=True)
def slow(problem, *, deadline, seed=None):
    time.sleep(0.1)
    return bruteforce(problem, deadline=deadline, seed=seed)
'''

_SCRIPT = '''
import sys
import slowsolver  # registers _test-slow
from combprune.study import Study, generate

def build(out, executor):
    inst = generate("l0_regression", seeds=range(3), n=10, p=6, k=2) + generate("flop_nnz_ilp", seeds=range(3), p=7)
    return Study(inst, ["_test-slow"], seeds=[0, 1], time_limit=30, output=out, executor=executor, workers=1)

if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2]).run()
'''


def _lines(path):
    with open(path, "rb") as fh:
        return fh.read().split(b"\n")


def test_resume_after_sigkill(tmp_path):
    (tmp_path / "slowsolver.py").write_text(_SLOW_MODULE)
    (tmp_path / "run_study.py").write_text(_SCRIPT)
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(tmp_path / "run_study.py"), str(out), "process"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 60:
        if out.exists() and len([ln for ln in _lines(out) if ln.strip()]) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"study ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(ln) for ln in _lines(out) if ln.strip()]
    assert 3 <= len(before) < 12
    with open(out, "ab") as fh:  # as if killed in the middle of writing a line
        fh.write(b'{"key": "deadbeef", "status": "opt')
    assert len(read_records(out)) == len(before)  # the truncated line is ignored

    done = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [ln for ln in _lines(out) if ln.strip()]
    after = [json.loads(ln) for ln in lines]
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 12  # no duplicates, no truncated junk left
    assert after[: len(before)] == before  # finished solves neither redone nor lost

    # the same study run from scratch (serial, in this process) has the same records
    sys.path.insert(0, str(tmp_path))
    try:
        ns: dict = {}
        exec(compile(_SCRIPT.replace("if __name__", "if False and __name__"), "run_study", "exec"), ns)
        fresh = ns["build"](str(tmp_path / "fresh.jsonl"), "serial").run().records
    finally:
        sys.path.remove(str(tmp_path))
        registry._REGISTRY.pop("_test-slow", None)
    by_key = {r["key"]: r for r in after}
    assert set(by_key) == {r["key"] for r in fresh}
    for r in fresh:
        assert by_key[r["key"]]["status"] == r["status"] == "optimal"
        assert by_key[r["key"]]["objective"] == pytest.approx(r["objective"], rel=1e-12)


def test_store_truncated_and_corrupt_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    store = RecordStore(path)
    store.append({"key": "a", "x": 1.0, "nan": math.nan})
    store.append({"key": "b", "x": 2.0})
    with open(path, "ab") as fh:
        fh.write(b'{"key": "c", "x"')
    store = RecordStore(path)  # repairs the tail
    assert [r["key"] for r in store] == ["a", "b"] and store.get("a")["nan"] is None
    store.append({"key": "c", "x": 3.0})
    assert [r["key"] for r in read_records(path)] == ["a", "b", "c"]
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2"):
        read_records(path)


def test_instance_hash_stable_across_regeneration_and_namespaces():
    torch = pytest.importorskip("torch")
    p1 = cp.problems.random_l0_regression(n=6, p=5, k=2, seed=3)
    p2 = cp.problems.random_l0_regression(n=6, p=5, k=2, seed=3)
    assert instance_hash(p1) == instance_hash(p2)
    assert instance_hash(p1) != instance_hash(cp.problems.random_l0_regression(n=6, p=5, k=2, seed=4))
    assert instance_hash(p1) != instance_hash(L0Regression(p1.A, p1.b, 3, ridge=p1.ridge, w_bar=p1.w_bar))
    pt = L0Regression(torch.from_numpy(np.array(p1.A)), torch.from_numpy(np.array(p1.b)), 2, ridge=p1.ridge,
                      w_bar=torch.from_numpy(np.array(p1.w_bar)))
    assert instance_hash(pt) == instance_hash(p1)


def test_instances_from_files_and_objects(tmp_path):
    prob = cp.problems.random_flop_ilp(8, seed=5)
    prob.save(tmp_path / "a.npz")
    study = Study([str(tmp_path / "*.npz"), prob], ["bruteforce"], executor="serial")
    assert len(study.instances) == 1  # the same instance twice is one instance
    res = study.run()
    assert res.records[0]["source"]["path"].endswith("a.npz") and res.records[0]["gap"] == 0.0


# -------------------------------------------------------------------------------- configs
GOOD = """
[study]
name = "t"
output = "{out}"
executor = "serial"
time_limit = 5
seeds = [0]

[[instances]]
generator = "flop_nnz_ilp"
params = {{ k = 3 }}
sweep = {{ p = [6, 8] }}
seeds = [0, 1]

[[solvers]]
solver = "bruteforce"
options = {{ max_subsets = 100000 }}

[[solvers]]
solver = "bruteforce"
label = "bf-small"
options = {{ max_subsets = 50 }}

[report]
dir = "{rep}"
group_by = ["p"]
"""


def _write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "old,new,match",
    [
        ("max_subsets = 50 ", 'max_subsets = "50" ', r"solvers\[1\]\.options\.max_subsets: expected int, got str"),
        ("max_subsets = 50 ", "max_subsets = 5.5 ", r"solvers\[1\]\.options\.max_subsets: expected int, got float"),
        ("max_subsets = 50 ", "max_iter = 3 ", r"solvers\[1\]\.options\.max_iter: unknown option of solver 'bruteforce'"),
        ('label = "bf-small"', 'label = "bruteforce"', r"solvers\[1\]\.label: duplicate label 'bruteforce'"),
        ('solver = "bruteforce"\nlabel', 'solver = "nope"\nlabel', r"solvers\[1\]\.solver: unknown solver 'nope'"),
        ("k = 3 ", "kk = 3 ", r"instances\[0\]\.params\.kk: unknown parameter"),
        ("p = [6, 8]", "p = 6", r"instances\[0\]\.sweep\.p: expected array, got int"),
        ('generator = "flop_nnz_ilp"', 'generator = "nope"', r"instances\[0\]\.generator: expected one of"),
        ("seeds = [0, 1]", 'seeds = [0, "1"]', r"instances\[0\]\.seeds\[1\]: expected int, got str"),
        ('executor = "serial"', 'executor = "gpu"', r"study\.executor: expected one of"),
        ("time_limit = 5", "time_limit = -1", r"study\.time_limit: expected a positive number"),
        ("time_limit = 5", "timelimit = 5", r"study\.timelimit: unknown field"),
        ('group_by = ["p"]', 'group_by = "p"', r"report\.group_by: expected array"),
        ("[[instances]]", "[[instance]]", r"instance: unknown field"),
        ('solver = "bruteforce"\noptions', 'options', r"solvers\[0\]\.solver: missing"),
        ("[study]", "[study", r"invalid TOML"),
    ],
)
def test_malformed_config_names_the_field(tmp_path, old, new, match):
    text = GOOD.format(out=tmp_path / "r.jsonl", rep=tmp_path / "rep")
    assert old in text
    path = _write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))


def test_config_run_report_csv_plots_and_cli(tmp_path, capsys):
    out, rep = tmp_path / "r.jsonl", tmp_path / "rep"
    path = _write(tmp_path, GOOD.format(out=out, rep=rep))
    assert study_main([str(path), "--no-progress", "--no-plots"]) == 0  # plots: below, from the records
    printed = capsys.readouterr().out
    assert "| label" in printed and "bf-small" in printed and "| p " in printed
    records = read_records(out)
    assert len(records) == 2 * 2 * 2
    assert {r["status"] for r in records if r["label"] == "bf-small"} <= {"failed", "optimal"}
    for name in ("summary.md", "summary.csv", "records.csv"):
        assert (rep / f"study_{name}").stat().st_size > 0, name
    assert len((rep / "study_records.csv").read_text().strip().splitlines()) == 1 + len(records)
    # --report redraws tables and plots from the saved records only
    rep2 = tmp_path / "rep2"
    from combprune.cli import main as combprune_main

    assert combprune_main(["study", "--report", str(out), "--report-dir", str(rep2), "--group-by", "p"]) == 0
    for name in ("summary.md", "summary.csv", "records.csv", "profile_time.png", "profile_gap.png", "objective_vs_time.png"):
        assert (rep2 / f"study_{name}").stat().st_size > 0, name
    assert "| p " in capsys.readouterr().out
    res = load_results(out)
    rows = res.summary(by=("p",))
    assert [(r["label"], r["p"]) for r in rows] == [("bruteforce", 6), ("bruteforce", 8), ("bf-small", 6), ("bf-small", 8)]
    assert rows[0]["mean_gap"] == 0.0
    # a bad config through the CLI: exit status 2 and the field on stderr
    bad = _write(tmp_path, GOOD.format(out=out, rep=rep).replace("max_subsets = 50", 'max_subsets = "x"'), "bad.toml")
    assert study_main([str(bad)]) == 2
    assert "solvers[1].options.max_subsets: expected int" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["l0_gap_study.toml", "ilp_scaling_study.toml"])
def test_example_configs_parse(name):
    path = os.path.join(REPO, "examples", name)
    try:
        config = load_config(path)
    except ConfigError as exc:
        if "unknown solver" in str(exc) or "no available solver" in str(exc):
            pytest.skip(f"a solver of the example is not registered yet: {exc}")
        raise
    assert config.study.tasks()


# ------------------------------------------------------------------------------------ ray
@pytest.mark.slow
def test_ray_executor_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = Study(generate("flop_nnz_ilp", seeds=[0, 1], p=6), ["bruteforce"], executor="ray").run()
    finally:
        ray.shutdown()
    assert [r["status"] for r in res.records] == ["optimal", "optimal"]
    assert all(r["gap"] == 0.0 for r in res.records)
