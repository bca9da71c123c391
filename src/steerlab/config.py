"""Structured-config schemas: YAML in `conf/` merges into these, so a typo or a wrong type fails
at compose time naming the valid keys. Registered in Hydra's ConfigStore by `register()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf

from steerlab.judges.config import register as register_judges
from steerlab.positions import parse_position


@dataclass
class ModelConfig:
    name: str = MISSING
    extraction: str = MISSING  # variant used for natural elicitation (base model)
    steering: str = MISSING  # variant that answers under system prompts and is steered
    dtype: str = "auto"
    device: str = "auto"
    arch: dict[str, str] = field(default_factory=dict)  # layers / attn_out / mlp_out overrides
    engine: str = "auto"  # steered generation: auto (compiled on CUDA) | eager | compiled


@dataclass
class TraitConfig:
    name: str = MISSING
    dir: str = MISSING  # trait folder, relative to the project root or absolute


@dataclass
class VetConfig:
    enabled: bool = True
    pos_min: float = 60.0  # keep positives scoring at least this
    neg_max: float = 40.0  # keep negatives scoring at most this
    paired: bool = False  # drop a pair unless both sides survive
    min_per_side: int = 10


@dataclass
class ExtractionConfig:
    source: str = "natural"  # natural | instruction
    method: str = "mean_diff"  # mean_diff | probe
    position: str = "response[:10]"
    components: list[str] = field(default_factory=lambda: ["residual"])
    max_new_tokens: int = 16
    temperature: float = 0.0
    rollouts: int = 1
    batch_size: int = 16
    max_pairs: int | None = None  # cap on scenarios/questions used (small CPU runs)
    val_frac: float = 0.1
    seed: int = 0
    vet: VetConfig = field(default_factory=VetConfig)


@dataclass
class MixTerm:
    """One term of `steering.mix`: a layer of any saved vector file, at weight x steering.coef."""

    vector: str = MISSING
    layer: int = MISSING
    weight: float = 1.0


@dataclass
class SteeringConfig:
    component: str = "residual"
    layer: int = 10
    coef: float = 0.15
    coef_units: str = "relative"  # relative: x layer's median activation norm | absolute
    layers: list[int] | None = None  # ensemble layers (with weights); overrides layer
    weights: list[float] | None = None  # per-layer coefficients for an ensemble
    ensemble: str | None = None  # name or path of a saved ensemble file
    vector: str | None = None  # steer with this saved vector file instead of extracting one
    mix: list[MixTerm] = field(default_factory=list)  # terms from several vector files
    n_questions: int | None = None  # None: every steering question confirm does not hold out
    max_new_tokens: int = 48
    batch_size: int = 32

    def where(self) -> str:
        """Where this config steers, in words."""
        if self.ensemble:
            return f"ensemble {self.ensemble}"
        if self.mix:
            terms = " + ".join(f"L{m.layer}:{Path(m.vector).stem} x {m.weight:g}" for m in self.mix)
            return f"mix ({terms}) x {self.coef:g} ({self.coef_units})"
        if self.layers:
            ws = list(self.weights or [self.coef] * len(self.layers))
            return f"layers {list(self.layers)} x {ws}"
        return f"layer {self.layer} coef {self.coef:g} ({self.coef_units})"


@dataclass
class PruneConfig:
    """Pruning over questions (`search/pruning.py`): every trial of a batch answers the `first`
    share of the search questions, then a trial clearly incoherent, or clearly worse than the
    best valid trial (one-sided tests at level `p`), stops there: PRUNED, never a result."""

    enabled: bool = False
    first: float = 0.5  # share of the search questions answered before the decision
    p: float = 0.25  # what "clearly" means: the tests' level (docs/search.md: from the replay)


@dataclass
class SearchConfig:
    sampler: str = "tpe"  # tpe | gp | nsga2 | cmaes | grid | adaptive | cmaes_ensemble
    n_trials: int = 12
    batch_size: int = 4  # trials asked together and evaluated in one batched generate
    seed: int = 0
    layer_range: list[int] | None = None  # [lo, hi] inclusive; None: every layer
    coef_range: list[float] = field(default_factory=lambda: [0.05, 0.6])  # [lo, hi], log scale
    coherence_min: float = 70.0
    multi_objective: bool = False
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # known-good {layer, coef}
    # where studies live: sqlite (a file per study), journal (one file, several processes on
    # one host) or a database URL such as postgresql+psycopg://user:pw@host:5432/db (many hosts)
    storage: str = "sqlite"
    heartbeat_interval: int = 10  # seconds between a worker's heartbeats (database storages)
    grace_period: int = 60  # a trial without a heartbeat this long belonged to a dead worker
    options: dict[str, Any] = field(default_factory=dict)  # sampler-specific settings
    prune: PruneConfig = field(default_factory=PruneConfig)


@dataclass
class CombineConfig:
    """A combination strategy placed from the best vectors of an earlier experiment."""

    strategy: str | None = None  # combined@natural_layer | ... | best_single (combinations.py)
    experiment: str = "model_diff"  # MLflow experiment whose best vectors are combined
    instruction_run: str | None = None  # set when resolved: the runs the vectors came from
    natural_run: str | None = None


@dataclass
class ConfirmConfig:
    """Each study's best valid trial, measured again on answers not used to choose it: the last
    `n_questions` steering questions are held out of the search for it (0: no confirmation)."""

    n_questions: int = 6
    rollouts: int = 1  # answers per held-out question (> 1 needs temperature > 0)
    temperature: float = 0.0  # 0: greedy, the search's decoding


@dataclass
class TrackingConfig:
    enabled: bool = True
    experiment: str | None = None  # default: "<model>/<trait>"
    uri: str | None = None  # an MLflow tracking server (http://host:5000); None: under paths.root


@dataclass
class PathsConfig:
    root: str = "."
    cache: str = "${paths.root}/cache"


@dataclass
class SteerlabConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    trait: TraitConfig = field(default_factory=TraitConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    judge: Any = MISSING  # one backend's schema: steerlab.judges.config
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    position: Any = None  # shorthand: overrides extraction.position (10 -> response[:10])
    experiment: Any = None
    size: Any = None
    seed: int = 0


def position_tag(position: Any, default: str) -> str:
    """The effective extraction position as a folder name (`10`, `all`, ...)."""
    try:
        return parse_position(position if position is not None else default).tag
    except ValueError:  # reported with a clear message by the app's validation
        return "invalid"


GROUPS = ("model", "trait", "extraction", "steering", "judge", "search", "tracking", "size")


def unknown_key(overrides: list[str]) -> str | None:
    """Why an override names a key no schema has (`steering.cof=0.2`, `+steering.cof=0.2`),
    listing the valid keys of its node; None if every key exists. Hydra would say only that
    the key is not in struct, and `+` would add it silently."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from steerlab.judges.config import SCHEMAS

    args = [a for a in overrides if not a.startswith("-")]
    dirs = config_dirs(overrides)
    args = [a for a in args if a not in dirs]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException:
        return None  # malformed: Hydra's own message says where
    judge = next((str(o.value()) for o in parsed if o.key_or_group == "judge"), "offline")
    for o in parsed:
        key = o.key_or_group
        if "." not in key and (why := unknown_option(o, dirs)):
            return why
        if o.is_delete() or key.startswith("hydra") or (key in GROUPS and "." not in key):
            continue
        node: Any = SteerlabConfig
        path: list[str] = []
        for part in key.split("."):
            if path == ["judge"]:
                node = SCHEMAS.get(judge)
            if not (isinstance(node, type) and is_dataclass(node)):
                break  # a dict, a list or Any: free-form below here
            hints = get_type_hints(node)
            if part not in hints or part.isupper():
                valid = ", ".join(k for k in hints if not k.isupper())
                where = ".".join(path) or "the config"
                return f"unknown key {key!r}: {where} has {valid}"
            node, path = hints[part], [*path, part]
    return None


