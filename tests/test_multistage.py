"""``combprune.multistage`` (CHITA++ / FALCON++ driver) and ``sparsity_schedule``."""

from __future__ import annotations

import numpy as np
import pytest

import combprune as cp
from combprune.multistage import ChosenPoint, multistage, sparsity_schedule


@pytest.mark.parametrize("kind", ["poly", "exp", "linear", "const"])
def test_schedules_monotone_and_end_at_target(kind):
    s = sparsity_schedule(0.9, 8, kind=kind, base=0.2)
    assert s.shape == (8,) and s[-1] == pytest.approx(0.9)
    assert np.all(np.diff(s) >= -1e-15) and np.all((s >= 0) & (s <= 1))
    if kind != "const":
        assert s[0] > 0.2
    if kind == "poly":  # cubic: big steps first, small steps last
        steps = np.diff(np.concatenate([[0.2], s]))
        assert steps[0] > steps[-1]


def test_schedule_values():
    assert np.allclose(sparsity_schedule(0.8, 4, kind="linear"), [0.2, 0.4, 0.6, 0.8])
    assert np.allclose(sparsity_schedule(0.75, 2, kind="exp"), [0.5, 0.75])
    assert np.allclose(sparsity_schedule(0.9, 2, kind="poly"), [0.9 - 0.9 / 8, 0.9])


