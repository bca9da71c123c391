"""Every config group composes against the typed schema; typos and bad values fail early."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from steerlab.config import register

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = [
    "model",
    "trait",
    "extraction",
    "steering",
    "judge",
    "search",
    "tracking",
    "experiment",
    "size",
]
register()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_group_option_composes(group, option):
    cfg = _compose(f"{group}={option}")
    assert cfg.model.name and cfg.trait.dir


def test_defaults():
    cfg = _compose()
    assert (cfg.model.name, cfg.trait.name, cfg.extraction.source, cfg.judge.backend) == (
        "smollm2-135m",
        "evil",
        "natural",
        "offline",
    )
    assert cfg.hydra.sweeper._target_.endswith("SteerlabSweeper")


def test_typo_in_key_fails_naming_the_key():
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match=r"steering\.cof"):
        _compose("steering.cof=1")


def test_wrong_type_fails():
    with pytest.raises((ConfigCompositionException, ValidationError), match=r"steering\.layer=abc"):
        _compose("steering.layer=abc")


def test_unknown_trait_lists_choices():
    with pytest.raises(ConfigCompositionException, match=r"(?s)trait/nope.*evil.*hallucination"):
        _compose("trait=nope")


def test_size_presets_apply_after_the_experiment_and_before_the_command_line():
    cfg = _compose("experiment=model_diff", "size=cpu")
    assert (cfg.search.n_trials, cfg.steering.n_questions, cfg.extraction.max_pairs) == (6, 4, 80)
    assert cfg.extraction.vet.enabled is False
    assert (cfg.confirm.n_questions, _compose().confirm.n_questions) == (8, 6)  # 8 held out
    assert _compose("experiment=model_diff").search.n_trials == 8  # the overlay's own
    assert _compose("experiment=model_diff", "size=cpu", "search.n_trials=3").search.n_trials == 3
    ref = _compose("experiment=combinations", "size=reference")
    assert (ref.search.n_trials, ref.steering.n_questions, ref.extraction.max_pairs) == (
        40,
        None,
        None,
    )
    assert ref.hydra.sweep.dir.endswith("/evil/combinations/None")  # the overlay's own dir


def test_a_trait_in_a_config_dir_is_an_option_and_a_missing_one_is_still_refused(tmp_path):
    from steerlab.config import unknown_key

    (tmp_path / "trait").mkdir()
    (tmp_path / "trait" / "mine.yaml").write_text("name: mine\ndir: traits/mine\n")
    assert unknown_key(["--config-dir", str(tmp_path), "trait=mine"]) is None
    assert unknown_key([f"--config-dir={tmp_path}", "trait=mine"]) is None
    why = unknown_key(["--config-dir", str(tmp_path), "trait=nope"])
    assert why and "valid: evil, hallucination, mine, sycophancy" in why
    assert "trait=mine: no such trait" in (unknown_key(["trait=mine"]) or "")
