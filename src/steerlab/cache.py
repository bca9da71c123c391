"""Content-addressed on-disk caches: a key is the hash of everything that determines a result.

`JsonlStore` appends one record per finished item, so an interrupted stage resumes where it
stopped and a finished one costs nothing to re-run; `KeyedJsonlStore` does the same for records
keyed by a string (e.g. the hash of a judged text). A cache entry that cannot be read is never a
dead end: it is moved aside (`set_aside`) with one warning naming it, and redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("steerlab.cache")


def digest(*parts: Any, n: int = 16) -> str:
    """Stable short hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def set_aside(path: Path, why: str, *companions: Path) -> None:
    """Move the unreadable cache entry `path` (and its `companions`) to `<name>.damaged`, with
    one warning naming it: the caller redoes the entry, and the damaged copy stays to inspect."""
    for p in (path, *companions):
        if p.exists():
            p.replace(p.with_name(f"{p.name}.damaged"))
    log.warning("cache entry %s could not be read (%s): moved to %s.damaged, redoing it",
                path, why, path.name)  # fmt: skip


class KeyedJsonlStore:
    """Records keyed by their string field `k`, appended as they finish (flushed and fsynced);
    the latest record of a key wins. A torn last line (a write cut short by a kill) is ignored;
    any other line that is not a record with `fields` is damage: the file is set aside, its good
    records written anew, and the rest redone."""

    def __init__(self, path: Path, fields: tuple[str, ...] = ("k",)) -> None:
        self.path = path
        self.records: dict[Any, dict] = {}
        self._end: int | None = None  # a kill's fragment starts here: cut before appending
        if not path.is_file():
            return
        raw = path.read_bytes()
        lines = raw.splitlines(keepends=True)
        bad = 0
        for n, line in enumerate(lines, 1):
            try:
                rec = json.loads(line.decode("utf-8"))
                if not all(f in rec for f in fields):
                    raise ValueError(f"missing {[f for f in fields if f not in rec]}")
                self.records[self.key(rec)] = rec
            except (ValueError, TypeError):  # JSON, UTF-8 and key errors are ValueErrors
                if n == len(lines) and not line.endswith(b"\n"):  # a torn last line
                    self._end = len(raw) - len(line)
                else:
                    bad += 1
        if bad:  # damage, not a kill: the good records anew, the file as it was aside
            set_aside(path, f"{bad} unreadable line(s); {len(self.records)} record(s) kept")
            self._end = None
            with path.open("w", encoding="utf-8") as f:
                f.writelines(
                    json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values()
                )
        elif raw and not raw.endswith(b"\n") and self._end is None:  # a whole last record
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")

    def key(self, rec: dict) -> Any:
        return str(rec["k"])

    def add(self, recs: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._end is not None:  # drop the fragment a kill left: no torn line mid-file
            os.truncate(self.path, self._end)
            self._end = None
        with self.path.open("a", encoding="utf-8") as f:
            for rec in recs:
                self.records[self.key(rec)] = rec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


class JsonlStore(KeyedJsonlStore):
    """Records keyed by an integer index, appended as they finish; a torn last line is ignored."""

    def __init__(self, path: Path, fields: tuple[str, ...] = ("i",)) -> None:
        super().__init__(path, fields)

    def key(self, rec: dict) -> int:
        return int(rec["i"])

    def missing(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.records]

    def ordered(self, n: int) -> list[dict]:
        return [self.records[i] for i in range(n)]
