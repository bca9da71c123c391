"""Content-addressed on-disk caches: a key is the hash of everything that determines a result.

`JsonlStore` appends one record per finished item, so an interrupted stage resumes where it
stopped and a finished one costs nothing to re-run; `KeyedJsonlStore` does the same for records
keyed by a string (e.g. the hash of a judged text).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def digest(*parts: Any, n: int = 16) -> str:
    """Stable short hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


class KeyedJsonlStore:
    """Records keyed by their string field `k`, appended as they finish (flushed and fsynced);
    a torn line (a write cut short by a kill) is ignored, the latest record of a key wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[Any, dict] = {}
        self._torn = False  # the file ends mid-line: the next append starts a new line
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a write cut short by a kill
                self.records[self.key(rec)] = rec

    def key(self, rec: dict) -> Any:
        return str(rec["k"])

    def add(self, recs: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if self._torn:
                f.write("\n")
                self._torn = False
            for rec in recs:
                self.records[self.key(rec)] = rec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


class JsonlStore(KeyedJsonlStore):
    """Records keyed by an integer index, appended as they finish; a torn last line is ignored."""

    def key(self, rec: dict) -> int:
        return int(rec["i"])

    def missing(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.records]

    def ordered(self, n: int) -> list[dict]:
        return [self.records[i] for i in range(n)]
