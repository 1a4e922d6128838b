"""Schedules of gradual pruning (combprune.torch.schedules): maths and validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from combprune.torch.schedules import KINDS, Schedule, event_positions, schedule_value

fractions = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)


@st.composite
def schedules(draw):
    a, b = sorted((draw(fractions), draw(fractions)))
    start = draw(st.integers(0, 50))
    end = start + draw(st.integers(1, 200))
    every = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(KINDS))
    return Schedule.build(kind, b, initial=a, start=start, end=end, every=every)


@settings(max_examples=200, deadline=None)
@given(schedules(), st.data())
def test_monotone_starts_at_initial_and_hits_target(s, data):
    t1 = data.draw(st.floats(min_value=-5, max_value=s.end + 10, allow_nan=False))
    t2 = data.draw(st.floats(min_value=t1, max_value=s.end + 20, allow_nan=False))
    assert s(t1) <= s(t2)
    assert s.initial <= s(t1) <= s.final
    assert s(s.end) == s.final and s(s.end + 7) == s.final
    assert s(s.start) == (s.final if s.kind == "constant" else s.initial)
    ev = s.events
    assert ev[0] == s.start and ev[-1] == s.end and all(0 < b - a <= s.every for a, b in zip(ev, ev[1:]))


def test_cubic_is_zhu_gupta():
    # s_t = s_f + (s_0 - s_f) (1 - (t - t0) / (n dt))^3 with t0=10, n dt=100
    s = Schedule.build("cubic", 0.9, initial=0.5, start=10, end=110, every=10)
    for t in (10, 20, 35, 60, 100, 110):
        assert s(t) == pytest.approx(0.9 + (0.5 - 0.9) * (1 - (t - 10) / 100) ** 3, abs=1e-15)
    assert s.events == tuple(range(10, 111, 10))


def test_linear_exponential_constant():
    assert schedule_value("linear", 5, initial=0.2, final=0.8, start=0, end=10) == pytest.approx(0.5)
    # exponential: the fraction kept halves every half of the way from 1 to 0.25
    assert schedule_value("exponential", 5, initial=0.0, final=0.75, start=0, end=10) == pytest.approx(0.5)
    assert 1 - schedule_value("exponential", 2.5, initial=0.0, final=0.75, start=0, end=10) == pytest.approx(0.25**0.25)
    assert schedule_value("constant", 0, initial=0.0, final=0.7, start=0, end=10) == 0.7


def test_explicit_values_hold_until_next_event():
    s = Schedule.build([0.5, 0.7, 0.9], 0.9, start=0, end=10, every=5)
    assert s.events == (0, 5, 10)
    assert [s(t) for t in (0, 4, 5, 9, 10, 50)] == [0.5, 0.5, 0.7, 0.7, 0.9, 0.9]
    assert s.initial == 0.5 and s.final == 0.9


def test_events_end_always_included():
    assert event_positions(3, 10, 4) == (3, 7, 10)
    assert event_positions(0, 1, 5) == (0, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="cubic", final=0.9, start=10, end=10, every=1), "^end"),
        (dict(kind="cubic", final=0.9, start=10, end=5, every=1), "^end"),
        (dict(kind="cubic", final=0.9, start=0, end=5, every=0), "^every"),
        (dict(kind="cubic", final=0.9, start=-1, end=5, every=1), "^start"),
        (dict(kind="cubic", final=1.0, start=0, end=5, every=1), "^sparsity"),
        (dict(kind="cubic", final=-0.1, start=0, end=5, every=1), "^sparsity"),
        (dict(kind="cubic", final=math.nan, start=0, end=5, every=1), "^sparsity"),
        (dict(kind="cubic", final=0.5, initial=0.6, start=0, end=5, every=1), "^initial_sparsity"),
        (dict(kind="poly", final=0.5, start=0, end=5, every=1), "^schedule"),
        (dict(kind=[0.5, 0.4, 0.6], final=None, start=0, end=2, every=1), "^schedule"),
        (dict(kind=[0.5, 0.6], final=None, start=0, end=2, every=1), "^schedule"),
        (dict(kind=[0.5, 0.6, 0.7], final=0.8, start=0, end=2, every=1), "^schedule"),
        (dict(kind="cubic", final=None, start=0, end=5, every=1), "^sparsity"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    kind = kwargs.pop("kind")
    final = kwargs.pop("final")
    with pytest.raises(ValueError, match=match):
        Schedule.build(kind, final, **kwargs)


def test_type_errors_name_the_argument():
    with pytest.raises(TypeError, match="^every"):
        Schedule.build("cubic", 0.5, start=0, end=5, every=1.5)
    with pytest.raises(TypeError, match="^sparsity"):
        Schedule.build("cubic", "0.5", start=0, end=5, every=1)
    with pytest.raises(TypeError, match="^schedule"):
        Schedule.build(["a"], None, start=0, end=1, every=1)


def test_flop_name_in_errors():
    with pytest.raises(ValueError, match="^initial_flop_budget"):
        Schedule.build("linear", 0.2, initial=0.5, start=0, end=5, every=1, name="flop_budget")
