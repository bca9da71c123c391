"""The runner behind `python -m steerlab`: extract (or reuse) a trait vector, steer, judge, record.

A `Runner` owns what trials share: loaded models and, per study, a `Setup` (vectors, judge,
judged baseline). Its caller owns it (the sweeper keeps one for a whole sweep, a single run makes
its own), so nothing lives in module globals. Trials are typed: a `SteeringConfig` whose layer,
coef or weights a search replaced; `terms` turns it into the hook's `SteerTerm`s, and `evaluate`
runs K of them x Q questions in one batched generate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from steerlab import timing, tracking
from steerlab.cache import digest
from steerlab.checks import check, random_refs
from steerlab.config import SteeringConfig, cache_of, position_of, root_of
from steerlab.errors import ConfigError, first_line
from steerlab.positions import parse_position
from steerlab.records import PRUNED, PRUNED_TAG, objective
from steerlab.runlog import log_child
from steerlab.stats import fmt_ci, intervals_of, score_intervals

if TYPE_CHECKING:
    from steerlab.data import TraitData
    from steerlab.evaluate import Result
    from steerlab.generation import GenConfig
    from steerlab.judges.base import Judge
    from steerlab.models import LoadedModel
    from steerlab.steering import Terms
    from steerlab.vectors import TraitVectors

log = logging.getLogger("steerlab")


@dataclass
class Setup:
    """What every trial of one study shares; built once by `Runner.setup`."""

    model: LoadedModel  # the steered (instruct) variant
    trait: TraitData
    vectors: TraitVectors
    vector_path: Path
    judge: Judge
    base: Result
    questions: list[str]
    gen: GenConfig
    cache: Path
    coherence_min: float
    extraction_rows: list[dict] = field(default_factory=list)  # elicited, scored, vetted
    held_out: list[str] = field(default_factory=list)  # the confirmation's questions x rollouts
    held_base: Result | None = None  # the unsteered answers to them
    confirm_gen: GenConfig | None = None

    def vector_meta(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.vectors.meta.items() if k != "layer_stats"}
        return {"path": str(self.vector_path), **meta}


def setup_key(cfg: DictConfig) -> str:
    """Everything a Setup depends on: studies with equal keys share one."""
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
        OmegaConf.to_container(cfg.confirm, resolve=True),
    )


class Runner:
    """Models, setups and vector files, loaded once; batched evaluation of typed configs."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._setups: dict[str, Setup] = {}
        self._files: dict[str, TraitVectors] = {}
        self._noted: set[str] = set()  # random models already announced

    def model(self, ref: str, cfg: DictConfig) -> LoadedModel:
        from steerlab.models import load_model

        if ref not in self._models:
            arch = dict(cfg.model.arch or {})
            with timing.stage("load"):
                self._models[ref] = load_model(ref, cfg.model.dtype, cfg.model.device, arch)
        return self._models[ref]

    def vector_file(self, path: str | Path) -> TraitVectors:
        from steerlab.vectors import load_vectors

        key = str(Path(path).expanduser().resolve())
        if key not in self._files:
            self._files[key] = load_vectors(Path(key))
        return self._files[key]

    def setup(self, cfg: DictConfig) -> Setup:
        """Extract (or load cached) vectors and the judged baseline, once per setup key."""
        key = setup_key(cfg)
        if key not in self._setups:
            self._setups[key] = self._build(cfg)
        return self._setups[key]

    def _build(self, cfg: DictConfig) -> Setup:
        from steerlab import evaluate as ev
        from steerlab.data import load_trait
        from steerlab.generation import GenConfig
        from steerlab.judges.factory import make_judge
        from steerlab.vectors import load_vectors

        check(cfg)
        if (refs := set(random_refs(cfg))) - self._noted:
            self._noted |= refs
            log.warning(
                "random weights (%s): timings are real, scores are noise", ", ".join(sorted(refs))
            )
        cache = cache_of(cfg)
        trait = load_trait(cfg.trait.dir)
        steer_model = self.model(cfg.model.steering, cfg)
        with timing.stage("load"):
            judge = make_judge(cfg.judge, steer_model, cache)
        given = cfg.steering.vector or (cfg.steering.mix[0].vector if cfg.steering.mix else None)
        if given:  # a saved (e.g. combined) vector file: nothing to elicit
            vpath, rows = Path(given).expanduser().resolve(), []
        else:
            vpath, rows = self._extract(cfg, trait, judge, cache)
        shape = {"hidden_size": steer_model.hidden_size, "n_layers": steer_model.n_layers}
        vectors = load_vectors(vpath, shape)
        if vectors.meta.get("trait", trait.name) != trait.name:  # allowed: cross-trait steering
            log.warning("%s is a %r vector; judged as %r", vpath, vectors.meta["trait"], trait.name)
        gen = GenConfig(
            cfg.steering.max_new_tokens,
            batch_size=cfg.steering.batch_size,
            engine=cfg.model.engine,
        )
        c = cfg.confirm
        questions = ev.steering_questions(trait, cfg.steering.n_questions, c.n_questions)
        cmin = float(cfg.search.coherence_min)
        with timing.stage("baseline"):
            base = ev.baseline(steer_model, judge, trait, questions, gen, cache, cmin)
        setup = Setup(
            steer_model, trait, vectors, vpath, judge, base, questions, gen, cache, cmin, rows
        )
        if c.n_questions:  # rollouts are repeated prompts, sampled when temperature > 0
            held = ev.held_out_questions(trait, c.n_questions)
            held = [q for q in held for _ in range(c.rollouts)]
            setup.confirm_gen = replace(gen, temperature=float(c.temperature), seed=int(cfg.seed))
            setup.held_out = held
            with timing.stage("baseline"):
                setup.held_base = ev.baseline(
                    steer_model, judge, trait, held, setup.confirm_gen, cache, cmin
                )
        return setup

    def _extract(
        self, cfg: DictConfig, trait: TraitData, judge: Judge, cache: Path
    ) -> tuple[Path, list[dict]]:
        """Elicit, judge, vet, capture and extract (each step cached); the vector file to steer
        with and every elicited response with its score and vetting outcome."""
        from steerlab.extraction import cached_capture, elicit, extract_vectors, vet
        from steerlab.judges.base import cached_scores

        ex = cfg.extraction
        natural = ex.source == "natural"
        src_model = self.model(cfg.model.extraction if natural else cfg.model.steering, cfg)
        with timing.stage("elicit"):
            elicited = elicit(src_model, trait, ex, cache)
        pairs = [(c, s.text) for c, s in zip(elicited.contexts, elicited.samples, strict=True)]
        with timing.stage("vet"):
            scores = cached_scores(judge, trait, pairs, cache)
        keep = vet(elicited, scores, ex.vet)
        pos = parse_position(position_of(cfg))
        components = sorted(set(ex.components) | {cfg.steering.component})
        with timing.stage("capture"):
            cap = cached_capture(
                src_model, elicited.samples, [pos], components, ex.batch_size, cache
            )
        meta = {
            "model": cfg.model.name,
            "variant": "extraction" if natural else "steering",
            "model_ref": src_model.ref,
            "hidden_size": src_model.hidden_size,
            "n_layers": src_model.n_layers,
            "source": ex.source,
            "trait": trait.name,
            "dataset_hash": digest(
                trait.digest(), [s.response_ids for s in elicited.samples], keep
            ),
            "coef_units_default": "relative",
        }
        # keyed by content: other data, vetting or responses never reuse a stale vector file
        out = cache / "vectors" / cfg.model.name / trait.name / ex.source / meta["dataset_hash"]
        labels = elicited.labels
        with timing.stage("extract"):
            paths = extract_vectors(cap, labels, keep, ex.method, meta, out, ex.val_frac, ex.seed)
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
                labels, elicited.contexts, elicited.samples, scores, keep, strict=True
            )
        ]
        return paths[(str(pos), cfg.steering.component)], rows

    def terms(self, setup: Setup, steer: SteeringConfig, root: Path) -> Terms:
        """The SteerTerms of one configuration: an ensemble file, a mix, layers x weights, or
        one layer x coef (relative units scale by each layer's activation norm)."""
        from steerlab.ensembles import load_ensemble

        units = steer.coef_units
        if steer.ensemble:
            return load_ensemble(steer.ensemble, root).terms()
        if steer.mix:  # terms from several files; coef scales the whole mix
            return tuple(
                self.vector_file(m.vector).term(m.layer, m.weight * steer.coef, units)
                for m in steer.mix
            )
        return tuple(setup.vectors.term(la, w, units) for la, w in weights(steer))

    def confirm(self, setup: Setup, steer: SteeringConfig, root: Path) -> Result | None:
        """One configuration on the held-out questions (None when nothing is held out)."""
        from steerlab.evaluate import evaluate

        if not setup.held_out or setup.confirm_gen is None:
            return None
        [result] = evaluate(
            setup.model,
            setup.judge,
            setup.trait,
            [self.terms(setup, steer, root)],
            setup.held_out,
            setup.confirm_gen,
            setup.cache,
            setup.held_base,
            setup.coherence_min,
        )
        return result

    def evaluate(
        self,
        setup: Setup,
        steers: Sequence[SteeringConfig],
        root: Path,
        questions: Sequence[str] | None = None,
    ) -> list[Result]:
        """Every configuration on every steering question (or on `questions`, a part of them)
        in one batched generate."""
        from steerlab.evaluate import evaluate

        return evaluate(
            setup.model,
            setup.judge,
            setup.trait,
            [self.terms(setup, s, root) for s in steers],
            setup.questions if questions is None else questions,
            setup.gen,
            setup.cache,
            setup.base,
            setup.coherence_min,
        )


