"""Declared solver options: types, ranges and choices, checked once by :func:`combprune.solve`.

A solver declares each keyword option with one constraint, or a list of constraints of which
any may hold (scikit-learn's ``_parameter_constraints`` is the model)::

    @register_solver("mysolver", problems=L0Regression, exact=False, params={
        "max_iter": Interval(int, 1, None),
        "tol": Interval(float, 0, None),
        "warm_start": [Options({"magnitude", "zeros"}), ArrayLike(), None],
        "refine": Boolean(),
    })

``None`` in a list means "``None`` is allowed". :func:`combprune.solve`, the study config
(``combprune study``) and ``combprune solvers --options NAME`` all read these declarations; a
value that satisfies none of its constraints raises :class:`InvalidOptionError`, whose message
starts with the option's name and says what is expected. Checks that need the problem (an
array's shape, a support's size) stay in the solver.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Constraint",
    "Interval",
    "Options",
    "Boolean",
    "ArrayLike",
    "Table",
    "InstanceOf",
    "InvalidOptionError",
    "validate_options",
    "describe",
]


class InvalidOptionError(TypeError, ValueError):
    """An option value outside its declaration.

    Both a ``TypeError`` and a ``ValueError``, so callers catching either (the convention for a
    wrong kind of value and for a wrong value) see it.
    """


class Constraint:
    """One acceptable kind of value; subclasses define ``kind``, ``accepts_type``, ``accepts``
    and ``__str__`` (``kind`` names the type in errors such as ``expected int, got str``)."""

    kind: str = "value"

    def accepts_type(self, value: Any) -> bool:
        """Whether ``value`` has an acceptable type (its range may still be wrong)."""
        return self.accepts(value)

    def accepts(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The value the solver receives (e.g. ``numpy.int64(3)`` -> ``3``); only called when accepted."""
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self}>"


def _is_integral(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


class Interval(Constraint):
    """A number of type ``int`` or ``float`` in an interval (``None`` bound: unbounded).

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``. A ``float`` interval
    accepts integers too and always rejects NaN and infinities.
    """

    def __init__(self, kind: type, low: float | None, high: float | None, *, closed: str = "both") -> None:
        if kind not in (int, float):
            raise ValueError(f"kind: expected int or float, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed: expected 'both', 'left', 'right' or 'neither', got {closed!r}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"low: {low} exceeds high {high}")
        self.type, self.low, self.high, self.closed = kind, low, high, closed
        self.kind = kind.__name__

    def accepts_type(self, value: Any) -> bool:
        return _is_integral(value) if self.type is int else _is_real(value)

    def accepts(self, value: Any) -> bool:
        if not self.accepts_type(value):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (v == self.low and self.closed in ("right", "neither"))):
            return False
        if self.high is not None and (v > self.high or (v == self.high and self.closed in ("left", "neither"))):
            return False
        return True

    def convert(self, value: Any) -> Any:
        return int(value) if self.type is int else float(value)

    def __str__(self) -> str:
        name = "an int" if self.type is int else "a finite number"
        if self.low is None and self.high is None:
            return name
        if self.high is None:
            return f"{name} {'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        if self.low is None:
            return f"{name} {'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{name} in {left}{self.low:g}, {self.high:g}{right}"


class Options(Constraint):
    """One of a fixed set of values (strings, in practice), compared by value and type."""

    def __init__(self, values: Iterable[Any]) -> None:
        self.values = tuple(sorted(values, key=repr))
        if not self.values:
            raise ValueError("values: an Options constraint needs at least one value")
        self.kind = str(self)

    def accepts_type(self, value: Any) -> bool:
        return any(type(value) is type(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


class Boolean(Constraint):
    """``True`` or ``False`` (``numpy.bool_`` too); strings such as ``"no"`` and numbers are rejected."""

    kind = "bool"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def convert(self, value: Any) -> bool:
        return bool(value)

    def __str__(self) -> str:
        return "True or False"


class ArrayLike(Constraint):
    """An array of any namespace (NumPy, CuPy, torch) or a (nested) list / tuple of numbers;
    its shape is checked by the solver, which knows the problem."""

    kind = "array"

    def accepts(self, value: Any) -> bool:
        from . import backend

        return backend.is_array(value) or isinstance(value, (list, tuple))

    def __str__(self) -> str:
        return "an array"


class Table(Constraint):
    """A dict with string keys (e.g. options passed on to an inner solver)."""

    kind = "dict"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)

    def __str__(self) -> str:
        return "a dict of options"


class InstanceOf(Constraint):
    """An instance of a class (e.g. :class:`combprune.result.Result` as a warm start)."""

    def __init__(self, cls: type, label: str | None = None) -> None:
        self.cls, self.label = cls, label or cls.__name__
        self.kind = self.label

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.cls)

    def __str__(self) -> str:
        return f"a {self.label}"


Declaration = Constraint | None | Sequence["Constraint | None"]


def _alternatives(declaration: Declaration) -> list[Constraint | None]:
    if isinstance(declaration, (list, tuple)):
        return list(declaration)
    return [declaration]


def describe(declaration: Declaration) -> str:
    """``declaration`` in words, e.g. ``"an int in [1, inf) or None"``."""
    return " or ".join("None" if c is None else str(c) for c in _alternatives(declaration))


def check_declarations(params: Mapping[str, Declaration], options: Sequence[str], owner: str) -> dict[str, Declaration]:
    """Validate a solver's declarations against its keyword options (programming errors)."""
    extra = sorted(set(params) - set(options))
    if extra:
        raise ValueError(f"params: {owner} declares {', '.join(extra)}, which are not keyword options of its function")
    for name, declaration in params.items():
        for alt in _alternatives(declaration):
            if alt is not None and not isinstance(alt, Constraint):
                raise TypeError(f"params: {owner} option {name!r}: expected Constraint instances or None, got {alt!r}")
    return dict(params)


def validate_options(params: Mapping[str, Declaration], options: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """The options converted per their declarations; undeclared options pass through unchecked.

    Raises :class:`InvalidOptionError` naming the first option (prefixed by ``where``) whose
    value satisfies none of its constraints: ``max_iter: expected int, got str ('10')`` when no
    constraint accepts the value's type, ``max_iter: expected an int in [1, inf), got 0`` when
    the type is right but the value is not.
    """
    out = dict(options)
    for name, value in options.items():
        if name not in params:
            continue
        for alt in _alternatives(params[name]):
            if alt is None:
                if value is None:
                    break
            elif alt.accepts(value):
                out[name] = alt.convert(value)
                break
        else:
            raise InvalidOptionError(_mismatch(f"{where}{name}", params[name], value))
    return out


def _mismatch(label: str, declaration: Declaration, value: Any) -> str:
    alternatives = _alternatives(declaration)
    if not any(alt is not None and alt.accepts_type(value) for alt in alternatives):
        kinds = " or ".join("None" if alt is None else alt.kind for alt in alternatives)
        return f"{label}: expected {kinds}, got {type(value).__name__} ({value!r})"
    return f"{label}: expected {describe(declaration)}, got {value!r}"
