"""Saved multi-layer ensembles: per-layer weights over one vector file, reusable by name.

`steering.ensemble=NAME` loads `<paths.root>/ensembles/NAME.json` (or a path).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steerlab.steering import Terms


@dataclass(frozen=True)
class Ensemble:
    vector_file: str
    component: str
    layers: list[int]
    weights: list[float]
    coef_units: str = "relative"
    trait: float | None = None  # the search's measured scores, for reference
    coherence: float | None = None

    def terms(self) -> Terms:
        from steerlab.vectors import load_vectors

        vecs = load_vectors(Path(self.vector_file))
        return tuple(
            vecs.term(la, w, self.coef_units)
            for la, w in zip(self.layers, self.weights, strict=True)
        )


def ensemble_path(name: str, root: Path) -> Path:
    p = Path(name)
    return p if p.suffix == ".json" else root / "ensembles" / f"{name}.json"


def save_ensemble(ens: Ensemble, name: str, root: Path) -> Path:
    path = ensemble_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(ens), indent=1))
    return path


def load_ensemble(name: str, root: Path) -> Ensemble:
    path = ensemble_path(name, root)
    if not path.is_file():
        have = sorted(p.stem for p in (root / "ensembles").glob("*.json"))
        raise FileNotFoundError(f"ensemble {name!r} not found at {path}; saved: {have or 'none'}")
    return Ensemble(**json.loads(path.read_text()))
