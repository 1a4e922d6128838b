"""Fuzz suite: every registered solver on nasty small families, checked against an exhaustive
float64 reference (families and checks: ``benchmarks/fuzz.py``, whose longer run writes
``benchmarks/results/fuzz.md``).

Per result: finite ``x``, feasible (``check(x) == []``), objective equal to an independent
float64 evaluation, ``optimal`` only within ``OPT_RTOL`` (1e-6) of the true optimum, bounds on
the right side of the optimum, and the time limit held (``max(1.5 limit, limit + 0.5 s)``).
A ``ValueError`` naming an argument (e.g. cvxpy's refusal without a valid big-M) is allowed.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "fuzz.py")
_spec = importlib.util.spec_from_file_location("combprune_fuzz", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

CASES = [(kind, fam) for kind, (_, fams) in fuzz.FAMILIES.items() for fam in fams]


@pytest.mark.parametrize("kind, family", CASES, ids=[f"{k}-{f}" for k, f in CASES])
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_every_solver_is_reliable(kind, family, seed):
    make, _ = fuzz.FAMILIES[kind]
    problem = make(family, np.random.default_rng(seed))
    records = fuzz.run_instance(problem, limit=fuzz.TIME_LIMIT)
    bad = [r for r in records if set(r["failures"]) - {"refused"}]
    assert not bad, bad
    for r in records:  # refusals must name the argument
        if r["failures"] == ["refused"]:
            assert ":" in r["detail"].split(" ")[0] or r["detail"].split(":")[0].isidentifier(), r


def test_checks_catch_a_false_optimal_claim():
    """The harness itself: a wrong ``optimal`` claim, a NaN point and a bad bound are caught."""
    from combprune.problems import FlopNnzILP
    from combprune.result import Result

    problem = FlopNnzILP([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], 1, 3.0)
    ref, _ = fuzz.reference(problem)
    assert ref == 3.0
    wrong = Result(x=np.array([0.0, 1.0, 0.0]), support=np.array([0, 1, 0], bool), objective=2.0, status="optimal", bound=2.0)
    assert {"false_optimal", "invalid_bound"} <= set(fuzz.check_result(problem, wrong, 0.1, 1.0, ref, 0.0))
    nan = Result(x=np.array([np.nan, 0.0, 0.0]), support=np.array([1, 0, 0], bool), objective=np.nan, status="feasible")
    assert fuzz.check_result(problem, nan, 0.1, 1.0, ref, 0.0) == ["nonfinite"]
    slow = Result(x=np.array([0.0, 0.0, 1.0]), support=np.array([0, 0, 1], bool), objective=3.0, status="time_limit")
    assert fuzz.check_result(problem, slow, 2.0, 1.0, ref, 0.0) == ["time"]


#: Instances on which the fuzz found defects (family, rng seed as ``benchmarks/fuzz.py`` builds it).
FOUND = [
    ("l0", "float32", 1003),  # swap: a stale move in a variable-depth chain (IndexError)
    ("l0", "scaled", 1),  # bruteforce: absolute tie tolerance at 1e-180 objectives (false optimal)
    ("l0", "scaled", 3),  # chita / iht: NaN weights at 1e150
    ("l0", "zero_columns", 18),  # swap: NaN weights with ridge 0
]


@pytest.mark.parametrize("kind, family, seed", FOUND)
def test_instances_found_by_the_fuzz(kind, family, seed):
    make, _ = fuzz.FAMILIES[kind]
    problem = make(family, np.random.default_rng([seed, sum(map(ord, kind + family))]))
    records = fuzz.run_instance(problem, limit=fuzz.TIME_LIMIT)
    assert not [r for r in records if set(r["failures"]) - {"refused"}], records
