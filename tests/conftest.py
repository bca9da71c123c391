"""Shared fixtures: tiny randomly initialised models of real architectures, built from configs
with an in-memory byte-level tokenizer, so no file or hub is needed."""

from __future__ import annotations

import pytest

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
