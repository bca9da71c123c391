"""The job behind `python -m steerlab`: extract (or reuse) a trait vector, steer, judge, log.

`prepare` builds everything a trial needs once per process (models, vectors, judge, baseline)
and memoises it, so the trials of a sweep share it. The sweeper calls `prefetch` with K trial
configs to evaluate them in ONE batched generate; `run_job` (each Hydra job) then finds its result
and only logs it.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from steerlab.cache import digest
from steerlab.combinations import STRATEGIES
from steerlab.positions import parse_position

if TYPE_CHECKING:
    from steerlab.data import TraitData
    from steerlab.evaluate import Result
    from steerlab.generation import GenConfig
    from steerlab.judges.base import Judge
    from steerlab.models import LoadedModel
    from steerlab.steering import Config
    from steerlab.vectors import TraitVectors

log = logging.getLogger("steerlab")
_MODELS: dict[str, LoadedModel] = {}
_SETUPS: dict[str, Setup] = {}
_PREFETCHED: dict[str, Result] = {}


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any model loads."""


@dataclass
class Setup:
    model: LoadedModel  # the steered (instruct) variant
    trait: TraitData
    vectors: TraitVectors
    vector_path: Path
    judge: Judge
    base: Result
    questions: list[str]
    gen: GenConfig
    root: Path
    extraction_rows: list[dict]  # every elicited response with its score and vetting outcome


def root_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.root).expanduser().resolve()


def cache_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.cache).expanduser().resolve()


def position_of(cfg: DictConfig) -> str:
    return str(
        parse_position(cfg.position if cfg.position is not None else cfg.extraction.position)
    )


def validate(cfg: DictConfig) -> None:
    """Cheap checks with one-line errors, before any model loads."""
    from steerlab.data import load_trait
    from steerlab.models import COMPONENTS, ModelSpec, check_variants

    position_of(cfg)
    load_trait(cfg.trait.dir)
    for name, allowed, value in (
        ("extraction.source", ("natural", "instruction"), cfg.extraction.source),
        ("extraction.method", ("mean_diff", "probe"), cfg.extraction.method),
        ("steering.component", COMPONENTS, cfg.steering.component),
        ("steering.coef_units", ("relative", "absolute"), cfg.steering.coef_units),
    ):
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")
    strategy = cfg.combine.strategy
    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(
            f"combine.strategy={strategy!r} is not valid; choose one of {', '.join(STRATEGIES)}"
        )
    given = [("steering.vector", cfg.steering.vector)] if cfg.steering.vector else []
    given += [(f"steering.mix[{i}].vector", m.vector) for i, m in enumerate(cfg.steering.mix)]
    for name, path in given:
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"{name}={path}: no such vector file")
    lo, hi = cfg.search.coef
    if not 0 < lo <= hi:
        raise ConfigError(f"search.coef=[{lo}, {hi}] must satisfy 0 < lo <= hi")
    spec = ModelSpec(**OmegaConf.to_container(cfg.model))  # type: ignore[arg-type]
    n_layers, _ = check_variants(spec)
    layers = [
        cfg.steering.layer,
        *(cfg.steering.layers or []),
        *(cfg.search.layers or []),
        *(m.layer for m in cfg.steering.mix),
    ]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ConfigError(f"layer(s) {bad} outside model {spec.name!r}'s layers 0..{n_layers - 1}")
    if (
        cfg.steering.layers
        and cfg.steering.weights
        and len(cfg.steering.layers) != len(cfg.steering.weights)
    ):
        raise ConfigError("steering.layers and steering.weights must have the same length")


def load(ref: str, cfg: DictConfig) -> LoadedModel:
    from steerlab.models import load_model

    if ref not in _MODELS:
        _MODELS[ref] = load_model(
            ref, cfg.model.dtype, cfg.model.device, dict(cfg.model.arch or {})
        )
    return _MODELS[ref]


