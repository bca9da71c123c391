"""The `judge` config group: one typed schema per backend, pulled by each conf/judge/*.yaml, so
typos and another backend's keys fail at compose time; composed configs build their judges."""

from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from steerlab.config import register
from steerlab.judges.config import SCHEMAS, settings

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("backend", sorted(SCHEMAS))
def test_each_backend_composes_into_its_own_schema(backend):
    judge = _compose(f"judge={backend}").judge
    assert judge.backend == backend
    assert OmegaConf.get_type(judge) is SCHEMAS[backend]
    assert set(judge) == {f.name for f in fields(SCHEMAS[backend])}


def test_typo_in_a_judge_key_fails_naming_it_and_the_schema():
    with pytest.raises(ConfigCompositionException, match=r"judge\.modle") as e:
        _compose("judge=openai", "judge.modle=x")
    assert "Key 'modle' not in 'OpenAIJudgeConfig'" in str(e.value.__cause__)


@pytest.mark.parametrize(
    ("backend", "foreign"),
    [("offline", "base_url"), ("offline", "model"), ("openai", "batch_size"), ("hf", "timeout")],
)
def test_another_backends_key_fails(backend, foreign):
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match=rf"judge\.{foreign}"):
        _compose(f"judge={backend}", f"judge.{foreign}=1")


def test_wrong_type_fails():
    with pytest.raises((ConfigCompositionException, ValidationError), match=r"judge\.concurrency"):
        _compose("judge=openai", "judge.concurrency=many")


def test_overrides_reach_the_backends_that_use_them():
    o = _compose(
        "judge=openai",
        "judge.model=m",
        "judge.base_url=http://127.0.0.1:1/v1",
        "judge.api_key_env=K",
        "judge.concurrency=2",
        "judge.max_retries=1",
        "judge.backoff=0.5",
        "judge.timeout=9",
        "+judge.options.top_logprobs=5",
    ).judge
    from steerlab.judges.factory import make_judge
    from steerlab.judges.openai import OpenAIJudge

    j = make_judge(o, None, Path("unused"))
    assert isinstance(j, OpenAIJudge)
    assert (j.model, j.base_url, j.api_key_env, j.concurrency, j.max_retries) == (
        "m",
        "http://127.0.0.1:1/v1",
        "K",
        2,
        1,
    )
    assert (j.backoff, j.timeout, j.top_logprobs) == (0.5, 9.0, 5)
    h = _compose("judge=hf", "judge.model=x", "judge.batch_size=4", "+judge.options.dtype=bf16")
    assert (h.judge.model, h.judge.batch_size, h.judge.options.dtype) == ("x", 4, "bf16")
    off = _compose("judge.options.token_budget=512").judge
    assert (off.backend, off.options.token_budget) == ("offline", 512)


def test_every_llm_schema_field_is_a_judge_setting():
    """The schemas are the one list of keys: the factory builds each judge from them."""
    import inspect

    from steerlab.judges.factory import LLM_JUDGES

    for backend, cls in LLM_JUDGES.items():
        params = set(inspect.signature(cls).parameters) - {"prompts"}
        assert settings(backend) == params, backend
