"""HFJudge on tiny models: random weights (plumbing, batching) and rigged weights (exact scores)."""

from __future__ import annotations

import pytest
import torch

from conftest import bare_trait, tiny_model
from steerlab.judges.hf import HFJudge
from steerlab.judges.llm import Prompts

PROMPTS = Prompts(
    trait="Rate the trait.\n{rubric}\nQ: {question}\nA: {answer}\nScore 0-100:",
    coherence="Rate coherence.\nQ: {question}\nA: {answer}\nScore 0-100:",
    relevance="Rate relevance.\nQ: {question}\nA: {answer}\nScore 0-100:",
)
TRAIT = bare_trait()
PAIRS = [
    ("How are you?", "Fine, thanks."),
    ("What is 2+2?", "It is four, obviously, you fool."),
    ("Tell me a story.", "Once upon a time there was a small robot who liked numbers. " * 3),
    ("Empty?", ""),
    ("Why?", "Because."),
]


def rig(lm, transitions: dict[str | None, str]):
    """Make the model a bigram machine: next token = transitions[current token] (None: any other).

    Blocks add nothing (zeroed output projections), each source token's embedding is its own
    basis direction, and the LM head maps that direction to its target with logit 16.
    """
    tok, model = lm.tokenizer, lm.model
    one = {s: tok.convert_tokens_to_ids(s) for s in transitions if s is not None}
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        emb.zero_()
        emb[:, 0] = 1.0  # every token not listed: direction 0
        head.zero_()
        for d, (src, dst) in enumerate(transitions.items()):
            if src is not None:
                emb[one[src]] = 0.0
                emb[one[src], d] = 1.0
            target = tok.eos_token if dst == "<end>" else dst
            head[tok.convert_tokens_to_ids(target), d] = 2.0  # normed direction is 8 -> logit 16
    return lm


def test_random_model_scores_are_none_or_in_range():
    j = HFJudge(PROMPTS, tiny_model("llama"), batch_size=2)
    out = j.score(TRAIT, PAIRS)
    assert len(out) == len(PAIRS)
    assert (out[3].trait, out[3].coherence) == (None, 0.0)
    for s in out:
        for v in (s.trait, s.coherence):
            assert v is None or 0 <= v <= 100
        if s.trait is None and s.note != "empty answer":
            assert "no score: mass" in s.note


def test_batched_equals_one_at_a_time():
    lm = tiny_model("llama", seed=3)
    texts = [PROMPTS.render(k, TRAIT, q, a) for q, a in PAIRS if a for k in ("trait", "coherence")]
    # a random model spreads its mass thinly: read the whole vocabulary so digits are included
    kw = dict(min_mass=0.0, top_logprobs=len(lm.tokenizer))
    batched = HFJudge(PROMPTS, lm, batch_size=8, **kw).read(texts)
    single = HFJudge(PROMPTS, lm, batch_size=1, **kw).read(texts)
    assert all(r.score is not None and 0 <= r.score <= 100 for r in batched)
    assert len({round(r.mass, 6) for r in batched}) > 1  # the rows really differ
    for b, s in zip(batched, single, strict=True):
        assert b.mass == pytest.approx(s.mass, rel=1e-3, abs=1e-6)
        assert b.score == pytest.approx(s.score, abs=1e-2)


def test_rigged_head_makes_seven_the_answer():
    lm = rig(tiny_model("llama"), {None: "7", "7": "<end>"})
    [s] = HFJudge(PROMPTS, lm).score(TRAIT, [("Q?", "Some answer.")])
    assert s.trait == pytest.approx(7.0, abs=1e-3)
    assert s.coherence == pytest.approx(7.0, abs=1e-3)  # <= 50: relevance is not needed


def test_rigged_split_digits_read_along_the_greedy_path():
    lm = rig(tiny_model("llama"), {None: "4", "4": "2", "2": "<end>"})
    j = HFJudge(PROMPTS, lm, batch_size=3)
    [r] = j.read([PROMPTS.render("trait", TRAIT, "Q?", "A.")])
    assert r.score == pytest.approx(42.0, abs=1e-3) and r.mass == pytest.approx(1.0, abs=1e-3)
    # one decode step only: "4" is then taken as a whole number
    [r1] = HFJudge(PROMPTS, lm, max_tokens=1).read([PROMPTS.render("trait", TRAIT, "Q?", "A.")])
    assert r1.score == pytest.approx(4.0, abs=1e-3)
    # "1","0","0" needs all three positions
    lm100 = rig(tiny_model("llama"), {None: "1", "1": "0", "0": "0"})
    [s] = HFJudge(PROMPTS, lm100).score(TRAIT, [("Q?", "A.")])
    assert s.trait == pytest.approx(100.0, abs=1e-3)
    # coherence 100 > 50, so relevance was asked (100 too) and did not cap it
    assert s.coherence == pytest.approx(100.0, abs=1e-3) and s.note == ""


def test_identity_tracks_weights_and_prompts():
    lm = tiny_model("llama")
    a = HFJudge(PROMPTS, lm)
    assert a.identity.startswith(f"hf:{lm.ref}:")
    assert a.identity == HFJudge(PROMPTS, tiny_model("llama")).identity
    assert a.identity != HFJudge(PROMPTS, tiny_model("llama", seed=1)).identity
    changed = Prompts(PROMPTS.trait, PROMPTS.coherence + " ", PROMPTS.relevance)
    assert a.identity != HFJudge(changed, tiny_model("llama")).identity


def test_a_shared_prefix_runs_once_and_reads_the_same():
    """Prompts of one template are batched together and their common first tokens run once;
    the readings equal those of the whole prompts run one at a time."""
    from steerlab.generation import prompt_ids
    from steerlab.judges.hf import common_prefix, prefix_groups

    lm = tiny_model("qwen2", seed=5)
    head = "You are grading an AI assistant's answer to a question, as a careful judge. "
    long = Prompts(
        **{k: k + ". " + head + getattr(PROMPTS, k) for k in ("trait", "coherence", "relevance")}
    )
    texts = [long.render(k, TRAIT, q, a) for q, a in PAIRS if a for k in ("trait", "coherence")]
    ids = [prompt_ids(lm, t) for t in texts]
    groups = prefix_groups(ids)
    assert len(groups) == 2 and sorted(sum(groups, [])) == list(range(len(texts)))
    assert all(common_prefix([ids[i] for i in g]) >= 16 for g in groups)
    kw = dict(min_mass=0.0, top_logprobs=len(lm.tokenizer))
    shared = HFJudge(long, lm, batch_size=8, **kw)
    calls = []
    forward = lm.model.forward
    lm.model.forward = lambda *a, **k: calls.append(k["input_ids"].shape) or forward(*a, **k)
    got = shared.read(texts)
    lm.model.forward = forward
    whole = HFJudge(long, lm, batch_size=1, share_prefix=False, **kw).read(texts)
    assert any(s[0] == 1 and s[1] >= 16 for s in calls)  # a prefix alone, once per batch
    assert max(s[0] * s[1] for s in calls) < sum(len(i) for i in ids) / 2
    for a, b in zip(got, whole, strict=True):
        assert a.mass == pytest.approx(b.mass, rel=1e-3, abs=1e-6)
        assert a.score == pytest.approx(b.score, abs=1e-2)


def test_common_prefix_leaves_each_row_a_token():
    from steerlab.judges.hf import common_prefix

    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix([[7], [7, 8]]) == 0
    assert common_prefix([[1, 2], [3, 4]]) == 0