def weights(steer: SteeringConfig) -> list[tuple[int, float]]:
    """(layer, coef) of each term in the config's own units: what a trial record stores."""
    if steer.mix:
        return [(m.layer, m.weight * steer.coef) for m in steer.mix]
    if steer.layers:
        ws = steer.weights or [steer.coef] * len(steer.layers)
        return list(zip(steer.layers, ws, strict=True))
    return [(steer.layer, steer.coef)]


def metrics_of(result: Result, setup: Setup) -> dict[str, float]:
    """Means, and their 95% intervals over the questions (`trait_lo`, ...)."""
    cis = score_intervals(result.rows, setup.base.rows)
    return {
        "trait": result.trait,
        "coherence": result.coherence,
        "delta": result.trait - setup.base.trait,
        "valid": float(result.valid),
        "baseline_trait": setup.base.trait,
        "baseline_coherence": setup.base.coherence,
        **{k: v for k, v in cis.items() if v is not None},
    }


def record(
    cfg: DictConfig,
    setup: Setup,
    steer: SteeringConfig,
    result: Result,
    job_dir: Path,
    number: int | None = None,
    parent_run_id: str | None = None,
    span: tuple[float, float] | None = None,
    params: dict[str, Any] | None = None,
    skip_log: str | None = None,
    pruned: bool = False,
) -> tuple[dict[str, float], str | None]:
    """Write a trial's folder (config, answers, metrics) and its MLflow run; its metrics, and
    why it could not be logged to MLflow (None when it was). `span`: when its batch started and
    ended (seconds since the epoch), the run's start and end times. `params`: the study's
    `tracking.run_params(cfg)`, computed once by a caller that records many trials.
    `skip_log`: why not to try MLflow now (it just failed; the next run logs the folder).
    `pruned`: the result covers only the questions answered before the trial was pruned; its
    metrics say so (`pruned`, `questions`) and it is never valid."""
    metrics = metrics_of(result, setup)
    if pruned:
        metrics |= {"valid": 0.0, PRUNED: 1.0, "questions": float(len(result.rows))}
    params = write_trial(job_dir, params or tracking.run_params(cfg), steer, result.rows, metrics)
    if not cfg.tracking.enabled:
        return metrics, None
    if skip_log:
        return metrics, skip_log
    name = f"trial-{number}" if number is not None else steer.where()
    try:
        with timing.stage("mlflow"):
            _log_trial(
                cfg, setup, params, result.rows, metrics, job_dir, number, name, parent_run_id, span
            )
    except Exception as e:  # noqa: BLE001 - the trial stands (files, study); say so
        why = tracking.why_failed(e, tracking.store_of(cfg))
        log.warning("trial %s was not logged to MLflow (%s); its files: %s", number, why, job_dir)
        return metrics, why
    return metrics, None


