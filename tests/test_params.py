"""Declared solver options (combprune.params): constraints, validation, and every reader of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import combprune as cp
from combprune.cli import main
from combprune.params import (
    ArrayLike,
    Boolean,
    InstanceOf,
    Interval,
    InvalidOptionError,
    Options,
    Table,
    describe,
    validate_options,
)
from combprune.problems import random_l0_regression
from combprune.registry import get_solver, register_solver
from combprune.result import Result


@given(low=st.integers(-5, 5), span=st.integers(0, 10), value=st.integers(-20, 20))
def test_int_interval_accepts_exactly_its_range(low: int, span: int, value: int) -> None:
    for closed, lo_ok, hi_ok in (("both", True, True), ("left", True, False), ("right", False, True), ("neither", False, False)):
        c = Interval(int, low, low + span, closed=closed)
        inside = (low < value or (lo_ok and value == low)) and (value < low + span or (hi_ok and value == low + span))
        assert c.accepts(value) is inside
        assert c.accepts(np.int64(value)) is inside


@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_float_interval_rejects_non_finite_and_bools(value: float) -> None:
    c = Interval(float, None, None)
    assert c.accepts(value) is math.isfinite(value)
    assert not c.accepts(True)
    assert not Interval(int, None, None).accepts(2.0)  # an int option does not take a float


def test_options_boolean_and_containers() -> None:
    assert Options({"a", "b"}).accepts("a") and not Options({"a", "b"}).accepts("c")
    assert not Options({1}).accepts(True)  # compared by type too: True == 1 but is no option value
    assert Boolean().accepts(np.bool_(True)) and not Boolean().accepts(1) and not Boolean().accepts("no")
    assert ArrayLike().accepts([1, 2]) and ArrayLike().accepts(np.zeros(2)) and not ArrayLike().accepts("ab")
    assert Table().accepts({"x": 1}) and not Table().accepts({1: 2})
    assert InstanceOf(Result).accepts(Result(x=None, support=None, objective=0.0, status=cp.Status.FEASIBLE)) and not InstanceOf(Result).accepts(3)
    assert describe([None, Interval(int, 1, None)]) == "None or an int >= 1"


def test_validate_converts_and_names_the_option() -> None:
    params = {"n": Interval(int, 1, None), "tol": Interval(float, 0, None), "mode": [None, Options({"x"})]}
    out = validate_options(params, {"n": np.int64(3), "tol": 0, "mode": None, "free": object})
    assert out["n"] == 3 and type(out["n"]) is int and type(out["tol"]) is float and out["free"] is object
    with pytest.raises(InvalidOptionError, match=r"^n: expected int, got str \('3'\)$"):
        validate_options(params, {"n": "3"})
    with pytest.raises(InvalidOptionError, match=r"^n: expected an int >= 1, got 0$"):
        validate_options(params, {"n": 0})
    with pytest.raises(InvalidOptionError, match=r"^cfg\.mode: expected None or one of 'x', got 'y'$"):
        validate_options(params, {"mode": "y"}, where="cfg.")


def test_solve_rejects_bad_values_before_the_solver_runs() -> None:
    prob = random_l0_regression(n=20, p=8, k=3, seed=0)
    for exc_type in (ValueError, TypeError):  # one error type that is both
        with pytest.raises(exc_type, match="^max_iter: expected an int >= 1, got 0"):
            cp.solve(prob, "chita", max_iter=0)
    with pytest.raises(InvalidOptionError, match="^swap: expected True or False or one of 'auto', got 'yes'"):
        cp.solve(prob, "chita", swap="yes")
    with pytest.raises(InvalidOptionError, match="^gap_rel: expected a finite number in \\[0, 1\\)"):
        cp.solve(prob, "cvxpy", gap_rel=1.5)
    res = cp.solve(prob, "chita", max_iter=np.int64(50), tol=0)  # converted, accepted
    assert prob.check(res.x) == []


def test_every_builtin_option_is_declared_and_its_default_valid() -> None:
    cp.list_solvers()
    from combprune.registry import _REGISTRY

    for name, spec in _REGISTRY.items():
        if not spec.func.__module__.startswith("combprune.solvers."):
            continue
        assert set(spec.params) == set(spec.options), name
        validate_options(spec.params, spec.defaults)


def test_register_solver_rejects_bad_declarations() -> None:
    def fn(problem, *, deadline, seed=None, alpha: float = 1.0, flag: bool = False):  # pragma: no cover - never run
        raise AssertionError

    with pytest.raises(ValueError, match="beta"):
        register_solver("bad-decl", problems=cp.problems.L0Regression, exact=False, params={"beta": Boolean()})(fn)
    with pytest.raises(TypeError, match="alpha"):
        register_solver("bad-decl", problems=cp.problems.L0Regression, exact=False, params={"alpha": float})(fn)
    with pytest.raises(Exception):
        get_solver("bad-decl")


def test_cli_lists_a_solvers_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solvers", "--options", "sparsegpt"]) == 0
    out = capsys.readouterr().out
    assert "block_size" in out and "an int >= 1" in out and "128" in out
    assert main(["solvers", "--options", "swap", "--json"]) == 0
    assert '"option": "candidates"' in capsys.readouterr().out


def test_study_config_reads_the_same_declarations(tmp_path) -> None:
    from combprune.study.config import ConfigError, load_config

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[[instances]]\ngenerator = "l0_regression"\nparams = { n = 20, p = 6, k = 2 }\n'
        '[[solvers]]\nsolver = "swap"\noptions = { candidates = 0 }\n'
    )
    with pytest.raises(ConfigError, match=r"s\.toml: solvers\[0\]\.options\.candidates: expected an int >= 1, got 0"):
        load_config(cfg)
