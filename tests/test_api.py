"""``combprune.solve``, the registry, plugins and the missing-extra error."""

from __future__ import annotations

import importlib.metadata
import math

import numpy as np
import pytest
import torch

import combprune as cp
from combprune import registry
from combprune.problems import FlopNnzILP, L0Regression, StructuredMIQP, random_flop_ilp, random_l0_regression
from combprune.result import Deadline, Result, Status


@pytest.fixture
def clean_registry(monkeypatch):
    """A private copy of the registry, so fake solvers do not leak into other tests."""
    registry._discover()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def _zero_solver(problem, *, deadline: Deadline, seed=None, scale: float = 1.0) -> Result:
    x = np.zeros(problem.p)
    return Result(x=x, support=x != 0, objective=problem.objective(x), status=Status.FEASIBLE,
                  info={"time_limit": deadline.time_limit, "seed": seed, "scale": scale})


def test_unknown_solver_lists_names():
    prob = random_flop_ilp(5, seed=0)
    with pytest.raises(cp.UnknownSolverError, match="bruteforce") as err:
        cp.solve(prob, "no-such-solver")
    assert isinstance(err.value, ValueError)
    with pytest.raises(TypeError, match="^solver"):
        cp.get_solver(3)


def test_wrong_problem_type():
    with pytest.raises(TypeError, match="^problem"):
        cp.solve(np.zeros(3), "bruteforce")
    with pytest.raises(ValueError, match="^solver: 'cvxpy' solves"):
        cp.solve(random_flop_ilp(5, seed=0), "cvxpy")
    with pytest.raises(ValueError, match="^solver: 'highs' solves"):
        cp.solve(random_l0_regression(3, 4, 2, seed=0), "highs")


def test_bad_options():
    prob = random_flop_ilp(5, seed=0)
    with pytest.raises(TypeError, match="unknown option.*bogus.*valid options: max_subsets"):
        cp.solve(prob, "bruteforce", bogus=1)
    with pytest.raises(ValueError, match="^max_subsets"):
        cp.solve(prob, "bruteforce", max_subsets=0)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "10", True])
def test_bad_time_limit(bad):
    with pytest.raises((TypeError, ValueError), match="^time_limit"):
        cp.solve(random_flop_ilp(5, seed=0), "bruteforce", time_limit=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_seed(bad):
    with pytest.raises((TypeError, ValueError), match="^seed"):
        cp.solve(random_flop_ilp(5, seed=0), "bruteforce", seed=bad)


def test_solve_sets_solver_time_and_passes_deadline(clean_registry):
    cp.register_solver("zero", problems=L0Regression, exact=False)(_zero_solver)
    prob = random_l0_regression(3, 4, 2, seed=0)
    res = cp.solve(prob, "zero", time_limit=5, seed=7, scale=2.0)
    assert res.solver == "zero" and res.time >= 0
    assert res.info == {"time_limit": 5.0, "seed": 7, "scale": 2.0}
    assert cp.get_solver("zero").options == ("scale",)


def test_list_solvers_filtering():
    names = {r["name"] for r in cp.list_solvers()}
    assert {"bruteforce", "highs", "pulp", "cvxpy"} <= names
    ilp = {r["name"] for r in cp.list_solvers(random_flop_ilp(5, seed=0))}
    assert {"bruteforce", "highs", "pulp"} <= ilp and "cvxpy" not in ilp
    assert ilp == {r["name"] for r in cp.list_solvers(FlopNnzILP)}
    qp = {r["name"] for r in cp.list_solvers(StructuredMIQP)}
    assert {"bruteforce", "cvxpy"} <= qp and "highs" not in qp
    row = next(r for r in cp.list_solvers() if r["name"] == "highs")
    assert row["kind"] == "exact" and row["extra"] == "exact" and row["problems"] == ["FlopNnzILP"]
    assert isinstance(row["available"], bool)


def test_missing_extra_names_pip_install(clean_registry):
    cp.register_solver("needs-missing", problems=FlopNnzILP, exact=True,
                       requires=("combprune_no_such_module_xyz",), extra="exact")(_zero_solver)
    row = next(r for r in cp.list_solvers() if r["name"] == "needs-missing")
    assert row["available"] is False
    with pytest.raises(cp.MissingDependencyError, match=r"pip install combprune\[exact\]"):
        cp.solve(random_flop_ilp(5, seed=0), "needs-missing")
    cp.register_solver("needs-missing-noextra", problems=FlopNnzILP, exact=True,
                       requires=("combprune_no_such_module_xyz",))(_zero_solver)
    with pytest.raises(ImportError, match="pip install combprune_no_such_module_xyz"):
        cp.solve(random_flop_ilp(5, seed=0), "needs-missing-noextra")


class _FakeEntryPoint:
    def __init__(self, name, obj):
        self.name, self._obj = name, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_entry_point_plugins(clean_registry, monkeypatch, caplog):
    def register():
        cp.register_solver("plugin-zero", problems=L0Regression, exact=False, description="from a plugin")(_zero_solver)

    eps = [_FakeEntryPoint("good", register), _FakeEntryPoint("broken", ImportError("boom"))]

    def fake_entry_points(*, group=None, **kwargs):
        assert group == registry.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    rows = {r["name"]: r for r in cp.list_solvers(L0Regression)}
    assert rows["plugin-zero"]["description"] == "from a plugin"
    assert "broken" in caplog.text  # a broken plugin is logged, not fatal
    res = cp.solve(random_l0_regression(3, 4, 2, seed=0), "plugin-zero")
    assert res.solver == "plugin-zero"


def test_register_solver_validates_name():
    with pytest.raises(ValueError, match="^name"):
        cp.register_solver("", problems=L0Regression, exact=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_input_gives_torch_result(dtype):
    prob = random_l0_regression(5, 5, 2, seed=1)
    tp = L0Regression(torch.tensor(np.array(prob.A), dtype=dtype), torch.tensor(np.array(prob.b), dtype=dtype), 2,
                      ridge=prob.ridge, w_bar=torch.tensor(np.array(prob.w_bar), dtype=dtype))
    res = cp.solve(tp, "bruteforce")
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == dtype
    assert isinstance(res.support, np.ndarray) and res.support.dtype == bool
    assert tp.check(res.x) == []
    assert res.objective == pytest.approx(cp.solve(prob, "bruteforce").objective, rel=1e-5)


def test_result_round_trips_to_dict():
    res = cp.solve(random_flop_ilp(6, seed=2), "highs")
    d = res.to_dict(include_x=True)
    assert d["status"] == "optimal" and d["solver"] == "highs" and len(d["x"]) == 6
    assert "highs" in repr(res)


def test_writing_a_solver_example_runs(clean_registry):
    """The plugin guide's example solver and its brute-force test work as written."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "writing_a_solver.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    ns: dict = {}
    for block in blocks:  # the solver (registers "top-k"), its conformance test, its brute-force test
        exec(block, ns)
    ns["test_top_k_conforms"]()
    ns["test_top_k_is_feasible_and_not_better_than_optimal"]()
    with pytest.raises(ValueError, match="^scale"):
        cp.solve(random_l0_regression(3, 4, 2, seed=0), "top-k", scale=-1.0)


def test_result_message_says_why_the_solver_stopped():
    prob = random_l0_regression(20, 10, 3, seed=1)
    assert cp.solve(prob, "bruteforce").message == "optimality proven"
    assert "optimality not proven" in cp.solve(prob, "iht").message
    assert cp.solve(prob, "iht").to_dict()["message"] == cp.solve(prob, "iht").message