def write_trial(
    job_dir: Path,
    params: dict[str, Any],
    steer: SteeringConfig,
    rows: list[dict[str, Any]],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """A trial's folder: its whole config, answers and metrics; its params (with its steering)."""
    params = dict(params, steering=asdict(steer))
    job_dir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in params.items() if k != "resolved"}  # the trial's whole config
    (job_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (job_dir / "responses.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return params


Folder = tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]  # config, metrics, rows


class FolderError(ValueError):
    """A trial folder with files that cannot be read; `got` holds those that can."""

    def __init__(self, job_dir: Path, bad: dict[str, str], got: dict[str, Any]) -> None:
        why = "; ".join(f"{name}: {reason}" for name, reason in bad.items())
        super().__init__(f"folder {job_dir} is damaged ({why})")
        self.bad, self.got = bad, got


def read_trial(job_dir: Path) -> Folder:
    """A recorded trial's folder, or a FolderError naming every file that cannot be read."""
    parse = {"config.yaml": yaml.safe_load, "metrics.json": json.loads, "responses.jsonl": _rows}
    need = {"config.yaml": "steering", "metrics.json": "coherence", "responses.jsonl": None}
    got: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for name, read in parse.items():
        try:
            value = read((job_dir / name).read_text(encoding="utf-8"))
            if need[name] and (not isinstance(value, dict) or need[name] not in value):
                raise ValueError(f"no {need[name]!r}")
            got[name] = value
        except (OSError, ValueError, yaml.YAMLError) as e:
            bad[name] = first_line(e, "")[:80]
    if bad:
        raise FolderError(job_dir, bad, got)
    return got["config.yaml"], got["metrics.json"], got["responses.jsonl"]


def _rows(text: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("a line is not a JSON object")
    return rows


def relog(
    cfg: DictConfig,
    setup: Setup,
    job_dir: Path,
    number: int,
    parent_run_id: str,
    span: tuple[float, float] | None,
    params: dict[str, Any],
    folder: Folder,
) -> None:
    """A recorded trial's MLflow run made from its folder, as `read_trial` read it (its logging
    failed, or its process died between the folder and the run): what `record` would have
    logged."""
    config, metrics, rows = folder
    params = dict(params, steering=config["steering"])
    name = f"trial-{number}"
    _log_trial(cfg, setup, params, rows, metrics, job_dir, number, name, parent_run_id, span)


def _log_trial(
    cfg: DictConfig,
    setup: Setup,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    metrics: dict[str, float],
    job_dir: Path,
    number: int | None,
    name: str,
    parent_run_id: str | None,
    span: tuple[float, float] | None = None,
) -> None:
    """The trial's MLflow run: a child of the sweep's parent run, timed by its batch (the K
    trials of a batch share one generate, so each took the batch's time), metrics rounded, with
    `objective` (`records.objective`: sorted by it, the best valid trial comes first)."""
    tags = {"steerlab.kind": "trial", "steerlab.vector": str(setup.vector_path)}
    if number is not None:
        tags["steerlab.trial"] = str(number)
    rank = {"objective": objective(metrics["trait"], metrics["coherence"], setup.coherence_min)}
    if metrics.get(PRUNED):  # partial: never ranked among the results
        tags[PRUNED_TAG], rank = "true", {}
    cols = ("question", "answer", "trait", "coherence", "note")
    log_child(
        tracking.store_of(cfg),
        tracking.experiment_name(cfg),
        name,
        parent_run_id,
        tags,
        params,
        tracking.rounded({**metrics, **rank}),
        tables={"responses.json": {k: [r[k] for r in rows] for k in cols}},
        dicts={"vector.json": setup.vector_meta()},
        folder=(job_dir, "job"),
        span=span,
    )


def run_single(cfg: DictConfig, job_dir: Path) -> dict[str, float]:
    """One configuration (`python -m steerlab ...` without -m): evaluate, record, summarise."""
    from steerlab.config import steering_of

    check(cfg)
    if cfg.combine.strategy:  # a strategy places a whole study, not one configuration
        raise ConfigError(
            f"combine.strategy={cfg.combine.strategy} places a study: run it with -m "
            "(or steer a saved file with steering.vector=...)"
        )
    if cfg.tracking.enabled:
        tracking.check_store(tracking.store_of(cfg))
    runner = Runner()
    setup = runner.setup(cfg)
    steer = steering_of(cfg)
    [result] = runner.evaluate(setup, [steer], root_of(cfg))
    metrics, not_logged = record(cfg, setup, steer, result, job_dir)
    v = tracking.run_params(cfg)["resolved"]  # a given vector file describes itself
    cis = intervals_of(metrics)
    print(
        f"\n{cfg.trait.name} @ {steer.where()} [{v['source']} {v['position']} {v['method']} "
        f"{v['component']}]\n"
        f"  trait {metrics['trait']:.1f} (baseline {metrics['baseline_trait']:.1f}, delta "
        f"{metrics['delta']:+.1f} {fmt_ci(cis[2])})  coherence {metrics['coherence']:.1f} "
        f"{fmt_ci(cis[1], '')}  valid={bool(metrics['valid'])} (coherence >= "
        f"{cfg.search.coherence_min:g}; 95% CIs over {len(setup.questions)} questions)\n"
        f"  answers: {job_dir / 'responses.jsonl'}\n"
        f"  MLflow:  make ui   (store {tracking.tracking_uri(tracking.store_of(cfg))})"
        + (f"\n  NOT logged to MLflow: {not_logged}" if not_logged else "")
    )
    return metrics