def config_dirs(argv: list[str]) -> list[str]:
    """The folders given with Hydra's `--config-dir`/`-cd` (searched besides `conf/`)."""
    out = []
    for a, b in zip(argv, [*argv[1:], ""], strict=True):
        if a in ("--config-dir", "-cd"):
            out.append(b)
        elif a.startswith("--config-dir="):
            out.append(a.split("=", 1)[1])
    return out


def unknown_option(override: Any, extra_dirs: list[str] | None = None) -> str | None:
    """Why `group=name` names no config of that group (`trait=nosuchtrait`), with the valid
    names; None if it does, or the key is no config group. `extra_dirs`: `--config-dir`s."""
    from steerlab.data import CONF_DIR

    group = CONF_DIR / override.key_or_group
    if override.is_delete() or not group.is_dir() or override.value() is None:
        return None
    found = [d / override.key_or_group for d in map(Path, extra_dirs or [])]
    valid = sorted({p.stem for g in (group, *found) for p in g.glob("*.yaml")})
    values = (
        list(override.sweep_string_iterator())
        if override.is_sweep_override()
        else [str(override.value())]
    )
    bad = [v for v in values if v not in valid]
    if not bad:
        return None
    hint = " (a new trait: a folder as in traits/FORMAT.md and conf/trait/<name>.yaml)"
    return (
        f"{override.key_or_group}={bad[0]}: no such {override.key_or_group}; valid: "
        + ", ".join(valid)
        + (hint if override.key_or_group == "trait" else "")
    )


def effective_position(position: Any, default: str) -> str:
    """`extraction.position` as composed (`conf/extraction/*.yaml`): the `position=` shorthand
    normalised (`5` -> `response[:5]`) when given, else the group's default; a spec that does
    not parse is kept as written, for the app's validation to report."""
    spec = position if position is not None else default
    try:
        return str(parse_position(spec))
    except ValueError:
        return str(spec)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="steerlab_schema", node=SteerlabConfig)
    register_judges()
    if not OmegaConf.has_resolver("steerlab_position"):
        OmegaConf.register_new_resolver("steerlab_position", position_tag)
    if not OmegaConf.has_resolver("steerlab_extraction_position"):
        OmegaConf.register_new_resolver("steerlab_extraction_position", effective_position)


def root_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.root).expanduser().resolve()


def cache_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.cache).expanduser().resolve()


def position_of(cfg: DictConfig) -> str:
    """The effective extraction position (the `position=` shorthand wins), normalised."""
    return str(
        parse_position(cfg.position if cfg.position is not None else cfg.extraction.position)
    )


_SECRET = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(text: str) -> str:
    """Text with the password of any `scheme://user:password@host` URL in it replaced by ***."""
    return _SECRET.sub(r"\1***@", text)


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node (which only resolves inside a job), with
    the passwords of its storage and tracking URLs redacted (it is logged and saved)."""
    out: dict[str, Any] = OmegaConf.to_container(  # type: ignore[assignment]
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    for group, key in (("search", "storage"), ("tracking", "uri")):
        if isinstance(out.get(group, {}).get(key), str):
            out[group][key] = redact(out[group][key])
    return out


def steering_of(cfg: DictConfig) -> SteeringConfig:
    """The steering group as its typed dataclass (trials replace its fields, never strings)."""
    node = OmegaConf.to_object(cfg.steering)
    if isinstance(node, SteeringConfig):
        return node
    return SteeringConfig(**node)  # type: ignore[arg-type]
