"""Steering your own model with a vector steerlab found: the Python API.

    from steerlab.api import load
    best = load("multirun/smollm2/evil/natural-mean_diff-10/residual-tpe")  # best valid trial
    with best.apply(model):               # any Hugging Face causal LM you loaded yourself
        out = model.generate(**inputs)

`load` takes what a user has after a search: a vector file (then give `layer` and `coef`), a
saved ensemble (name or `.json`), a sweep folder or an MLflow run id (a sweep's parent run means
its best valid trial, a trial's run that trial; `steerlab.studies` reads them), or a file
`python -m steerlab.export` wrote. It returns a `Steering`: the terms `coef x vector` to add, in
relative units (x the layer's activation norm stored in the file) or absolute ones, and where
they came from. `apply` adds them with the same hooks the search used, to every row of any batch,
and always removes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab.studies import Found, LoadError
from steerlab.vectors import UNITS, TraitVectors

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel
    from steerlab.portable import Exported
    from steerlab.steering import Terms

__all__ = ["LoadError", "Steering", "Term", "load"]

RUN_ID = re.compile(r"[0-9a-f]{32}")
META_KEYS = (  # what a vector file says about itself, kept in a steering's provenance
    "model",
    "model_ref",
    "variant",
    "trait",
    "source",
    "position",
    "method",
    "component",
    "dataset_hash",
    "steerlab_version",
    "imported_from",
)


@dataclass(frozen=True, eq=False)
class Term:
    """Add `coef` (in the steering's units) x the file's direction at `layer`."""

    vectors: TraitVectors
    layer: int
    coef: float


@dataclass(frozen=True, eq=False)
class Steering:
    """Terms to add to a model's activations, with where they came from.

    `vectors` is the (first) vector file: `at` picks another layer or coefficient from it. A
    bare vector file has no terms until `at(layer=..., coef=...)` gives them.
    """

    vectors: TraitVectors
    terms: tuple[Term, ...] = ()
    units: str = "relative"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise LoadError(f"unknown coef units {self.units!r}; valid: {', '.join(UNITS)}")
        for t in self.terms:  # a NaN or infinite coefficient would write NaN activations
            if not math.isfinite(t.coef):
                raise LoadError(f"coefficient {t.coef} at layer {t.layer} is not a finite number")

    @property
    def component(self) -> str:
        return str(self.vectors.meta.get("component", "residual"))

    @property
    def layers(self) -> list[int]:
        return [t.layer for t in self.terms]

    @property
    def coef(self) -> float | None:
        """The coefficient of a single-layer steering (None for an ensemble or a bare file)."""
        return self.terms[0].coef if len(self.terms) == 1 else None

    def at(
        self, layer: int | None = None, coef: float | None = None, units: str | None = None
    ) -> Steering:
        """One layer x coef of this vector: another layer, coefficient or units. A changed
        `units` needs its `coef` (the same number means another strength)."""
        if len(self.terms) > 1:
            raise LoadError(
                f"this steering has {len(self.terms)} terms (layers {self.layers}); scale it "
                "with .scaled(factor), or load its vector file to steer one layer"
            )
        old = self.terms[0] if self.terms else None
        if units is not None and units != self.units and coef is None:
            raise LoadError(f"changing units to {units!r} needs coef= in those units")
        layer = old.layer if layer is None and old else layer
        coef = old.coef if coef is None and old else coef
        if layer is None or coef is None:
            have = self.vectors.layers
            raise LoadError(
                f"give layer= and coef= to steer with this vector file (it has directions for "
                f"layers {have[0]}..{have[-1]})"
            )
        self.vectors.term(layer, coef, units or self.units)  # checks layer and units now
        return replace(
            self, terms=(Term(self.vectors, layer, float(coef)),), units=units or self.units
        )

    def scaled(self, factor: float) -> Steering:
        """Every coefficient times `factor` (-1 flips the direction)."""
        if not math.isfinite(factor):
            raise LoadError(f"scale {factor} is not a finite number")
        return replace(
            self, terms=tuple(Term(t.vectors, t.layer, t.coef * factor) for t in self.terms)
        )

    def steer_terms(self) -> Terms:
        """The hook terms: unit direction x absolute coefficient, per term."""
        if not self.terms:
            have = self.vectors.layers
            raise LoadError(
                "a vector file has no layer and coefficient of its own: give layer= and coef= "
                f"(load(FILE, layer=..., coef=...) or .at(...); layers {have[0]}..{have[-1]})"
            )
        return tuple(t.vectors.term(t.layer, t.coef, self.units) for t in self.terms)

    def absolute(self) -> list[tuple[int, float]]:
        """(layer, coefficient in absolute units) per term."""
        return [(t.layer, t.vectors.absolute(t.layer, t.coef, self.units)) for t in self.terms]

    def deltas(self) -> dict[int, torch.Tensor]:
        """The vector added at each layer (terms at one layer summed), float32, absolute."""
        out: dict[int, torch.Tensor] = {}
        for s in self.steer_terms():
            add = s.coef * s.vector.detach().float().cpu()
            out[s.layer] = out[s.layer] + add if s.layer in out else add
        return dict(sorted(out.items()))

    def describe(self) -> str:
        """One line: where, how strong, of what, from where."""
        m, p = self.vectors.meta, self.provenance
        where = (
            ", ".join(f"L{t.layer}={t.coef:.3g}" for t in self.terms)
            if len(self.terms) != 1
            else f"layer {self.terms[0].layer} coef {self.terms[0].coef:.3g}"
        )
        what = " ".join(str(m[k]) for k in ("trait", "source", "position", "method") if k in m)
        text = f"{where or 'no layer yet'} ({self.units}) {self.component} {what}".rstrip()
        if "model" in m:
            text += f" [{m['model']}]"
        if p.get("kind") in ("sweep", "trial") and p.get("trial") is not None:
            scores = p.get("scores") or {}
            text += f"; {p['kind']} trial {p['trial']}" + (
                f" (trait {scores['trait']:.1f}, coherence {scores['coherence']:.1f})"
                if {"trait", "coherence"} <= set(scores)
                else ""
            )
        return text

    @contextmanager
    def apply(self, model: Any, arch: dict[str, str] | None = None) -> Iterator[Any]:
        """Steer `model` (a Hugging Face causal LM, or a steerlab `LoadedModel`) inside the
        block: every forward pass, every row, every position. `arch` overrides the layer and
        component module names for architectures steerlab does not know. Yields the model."""
        from steerlab.models import LoadedModel, hook_target
        from steerlab.steering import steer

        target = model if isinstance(model, LoadedModel) else hook_target(model, arch)
        self.check(target)
        with steer(target, [self.steer_terms()], every_row=True):
            yield model

    def check(self, target: LoadedModel) -> None:
        """The model must have this vector's hidden size and layers."""
        d = int(self.vectors.vectors.shape[1])
        if target.hidden_size != d:
            made = self.vectors.meta.get("model", "another model")
            raise LoadError(
                f"the vector has hidden size {d} ({made}) but the model has {target.hidden_size}"
            )
        bad = [la for la in self.layers if not 0 <= la < target.n_layers]
        if bad:
            raise LoadError(f"layer(s) {bad} outside the model's layers 0..{target.n_layers - 1}")


def load(
    ref: str | Path,
    *,
    layer: int | None = None,
    coef: float | None = None,
    units: str | None = None,
    store: str | Path | None = None,
    root: str | Path = ".",
) -> Steering:
    """A steering from a vector file, an exported file, a saved ensemble (name or .json), a
    sweep or trial folder, or an MLflow run id. `layer`/`coef`/`units` replace the loaded ones
    (a vector file needs them). `store`: the MLflow store (a root folder or a server URL) that
    holds a sweep's runs, by default found from the sweep's own configs; `root`: where
    `ensembles/` and, for a run id, the default store are."""
    from steerlab import studies
    from steerlab.ensembles import ensemble_path

    text, root = str(ref), Path(root).expanduser()
    path = Path(text).expanduser()
    if path.is_dir():
        s = from_found(studies.from_folder(path, store), path)
    elif path.is_file() and path.suffix == ".json":
        s = from_json(path)
    elif path.is_file():
        s = from_file(path)
    elif RUN_ID.fullmatch(text):
        s = from_found(studies.from_run(text, store if store is not None else root), text)
    elif (ens := ensemble_path(text, root)).is_file():
        s = from_ensemble(ens)
    else:
        saved = sorted(p.stem for p in (root / "ensembles").glob("*.json"))
        raise LoadError(
            f"{text!r} is not a vector file, a sweep or trial folder, an MLflow run id (32 hex "
            f"characters) or a saved ensemble (in {root / 'ensembles'}: {saved or 'none'})"
        )
    if layer is not None or coef is not None or units is not None:
        s = s.at(layer, coef, units)
    return s


def provenance(kind: str, ref: str | Path, vectors: TraitVectors, **more: Any) -> dict[str, Any]:
    """Where a steering came from: the reference, the run or file, the vector's own metadata."""
    meta = {k: vectors.meta[k] for k in META_KEYS if k in vectors.meta}
    return {"kind": kind, "ref": str(ref)} | more | {"vector": meta}


def from_file(path: Path) -> Steering:
    """A steerlab vector file (no terms yet; units: the file's default, relative unless it was
    imported without norms) or an exported file (its terms, absolute)."""
    from steerlab import portable
    from steerlab.vectors import VectorFileError, load_vectors

    path = path.resolve()
    try:
        exported = portable.read(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise VectorFileError(f"{path}: not a safetensors file ({e})") from None
    if exported is None:
        vecs = load_vectors(path)
        prov = provenance("file", path, vecs, vector_files=[str(path)])
        units = vecs.meta.get("coef_units_default", "relative")  # imports: absolute
        return Steering(vecs, units=units if units in UNITS else "relative", provenance=prov)
    return from_exported(path, exported)


def from_found(found: Found, ref: str | Path) -> Steering:
    """Terms a sweep or run recorded, each vector file loaded once."""
    from steerlab.vectors import load_vectors

    files: dict[str, TraitVectors] = {}
    for f, _, _ in found.terms:
        files.setdefault(f, load_vectors(Path(f)))
    terms = tuple(Term(files[f], la, c) for f, la, c in found.terms)
    first = files[found.terms[0][0]]
    comps = {v.meta.get("component") for v in files.values()}
    if len(comps) > 1:
        raise LoadError(f"{ref}: its vector files steer different components {sorted(comps)}")
    more = {k: v for k, v in found.provenance.items() if k not in ("kind", "ref")}
    prov = provenance(found.provenance.get("kind", "sweep"), ref, first, **more)
    prov["vector_files"] = list(files)
    return Steering(first, terms, found.units, prov)


def from_exported(path: Path, ex: Exported) -> Steering:
    """An exported file back as a steering: its layers at their absolute coefficients."""
    import torch

    meta, dirs = ex.meta, ex.directions
    d = len(next(iter(dirs.values())))
    n_layers = int(meta.get("n_layers") or max(dirs) + 1)
    rows = torch.zeros(n_layers, d)
    for la, v in dirs.items():
        rows[la] = v
    keep = {k: meta[k] for k in META_KEYS if k in meta}
    vecs = TraitVectors(
        rows,
        keep
        | {"component": meta["component"], "layers": sorted(dirs), "hidden_size": d}
        | {"imported_from": str(path), "n_layers": n_layers},
    )
    terms = tuple(Term(vecs, la, ex.coef_absolute[la]) for la in sorted(dirs))
    prov = {"kind": "export", "ref": str(path), "exported": meta.get("provenance", {})}
    return Steering(vecs, terms, "absolute", prov)


def from_json(path: Path) -> Steering:
    """A saved ensemble, or a vector file's JSON sidecar (meaning its safetensors file)."""
    import json

    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise LoadError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict) and "vector_file" in data:
        return from_ensemble(path)
    if path.with_suffix(".safetensors").is_file():
        return from_file(path.with_suffix(".safetensors"))
    raise LoadError(f"{path}: neither a saved ensemble nor a vector file's JSON sidecar")


def from_ensemble(path: Path) -> Steering:
    """A saved ensemble: its layers and weights over one vector file."""
    from steerlab.ensembles import load_ensemble
    from steerlab.vectors import load_vectors

    ens = load_ensemble(str(path), path.parent)
    vecs = load_vectors(Path(ens.vector_file))
    terms = tuple(Term(vecs, la, w) for la, w in zip(ens.layers, ens.weights, strict=True))
    scores = {
        k: v for k, v in (("trait", ens.trait), ("coherence", ens.coherence)) if v is not None
    }
    prov = provenance(
        "ensemble", path.resolve(), vecs, vector_files=[ens.vector_file], scores=scores
    )
    return Steering(vecs, terms, ens.coef_units, prov)