def _builder(M, calls):
    def build(w, k, F):
        w = np.asarray(w, dtype=float)
        calls.append((w.copy(), k, F))
        G = M * (1.0 + 0.1 * np.tanh(w))[None, :]  # "gradients" that depend on the weights
        costs = np.repeat([1.0, 4.0], M.shape[1] // 2)
        kw = {} if F is None else {"flop_costs": costs, "flop_budget": F}
        return cp.L0Regression.from_gradients(G, w, k, l2=1e-3, **kw)

    return build


def test_multistage_relinearises_and_records_stages():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((30, 120))
    calls = []
    w0 = rng.standard_normal(120)
    seen = []
    res = multistage(_builder(M, calls), "poly", "chita", weights=w0, k=12, n_stages=4, callback=lambda t, r: seen.append(t))
    ks = [c[1] for c in calls]
    assert ks == sorted(ks, reverse=True) and ks[-1] == 12 and len(ks) == 4
    assert np.array_equal(calls[0][0], w0)
    for t in range(1, 4):  # each stage is linearised at the previous stage's weights
        assert np.array_equal(calls[t][0], np.asarray(res.info["stages"][t - 1]["result"].x))
    assert res.solver == "multistage(chita)" and res.nnz <= 12 and seen == [0, 1, 2, 3]
    assert len(res.info["stages"]) == 4 and all("objective" in s for s in res.info["stages"])
    assert res.iterations == sum(s["result"].iterations for s in res.info["stages"])


def test_chosen_points_replace_intermediate_solves_and_warm_start_the_last(monkeypatch, caplog):
    rng = np.random.default_rng(4)
    M = rng.standard_normal((30, 120))
    inner = _builder(M, [])
    chosen: list[np.ndarray] = []

    def build(w, k, F):
        problem = inner(w, k, F)
        x = np.zeros(120)
        keep = np.argsort(-np.abs(np.asarray(w)))[:k]
        x[keep] = np.asarray(w)[keep] * 0.5  # a feasible point that no solver would return
        chosen.append(x)
        return ChosenPoint(problem, x)

    starts = []
    real = cp.solve

    def spy(problem, solver=None, **kw):
        starts.append(kw.get("warm_start"))
        return real(problem, solver=solver, **kw)

    monkeypatch.setattr("combprune.multistage.solve", spy)
    res = multistage(build, "poly", "chita", weights=rng.standard_normal(120), k=12, n_stages=3)
    stages = res.info["stages"]
    for t in range(2):  # intermediate stages take the chosen point as it is, without a solve
        assert np.array_equal(stages[t]["result"].x, chosen[t]) and stages[t]["status"] == "feasible"
        assert stages[t]["objective"] == pytest.approx(stages[t]["result"].objective) and stages[t]["solved"] is False
    assert len(starts) == 1 and np.array_equal(starts[0], chosen[2])  # only the last is solved, from its point
    assert stages[2]["solved"] is True
    assert res.nnz <= 12

    def infeasible(w, k, F):
        return ChosenPoint(inner(w, k, F), np.asarray(w, dtype=float))  # dense: over the budget k

    starts.clear()
    with caplog.at_level("WARNING", logger="combprune.multistage"):
        res = multistage(infeasible, "poly", "chita", weights=rng.standard_normal(120), k=12, n_stages=2)
    assert starts == [None, None] and res.nnz <= 12 and "infeasible" in caplog.text


def _top_k_points(inner, built: list[ChosenPoint]):
    """A build that chooses, for every stage, the stage's k largest weights shrunk by 0.9 (recorded in ``built``)."""

    def build(w, k, F):
        x = np.zeros(len(w))
        keep = np.argsort(-np.abs(np.asarray(w)))[:k]
        x[keep] = np.asarray(w)[keep] * 0.9
        built.append(ChosenPoint(inner(w, k, F), x))
        return built[-1]

    return build


@pytest.mark.parametrize("kept", [0, 2, 5])
def test_polishing_stages_repeat_the_final_budget_while_accepted_and_solve_the_last_kept(monkeypatch, kept):
    rng = np.random.default_rng(5)
    M = rng.standard_normal((30, 120))
    inner = _builder(M, [])
    built: list[ChosenPoint] = []
    build = _top_k_points(inner, built)

    starts, real = [], cp.solve

    def spy(problem, solver=None, **kw):
        starts.append((problem, kw.get("warm_start")))
        return real(problem, solver=solver, **kw)

    monkeypatch.setattr("combprune.multistage.solve", spy)
    asked = []

    def accept(point):
        asked.append(point)
        return len(asked) <= kept

    res = multistage(build, "poly", "chita", weights=rng.standard_normal(120), k=12, n_stages=3, polish=4, accept=accept)
    stages = res.info["stages"]
    n_kept = min(kept, 4)
    assert len(asked) == min(kept + 1, 4) and len(built) == 3 + len(asked)
    assert len(stages) == 3 + n_kept and [s["polish"] for s in stages] == [False] * 3 + [True] * n_kept
    assert all(s["k"] == 12 for s in stages[2:])
    last = built[2 + n_kept]  # the schedule's last stage, or the last polishing stage kept
    assert len(starts) == 1 and starts[0][0] is last.problem and np.array_equal(starts[0][1], last.x)
    assert stages[-1]["solved"] is True and all(s["solved"] is False for s in stages[:-1]) and res.nnz <= 12
    for t in range(3, 3 + len(asked)):  # each polishing stage starts from the previous stage's point
        assert np.count_nonzero(built[t].x) <= 12
    with pytest.raises(ValueError, match="^accept: "):
        multistage(build, "poly", "chita", weights=np.ones(120), k=12, n_stages=2, polish=1)
    with pytest.raises(ValueError, match="^polish: "):
        multistage(build, "poly", "chita", weights=np.ones(120), k=12, n_stages=2, polish=-1, accept=accept)


@pytest.mark.parametrize("polish", [0, 2])
@pytest.mark.parametrize("keep", [True, False])
def test_keep_solve_decides_between_the_last_solve_and_its_chosen_point(monkeypatch, polish, keep):
    """The last stage is solved once from its point; keep_solve(x, point) False returns the point."""
    rng = np.random.default_rng(7)
    inner = _builder(rng.standard_normal((30, 120)), [])
    built: list[ChosenPoint] = []
    build = _top_k_points(inner, built)

    solves, real = [], cp.solve
    monkeypatch.setattr("combprune.multistage.solve", lambda problem, solver=None, **kw: solves.append(problem) or real(problem, solver=solver, **kw))
    asked = []

    def keep_solve(x, point):
        asked.append((x.copy(), point))
        return keep

    res = multistage(build, "poly", "chita", weights=rng.standard_normal(120), k=12, n_stages=3, polish=polish,
                     accept=lambda point: False, keep_solve=keep_solve)
    last = built[2]  # no polishing stage is accepted: the schedule's last stage is the one solved
    assert len(solves) == 1 and solves[0] is last.problem and len(asked) == 1 and asked[0][1] is last
    if keep:
        assert np.array_equal(res.x, asked[0][0]) and res.info["stages"][-1]["solved"] is True
    else:
        assert np.array_equal(res.x, last.x) and res.info["stages"][-1]["solved"] is False
        assert res.objective == pytest.approx(last.problem.objective(last.x))
    assert res.nnz <= 12 and len(res.info["stages"]) == 3


def test_multistage_flop_budget_and_explicit_schedule():
    rng = np.random.default_rng(1)
    M = rng.standard_normal((20, 80))
    calls = []
    dense = float(np.repeat([1.0, 4.0], 40).sum())
    res = multistage(_builder(M, calls), "exp", "dfo", weights=rng.standard_normal(80), k=20, flop_budget=0.3 * dense, dense_flops=dense, n_stages=3)
    Fs = [c[2] for c in calls]
    assert Fs[-1] == pytest.approx(0.3 * dense) and Fs == sorted(Fs, reverse=True)
    last = res.info["stages"][-1]["result"]
    assert last.nnz <= 20
    calls.clear()
    res2 = multistage(_builder(M, calls), [(60, None), (40, None), (20, None)], "iht", weights=rng.standard_normal(80))
    assert [c[1] for c in calls] == [60, 40, 20] and res2.nnz <= 20


def test_multistage_bad_arguments():
    w = np.zeros(10)
    build = _builder(np.ones((3, 10)), [])
    with pytest.raises(ValueError, match="kind"):
        sparsity_schedule(0.5, 3, kind="cosine")
    with pytest.raises(ValueError, match="n_stages"):
        sparsity_schedule(0.5, 0)
    with pytest.raises(ValueError, match="base"):
        sparsity_schedule(0.5, 3, base=0.7)
    with pytest.raises(ValueError, match="k"):
        multistage(build, "poly", "chita", weights=w)
    with pytest.raises(ValueError, match="dense_flops"):
        multistage(build, "poly", "chita", weights=w, k=3, flop_budget=5.0)
    with pytest.raises(ValueError, match="schedule"):
        multistage(build, [11], "chita", weights=w)
    with pytest.raises(TypeError, match="build"):
        multistage(None, "poly", "chita", weights=w, k=3)
    with pytest.raises(ValueError, match="time_limit"):
        multistage(build, "poly", "chita", weights=w, k=3, time_limit=-1)
