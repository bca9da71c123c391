"""Cheap checks of a composed config, each failing in one line that names the field, the value
and what would be valid, before any model loads (`python -m steerlab` and every study run them
first, so a bad value costs no work)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from steerlab.combinations import STRATEGIES
from steerlab.config import position_of
from steerlab.errors import ConfigError


def check(cfg: DictConfig) -> None:
    """Cheap checks with one-line errors, before any model loads."""
    from steerlab.data import load_trait
    from steerlab.models import COMPONENTS, ModelSpec, check_variants, is_random, parse_random
    from steerlab.vectors import check_units

    position_of(cfg)
    _check_names(cfg)
    _check_questions(cfg, len(load_trait(cfg.trait.dir).steering_questions))
    for name, allowed, value in (
        ("extraction.source", ("natural", "instruction"), cfg.extraction.source),
        ("extraction.method", ("mean_diff", "probe"), cfg.extraction.method),
        ("steering.component", COMPONENTS, cfg.steering.component),
        ("steering.coef_units", ("relative", "absolute"), cfg.steering.coef_units),
        ("combine.strategy", (None, *STRATEGIES), cfg.combine.strategy),
        ("model.engine", ("auto", "eager", "compiled", "static"), cfg.model.engine),
    ):
        if value not in allowed:
            valid = ", ".join(str(a) for a in allowed if a is not None)
            raise ConfigError(f"{name}={value!r} is not valid; choose one of {valid}")
    _check_numbers(cfg)
    spec = ModelSpec(**OmegaConf.to_container(cfg.model))  # type: ignore[arg-type]
    for k in ("steering", "extraction"):
        if is_random(ref := getattr(spec, k)):
            try:
                parse_random(ref)
            except ValueError as e:
                raise ConfigError(f"model.{k}={ref}: {e}") from None
    try:
        n_layers, hidden = check_variants(spec)
    except (OSError, ValueError) as e:
        ref = next((f"model.{k}={getattr(spec, k)}" for k in ("steering", "extraction")
                    if _unreadable(getattr(spec, k))), f"model {spec.name!r}")  # fmt: skip
        raise ConfigError(
            f"{ref}: cannot read the model's config ({str(e).splitlines()[0][:200]}); give a "
            "local model folder, a name in the local Hugging Face cache, or embedded:smollm2"
        ) from None
    layers = [
        cfg.steering.layer,
        *(cfg.steering.layers or []),
        *(cfg.search.layer_range or []),
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
    given = [("steering.vector", cfg.steering.vector)] if cfg.steering.vector else []
    given += [(f"steering.mix[{i}].vector", m.vector) for i, m in enumerate(cfg.steering.mix)]
    for name, path in given:
        _check_vector_file(name, Path(path).expanduser(), n_layers, hidden)
        check_units(Path(path).expanduser(), cfg.steering.coef_units)  # imported: no norms
    _check_judge(cfg)


def _check_names(cfg: DictConfig) -> None:
    """Values that become path parts are plain names: no run writes outside `paths.root`."""
    from steerlab import confine

    confine.name("trait.name", cfg.trait.name)
    confine.name("model.name", cfg.model.name)
    ens = cfg.steering.ensemble
    if ens is not None and not str(ens).endswith(".json"):  # a name under ensembles/; a path as is
        confine.name("steering.ensemble", ens)


def _check_numbers(cfg: DictConfig) -> None:
    """Coefficients finite, trial counts and batch sizes in range."""
    s = cfg.steering
    numbers = [("steering.coef", s.coef)]
    numbers += [(f"steering.weights[{i}]", w) for i, w in enumerate(s.weights or [])]
    numbers += [(f"steering.mix[{i}].weight", m.weight) for i, m in enumerate(s.mix)]
    for name, x in numbers:
        if not math.isfinite(x):
            raise ConfigError(f"{name}={x} is not a finite number")
    lo, hi = cfg.search.coef_range
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ConfigError(f"search.coef_range=[{lo}, {hi}] must be finite with 0 < lo <= hi")
    for name, x, least in (
        ("search.n_trials", cfg.search.n_trials, 0),
        ("search.batch_size", cfg.search.batch_size, 1),
        ("steering.batch_size", s.batch_size, 1),
        ("steering.max_new_tokens", s.max_new_tokens, 1),
        ("extraction.batch_size", cfg.extraction.batch_size, 1),
    ):
        if x < least:
            raise ConfigError(f"{name}={x} must be >= {least}")


def _check_questions(cfg: DictConfig, total: int) -> None:
    """The search's questions and the confirmation's held-out ones fit the trait's list."""
    c, n = cfg.confirm, cfg.steering.n_questions
    where = f"{cfg.trait.dir}/steering.jsonl has {total} steering questions"
    if not 0 <= c.n_questions < total:
        raise ConfigError(
            f"confirm.n_questions={c.n_questions} must be 0 (no confirmation) to {total - 1}: "
            f"{where} and the search needs at least one"
        )
    if n is not None and (n < 1 or n + c.n_questions > total):
        raise ConfigError(
            f"steering.n_questions={n} with confirm.n_questions={c.n_questions} held out: "
            f"{where}; ask 1 to {total - c.n_questions} (or null: all the others)"
        )
    if c.rollouts < 1 or not (math.isfinite(c.temperature) and c.temperature >= 0):
        raise ConfigError(
            f"confirm.rollouts={c.rollouts} must be >= 1 and confirm.temperature="
            f"{c.temperature} a finite number >= 0"
        )
    if c.rollouts > 1 and c.temperature == 0:
        raise ConfigError(
            f"confirm.rollouts={c.rollouts} with confirm.temperature=0 repeats one greedy "
            "answer; set confirm.temperature > 0 (e.g. 1.0) for fresh rollouts"
        )


