"""Content-addressed on-disk caches: a key is the hash of everything that determines a result.

`JsonlStore` appends one record per finished item, so an interrupted stage resumes where it
stopped and a finished one costs nothing to re-run.
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


class JsonlStore:
    """Records keyed by an integer index, appended as they finish; a torn last line is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[int, dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a write cut short by a kill
                self.records[int(rec["i"])] = rec

    def missing(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.records]

    def add(self, recs: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for rec in recs:
                self.records[int(rec["i"])] = rec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def ordered(self, n: int) -> list[dict]:
        return [self.records[i] for i in range(n)]
