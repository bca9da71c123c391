"""Capture: one pass, window means match a slow per-sample reference, teacher forcing is exact."""

import pytest
import torch

from steerlab.capture import capture
from steerlab.generation import GenConfig, Sample, generate, prompt_ids
from steerlab.models import COMPONENTS
from steerlab.positions import parse_position

POSITIONS = [
    parse_position(p)
    for p in ("response[:3]", "response[:]", "prompt[-1]", "all[:]", "response[2:5]")
]


def _samples(model):
    qs = ["Hi!", "Explain the moon landing in detail please.", "Why is the sky blue?"]
    prompts = [prompt_ids(model, q) for q in qs]
    return generate(model, prompts, GenConfig(max_new_tokens=7, batch_size=8))


def _slow_reference(model, sample: Sample, component: str, pos) -> torch.Tensor:
    """One sample alone, no padding, every token kept: [L, d] window mean."""
    ids = torch.tensor([sample.prompt_ids + sample.response_ids])
    outs = {}
    hooks = [
        model.module(layer, component).register_forward_hook(
            lambda _m, _i, o, layer=layer: outs.__setitem__(
                layer, o[0] if isinstance(o, tuple) else o
            )
        )
        for layer in range(model.n_layers)
    ]
    try:
        with torch.inference_mode():
            model.model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    a, z = pos.bounds(len(sample.prompt_ids), len(sample.response_ids))
    return torch.stack([outs[layer][0, a:z].float().mean(0) for layer in range(model.n_layers)])


def test_window_means_equal_slow_reference(model):
    samples = _samples(model)
    cap = capture(model, samples, POSITIONS, COMPONENTS, batch_size=2)
    for comp in COMPONENTS:
        assert cap.means[comp].shape == (
            len(POSITIONS),
            model.n_layers,
            len(samples),
            model.hidden_size,
        )
        for p, pos in enumerate(POSITIONS):
            for i, s in enumerate(samples):
                if not cap.valid[p, i]:
                    continue
                ref = _slow_reference(model, s, comp, pos)
                torch.testing.assert_close(cap.means[comp][p, :, i], ref, atol=1e-4, rtol=1e-4)
    assert all(len(v) == model.n_layers and min(v) > 0 for v in cap.norms.values())


def test_residual_matches_hidden_states_convention(llama):
    s = _samples(llama)[1]
    pos = parse_position("all[:]")
    cap = capture(llama, [s], [pos])
    with torch.inference_mode():
        hs = llama.model(
            torch.tensor([s.prompt_ids + s.response_ids]), output_hidden_states=True
        ).hidden_states
    # layer L = hidden_states[L + 1]; HF applies the final norm to the last entry, we do not
    for layer in range(llama.n_layers - 1):
        torch.testing.assert_close(cap.means["residual"][0, layer, 0], hs[layer + 1][0].mean(0))
    last = llama.model.model.norm(cap.means["residual"][0, -1, 0])
    assert not torch.allclose(last, cap.means["residual"][0, -1, 0])


def test_teacher_forcing_reproduces_generated_tokens(model):
    samples = [s for s in _samples(model) if s.response_ids]
    from steerlab.generation import forward_inputs

    inputs = forward_inputs(model, [s.prompt_ids + s.response_ids for s in samples])
    with torch.inference_mode():
        logits = model.model(**inputs).logits
    width = inputs["input_ids"].shape[1]
    for b, s in enumerate(samples):
        start = width - len(s.response_ids)
        pred = logits[b, start - 1 : width - 1].argmax(-1).tolist()
        assert pred == s.response_ids


@pytest.mark.parametrize("spec", ["response[:50]", "response[40:]"])
def test_empty_windows_are_flagged_invalid(llama, spec):
    s = Sample(prompt_ids(llama, "hey"), [], "")
    cap = capture(llama, [s], [parse_position(spec)])
    assert not bool(cap.valid[0, 0])


def test_token_budget_batches_match_fixed_rows(model):
    samples = _samples(model)
    one = capture(model, samples, POSITIONS, COMPONENTS, batch_size=1, batch_tokens=None)
    budget = capture(model, samples, POSITIONS, COMPONENTS, batch_size=1, batch_tokens=10_000)
    for comp in COMPONENTS:
        torch.testing.assert_close(budget.means[comp], one.means[comp], atol=1e-4, rtol=1e-4)
        assert budget.norms[comp] == pytest.approx(one.norms[comp], rel=1e-4)
    assert torch.equal(budget.valid, one.valid)


def test_length_batches():
    from steerlab.generation import length_batches

    lengths = [5, 1, 9, 3, 7]
    assert length_batches(lengths, 2) == [[1, 3], [0, 4], [2]]
    assert length_batches(lengths, 1, batch_tokens=15) == [[1, 3, 0], [4], [2]]
    assert length_batches(lengths, 2, batch_tokens=4) == [[1, 3], [0, 4], [2]]
