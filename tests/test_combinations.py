"""Combination strategies: the combined vector's arithmetic, each strategy's planned values on a
composed config, and `steering.mix` terms (the end-to-end run is in test_app.py)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from steerlab.combinations import (
    STRATEGIES,
    Best,
    CombineError,
    apply,
    combine,
    combined_file,
    plan,
)
from steerlab.config import register, steering_of
from steerlab.vectors import TraitVectors, load_vectors

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def _vectors(seed: int, norms: list[float], source: str) -> TraitVectors:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(4, 8, generator=g)
    meta = {
        "model": "m",
        "hidden_size": 8,
        "n_layers": 4,
        "trait": "evil",
        "component": "residual",
        "source": source,
        "position": "response[:]" if source == "instruction" else "response[:10]",
        "method": "mean_diff",
        "norms": norms,
    }
    return TraitVectors(v / v.norm(dim=-1, keepdim=True), meta)


def _best(source: str, path: Path, layer: int, coef: float, trait: float) -> Best:
    return Best(source, source[:4], layer, coef, trait, trait - 20, str(path), f"run-{source}", {})


@pytest.fixture
def pair(tmp_path):
    a = _vectors(0, [1.0, 2.0, 3.0, 4.0], "instruction")
    b = _vectors(1, [3.0, 2.0, 1.0, 0.0], "natural")
    pa, pb = a.save(tmp_path / "a.safetensors"), b.save(tmp_path / "b.safetensors")
    inst = _best("instruction", pa, 1, 0.3, 80.0)
    nat = _best("natural", pb, 3, 0.5, 70.0)
    return a, b, inst, nat


def _compose(*overrides: str, values=None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    apply(cfg, values or {})
    return cfg


def test_combined_vector_is_the_renormalised_sum_of_units(pair):
    a, b, *_ = pair
    c = combine(TraitVectors(a.vectors * 5, a.meta), b)  # scale of an input must not matter
    want = a.vectors + b.vectors
    want = want / want.norm(dim=-1, keepdim=True)
    assert torch.allclose(c.vectors, want, atol=1e-6)
    assert torch.allclose(c.vectors.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert c.norms == [2.0, 2.0, 2.0, 2.0]
    assert (c.meta["source"], c.meta["component"]) == ("combined", "residual")
    # the combination sits between its parts: equal cosine to each
    cos_a = torch.nn.functional.cosine_similarity(c.vectors, a.vectors)
    cos_b = torch.nn.functional.cosine_similarity(c.vectors, b.vectors)
    assert torch.allclose(cos_a, cos_b, atol=1e-6)


def test_combine_refuses_mismatched_files(pair):
    a, b, *_ = pair
    with pytest.raises(CombineError, match="shapes differ"):
        combine(a, TraitVectors(b.vectors[:3], b.meta | {"norms": b.norms[:3]}))
    with pytest.raises(CombineError, match="components differ"):
        combine(a, TraitVectors(b.vectors, b.meta | {"component": "attn_contribution"}))


def test_combined_file_is_written_once_and_loads(pair, tmp_path):
    a, b, inst, nat = pair
    path = combined_file(inst, nat, tmp_path / "cache")
    assert combined_file(inst, nat, tmp_path / "cache") == path
    got = load_vectors(path, {"hidden_size": 8, "n_layers": 4})
    assert torch.allclose(got.vectors, combine(a, b).vectors)
    assert got.meta["combined_from"] == [inst.vector, nat.vector]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_composes_into_a_study(pair, tmp_path, strategy):
    _, _, inst, nat = pair
    combined = tmp_path / "c.safetensors"
    cfg = _compose(f"combine.strategy={strategy}", values=plan(strategy, inst, nat, combined))
    s, search = cfg.steering, cfg.search
    assert (cfg.combine.instruction_run, cfg.combine.natural_run) == (
        "run-instruction",
        "run-natural",
    )
    enq = [dict(e) for e in search.enqueue]
    if strategy == "combined@natural_layer":
        assert (s.vector, list(search.layer_range), enq) == (
            str(combined),
            [3, 3],
            [{"layer": 3, "coef": 0.5}],
        )
    elif strategy == "combined@instruction_layer":
        assert (s.vector, list(search.layer_range), enq) == (
            str(combined),
            [1, 1],
            [{"layer": 1, "coef": 0.3}],
        )
    elif strategy == "combined@best_layer":
        assert s.vector == str(combined) and search.layer_range is None
        assert enq == [{"layer": 1, "coef": 0.3}, {"layer": 3, "coef": 0.5}]
    elif strategy == "ensemble_half":
        assert [(m.vector, m.layer, m.weight) for m in s.mix] == [
            (inst.vector, 1, 0.15),
            (nat.vector, 3, 0.25),
        ]
        assert list(search.coef_range) == [0.5, 2.0] and enq == [{"coef": 1.0}]
    else:  # best_single: the higher-trait source (instruction here), at its own layer
        assert (s.vector, list(search.layer_range), enq) == (
            inst.vector,
            [1, 1],
            [{"layer": 1, "coef": 0.3}],
        )


def test_plan_keeps_exact_coefficients(pair):
    _, _, inst, nat = pair
    inst = Best(*[*inst.__dict__.values()][:3], 0.123456789, *[*inst.__dict__.values()][4:])
    cfg = _compose(values=plan("combined@instruction_layer", inst, nat, Path("c")))
    assert cfg.search.enqueue[0].coef == 0.123456789  # typed values: no rounding through text


def test_mix_terms_come_from_each_file_at_weight_times_coef(pair, tmp_path):
    from steerlab.runner import Runner

    a, b, inst, nat = pair
    cfg = _compose("steering.coef=2.0", values=plan("ensemble_half", inst, nat, Path("unused")))
    terms = Runner().terms(None, steering_of(cfg), tmp_path)  # type: ignore[arg-type]
    assert [(t.layer, t.component) for t in terms] == [(1, "residual"), (3, "residual")]
    # relative units: weight x coef x the file's norm at that layer
    assert terms[0].coef == pytest.approx(0.15 * 2.0 * a.norms[1])
    assert terms[1].coef == pytest.approx(0.25 * 2.0 * b.norms[3])
    assert torch.equal(terms[0].vector, a.vectors[1]) and torch.equal(terms[1].vector, b.vectors[3])


def test_unknown_strategy_is_refused(pair):
    _, _, inst, nat = pair
    with pytest.raises(CombineError, match="choose one of combined@natural_layer"):
        plan("blend", inst, nat, Path("c"))
