"""Pruning schedules of gradual pruning: the target at each position of training.

A schedule maps the training position ``t`` (optimiser steps or epochs, see
:class:`~combprune.torch.gradual.GradualPruner`) to a fraction **removed** ``s_t`` in ``[0, 1)``:
the sparsity (fraction of the prunable weights removed) or, for FLOP budgets, the fraction of the
model's FLOPs removed, ``1 - flop_budget``. Pruning events happen at

.. math::

    t \\in \\{t_0, t_0 + \\Delta t, t_0 + 2\\Delta t, \\dots\\} \\cap [t_0, t_e] \\;\\cup\\; \\{t_e\\}

(``start`` = t_0, ``every`` = Delta t, ``end`` = t_e; the last event is always at ``end``). With
the progress ``u = (t - t_0) / (t_e - t_0)`` clipped to ``[0, 1]``, initial value ``s_0`` and
final value ``s_f``:

* ``"cubic"`` (Zhu & Gupta 2017, the papers' default): ``s_t = s_f + (s_0 - s_f)(1 - u)^3``:
  prunes fast while many redundant weights remain, slowly near the target;
* ``"linear"``: ``s_t = s_0 + (s_f - s_0) u``;
* ``"exponential"``: the fraction kept decays geometrically,
  ``1 - s_t = (1 - s_0) ((1 - s_f) / (1 - s_0))^u``;
* ``"constant"``: ``s_t = s_f`` at every event (repeated one-shot pruning at the target);
* an explicit sequence: the value of each event, in order (one per event).

Every schedule is non-decreasing in ``t``, starts at ``s_0`` (``"constant"``: at ``s_f``) and is
exactly ``s_f`` from ``end`` on. See ``docs/gradual_pruning.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["KINDS", "Schedule", "schedule_value", "event_positions"]

#: Named schedule kinds.
KINDS: tuple[str, ...] = ("cubic", "linear", "exponential", "constant")


def _check_position(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value!r}")
    return int(value)


def _check_removed(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"{name}: must lie in [0, 1), got {value!r}")
    return v


def event_positions(start: int, end: int, every: int) -> tuple[int, ...]:
    """Positions of the pruning events: ``start, start + every, ...`` up to ``end``, plus ``end``."""
    start = _check_position("start", start, 0)
    end = _check_position("end", end, 0)
    every = _check_position("every", every, 1)
    if end <= start:
        raise ValueError(f"end: must be greater than start={start}, got {end}")
    pos = list(range(start, end, every))
    return tuple(pos + [end])


def schedule_value(kind: str, t: float, *, initial: float, final: float, start: int, end: int) -> float:
    """Value ``s_t`` of the named schedule ``kind`` at position ``t`` (see the module docstring).

    Pure function of its arguments; ``t`` before ``start`` gives ``initial`` (``final`` for
    ``"constant"``), ``t >= end`` gives exactly ``final``.
    """
    if kind not in KINDS:
        raise ValueError(f"schedule: expected one of {KINDS} or a sequence of values, got {kind!r}")
    if t >= end or kind == "constant":
        return final
    if t <= start:
        return initial
    u = min(1.0, max(0.0, (float(t) - start) / (end - start)))
    if kind == "cubic":
        value = final + (initial - final) * (1.0 - u) ** 3
    elif kind == "linear":
        value = initial + (final - initial) * u
    else:  # exponential: the fraction kept decays geometrically
        value = 1.0 - (1.0 - initial) * ((1.0 - final) / (1.0 - initial)) ** u
    return min(final, max(initial, value))  # rounding never leaves [initial, final]


@dataclass(frozen=True)
class Schedule:
    """A validated schedule of fractions removed, rising from ``initial`` to ``final``.

    Parameters
    ----------
    kind : one of :data:`KINDS`, or an explicit non-decreasing sequence of values, one per event
        (its last value is the final one; ``final`` must then be ``None`` or equal to it).
    final : the target ``s_f`` in ``[0, 1)``.
    initial : ``s_0`` in ``[0, s_f]`` (default 0).
    start, end, every : event positions (:func:`event_positions`).
    name : the argument named in error messages (``"sparsity"`` or ``"flop_budget"``).
    """

    kind: str | tuple[float, ...]
    final: float
    initial: float
    start: int
    end: int
    every: int

    @classmethod
    def build(
        cls,
        kind: str | Sequence[float],
        final: float | None,
        *,
        initial: float = 0.0,
        start: int,
        end: int,
        every: int,
        name: str = "sparsity",
    ) -> "Schedule":
        events = event_positions(start, end, every)
        if isinstance(kind, str):
            if kind not in KINDS:
                raise ValueError(f"schedule: expected one of {KINDS} or a sequence of values, got {kind!r}")
            if final is None:
                raise ValueError(f"{name}: a named schedule needs the final value")
            final = _check_removed(name, final)
            initial = _check_removed(f"initial_{name}", initial)
            if initial > final:
                raise ValueError(f"initial_{name}: the schedule must rise, but the initial value {initial} is beyond the final {final}")
            return cls(kind, final, initial, int(start), int(end), int(every))
        try:
            values = tuple(_check_removed("schedule", v) for v in kind)
        except TypeError:
            raise TypeError(f"schedule: expected a schedule name or a sequence of numbers, got {kind!r}") from None
        if len(values) != len(events):
            raise ValueError(f"schedule: {len(values)} values given for {len(events)} events at positions {events}")
        if any(b < a for a, b in zip(values, values[1:])):
            raise ValueError(f"schedule: the values must not decrease, got {values}")
        if final is not None and abs(_check_removed(name, final) - values[-1]) > 1e-12:
            raise ValueError(f"schedule: the last value {values[-1]} must equal the final {name} {final}")
        return cls(values, values[-1], values[0], int(start), int(end), int(every))

    @property
    def events(self) -> tuple[int, ...]:
        """Positions of the pruning events, in increasing order."""
        return event_positions(self.start, self.end, self.every)

    def __call__(self, t: float) -> float:
        """The value at position ``t``; an explicit schedule holds each value until the next event."""
        if isinstance(self.kind, str):
            return schedule_value(self.kind, t, initial=self.initial, final=self.final, start=self.start, end=self.end)
        if t < self.start:
            return self.initial
        index = int(np.searchsorted(np.asarray(self.events), t, side="right")) - 1
        return self.kind[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind if isinstance(self.kind, str) else list(self.kind),
            "final": self.final, "initial": self.initial, "start": self.start, "end": self.end, "every": self.every,
        }
