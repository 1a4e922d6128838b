"""Append-only JSON-lines record store: what makes a study resumable.

Each finished solve is one line ``{"key": ..., ...}`` written with a single ``write`` on a
file opened in append mode, then ``flush`` + ``fsync``: a crash (even ``SIGKILL``) leaves
either the whole line or, at worst, a truncated last line. A truncated last line (no
trailing newline, not valid JSON) is ignored when reading and cut off before the next append,
so resuming never loses a complete record nor duplicates one. A torn record elsewhere (a line
starting like a record, ``{"key"``, that is not valid JSON: a writer killed mid-line) is
skipped with a warning and its solve runs again on resume; any other malformed line is an
error naming the file and line. When a key appears twice
(a re-run of failed solves) the later line wins.

One runner at a time: :meth:`RecordStore.lock` takes an exclusive ``fcntl.flock`` on
``<path>.lock`` (released by :meth:`RecordStore.unlock` or when the process dies); a second
runner on the same file gets a ``ValueError`` instead of repeating every solve.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from typing import Any, Iterator

logger = logging.getLogger(__name__)

__all__ = ["RecordStore", "read_records"]


def _parse(path: str) -> tuple[list[dict[str, Any]], int]:
    """Records of ``path`` and the byte offset where the valid content ends."""
    records: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        data = fh.read()
    end = 0
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        is_last = lineno == len(lines)
        if is_last:
            if raw.strip():
                # no trailing newline: an interrupted write
                logger.warning("%s: ignoring a truncated last line (%d bytes)", path, len(raw))
            break
        stripped = raw.strip()
        if stripped:
            try:
                rec = json.loads(stripped)
            except json.JSONDecodeError as exc:
                if not stripped.startswith(b'{"key"'):
                    raise ValueError(f"{path}:{lineno}: not a valid JSON record ({exc.msg})") from None
                # a torn write (a writer killed mid-line, the next record glued to it): the
                # solve is simply not recorded and runs again on resume
                logger.warning("%s:%d: skipping a torn record (%s)", path, lineno, exc.msg)
                end += len(raw) + 1
                continue
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError(f"{path}:{lineno}: not a study record (no 'key')")
            records.append(rec)
        end += len(raw) + 1
    return records, end


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete records of a results file, the last one per key, in file order."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"results: no such file {path!r}")
    records, _ = _parse(path)
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        latest.pop(rec["key"], None)
        latest[rec["key"]] = rec
    return list(latest.values())


class RecordStore:
    """A results file (``path``) or, with ``path=None``, an in-memory list of records."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._records: dict[str, dict[str, Any]] = {}
        if self.path is not None and os.path.exists(self.path):
            records, end = _parse(self.path)
            if end < os.path.getsize(self.path):
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
                    fh.flush()
                    os.fsync(fh.fileno())
            for rec in records:
                self._records.pop(rec["key"], None)
                self._records[rec["key"]] = rec

    _lock_fd: int | None = None

    def lock(self) -> None:
        """Take the file's runner lock (non-blocking); ``ValueError`` if another runner holds it."""
        if self.path is None or self._lock_fd is not None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"output: {self.path!r} is being written by another study runner (lock {self.path + '.lock'!r}); "
                "wait for it to finish or use another output file"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the runner lock (no-op when not held)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._records.values()))

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def discard(self, key: str) -> None:
        """Forget ``key`` in memory (its line stays in the file; a new record will supersede it)."""
        self._records.pop(key, None)

    def append(self, record: dict[str, Any]) -> None:
        """Add ``record`` (must have a ``key``) and, for a file store, append it durably."""
        record = _sanitize(record)
        line = json.dumps(record, allow_nan=False, default=_default) + "\n"
        if self.path is not None:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                data = line.encode("utf-8")
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        self._records.pop(record["key"], None)
        self._records[record["key"]] = record


def _sanitize(value: Any) -> Any:
    """Replace non-finite floats (not representable in JSON) by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