def _given_vector(cfg: DictConfig) -> bool:
    """Steering a saved vector file: nothing is elicited or vetted."""
    return bool(cfg.steering.vector or cfg.steering.mix)


def random_refs(cfg: DictConfig) -> list[str]:
    """The config's randomly initialised models, as `field=ref`."""
    from steerlab.models import is_random

    refs = [(f"model.{k}", cfg.model[k]) for k in ("extraction", "steering")]
    if cfg.judge.backend == "hf":
        refs.append(("judge.model", cfg.judge.model))
    return [f"{k}={v}" for k, v in refs if is_random(str(v))]


def _unreadable(ref: str) -> bool:
    from steerlab.models import shape_of

    try:
        shape_of(ref)
    except (OSError, ValueError):
        return True
    return False


def _check_vector_file(name: str, path: Path, n_layers: int, hidden: int) -> None:
    """A given vector file exists, fits the model and holds finite numbers (read lazily)."""
    from steerlab.vectors import VectorFileError, load_vectors

    if not path.is_file():
        raise ConfigError(f"{name}={path}: no such vector file")
    try:
        load_vectors(path, {"hidden_size": hidden, "n_layers": n_layers})
    except VectorFileError as e:
        raise ConfigError(f"{name}={e}") from None


def _check_judge(cfg: DictConfig) -> None:
    """An OpenAI judge needs its key before any work (a local server may not); a random `hf`
    judge scores at random, so vetting by it would keep a random subset."""
    from steerlab.models import is_random, parse_random

    j = cfg.judge
    if j.backend == "hf" and is_random(j.model):
        try:
            parse_random(j.model)
        except ValueError as e:
            raise ConfigError(f"judge.model={j.model}: {e}") from None
        if cfg.extraction.vet.enabled and not _given_vector(cfg):
            raise ConfigError(
                f"judge.model={j.model} has random weights and scores at random: vetting by it "
                "would keep a random subset; set extraction.vet.enabled=false"
            )
    if j.backend != "openai" or os.environ.get(j.api_key_env, "").strip():
        return
    host = urlparse(j.base_url).hostname or ""
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        return
    raise ConfigError(
        f"judge=openai needs an API key in ${j.api_key_env} (judge.api_key_env) for "
        f"{j.base_url}; set it, or point judge.base_url at a local OpenAI-compatible server"
    )
