"""Problem instances of a study: generated, loaded from ``.npz`` files, built by a factory, or given.

Every instance is identified by :func:`instance_hash`, a SHA-256 over the formulation's kind,
its scalar metadata and the bytes, dtypes and shapes of its arrays. The hash does not depend
on the array namespace (NumPy / torch / CuPy data hash alike), on the instance's name or on
how it was produced, so the same problem regenerated in a later run has the same hash: that
is what lets an interrupted study resume.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from combprune import backend
from combprune.problems import Problem, load_problem, random_problem
from combprune.problems import generators as _generators

__all__ = ["Instance", "instance_hash", "generate", "from_files", "from_factory", "as_instances", "GENERATORS"]

#: Generator names accepted by :func:`generate` (the kinds of ``random_problem``).
GENERATORS: dict[str, Callable[..., Problem]] = {
    "l0_regression": _generators.random_l0_regression,
    "flop_nnz_ilp": _generators.random_flop_ilp,
    "structured_miqp": _generators.random_structured,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def instance_hash(problem: Problem) -> str:
    """Stable hex digest (16 bytes of SHA-256) of a problem's kind, metadata and arrays.

    Arrays are hashed as C-contiguous little-endian bytes together with their dtype and
    shape; a ``None`` optional array is hashed as absent. Equal problems (``==``) with equal
    dtypes have equal hashes, whatever their array namespace or device.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem: expected a combprune problem, got {type(problem).__name__}")
    h = hashlib.sha256()
    meta = json.dumps({"kind": problem.kind, **problem.metadata()}, sort_keys=True, default=_json_default)
    h.update(meta.encode("utf-8"))
    for name in problem._array_fields:
        value = getattr(problem, name)
        h.update(b"\0" + name.encode("utf-8") + b"\0")
        if value is None:
            h.update(b"<none>")
            continue
        arr = np.ascontiguousarray(backend.to_numpy(value))
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        h.update(f"{arr.dtype.str}{arr.shape}".encode("ascii"))
        h.update(arr.tobytes())
    return h.hexdigest()[:32]


def _shapes(problem: Problem) -> dict[str, list[int]]:
    return {
        name: [int(s) for s in getattr(problem, name).shape]
        for name in problem._array_fields
        if getattr(problem, name) is not None
    }


@dataclass
class Instance:
    """One problem of a study.

    Attributes
    ----------
    problem : any :class:`combprune.problems.Problem` (including ones extracted from a torch
        model by the adapter, in any array namespace).
    name : a human-readable label used in tables and plots (not part of the identity).
    info : provenance recorded with every record (generator and parameters, file path...).
    """

    problem: Problem
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    _hash: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.problem, Problem):
            raise TypeError(f"problem: expected a combprune problem, got {type(self.problem).__name__}")
        if not self.name:
            self.name = f"{self.problem.kind}-{self.hash[:8]}"

    @property
    def hash(self) -> str:
        """:func:`instance_hash` of the problem (computed once)."""
        if self._hash is None:
            self._hash = instance_hash(self.problem)
        return self._hash

    @property
    def kind(self) -> str:
        return self.problem.kind

    def describe(self) -> dict[str, Any]:
        """What every record says about this instance: kind, sense, metadata, array shapes, provenance."""
        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.problem.metadata().items()}
        return {
            "instance": self.name,
            "instance_hash": self.hash,
            "kind": self.problem.kind,
            "sense": self.problem.sense,
            "meta": meta,
            "shapes": _shapes(self.problem),
            "source": dict(self.info),
        }


