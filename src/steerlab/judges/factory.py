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
from steerlab.judges.config import SCHEMAS, settings
from steerlab.judges.hf import HFJudge
from steerlab.judges.llm import LLMJudge, Prompts
from steerlab.judges.offline import OfflineJudge
from steerlab.judges.openai import OpenAIJudge

if TYPE_CHECKING:
    from steerlab.models import LoadedModel

BACKENDS = tuple(SCHEMAS)
LLM_JUDGES: dict[str, type[LLMJudge]] = {"openai": OpenAIJudge, "hf": HFJudge}
# what a plain mapping may hold for an LLM judge; `name` is tolerated and ignored, as before
_LLM_KEYS = {"backend", "prompts", "options", "name"}.union(*map(settings, LLM_JUDGES))


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
    if backend in LLM_JUDGES:
        return make_llm_judge(conf)
    raise ValueError(f"unknown judge.backend {backend!r}; valid: {', '.join(BACKENDS)}")


def make_llm_judge(cfg: Mapping) -> LLMJudge:
    """Build the `openai` or `hf` judge from a `judge` config mapping (e.g. conf/judge/*.yaml).

    The keys a backend uses are its schema's (`steerlab.judges.config`); `options` holds its
    extras (e.g. dtype, device, top_logprobs). Keys only the other LLM backend uses are ignored
    (a config switched with `judge.backend=...` keeps them); unknown keys raise.
    """
    cfg = dict(cfg)
    backend = cfg.get("backend")
    if backend not in LLM_JUDGES:
        raise ValueError(f"judge.backend must be one of {sorted(LLM_JUDGES)} here, got {backend!r}")
    merged = {k: v for k, v in cfg.items() if k != "options"} | dict(cfg.get("options") or {})
    unknown = sorted(set(merged) - _LLM_KEYS)
    if unknown:
        raise ValueError(f"unknown judge key(s) {unknown}; valid: {sorted(_LLM_KEYS)}")
    prompts = Prompts.from_mapping(merged.get("prompts"))
    mine = settings(backend)
    kwargs = {k: v for k, v in merged.items() if k in mine and v not in (None, "")}
    return LLM_JUDGES[backend](prompts=prompts, **kwargs)
