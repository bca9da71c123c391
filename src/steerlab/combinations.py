"""Combination strategies: the best instruction and best natural vectors of an earlier experiment
(`combine.experiment`, default model_diff) combined four ways and compared with the best single.

`combine.strategy=NAME` is placed as typed steering/search values on the study's config, so every
strategy is an ordinary study of the sweeper (resumable, batched, logged) over a fixed vector file:

- combined@natural_layer / combined@instruction_layer: the combined vector (unit instruction +
  unit natural, renormalised) at that source's best layer, coef searched;
- combined@best_layer: the combined vector, layer x coef searched;
- ensemble_half: instruction at its best layer and natural at its best layer, each at half its
  best coef, the pair scaled by a searched multiplier (1.0 = exactly half strength, tried first);
- best_single: the best of the two vectors again at its best layer, coef searched, so the Pareto
  note compares like with like.
Each study first tries the source's own best coefficient(s) (enqueued).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from steerlab import records, tracking
from steerlab.config import MixTerm, cache_of, root_of
from steerlab.vectors import TraitVectors, load_vectors

STRATEGIES = (
    "combined@natural_layer",
    "combined@instruction_layer",
    "combined@best_layer",
    "ensemble_half",
    "best_single",
)
HALF_SCALE = (0.5, 2.0)  # ensemble_half's multiplier range around exactly half strength
# settings that must match the source study, or its best layer/coef mean something else
MUST_MATCH = (
    "steering.n_questions",
    "confirm.n_questions",  # the held-out questions the report pairs with the source studies
    "steering.max_new_tokens",
    "steering.coef_units",
    "judge.backend",
)


class CombineError(ValueError):
    """The source experiment cannot supply what a strategy needs."""


@dataclass(frozen=True)
class Best:
    """The best valid single-layer trial of one source in the source experiment."""

    source: str
    key: str  # e.g. inst_md, nat10_pr
    layer: int
    coef: float
    trait: float
    delta: float
    vector: str  # the vector file that trial steered with
    run_id: str
    params: dict[str, str]  # the source sweep's params (for the MUST_MATCH check)


def find_best(store: tracking.Store, experiment: str, model: str, trait: str) -> dict[str, Best]:
    """Best residual trial per source ('instruction', 'natural') of one model x trait."""
    client = tracking.client(store)
    keys = [
        k
        for k in tracking.read_keys(client, experiment)
        if k.model == model and k.trait == trait and k.component == "residual"
    ]
    out = {}
    for src in records.SOURCES:
        found = records.best_of(k for k in keys if k.source == src)
        if found is None:
            continue
        key, t, sweep = found
        path = tracking.vector_path(client, t, sweep)
        if t.layer is None or t.coef is None or not path:
            continue
        out[src] = Best(
            src,
            key.name,
            t.layer,
            t.coef,
            t.trait,
            t.delta,
            path,
            t.run_id or sweep.run_id,
            dict(sweep.params),
        )
    return out


def combine(a: TraitVectors, b: TraitVectors) -> TraitVectors:
    """Per layer: unit a + unit b, renormalised; the unit of relative coefs is the mean norm."""
    if a.vectors.shape != b.vectors.shape:
        shapes = f"{tuple(a.vectors.shape)} vs {tuple(b.vectors.shape)}"
        raise CombineError(f"vector shapes differ: {shapes}")
    if a.meta.get("component") != b.meta.get("component"):
        raise CombineError(
            f"components differ: {a.meta.get('component')} vs {b.meta.get('component')}"
        )
    ua = a.vectors / a.vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ub = b.vectors / b.vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    s = ua + ub
    rows = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    keep = ("model", "model_ref", "hidden_size", "n_layers", "trait", "component")
    meta = {k: a.meta[k] for k in keep if k in a.meta}
    meta |= {
        "source": "combined",
        "method": "sum_of_units",
        "position": f"{a.meta.get('position')} + {b.meta.get('position')}",
        "norms": [(x + y) / 2 for x, y in zip(a.norms, b.norms, strict=True)],
    }
    return TraitVectors(rows, meta)


def combined_file(inst: Best, nat: Best, cache: Path) -> Path:
    """The combined vector of two files, written once under the cache (content-addressed)."""
    files = [Path(inst.vector), Path(nat.vector)]
    tag = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    path = cache / "vectors" / "combined" / f"{tag}.safetensors"
    if not path.is_file():
        vec = combine(load_vectors(files[0]), load_vectors(files[1]))
        vec.meta["combined_from"] = [inst.vector, nat.vector]
        vec.save(path)
    return path


def plan(strategy: str, inst: Best, nat: Best, combined: Path) -> dict[str, Any]:
    """The config values (dotted key -> typed value) that turn a strategy into a study (pure)."""
    single = max((inst, nat), key=lambda b: b.trait)
    runs = {"combine.instruction_run": inst.run_id, "combine.natural_run": nat.run_id}

    def fixed(layer: int, vector: str | Path, coef: float) -> dict[str, Any]:
        return runs | {
            "steering.vector": str(vector),
            "search.layer_range": [layer, layer],
            "search.enqueue": [{"layer": layer, "coef": coef}],
        }

    if strategy == "combined@natural_layer":
        return fixed(nat.layer, combined, nat.coef)
    if strategy == "combined@instruction_layer":
        return fixed(inst.layer, combined, inst.coef)
    if strategy == "combined@best_layer":
        tries = [{"layer": b.layer, "coef": b.coef} for b in (inst, nat)]
        return runs | {"steering.vector": str(combined), "search.enqueue": tries}
    if strategy == "ensemble_half":
        terms = [MixTerm(b.vector, b.layer, b.coef / 2) for b in (inst, nat)]
        return runs | {
            "steering.mix": terms,
            "search.coef_range": list(HALF_SCALE),
            "search.enqueue": [{"coef": 1.0}],
        }
    if strategy == "best_single":
        return fixed(single.layer, single.vector, single.coef)
    valid = ", ".join(STRATEGIES)
    raise CombineError(f"combine.strategy={strategy!r} is not valid; choose one of {valid}")


def apply(cfg: DictConfig, values: dict[str, Any]) -> None:
    """Set planned values on a composed config (typed: no override strings to parse back)."""
    with read_write(cfg), open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)


def place(cfg: DictConfig) -> None:
    """Place `cfg.combine.strategy` on `cfg`, from the best vectors in `cfg.combine.experiment`."""
    c = cfg.combine
    root = root_of(cfg)
    found = find_best(tracking.store_of(cfg), c.experiment, cfg.model.name, cfg.trait.name)
    missing = [s for s in ("instruction", "natural") if s not in found]
    if missing:
        raise CombineError(
            f"combine.strategy={c.strategy} needs a valid best {' and '.join(missing)} vector of "
            f"model {cfg.model.name!r} trait {cfg.trait.name!r} in MLflow experiment "
            f"{c.experiment!r} ({tracking.tracking_uri(tracking.store_of(cfg))}); run "
            f"`python -m steerlab -m "
            f"experiment={c.experiment} trait={cfg.trait.name} paths.root={root}` first"
        )
    here = tracking.flatten(tracking.run_params(cfg))  # as the source studies logged theirs
    for b in found.values():
        for name in MUST_MATCH:
            theirs = b.params.get(name)
            if theirs is not None and theirs != here[name]:
                raise CombineError(
                    f"{name}={here[name]} here but {theirs} in the {b.source} study of "
                    f"{c.experiment!r} (run {b.run_id[:8]}); pass {name}={theirs} so the "
                    f"strategies are judged as the vectors were"
                )
    combined = combined_file(found["instruction"], found["natural"], cache_of(cfg))
    apply(cfg, plan(str(c.strategy), found["instruction"], found["natural"], combined))
