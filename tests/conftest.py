"""Shared fixtures: tiny randomly initialised models of real architectures, built from configs
with an in-memory byte-level tokenizer, so no file or hub is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = [  # a sweep of the tiny model (`tiny_dir`): few pairs, short answers, all valid
    "trait=evil",
    "position=5",
    "model.name=tiny",
    "steering.layer=1",
    "extraction.max_pairs=8",
    "extraction.max_new_tokens=4",
    "extraction.vet.enabled=false",
    "steering.n_questions=2",
    "steering.max_new_tokens=4",
    "search.batch_size=2",
    "search.coherence_min=0",
    f"judge.options.calibration_dirs=[{REPO / 'traits' / 'evil'}]",
]

ARCHS = ("llama", "qwen2", "gemma2")
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def tiny_model(arch: str, layers: int = 3, seed: int = 0):
    from steerlab.models import random_model

    extra = dict(head_dim=16, sliding_window=64) if arch == "gemma2" else {}
    shape = dict(model_type=arch, num_hidden_layers=layers, **TINY, **extra)
    return random_model(shape, dtype="float32", device="cpu", seed=seed)


@pytest.fixture(params=ARCHS)
def model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama():
    return tiny_model("llama")


def bare_trait(name: str = "evil"):
    """A trait with only a rubric: what a judge needs."""
    from steerlab.data import Rubric, TraitData

    return TraitData(
        name=name,
        description="",
        rubric=Rubric("Malice.", "very", "some", "none"),
        instructions=[],
        questions=[],
        natural=[],
        steering_questions=[],
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 3-layer random Llama with the byte tokenizer, saved as a loadable model folder: a
    stand-in model for whole sweeps that run in seconds."""
    out = tmp_path_factory.mktemp("tiny-llama")
    m = tiny_model("llama")
    m.model.save_pretrained(out)
    m.tokenizer.save_pretrained(out)
    return out


def tiny_args(root: Path, model: Path, *extra: str) -> list[str]:
    """`python -m steerlab` arguments of a tiny-model sweep into `root`."""
    return [
        "-m",
        *TINY_SWEEP,
        f"model.extraction={model}",
        f"model.steering={model}",
        f"paths.root={root}",
        *extra,
    ]
