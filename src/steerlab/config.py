"""Structured-config schemas: YAML in `conf/` merges into these, so a typo or a wrong type fails
at compose time naming the valid keys. Registered in Hydra's ConfigStore by `register()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from steerlab.judges.config import register as register_judges


@dataclass
class ModelConfig:
    name: str = MISSING
    extraction: str = MISSING  # variant used for natural elicitation (base model)
    steering: str = MISSING  # variant that answers under system prompts and is steered
    dtype: str = "auto"
    device: str = "auto"
    arch: dict[str, str] = field(default_factory=dict)  # layers / attn_out / mlp_out overrides


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
    n_questions: int | None = None  # None: every held-out steering question
    max_new_tokens: int = 48
    batch_size: int = 32


@dataclass
class SearchConfig:
    sampler: str = "tpe"  # tpe | gp | nsga2 | cmaes | grid | adaptive | cmaes_ensemble
    n_trials: int = 12
    batch_size: int = 4  # trials asked together and evaluated in one batched generate
    seed: int = 0
    layers: list[int] | None = None  # [lo, hi] inclusive; None: every layer
    coef: list[float] = field(default_factory=lambda: [0.05, 0.6])  # [lo, hi], log scale
    coherence_min: float = 70.0
    multi_objective: bool = False
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # known-good {layer, coef}
    options: dict[str, Any] = field(default_factory=dict)  # sampler-specific settings


@dataclass
class CombineConfig:
    """A combination strategy placed from the best vectors of an earlier experiment."""

    strategy: str | None = None  # combined@natural_layer | ... | best_single (combinations.py)
    experiment: str = "model_diff"  # MLflow experiment whose best vectors are combined
    instruction_run: str | None = None  # set when resolved: the runs the vectors came from
    natural_run: str | None = None


@dataclass
class TrackingConfig:
    enabled: bool = True
    experiment: str | None = None  # default: "<model>/<trait>"
    parent_run_id: str | None = None  # set by the sweeper: trials log as child runs
    trial: int | None = None  # Optuna trial number, set by the sweeper


@dataclass
class PathsConfig:
    root: str = "."
    cache: str = "${paths.root}/cache"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    trait: TraitConfig = field(default_factory=TraitConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    judge: Any = MISSING  # one backend's schema: steerlab.judges.config
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    position: Any = None  # shorthand: overrides extraction.position (10 -> response[:10])
    experiment: Any = None
    size: Any = None
    seed: int = 0


def position_tag(position: Any, default: str) -> str:
    """The effective extraction position as a folder name (`10`, `all`, ...)."""
    from steerlab.positions import parse_position

    try:
        return parse_position(position if position is not None else default).tag
    except ValueError:  # reported with a clear message by the app's validation
        return "invalid"


def register() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="steerlab_schema", node=Config)
    register_judges()
    if not OmegaConf.has_resolver("steerlab_position"):
        OmegaConf.register_new_resolver("steerlab_position", position_tag)
