"""Typed schemas of the `judge` config group, one per backend.

Each `conf/judge/<backend>.yaml` starts with `defaults: [<backend>_schema, _self_]`, so its YAML
merges into that backend's schema and a typo or a wrong type fails at compose time naming the
backend's valid keys. `register()` stores the schemas in Hydra's ConfigStore (group `judge`);
`steerlab.config.register()` calls it. `options` holds backend extras, checked when the judge is
built: `OPTIONS` names them per backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class OfflineJudgeConfig:
    """No LLM: text encoder + the unsteered LM's likelihood (docs/offline_judge.md)."""

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "calibration_dirs",  # trait folders with a calibration.jsonl; null: every traits/*/
        "encoder_batch_size",
        "max_answer_tokens",
        "token_budget",
    )

    backend: str = "offline"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpenAIJudgeConfig:
    """An OpenAI-compatible /chat/completions endpoint, logprob-weighted scores."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("top_logprobs",)

    backend: str = "openai"
    model: str = ""  # empty: the judge's default model
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    max_retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    breaker: int = 8  # attempts failing in a row (timeouts, connection errors, 5xx): endpoint down
    deadline: float = 1800.0  # seconds for one batch of prompts at most
    min_mass: float = 0.25
    max_tokens: int = 3
    prompts: dict[str, str] = field(default_factory=dict)  # trait, coherence, relevance
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HFJudgeConfig:
    """A local transformers chat model, the same prompts and logprob method."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("dtype", "device", "top_logprobs", "share_prefix")

    backend: str = "hf"
    model: str = ""  # empty: the judge's default model
    batch_size: int = 16
    batch_tokens: int | None = -1  # tokens per batch; -1: a budget on CUDA only, None: none
    min_mass: float = 0.25
    max_tokens: int = 3
    prompts: dict[str, str] = field(default_factory=dict)  # trait, coherence, relevance
    options: dict[str, Any] = field(default_factory=dict)


SCHEMAS: dict[str, type] = {
    "offline": OfflineJudgeConfig,
    "openai": OpenAIJudgeConfig,
    "hf": HFJudgeConfig,
}


def settings(backend: str) -> set[str]:
    """The keys a backend's judge is built from: its schema's fields besides `backend`,
    `prompts` and `options`, plus the extras `options` may hold."""
    schema = SCHEMAS[backend]
    own = {f.name for f in fields(schema)} - {"backend", "prompts", "options"}
    return own | set(schema.OPTIONS)  # type: ignore[attr-defined]


def register() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for backend, schema in SCHEMAS.items():
        store.store(group="judge", name=f"{backend}_schema", node=schema)
