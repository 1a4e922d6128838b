"""Common machinery of the formulations: immutability, save/load (npz + JSON, no pickle)."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import numpy as np

from combprune import backend

FORMAT_VERSION = 1
_META_KEY = "__meta__"
_KINDS: dict[str, type["Problem"]] = {}


class Problem:
    """Base class of the formulations.

    Subclasses declare ``kind`` (the name stored on disk), ``sense`` (``"min"``/``"max"``),
    ``_array_fields`` (names of array attributes saved to the npz) and ``_scalar_fields``
    (JSON metadata), and implement ``objective``, ``check`` and ``_from_saved``.
    """

    kind: ClassVar[str]
    sense: ClassVar[str] = "min"
    default_solver: ClassVar[str]
    _array_fields: ClassVar[tuple[str, ...]] = ()
    _scalar_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    # Immutability -------------------------------------------------------------------------
    _frozen: bool = False

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    # Array namespace ------------------------------------------------------------------------
    @property
    def xp(self):
        """Array-API namespace of the problem's data (NumPy, torch, CuPy)."""
        return backend.namespace(*(getattr(self, f) for f in self._array_fields))

    # Interface ------------------------------------------------------------------------------
    def objective(self, x: Any) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, x: Any) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def is_feasible(self, x: Any) -> bool:
        """``check(x) == []``."""
        return not self.check(x)

    def metadata(self) -> dict[str, Any]:
        """The scalar fields as a JSON-serialisable dict."""
        return {name: getattr(self, name) for name in self._scalar_fields}

    # Persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the instance to ``path`` (``.npz``): arrays, plus JSON metadata, no pickle."""
        arrays = {}
        present = []
        for name in self._array_fields:
            value = getattr(self, name)
            if value is not None:
                arrays[name] = backend.to_numpy(value)
                present.append(name)
        meta = {"kind": self.kind, "format_version": FORMAT_VERSION, "arrays": present, **self.metadata()}
        arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        with open(os.fspath(path), "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "Problem":  # pragma: no cover
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        if self.metadata() != other.metadata():
            return False
        for name in self._array_fields:
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and not np.array_equal(backend.to_numpy(a), backend.to_numpy(b)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def load_problem(path: str | os.PathLike[str]) -> Problem:
    """Read an instance written by ``Problem.save`` (any formulation)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if _META_KEY not in data.files:
            raise ValueError(f"path: {os.fspath(path)!r} is not a combprune problem file (no metadata)")
        meta = json.loads(data[_META_KEY].tobytes().decode("utf-8"))
        arrays = {name: data[name] for name in data.files if name != _META_KEY}
    kind = meta.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"path: unknown problem kind {kind!r} in {os.fspath(path)!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"path: file format {meta['format_version']} is newer than this combprune ({FORMAT_VERSION})")
    return _KINDS[kind]._from_saved(arrays, meta)
