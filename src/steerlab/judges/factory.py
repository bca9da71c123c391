"""Build a judge from the `judge` config group (conf/judge/*.yaml): offline, openai or hf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steerlab.judges.base import Judge
    from steerlab.models import LoadedModel

BACKENDS = ("offline", "openai", "hf")


def _plain(cfg: Any) -> dict[str, Any]:
    """A judge config (DictConfig, dataclass or mapping) as a plain dict."""
    from omegaconf import DictConfig, OmegaConf

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
        from steerlab.judges.offline import OfflineJudge

        return OfflineJudge.from_options(model, Path(cache_dir), conf.get("options") or {})
    if backend in ("openai", "hf"):
        from steerlab.judges.llm import make_llm_judge

        return make_llm_judge(conf)
    raise ValueError(f"unknown judge.backend {backend!r}; valid: {', '.join(BACKENDS)}")