def _setup_key(cfg: DictConfig) -> str:
    keep = {
        k: OmegaConf.to_container(cfg[k], resolve=True)
        for k in ("model", "trait", "extraction", "judge", "paths")
    }
    return digest(
        keep,
        position_of(cfg),
        cfg.steering.component,
        cfg.steering.vector,
        OmegaConf.to_container(cfg.steering.mix, resolve=True),
        cfg.steering.n_questions,
        cfg.steering.max_new_tokens,
        cfg.search.coherence_min,
    )


def prepare(cfg: DictConfig) -> Setup:
    """Extract (or load cached) vectors and the judged baseline; memoised per process."""
    key = _setup_key(cfg)
    if key in _SETUPS:
        return _SETUPS[key]
    from steerlab import evaluate as ev
    from steerlab.data import load_trait
    from steerlab.generation import GenConfig
    from steerlab.judges.factory import make_judge
    from steerlab.vectors import load_vectors

    validate(cfg)
    cache = cache_of(cfg)
    trait = load_trait(cfg.trait.dir)
    steer_model = load(cfg.model.steering, cfg)
    judge = make_judge(cfg.judge, steer_model, cache)
    given = cfg.steering.vector or (cfg.steering.mix[0].vector if cfg.steering.mix else None)
    if given:  # a saved (e.g. combined) vector file: nothing to elicit
        vpath, rows = Path(given).expanduser().resolve(), []
    else:
        vpath, rows = _extract(cfg, trait, judge, cache)
    vectors = load_vectors(
        vpath, {"hidden_size": steer_model.hidden_size, "n_layers": steer_model.n_layers}
    )
    if vectors.meta.get("trait", trait.name) != trait.name:  # allowed: cross-trait steering
        log.warning("%s is a %r vector; judged as %r", vpath, vectors.meta["trait"], trait.name)
    gen = GenConfig(cfg.steering.max_new_tokens, batch_size=cfg.steering.batch_size)
    questions = ev.steering_questions(trait, cfg.steering.n_questions)
    base = ev.baseline(steer_model, judge, trait, questions, gen, cache, cfg.search.coherence_min)
    setup = Setup(
        steer_model, trait, vectors, vpath, judge, base, questions, gen, root_of(cfg), rows
    )
    _SETUPS[key] = setup
    return setup


def _extract(
    cfg: DictConfig, trait: TraitData, judge: Judge, cache: Path
) -> tuple[Path, list[dict]]:
    """Elicit, judge, vet, capture and extract (each step cached); the vector file to steer
    with and every elicited response with its score and vetting outcome."""
    from steerlab.extraction import cached_capture, elicit, extract_vectors, vet
    from steerlab.judges.base import cached_scores

    ex = cfg.extraction
    src_model = load(cfg.model.extraction if ex.source == "natural" else cfg.model.steering, cfg)
    elicited = elicit(src_model, trait, ex, cache)
    scores = cached_scores(
        judge,
        trait,
        [(c, s.text) for c, s in zip(elicited.contexts, elicited.samples, strict=True)],
        cache,
    )
    keep = vet(elicited, scores, ex.vet)
    pos = parse_position(position_of(cfg))
    components = sorted(set(ex.components) | {cfg.steering.component})
    cap = cached_capture(src_model, elicited.samples, [pos], components, ex.batch_size, cache)
    meta = {
        "model": cfg.model.name,
        "variant": "extraction" if ex.source == "natural" else "steering",
        "model_ref": src_model.ref,
        "hidden_size": src_model.hidden_size,
        "n_layers": src_model.n_layers,
        "source": ex.source,
        "trait": trait.name,
        "dataset_hash": digest(trait.digest(), [s.response_ids for s in elicited.samples], keep),
        "coef_units_default": "relative",
    }
    # keyed by content: other data, vetting or responses never reuse a stale vector file
    out = cache / "vectors" / cfg.model.name / trait.name / ex.source / meta["dataset_hash"]
    paths = extract_vectors(cap, elicited.labels, keep, ex.method, meta, out, ex.val_frac, ex.seed)
    rows = [
        {
            "label": "positive" if lab else "negative",
            "context": ctx,
            "response": smp.text,
            "trait": sc.trait,
            "coherence": sc.coherence,
            "kept": k,
        }
        for lab, ctx, smp, sc, k in zip(
            elicited.labels, elicited.contexts, elicited.samples, scores, keep, strict=True
        )
    ]
    return paths[(str(pos), cfg.steering.component)], rows


