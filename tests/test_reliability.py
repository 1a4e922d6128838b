"""Regression tests of issue 16 (reliability): one test (or more) per defect found by the attack.

Wrong answers first (false ``optimal``, invalid bounds, NaN called feasible, scale and dtype
dependence), then silent corruption, time limits and unclear errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import combprune as cp
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP, random_l0_regression

L0_HEURISTICS = ("chita", "iht", "swap", "dfo")


def _q64(problem: L0Regression, w) -> float:
    """Q(w) computed here in float64 from float64 copies of the data."""
    A = np.asarray(problem.A, dtype=np.float64)
    r = np.asarray(problem.b, dtype=np.float64) - A @ np.asarray(w, dtype=np.float64)
    d = np.asarray(w, dtype=np.float64) - np.asarray(problem.w_bar, dtype=np.float64)
    return 0.5 * float(r @ r) + 0.5 * problem.ridge * float(d @ d)


# --- 1. highs: status and bound cannot contradict each other --------------------------------------
def test_highs_tiny_value_next_to_large_one():
    problem = FlopNnzILP([1e-8, 1.0], [1.0, 10.0], 1, 5.0)
    res = cp.solve(problem, "highs")
    assert res.objective == pytest.approx(1e-8, rel=1e-12)
    assert res.bound >= res.objective * (1 - 1e-12)
    if res.status.value == "optimal":
        assert res.gap <= 1e-6


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), decades=st.integers(4, 20))
def test_highs_wide_value_ranges_against_bruteforce(seed, decades):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(2, 9))
    v = 10.0 ** rng.uniform(-decades / 2, decades / 2, size=p)
    f = 10.0 ** rng.uniform(-decades / 2, decades / 2, size=p)
    problem = FlopNnzILP(v, f, int(rng.integers(0, p + 1)), float(f.sum() * rng.uniform(0, 0.8)))
    ref = cp.solve(problem, "bruteforce")
    res = cp.solve(problem, "highs")
    assert problem.check(res.x) == []
    assert res.bound >= ref.objective * (1 - 1e-9)  # a valid upper bound
    if res.status.value == "optimal":
        assert res.objective >= ref.objective * (1 - 1e-6)


# --- 2. cvxpy: never optimal without SCIP's own certificate; scaled model -----------------------
def test_cvxpy_rejects_a_bound_above_a_feasible_point():
    from combprune.result import Deadline
    from combprune.solvers.cvxpy_scip import _finish

    problem = random_l0_regression(12, 6, 3, seed=1)
    x = cp.solve(problem, "bruteforce").x
    wrong = {"scip_status": "optimal", "bound": problem.objective(x) * 1.5, "nodes": 3}
    res = _finish(problem, np.asarray(x), x != 0, True, wrong, Deadline(None), problem.A, {}, 1.0)
    assert res.status.value != "optimal" and res.bound is None and res.info["bound_rejected"]


@pytest.mark.parametrize("scale", [1e-40, 1.0, 1e40])
def test_cvxpy_scale_invariant_and_optimal(scale):
    base = random_l0_regression(10, 6, 3, ridge=0.1, seed=3)
    problem = L0Regression(base.A * scale, base.b * scale, 3, ridge=0.1 * scale**2, w_bar=base.w_bar)
    ref = cp.solve(base, "bruteforce")
    res = cp.solve(problem, "cvxpy", time_limit=20)
    assert res.status.value == "optimal"
    assert res.objective == pytest.approx(ref.objective * scale**2, rel=1e-6)
    assert res.bound <= res.objective * (1 + 1e-12)


def test_cvxpy_default_gap_finishes_a_tiny_instance():
    problem = random_l0_regression(20, 7, 3, ridge=0.0, seed=5)  # optimum near 0 with ridge 0
    res = cp.solve(problem, "cvxpy", time_limit=20)
    assert res.status.value == "optimal" and res.time < 10


# --- 3. swap (and every L0 heuristic): finite weights on degenerate data -------------------------
def test_swap_zero_data_ridge_zero_is_finite():
    problem = L0Regression(np.zeros((1, 2)), np.zeros(1), 1, ridge=0.0, w_bar=np.ones(2))
    for solver in L0_HEURISTICS:
        res = cp.solve(problem, solver)
        assert np.all(np.isfinite(res.x)) and math.isfinite(res.objective), solver
        assert problem.check(res.x) == []


@pytest.mark.parametrize("solver", L0_HEURISTICS)
def test_support_larger_than_n_with_zero_columns(solver):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 6))
    A[:, [1, 4]] = 0.0
    problem = L0Regression(A, rng.standard_normal(2), 5, ridge=0.0, w_bar=rng.standard_normal(6))
    res = cp.solve(problem, solver)
    assert np.all(np.isfinite(res.x)) and problem.check(res.x) == []
    assert res.objective == pytest.approx(_q64(problem, res.x), rel=1e-9, abs=1e-12)


# --- 4. StructuredMIQP rejects a non-PSD H ------------------------------------------------------------
def test_structured_rejects_indefinite_h():
    H = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    with pytest.raises(ValueError, match="^H: must be positive semi-definite"):
        StructuredMIQP(H, np.ones(2), [0, 1], 1)
    X = np.random.default_rng(0).standard_normal((3, 5))  # rank 3 < d: PSD, singular, accepted
    StructuredMIQP(X.T @ X, np.ones(5), np.arange(5), 2)


# --- 5. scale invariance of the L0 heuristics ---------------------------------------------------------
@pytest.mark.parametrize("solver", L0_HEURISTICS)
@pytest.mark.parametrize("scale", [1e-90, 1e60, 1e77, 1e154])
def test_l0_heuristics_scale_invariant(solver, scale):
    base = random_l0_regression(15, 10, 4, ridge=0.1, seed=2)
    problem = L0Regression(base.A * scale, base.b * scale, 4, ridge=0.1 * scale**2, w_bar=base.w_bar)
    ref = cp.solve(base, solver)
    res = cp.solve(problem, solver)
    assert np.all(np.isfinite(res.x)) and problem.check(res.x) == []
    np.testing.assert_array_equal(res.support, ref.support)
    assert res.objective == pytest.approx(ref.objective * scale**2, rel=1e-9)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(0, 4), st.integers(0, 5)),
    values=st.lists(st.floats(allow_nan=False, width=32), min_size=20, max_size=20),
    dtype=st.sampled_from(["float32", "float64"]),
    use_torch=st.booleans(),
)
def test_max_abs_without_copy_matches_abs_max(shape, values, dtype, use_torch):
    """The scaling wrapper's ``max |x|`` (computed as ``max(max x, -min x)``, no |x| copy) is
    exactly ``max(abs(x))`` -- hence the same power-of-two scale -- on NumPy and torch arrays."""
    import torch

    from combprune.solvers._kernels.l0_data import _max_abs

    x = np.asarray(values[: shape[0] * shape[1]], dtype=dtype).reshape(shape)
    expected = float(np.max(np.abs(x))) if x.size else 0.0
    arr = torch.from_numpy(x) if use_torch else x
    assert _max_abs(arr) == expected
    if x.size:
        x.flat[0] = np.nan
        assert math.isnan(_max_abs(torch.from_numpy(x) if use_torch else x))


# --- 6. objectives of float32 data in float64 ----------------------------------------------------------
def test_float32_objective_is_float64():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    A = (U[:, :6] * np.logspace(0, -6, 6)).astype(np.float32)
    w = rng.standard_normal(6).astype(np.float32)
    b = (A.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
    problem = L0Regression(A, b, 6)
    assert problem.objective(w) == pytest.approx(_q64(problem, w), rel=1e-12, abs=1e-300)
    for solver in ("bruteforce", *L0_HEURISTICS):
        res = cp.solve(problem, solver)
        assert res.objective == pytest.approx(_q64(problem, res.x), rel=1e-9, abs=1e-30), solver


# --- 7. bruteforce is exact with ridge 0 on numerically rank-deficient A -------------------------------
@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_bruteforce_beats_heuristics_on_rank_deficient_data(seed):
    rng = np.random.default_rng(seed)
    n, p = 6, 7
    A = rng.standard_normal((n, 3)) @ rng.standard_normal((3, p))
    A[:, -1] = A[:, 0] * (1 + 1e-13)
    b = rng.standard_normal(n)
    problem = L0Regression(A, b, 3, ridge=0.0)
    ref = cp.solve(problem, "bruteforce")
    assert ref.status.value == "optimal"
    for solver in L0_HEURISTICS:
        res = cp.solve(problem, solver)
        assert ref.objective <= res.objective + 1e-9 * max(res.objective, 1e-9 * float(b @ b)), solver


# --- silent corruption: study results file -----------------------------------------------------------
def test_study_store_skips_a_torn_record_and_locks(tmp_path):
    from combprune.study import RecordStore, read_records

    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "x": 1}\n{"key": "b", "x"{"key": "c", "x": 3}\n{"key": "d", "x": 4}\n')
    assert [r["key"] for r in read_records(path)] == ["a", "d"]  # the torn b+c line is skipped
    first, second = RecordStore(path), RecordStore(path)
    first.lock()
    with pytest.raises(ValueError, match="^output: .*another study runner"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


# --- bad input: booleans, masked arrays, files, non-PSD ------------------------------------------------
def test_boolean_options_must_be_bools():
    problem = random_l0_regression(12, 8, 3, seed=0)
    with pytest.raises((TypeError, ValueError), match="^swap: expected True"):
        cp.solve(problem, "chita", swap="no")
    with pytest.raises((TypeError, ValueError), match="^refine"):
        cp.solve(problem, "chita", refine=1)
    assert cp.solve(problem, "chita", swap=np.bool_(False)).status.value == "feasible"


def test_cli_bool_option_string_exits_2(tmp_path, capsys):
    from combprune.cli import main

    path = tmp_path / "p.npz"
    random_l0_regression(12, 8, 3, seed=0).save(path)
    assert main(["solve", str(path), "--solver", "chita", "-o", "swap=no"]) == 2
    assert "swap" in capsys.readouterr().err


def test_masked_arrays_rejected():
    A = np.ma.masked_invalid(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="^A: masked arrays"):
        L0Regression(A, np.ones(2), 1)


def test_load_problem_refuses_bombs_and_names_the_file(tmp_path):
    import zipfile

    from combprune.problems import load_problem

    path = tmp_path / "bomb.npz"
    FlopNnzILP(np.zeros(2_000_000), np.zeros(2_000_000), 1, 1.0).save(path)  # 32 MB of zeros, tiny file
    with pytest.raises(ValueError, match="max_bytes"):
        load_problem(path, max_bytes=1_000_000)
    assert load_problem(path).p == 2_000_000
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_problem(bad)
    good = tmp_path / "good.npz"
    random_l0_regression(6, 4, 2, seed=0).save(good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / "nok.npz", "w") as zout:
        for item in zin.infolist():
            if item.filename != "A.npy":
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(ValueError, match="^A: missing from .*nok.npz"):
        load_problem(tmp_path / "nok.npz")


# --- time limits ----------------------------------------------------------------------------------------
def test_one_pass_solvers_report_an_exceeded_deadline():
    from combprune.result import Deadline
    from combprune.solvers.dual_sort import dual_sort
    from combprune.solvers.magnitude import magnitude

    rng = np.random.default_rng(0)
    problem = FlopNnzILP(rng.random(50), rng.random(50), 10, 5.0)
    expired = Deadline(1e-9)
    assert magnitude(problem, deadline=expired).status.value == "time_limit"
    res = dual_sort(problem, deadline=expired)
    assert res.status.value in ("time_limit", "optimal")  # optimal only with its certificate
    if res.status.value == "optimal":
        assert res.bound <= res.objective * (1 + 1e-12)


@pytest.mark.parametrize("solver", ["highs", "pulp"])
def test_milp_solvers_hold_a_short_time_limit_on_many_columns(solver):
    import time

    rng = np.random.default_rng(1)
    p = 40_000
    problem = FlopNnzILP(rng.random(p), np.repeat([1.0, 3.0, 7.0, 11.0], p // 4), p // 3, float(p))
    t0 = time.perf_counter()
    res = cp.solve(problem, solver, time_limit=0.5)
    assert time.perf_counter() - t0 <= 1.0 + 0.5  # max(1.5 x, x + 0.5 s) plus slack for a loaded machine
    assert problem.check(res.x) == [] and res.bound >= res.objective


# --- study configuration and report ------------------------------------------------------------------
def _config(**changes):
    data = {
        "study": {"name": "t", "time_limit": 5.0, "seeds": [0]},
        "instances": [{"generator": "l0_regression", "params": {"n": 10, "p": 6, "k": 2}}],
        "solvers": [{"solver": "chita"}],
    }
    for section, value in changes.items():
        data[section] = value
    return data


@pytest.mark.parametrize("changes, match", [
    ({"study": {"time_limit": math.inf}}, r"study\.time_limit: expected a finite number"),
    ({"study": {"seeds": [-1]}}, r"study\.seeds\[0\]: expected an int >= 0"),
    ({"solvers": [{"solver": "chita", "options": {"max_iter": -5}}]}, r"solvers\[0\]\.options\.max_iter: expected an int >= 1"),
    ({"solvers": [{"solver": "all", "exclude": ["cvxpyy"]}]}, r"solvers\[0\]\.exclude\[0\]: unknown solver 'cvxpyy'"),
])
def test_study_config_rejects_values_every_solve_would_fail_on(changes, match):
    from combprune.study.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=match):
        parse_config(_config(**changes))


def test_study_report_flags_nan_objective_and_refutes_false_optimal():
    from combprune.study.report import StudyResults

    base = {"instance": "i", "instance_hash": "h", "sense": "min", "feasible": True, "time": 0.1, "iterations": 1}
    records = [
        {**base, "key": "a", "label": "exact", "status": "optimal", "objective": 1.0},
        {**base, "key": "b", "label": "liar", "status": "optimal", "objective": 2.0},
        {**base, "key": "c", "label": "nan", "status": "feasible", "objective": None, "objective_mismatch": True},
    ]
    results = StudyResults(records)
    rows = {r["label"]: r for r in results.summary()}
    assert rows["exact"]["optimal"] == 1 and rows["liar"]["optimal"] == 0
    assert any("liar claims optimal" in w for w in results.warnings)
    with pytest.raises(ValueError, match="group_by: unknown field 'nope'"):
        results.summary(by=["nope"])


# --- CLI: one line, exit status 2 --------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["generate", "structured_miqp", "{tmp}/x.npz", "-p", "group_size=0"], "group_size"),
    (["generate", "l0_regression", "{tmp}/x.npz", "-p", "n=-1"], "n: must lie"),
    (["solve", "{tmp}/p.npz", "--save-x", "{tmp}/missing/dir/x.npy"], "--save-x"),
    (["solve", "{tmp}/garbage.npz"], "garbage.npz"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, match):
    from combprune.cli import main

    random_l0_regression(6, 4, 2, seed=0).save(tmp_path / "p.npz")
    (tmp_path / "garbage.npz").write_bytes(b"\x00" * 64)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


# --- bfloat16 and mixed array types --------------------------------------------------------------------
def test_bfloat16_and_torch_gradients_with_numpy_weights():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    G = torch.tensor(rng.standard_normal((12, 6)), dtype=torch.bfloat16)
    problem = L0Regression.from_gradients(G, rng.standard_normal(6), 3, l2=1e-2)  # numpy w_bar
    for solver in ("chita", "iht", "swap"):
        res = cp.solve(problem, solver)
        assert problem.check(res.x) == [] and math.isfinite(res.objective)


# --- osscar: any ridge > 0 is handled ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_osscar_numerically_singular_with_positive_ridge(seed):
    rng = np.random.default_rng(seed)
    d = 8
    X = rng.standard_normal((2, d)) * 1e3  # rank 2, ridge negligible next to H
    W_hat = np.zeros((d, 2)) if seed % 2 else rng.standard_normal((d, 2))
    problem = StructuredMIQP(X.T @ X, W_hat, np.arange(d) // 2, 2, ridge=1e-12)
    res = cp.solve(problem, "osscar")
    assert problem.check(res.x) == [] and math.isfinite(res.objective)
    assert res.objective == pytest.approx(problem.objective(res.x), rel=1e-9, abs=1e-9)


def test_serial_study_records_a_solve_that_killed_the_process(tmp_path):
    """A ``started`` marker without a result (the process died in the solve) becomes a failed
    record on resume instead of a crash that repeats on every resume."""
    import json

    from combprune.study import Study

    instances = [random_l0_regression(10, 6, 2, seed=0)]
    out = tmp_path / "r.jsonl"
    study = Study(instances, ["chita", "iht"], time_limit=5, executor="serial", output=out)
    task = study.tasks()[0]
    out.write_text(json.dumps({**task.head, "status": "started"}) + "\n")  # as left by a crash
    res = study.run()
    by_key = {r["key"]: r for r in res.records}
    assert by_key[task.key]["status"] == "failed" and "process died" in by_key[task.key]["error"]
    assert all(r["status"] == "feasible" for k, r in by_key.items() if k != task.key)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(rec["status"] == "started" for rec in lines) == 2  # one crash marker + one for the other solve


def test_structured_pruning_refuses_tied_weights():
    torch = pytest.importorskip("torch")
    from torch import nn

    from combprune.torch.structured import prune_structured

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    model[2].weight = model[0].weight  # one Parameter in two modules
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="^model: .*tied weights"):
        prune_structured(model, [torch.randn(16, 6)], method="osscar", sparsity=0.5, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # untouched


@pytest.mark.parametrize("solver", ["osscar", "group-magnitude"])
def test_structured_solvers_skip_factorisations_they_cannot_finish(solver):
    import time

    rng = np.random.default_rng(0)
    d = 1200
    X = rng.standard_normal((1300, d))
    problem = StructuredMIQP(X.T @ X, rng.standard_normal((d, 32)), np.arange(d) // 4, d // 8, ridge=1.0)
    t0 = time.perf_counter()
    res = cp.solve(problem, solver, time_limit=0.05)
    assert time.perf_counter() - t0 < 0.55 + 0.5  # max(1.5 x, x + 0.5 s) plus slack on a loaded machine
    assert res.status.value == "time_limit" and problem.check(res.x) == []


def test_structured_pruning_of_a_bfloat16_model():
    torch = pytest.importorskip("torch")
    from torch import nn

    from combprune.torch.structured import prune_structured

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(torch.bfloat16)
    prune_structured(model, [torch.randn(32, 8).to(torch.bfloat16)], method="osscar", sparsity=0.5, progress=False)
    assert model[2].weight.dtype == torch.bfloat16
    assert int((model[2].weight.float().abs().sum(0) == 0).sum()) >= 8  # half the 16 inputs removed
