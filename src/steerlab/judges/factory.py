"""Build a judge from the `judge` config group (conf/judge/*.yaml): offline, openai or hf.

The one module that knows every backend: the backends themselves never import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from steerlab.judges.base import Judge
from steerlab.judges.hf import HFJudge
from steerlab.judges.llm import LLMJudge, Prompts
from steerlab.judges.offline import OfflineJudge
from steerlab.judges.openai import OpenAIJudge

if TYPE_CHECKING:
    from steerlab.models import LoadedModel

BACKENDS = ("offline", "openai", "hf")
_COMMON = {"model", "min_mass", "max_tokens"}
_KEYS = {
    "openai": _COMMON
    | {
        "base_url",
        "api_key_env",
        "concurrency",
        "max_retries",
        "backoff",
        "timeout",
        "top_logprobs",
    },
    "hf": _COMMON | {"batch_size", "dtype", "device", "top_logprobs"},
}
_ALL = {"backend", "prompts", "options", "name"} | _KEYS["openai"] | _KEYS["hf"]


def _plain(cfg: Any) -> dict[str, Any]:
    """A judge config (DictConfig, dataclass or mapping) as a plain dict."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    if isinstance(cfg, DictConfig):
        return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"judge config must be a mapping, got {type(cfg).__name__}")


def make_judge(cfg: Any, model: LoadedModel | None, cache_dir: Path) -> Judge:
    """The judge `cfg.backend` names. `model` is the unsteered LM: the offline judge needs it
    (for perplexity); the LLM judges load their own model or call an endpoint."""
    conf = _plain(cfg)
    backend = conf.get("backend")
    if backend == "offline":
        if model is None:
            raise ValueError(
                "judge.backend=offline needs the unsteered language model (its perplexity is "
                "the coherence signal); pass the loaded model"
            )
        return OfflineJudge.from_options(model, Path(cache_dir), conf.get("options") or {})
    if backend in ("openai", "hf"):
        return make_llm_judge(conf)
    raise ValueError(f"unknown judge.backend {backend!r}; valid: {', '.join(BACKENDS)}")


def make_llm_judge(cfg: Mapping) -> LLMJudge:
    """Build the `openai` or `hf` judge from a `judge` config mapping (e.g. conf/judge/*.yaml).

    Keys meant for the other backend are ignored (a typed schema carries all of them);
    `options` holds backend extras (e.g. dtype, device, top_logprobs); unknown keys raise.
    """
    cfg = dict(cfg)
    backend = cfg.get("backend")
    if backend not in _KEYS:
        raise ValueError(f"judge.backend must be one of {sorted(_KEYS)} here, got {backend!r}")
    merged = {k: v for k, v in cfg.items() if k != "options"} | dict(cfg.get("options") or {})
    unknown = sorted(set(merged) - _ALL)
    if unknown:
        raise ValueError(f"unknown judge key(s) {unknown}; valid: {sorted(_ALL)}")
    prompts = Prompts.from_mapping(merged.get("prompts"))
    kwargs = {k: v for k, v in merged.items() if k in _KEYS[backend] and v not in (None, "")}
    if backend == "openai":
        return OpenAIJudge(prompts=prompts, **kwargs)
    return HFJudge(prompts=prompts, **kwargs)