def steering_config(cfg: DictConfig, setup: Setup) -> Config:
    """The SteerTerms of this job: an ensemble file, layers x weights, or one layer x coef."""
    s = cfg.steering
    units = s.coef_units
    if s.ensemble:
        from steerlab.ensembles import load_ensemble

        ens = load_ensemble(s.ensemble, root_of(cfg))
        return ens.terms()
    if s.mix:  # terms from several files; coef scales the whole mix
        return tuple(_vector_file(m.vector).term(m.layer, m.weight * s.coef, units) for m in s.mix)
    if s.layers:
        weights = s.weights or [s.coef] * len(s.layers)
        return tuple(
            setup.vectors.term(layer, w, units) for layer, w in zip(s.layers, weights, strict=True)
        )
    return (setup.vectors.term(s.layer, s.coef, units),)


@functools.cache
def _vector_file(path: str) -> TraitVectors:
    from steerlab.vectors import load_vectors

    return load_vectors(Path(path).expanduser())


def _result_key(cfg: DictConfig) -> str:
    return digest(_setup_key(cfg), OmegaConf.to_container(cfg.steering, resolve=True))


def prefetch(cfgs: list[DictConfig]) -> None:
    """Evaluate many job configs in one batched generate per shared setup (sweeper use)."""
    from steerlab.evaluate import evaluate

    groups: dict[str, list[DictConfig]] = {}
    for c in cfgs:
        groups.setdefault(_setup_key(c), []).append(c)
    for group in groups.values():
        setup = prepare(group[0])
        todo = [c for c in group if _result_key(c) not in _PREFETCHED]
        if not todo:
            continue
        results = evaluate(
            setup.model,
            setup.judge,
            setup.trait,
            [steering_config(c, setup) for c in todo],
            setup.questions,
            setup.gen,
            cache_of(group[0]),
            setup.base,
            group[0].search.coherence_min,
        )
        for c, r in zip(todo, results, strict=True):
            _PREFETCHED[_result_key(c)] = r