def _params_label(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def generate(kind: str, *, seeds: Iterable[int] = (0,), name: str | None = None, **params: Any) -> list[Instance]:
    """Instances from :func:`combprune.problems.random_problem`, one per instance seed.

    ``kind`` is ``"l0_regression"``, ``"flop_nnz_ilp"`` or ``"structured_miqp"``; ``params``
    are the generator's keyword arguments (``n``, ``p``, ``k``, ``design``...). Names default
    to ``"{kind}[params]/s{seed}"``.
    """
    if kind not in GENERATORS:
        raise ValueError(f"generator: expected one of {sorted(GENERATORS)}, got {kind!r}")
    sig = inspect.signature(GENERATORS[kind])
    unknown = [p for p in params if p not in sig.parameters or p == "seed"]
    if unknown:
        valid = ", ".join(p for p in sig.parameters if p != "seed")
        raise ValueError(f"params.{unknown[0]}: unknown parameter of {GENERATORS[kind].__name__} (valid: {valid})")
    base = name if name else f"{kind}[{_params_label(params)}]"
    out = []
    for seed in seeds:
        problem = random_problem(kind, seed=int(seed), **params)
        info = {"generator": kind, "params": dict(params), "seed": int(seed)}
        out.append(Instance(problem, name=f"{base}/s{seed}", info=info))
    return out


def from_files(pattern: str | os.PathLike[str]) -> list[Instance]:
    """Instances read with :func:`combprune.load_problem` from a path or a glob pattern (sorted)."""
    pattern = os.fspath(pattern)
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not paths:
        raise ValueError(f"path: no file matches {pattern!r}")
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"path: no such file {path!r}")
        stem = os.path.splitext(os.path.basename(path))[0]
        out.append(Instance(load_problem(path), name=stem, info={"path": os.path.abspath(path)}))
    return out


def _import_object(ref: str) -> Any:
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"factory: expected 'package.module:function', got {ref!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:  # console scripts omit the working directory
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def from_factory(factory: str | Callable[..., Any], *, name: str | None = None, **params: Any) -> list[Instance]:
    """Instances returned by a user function (for instance layers extracted from a torch model).

    ``factory`` is a callable or an import reference ``"package.module:function"`` (the
    working directory is searched too); it is
    called with ``params`` and returns a problem, an iterable of problems, a mapping
    ``name -> problem``, or :class:`Instance` objects.
    """
    fn = _import_object(factory) if isinstance(factory, str) else factory
    if not callable(fn):
        raise TypeError(f"factory: {factory!r} is not callable")
    produced = fn(**params)
    label = name or (factory if isinstance(factory, str) else getattr(fn, "__name__", "factory"))
    info = {"factory": factory if isinstance(factory, str) else getattr(fn, "__qualname__", repr(fn)), "params": dict(params)}
    if isinstance(produced, (Problem, Instance)):
        produced = [produced]
    items = produced.items() if isinstance(produced, Mapping) else enumerate(produced)
    out = []
    for key, item in items:
        if isinstance(item, Instance):
            out.append(item)
            continue
        if not isinstance(item, Problem):
            raise TypeError(f"factory: {label} returned {type(item).__name__}, expected combprune problems")
        out.append(Instance(item, name=f"{label}/{key}", info={**info, "item": key}))
    return out


def as_instances(items: Any) -> list[Instance]:
    """Normalise what a study accepts into instances, dropping repeats of the same hash.

    Accepts a :class:`Problem`, an :class:`Instance`, a path / glob of ``.npz`` files, or an
    iterable mixing these (nested lists are flattened).
    """
    if isinstance(items, (Problem, Instance, str, os.PathLike)):
        items = [items]
    out: list[Instance] = []
    seen: set[str] = set()

    def add(item: Any) -> None:
        if isinstance(item, Instance):
            inst = item
        elif isinstance(item, Problem):
            inst = Instance(item)
        elif isinstance(item, (str, os.PathLike)):
            for inst in from_files(item):
                add(inst)
            return
        elif isinstance(item, Iterable):
            for sub in item:
                add(sub)
            return
        else:
            raise TypeError(f"instances: cannot make an instance from {type(item).__name__}")
        if inst.hash in seen:
            return
        seen.add(inst.hash)
        out.append(inst)

    add(items)
    return out

