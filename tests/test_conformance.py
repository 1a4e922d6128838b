"""Every registered solver passes the shared conformance suite (``combprune.testing``)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import combprune
import combprune.registry as registry
from combprune.testing import check_solver

BUILTIN_SOLVERS = {
    "backsolve", "bruteforce", "chita", "cvxpy", "dfo", "dual-sort", "group-magnitude", "highs", "iht", "layerwise",
    "layerwise-exact", "magnitude", "osscar", "pulp", "sparsegpt", "swap", "wanda",
}


def _names() -> list[str]:
    return [row["name"] for row in combprune.list_solvers()]


def test_exactly_the_builtin_solvers_are_registered():
    builtin = {row["name"] for row in combprune.list_solvers() if registry.get_solver(row["name"]).func.__module__.startswith("combprune.solvers.")}
    assert builtin == BUILTIN_SOLVERS


@pytest.mark.parametrize("name", _names())
def test_solver_conformance(name):
    if not registry.get_solver(name).available:
        pytest.skip(f"{name}: optional dependency missing ({', '.join(registry.get_solver(name).missing)})")
    check_solver(name)


def test_a_broken_builtin_solver_module_fails_loudly(tmp_path, monkeypatch):
    """A built-in module that cannot be imported is an error, not a silently missing solver."""
    import combprune.solvers as builtin

    (tmp_path / "broken_conformance_solver.py").write_text(textwrap.dedent("raise RuntimeError('broken on purpose')\n"))
    monkeypatch.setattr(builtin, "__path__", [*builtin.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    with pytest.raises(registry.SolverImportError, match="broken_conformance_solver.*broken on purpose"):
        combprune.list_solvers()
    with pytest.raises(registry.SolverImportError):  # and on every later call, not only the first
        registry.get_solver("chita")
    monkeypatch.setattr(builtin, "__path__", [p for p in builtin.__path__ if p != str(tmp_path)])
    sys.modules.pop("combprune.solvers.broken_conformance_solver", None)
    importlib.invalidate_caches()
    assert "chita" in _names()


def test_conformance_catches_a_false_optimal_claim():
    """The suite itself can fail: a plugin that calls a non-optimal point optimal is caught."""
    import numpy as np

    from combprune.problems import L0Regression
    from combprune.result import Result, Status

    @registry.register_solver("liar-for-conformance", problems=L0Regression, exact=True)
    def liar(problem, *, deadline, seed):
        x = np.zeros(problem.p)
        return Result(x=x, support=x != 0, objective=problem.objective(x), status=Status.OPTIMAL)

    try:
        with pytest.raises(AssertionError, match="status optimal"):
            check_solver("liar-for-conformance")
    finally:
        registry._REGISTRY.pop("liar-for-conformance")