def run_job(cfg: DictConfig, job_dir: Path | None = None) -> dict[str, Any]:
    """One steering evaluation; returns the metrics the sweeper optimises."""
    from steerlab.evaluate import evaluate

    setup = prepare(cfg)
    key = _result_key(cfg)
    result = _PREFETCHED.pop(key, None)
    if result is None:
        result = evaluate(
            setup.model,
            setup.judge,
            setup.trait,
            [steering_config(cfg, setup)],
            setup.questions,
            setup.gen,
            cache_of(cfg),
            setup.base,
            cfg.search.coherence_min,
        )[0]
    metrics = {
        "trait": result.trait,
        "coherence": result.coherence,
        "delta": result.delta,
        "valid": float(result.valid),
        "baseline": setup.base.trait,
        "baseline_coherence": setup.base.coherence,
    }
    if job_dir is not None:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "responses.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows)
        )
        (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if cfg.tracking.enabled:
        _log_trial(cfg, setup, metrics, result, job_dir)
    return metrics


def study_settings(cfg: DictConfig) -> dict[str, str]:
    """What a study's scores depend on, less what its search varies and how fast it runs."""
    from steerlab.tracking import flatten

    def part(name: str, drop: tuple[str, ...]) -> dict[str, Any]:
        d = OmegaConf.to_container(cfg[name], resolve=True)
        return {k: v for k, v in d.items() if k not in drop}  # type: ignore[union-attr]

    speed = ("batch_size", "concurrency", "max_retries", "backoff", "timeout")
    return flatten(
        {
            "model": part("model", ()),
            "trait": part("trait", ()),
            "extraction": part("extraction", speed),
            "position": position_of(cfg),
            "steering": part("steering", ("layer", "coef", "weights", *speed)),
            "judge": part("judge", speed),
            "search": part("search", ("n_trials", "enqueue", "options", *speed)),
            "combine": part("combine", ()),
        }
    )


def experiment_name(cfg: DictConfig) -> str:
    return cfg.tracking.experiment or f"{cfg.model.name}/{cfg.trait.name}"


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node (which only resolves inside a job)."""
    return OmegaConf.to_container(  # type: ignore[return-value]
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The config as MLflow params, plus resolved values the report groups by."""
    params = plain(cfg)
    params["resolved"] = {
        "position": position_of(cfg),
        "source": cfg.extraction.source,
        "method": cfg.extraction.method,
        "component": cfg.steering.component,
    }
    if cfg.steering.mix:
        params["resolved"] |= {"source": "mix", "position": "mix", "method": "mix"}
    elif cfg.steering.vector:  # describe the given file, not the unused extraction settings
        side = Path(cfg.steering.vector).expanduser().with_suffix(".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        params["resolved"] |= {k: meta.get(k, "?") for k in ("source", "position", "method")}
        params["resolved"]["component"] = meta.get("component", cfg.steering.component)
    return params


def _log_trial(
    cfg: DictConfig, setup: Setup, metrics: dict, result: Result, job_dir: Path | None
) -> None:
    from steerlab import tracking

    name = (
        f"trial-{cfg.tracking.trial}"
        if cfg.tracking.trial is not None
        else f"{'mix' if cfg.steering.mix else f'L{cfg.steering.layer}'}-c{cfg.steering.coef:g}"
    )
    with tracking.run(
        setup.root,
        experiment_name(cfg),
        name,
        run_params(cfg),
        parent_run_id=cfg.tracking.parent_run_id,
        tags={
            "steerlab.kind": "trial",
            "steerlab.vector": str(setup.vector_path),
            "steerlab.trial": str(cfg.tracking.trial),
        },
    ) as mlflow:
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_dict(plain(cfg), "config.json")
        mlflow.log_table(
            {
                k: [r[k] for r in result.rows]
                for k in ("question", "answer", "trait", "coherence", "note")
            },
            "responses.json",
        )
        mlflow.log_dict(asdict_meta(setup), "vector.json")
        if job_dir is not None and job_dir.is_dir():
            mlflow.log_artifacts(str(job_dir), "job")


def asdict_meta(setup: Setup) -> dict[str, Any]:
    return {
        "path": str(setup.vector_path),
        **{k: v for k, v in setup.vectors.meta.items() if k != "layer_stats"},
    }


def where(s: DictConfig) -> str:
    """Where a steering config steers, in words."""
    if s.ensemble:
        return f"ensemble {s.ensemble}"
    if s.mix:
        terms = " + ".join(f"L{m.layer}:{Path(m.vector).stem} x {m.weight:g}" for m in s.mix)
        return f"mix ({terms}) x {s.coef:g} ({s.coef_units})"
    if s.layers:
        return f"layers {list(s.layers)} x {list(s.weights or [s.coef] * len(s.layers))}"
    return f"layer {s.layer} coef {s.coef:g} ({s.coef_units})"


def print_summary(cfg: DictConfig, metrics: dict[str, Any], job_dir: Path) -> None:
    s = cfg.steering
    delta = metrics["delta"]
    v = run_params(cfg)["resolved"]  # a given vector file describes itself
    print(
        f"\n{cfg.trait.name} @ {where(s)} [{v['source']} {v['position']} {v['method']} "
        f"{v['component']}]\n"
        f"  trait {metrics['trait']:.1f} (baseline {metrics['baseline']:.1f}, delta "
        f"{delta:+.1f})  coherence {metrics['coherence']:.1f}  "
        f"valid={bool(metrics['valid'])} (coherence >= {cfg.search.coherence_min:g})\n"
        f"  answers: {job_dir / 'responses.jsonl'}\n"
        f"  MLflow:  make ui   (store {root_of(cfg) / 'mlruns'})"
    )
