"""Solver registry.

A solver is a function ``fn(problem, *, deadline, seed, **options) -> Result`` registered under a
name with :func:`register_solver`. Built-in solvers live in ``combprune.solvers`` (every module
there is imported on first use, so a new module registers itself with no edit elsewhere);
third-party packages register through the entry-point group ``combprune.solvers``, whose
entries point at a module (imported for its ``register_solver`` side effects) or at a
callable taking no argument that registers its solvers.

Solver functions receive ``deadline`` (a :class:`combprune.result.Deadline`) instead of a raw
``time_limit`` and must return the best feasible point with status ``time_limit`` when it
expires. Optional dependencies are imported inside the function, never at module import, so
listing solvers stays cheap and a missing extra only matters when that solver is used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .params import Boolean, check_declarations, describe

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "combprune.solvers"

__all__ = [
    "SolverSpec",
    "register_solver",
    "get_solver",
    "free_warm_start",
    "list_solvers",
    "MissingDependencyError",
    "UnknownSolverError",
    "SolverImportError",
    "discover",
]


class MissingDependencyError(ImportError):
    """A solver's optional dependency is not installed; the message names the extra."""


class UnknownSolverError(ValueError):
    """No solver is registered under the requested name."""


@dataclass(frozen=True)
class SolverSpec:
    """What the registry knows about one solver."""

    name: str
    func: Callable[..., Any]
    problems: tuple[type, ...]
    exact: bool
    requires: tuple[str, ...] = ()
    extra: str | None = None
    description: str = ""
    options: tuple[str, ...] = field(default=())
    params: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """True when every module in ``requires`` can be imported."""
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    @property
    def missing(self) -> list[str]:
        return [mod for mod in self.requires if importlib.util.find_spec(mod) is None]

    def supports(self, problem: Any) -> bool:
        return isinstance(problem, self.problems)

    def ensure_available(self) -> None:
        missing = self.missing
        if missing:
            extra = f"combprune[{self.extra}]" if self.extra else " ".join(missing)
            raise MissingDependencyError(
                f"solver {self.name!r} needs {', '.join(missing)}: install it with `pip install {extra}`"
            )

    def option_rows(self) -> list[dict[str, Any]]:
        """One row per option: its name, what it accepts (from ``params``) and its default."""
        return [
            {"option": opt, "accepts": describe(self.params[opt]) if opt in self.params else "any (undeclared)",
             "default": self.defaults.get(opt)}
            for opt in self.options
        ]

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "problems": [cls.__name__ for cls in self.problems],
            "kind": "exact" if self.exact else "heuristic",
            "available": self.available,
            "extra": self.extra,
            "description": self.description,
        }


_REGISTRY: dict[str, SolverSpec] = {}
_DISCOVERED = False


def register_solver(
    name: str,
    *,
    problems: type | Iterable[type],
    exact: bool,
    requires: Iterable[str] = (),
    extra: str | None = None,
    description: str = "",
    params: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn(problem, *, deadline, seed, **options) -> Result`` as ``name``.

    The keyword-only parameters of ``fn`` other than ``deadline`` and ``seed`` are the solver's
    options; ``combprune.solve`` rejects any other option with an error naming it. ``params``
    declares each option's type and range with the constraints of :mod:`combprune.params`
    (built-in solvers declare every option; an undeclared option whose default is a bool is
    checked as :class:`~combprune.params.Boolean`, any other undeclared one is passed as given).
    """
    problems = (problems,) if isinstance(problems, type) else tuple(problems)
    if not name or not isinstance(name, str):
        raise ValueError("name: a solver needs a non-empty string name")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn).parameters
        options = tuple(
            p for p, par in signature.items() if par.kind is inspect.Parameter.KEYWORD_ONLY and p not in {"deadline", "seed"}
        )
        declared = check_declarations(params or {}, options, f"solver {name!r}")
        for opt in options:
            if opt not in declared and isinstance(signature[opt].default, bool):
                declared[opt] = Boolean()
        if name in _REGISTRY and _REGISTRY[name].func is not fn:
            logger.warning("solver %r re-registered by %s", name, fn.__module__)
        _REGISTRY[name] = SolverSpec(
            name=name,
            func=fn,
            problems=problems,
            exact=exact,
            requires=tuple(requires),
            extra=extra,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0],
            options=options,
            params=declared,
            defaults={opt: signature[opt].default for opt in options},
        )
        return fn

    return decorator


class SolverImportError(ImportError):
    """A built-in solver module failed to import (a broken installation, never skipped)."""


def _discover() -> None:
    """Import every built-in solver module and the third-party entry points (once).

    A built-in module that fails to import raises :class:`SolverImportError` (every call, until
    it is fixed): silently dropping a built-in solver would let callers and tests fall back to
    another one unnoticed. A broken third-party plugin is logged and skipped.
    """
    global _DISCOVERED
    if _DISCOVERED:
        return
    import combprune.solvers as builtin

    for mod in pkgutil.iter_modules(builtin.__path__):
        if not mod.name.startswith("_"):
            try:
                importlib.import_module(f"{builtin.__name__}.{mod.name}")
            except Exception as exc:
                raise SolverImportError(
                    f"built-in solver module combprune.solvers.{mod.name} failed to import ({type(exc).__name__}: {exc}); "
                    "the installation is broken"
                ) from exc
    _DISCOVERED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj):
                obj()
        except Exception:  # a broken plugin must not break the built-in solvers
            logger.exception("failed to load combprune solver plugin %r", ep.name)


def discover() -> None:
    """Import every solver now (built-in and plugins); later calls are free.

    :func:`combprune.solve` calls it before starting a solver's clock, so the one-off imports
    never count against a ``time_limit``.
    """
    _discover()


def get_solver(name: str) -> SolverSpec:
    """The registered solver ``name`` (``UnknownSolverError`` lists the known names)."""
    _discover()
    if not isinstance(name, str):
        raise TypeError(f"solver: expected a solver name (str), got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownSolverError(f"solver: unknown solver {name!r}; registered solvers: {known}") from None


def free_warm_start(name: str, options: Any) -> bool:
    """True when solver ``name`` declares a ``warm_start`` option that ``options`` leave unset
    (a caller may then pass its own start point)."""
    return "warm_start" in get_solver(name).options and "warm_start" not in options


def list_solvers(problem: Any = None) -> list[dict[str, Any]]:
    """Table of solvers: name, formulations, exact/heuristic, availability, providing extra.

    ``problem`` may be a problem instance or class; only solvers for it are listed.
    """
    _discover()
    rows = []
    for spec in sorted(_REGISTRY.values(), key=lambda s: s.name):
        if problem is not None:
            cls = problem if isinstance(problem, type) else type(problem)
            if not issubclass(cls, spec.problems):
                continue
        rows.append(spec.row())
    return rows
