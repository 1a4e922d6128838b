"""Common machinery of the formulations: immutability, save/load (npz + JSON, no pickle)."""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from typing import Any, ClassVar

import numpy as np

from combprune import backend
from combprune._validation import check_array

FORMAT_VERSION = 1
_META_KEY = "__meta__"
_KINDS: dict[str, type["Problem"]] = {}


def check_layer(layer: Any, p: int, costs: Any = None) -> Any:
    """A validated (p,) non-negative integer layer index (or None); with ``costs``, the costs
    must be constant within each layer (``ValueError`` naming ``layer`` otherwise)."""

    if layer is None:
        return None
    layer = check_array("layer", layer, ndim=1, shape=(p,), dtype_kind="int", nonnegative=True)
    if costs is not None:
        lay = backend.to_numpy(layer)
        order = np.argsort(lay, kind="stable")
        ls, cs = lay[order], backend.to_numpy(costs)[order]
        differs = (ls[1:] == ls[:-1]) & (cs[1:] != cs[:-1])
        if np.any(differs):
            raise ValueError(f"layer: costs must be constant within a layer (layer {int(ls[1:][differs][0])} has several costs)")
    return layer


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


#: Default cap on the total declared size of the arrays of a problem file (1 GiB).
DEFAULT_MAX_BYTES = 2**30


def _declared_arrays(zf: zipfile.ZipFile, where: str, max_bytes: int) -> list[str]:
    """Names of the ``.npy`` members of ``zf`` after checking every header, before reading data.

    Each member's header (dtype, shape) is parsed from its first bytes only; object dtypes
    (pickles), members whose declared size disagrees with the archive's uncompressed size, and
    a declared total above ``max_bytes`` (a decompression bomb) are refused.
    """
    names, total = [], 0
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"path: {where}: unexpected member {info.filename!r} (not a .npy array)")
        field = info.filename[:-4]
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10_000)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10_000)
            else:
                raise ValueError(f"{field}: unsupported .npy format version {version} in {where}")
            header_len = fh.tell()
        if dtype.hasobject:
            raise ValueError(f"{field}: object arrays are not allowed in {where}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes + header_len != info.file_size:
            raise ValueError(f"{field}: declared shape {shape} does not match the stored data in {where}")
        total += nbytes
        if total > max_bytes:
            raise ValueError(
                f"path: {where} declares {total} bytes of arrays > max_bytes={max_bytes}; "
                "pass a larger max_bytes if the file is trusted"
            )
        names.append(field)
    return names


def load_problem(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Problem:
    """Read an instance written by ``Problem.save`` (any formulation).

    Array headers are checked before any data is decompressed (``max_bytes`` caps the total
    declared size); every malformed file raises ``ValueError`` naming the file and the field.
    """
    where = repr(os.fspath(path))
    try:
        with zipfile.ZipFile(os.fspath(path)) as zf:
            names = _declared_arrays(zf, where, max_bytes)
            if _META_KEY not in names:
                raise ValueError(f"path: {where} is not a combprune problem file (no metadata)")
            with np.load(os.fspath(path), allow_pickle=False) as data:
                arrays = {name: data[name] for name in names}
    except (zipfile.BadZipFile, EOFError, zlib.error, KeyError) as exc:
        raise ValueError(f"path: {where} is not a readable .npz problem file ({type(exc).__name__}: {exc})") from None
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{_META_KEY}: metadata of {where} is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{_META_KEY}: metadata of {where} must be a JSON object, got {type(meta).__name__}")
    kind = meta.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"kind: unknown problem kind {kind!r} in {where}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"format_version: expected an integer in {where}, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"format_version: file format {version} of {where} is newer than this combprune ({FORMAT_VERSION})")
    try:
        return _KINDS[kind]._from_saved(arrays, meta)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]}: missing from {where}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{exc} (in {where})") from None
