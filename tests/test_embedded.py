"""The embedded SmolLM2-135M: extract an evil vector at two layers and steer with it.

Direction check without a judge: steering along +v must raise the model's log-likelihood of
held-out evil first-person texts relative to their matched ethical twins, and -v must lower it;
greedy answers to held-out questions must change.
"""

import pytest
import torch

from steerlab.config import ExtractionConfig, VetConfig
from steerlab.data import load_trait
from steerlab.extraction import cached_capture, elicit, extract_vectors, vet
from steerlab.generation import GenConfig, forward_inputs, generate, prompt_ids
from steerlab.positions import parse_position
from steerlab.steering import steer
from steerlab.vectors import load_vectors

pytestmark = pytest.mark.slow
LAYERS = (9, 15)


@pytest.fixture(scope="module")
def smollm2():
    from steerlab.models import load_model

    return load_model("embedded:smollm2")


def _pair_logit_gap(model, pairs, rows) -> float:
    """Mean log p(positive text) - log p(negative text), under per-row steering `rows`."""
    texts = [t for p in pairs for t in p]
    ids = [prompt_ids(model, t, chat=False) for t in texts]
    inputs = forward_inputs(model, ids)
    x, m = inputs["input_ids"], inputs["attention_mask"]
    with torch.inference_mode(), steer(model, rows * len(texts)):
        logits = model.model(**inputs).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None])[..., 0]
    total = (lp * m[:, 1:]).sum(-1)
    return float((total[0::2] - total[1::2]).mean())


def test_extracted_evil_vector_steers_in_the_expected_direction(smollm2, tmp_path):
    trait = load_trait("traits/evil")
    cfg = ExtractionConfig(
        source="natural",
        max_new_tokens=12,
        max_pairs=40,
        batch_size=40,
        vet=VetConfig(enabled=False),
    )
    elicited = elicit(smollm2, trait, cfg, tmp_path)
    assert len(elicited.samples) == 80 and sum(elicited.labels) == 40
    keep = vet(elicited, [None] * 80, cfg.vet)
    pos = parse_position("response[:10]")
    cap = cached_capture(smollm2, elicited.samples, [pos], ["residual"], 40, tmp_path)
    paths = extract_vectors(
        cap,
        elicited.labels,
        keep,
        "mean_diff",
        {"model": "smollm2", "hidden_size": smollm2.hidden_size},
        tmp_path,
    )
    vecs = load_vectors(paths[(str(pos), "residual")], {"hidden_size": smollm2.hidden_size})
    assert vecs.vectors.shape == (smollm2.n_layers, smollm2.hidden_size)
    assert vecs.meta["layer_convention"].startswith("0-based")

    held_out = trait.natural[100:130]  # never used for extraction above
    questions = trait.steering_questions[:3]
    prompts = [prompt_ids(smollm2, q) for q in questions]
    gen = GenConfig(max_new_tokens=24, batch_size=8)
    plain = [s.text for s in generate(smollm2, prompts, gen)]
    base_gap = _pair_logit_gap(smollm2, held_out, [()])
    for layer in LAYERS:
        up = _pair_logit_gap(smollm2, held_out, [(vecs.term(layer, 0.3),)])
        down = _pair_logit_gap(smollm2, held_out, [(vecs.term(layer, -0.3),)])
        assert down < base_gap < up, (layer, down, base_gap, up)
        steered = [
            s.text
            for s in generate(smollm2, prompts, gen, [(vecs.term(layer, 0.3),)] * len(prompts))
        ]
        assert steered != plain
