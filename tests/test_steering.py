"""Steering hooks on tiny random models: exact arithmetic, per-row isolation, clean removal."""

import pytest
import torch

from steerlab.generation import GenConfig, generate, prompt_ids
from steerlab.models import COMPONENTS
from steerlab.steering import RowMismatchError, SteerTerm, steer

QUESTIONS = ["How are you?", "Tell me a story about a cat.", "Why?", "What is 2+2, really?"]
GEN = GenConfig(max_new_tokens=8, batch_size=16)


def _record(model, layer, component, ids):
    seen = {}

    def hook(_m, _i, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out).clone()

    h = model.module(layer, component).register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model.model(input_ids=ids)
    finally:
        h.remove()
    return seen["h"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_hook_adds_exactly_coef_times_vector(model, component):
    ids = torch.tensor([prompt_ids(model, "hello there")])
    v = torch.randn(model.hidden_size)
    base = _record(model, 1, component, ids)
    with steer(model, [(SteerTerm(1, component, v, 2.5),)]):
        steered = _record(model, 1, component, ids)
    assert torch.equal(steered, base + (2.5 * v).to(base.dtype)[None, None, :])


def test_ensemble_terms_sum_per_site(llama):
    ids = torch.tensor([prompt_ids(llama, "hi")])
    a, b = torch.randn(llama.hidden_size), torch.randn(llama.hidden_size)
    base = _record(llama, 0, "residual", ids)
    rows = [(SteerTerm(0, "residual", a, 1.0), SteerTerm(0, "residual", b, -0.5))]
    with steer(llama, rows):
        got = _record(llama, 0, "residual", ids)
    delta = torch.zeros(llama.hidden_size)
    delta += 1.0 * a
    delta += -0.5 * b
    assert torch.equal(got, base + delta[None, None, :])


def test_per_row_batched_steering_equals_each_config_alone(model):
    torch.manual_seed(1)
    d = model.hidden_size
    configs = [
        (),
        (SteerTerm(1, "residual", torch.randn(d), 4.0),),
        (
            SteerTerm(0, "attn_contribution", torch.randn(d), 3.0),
            SteerTerm(2, "mlp_contribution", torch.randn(d), 5.0),
        ),
        (SteerTerm(1, "residual", torch.randn(d), -6.0),),
    ]
    prompts = [prompt_ids(model, q) for q in QUESTIONS]
    # K configs x Q questions in one batch, interleaved so neighbours differ in padding and config
    batch_prompts = [p for _ in configs for p in prompts]
    batch_rows = [c for c in configs for _ in prompts]
    batched = generate(model, batch_prompts, GenConfig(max_new_tokens=8, batch_size=64), batch_rows)
    for k, cfg in enumerate(configs):
        alone = generate(model, prompts, GEN, [cfg] * len(prompts))
        got = batched[k * len(prompts) : (k + 1) * len(prompts)]
        assert [s.response_ids for s in got] == [s.response_ids for s in alone]
    # and steering really changed something
    assert [s.response_ids for s in batched[: len(prompts)]] != [
        s.response_ids for s in batched[len(prompts) :][: len(prompts)]
    ]


def test_hooks_removed_restores_byte_identical_output(model):
    prompts = [prompt_ids(model, q) for q in QUESTIONS]
    before = generate(model, prompts, GEN)
    v = torch.randn(model.hidden_size)
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(model, [(SteerTerm(1, "residual", v, 50.0),)] * len(prompts)),
    ):
        raise RuntimeError("boom")
    steered = generate(model, prompts, GEN, [(SteerTerm(1, "residual", v, 50.0),)] * len(prompts))
    after = generate(model, prompts, GEN)
    assert [s.text for s in after] == [s.text for s in before]
    assert [s.response_ids for s in steered] != [s.response_ids for s in before]
    assert all(not m._forward_hooks for m in model.model.modules())


def test_batch_size_mismatch_is_an_error(llama):
    ids = torch.tensor([prompt_ids(llama, "x")] * 2)
    with (
        pytest.raises(RowMismatchError),
        steer(llama, [(SteerTerm(0, "residual", torch.ones(llama.hidden_size), 1.0),)] * 3),
        torch.inference_mode(),
    ):
        llama.model(input_ids=ids)
