"""The generation engine on tiny models: the same greedy tokens as the eager path (steered or not,
K configs batched or alone, rows stopping at EOS), buffers that steer compiled code, and the
compile trap made impossible (a hook added after compiling is refused, never ignored).

`static` runs the engine's code eagerly; `compile="eager"` traces it with dynamo (the guards and
hook handling that the GPU's compiled graphs rely on) without generating code.
"""

import pytest
import torch

from conftest import tiny_model
from steerlab.engine import Engine, EngineError, bucket
from steerlab.generation import GenConfig, engine_kind, generate, prompt_ids
from steerlab.steering import SiteError, SteerTerm, steer

QUESTIONS = ["How are you?", "Tell me a story about a cat.", "Why?", "What is 2+2, really?"]


def _configs(d: int, seed: int = 1) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [
        (),
        (SteerTerm(1, "residual", torch.randn(d, generator=g), 4.0),),
        (
            SteerTerm(0, "attn_contribution", torch.randn(d, generator=g), 3.0),
            SteerTerm(2, "mlp_contribution", torch.randn(d, generator=g), 5.0),
        ),
        (
            SteerTerm(0, "residual", torch.randn(d, generator=g), 2.0),
            SteerTerm(2, "residual", torch.randn(d, generator=g), -3.0),
        ),
    ]


def _ids(samples) -> list[list[int]]:
    return [s.response_ids for s in samples]


def _gen(model, prompts, rows, engine, tokens=12, **kw):
    cfg = GenConfig(max_new_tokens=tokens, batch_size=64, engine=engine, **kw)
    return _ids(generate(model, prompts, cfg, rows))


def test_static_engine_gives_eager_greedy_tokens_steered_and_not(model):
    """K configs x Q questions in one batch; 48 tokens run past Gemma 2's 64-token window."""
    prompts = [prompt_ids(model, q) for q in QUESTIONS]
    configs = _configs(model.hidden_size)
    batch = [p for _ in configs for p in prompts]
    rows = [c for c in configs for _ in prompts]
    eager = _gen(model, batch, rows, "eager", tokens=48)
    assert _gen(model, batch, rows, "static", tokens=48) == eager
    assert _gen(model, prompts, None, "static", tokens=48) == eager[: len(prompts)]
    assert len({tuple(r) for r in eager[len(prompts) :: len(prompts)]}) == len(configs) - 1


def test_k_configs_batched_equal_each_alone(llama):
    prompts = [prompt_ids(llama, q) for q in QUESTIONS]
    configs = _configs(llama.hidden_size, seed=2)
    rows = [c for c in configs for _ in prompts]
    batched = _gen(llama, [p for _ in configs for p in prompts], rows, "static")
    for k, cfg in enumerate(configs):
        alone = _gen(llama, prompts, [cfg] * len(prompts), "static")
        assert batched[k * len(prompts) : (k + 1) * len(prompts)] == alone


def test_rows_stop_at_their_own_eos_without_stopping_the_batch(llama):
    prompts = [prompt_ids(llama, q) for q in QUESTIONS]
    plain = _gen(llama, prompts, None, "eager", tokens=16)
    # make a token that row 0 emits mid-answer the EOS: rows stop at different steps (or never)
    stop = plain[0][5]
    llama.model.generation_config.eos_token_id = stop
    eager = _gen(llama, prompts, None, "eager", tokens=16)
    engine = Engine(llama, compile=False, max_batch=4)
    got = engine.generate(prompts, max_new_tokens=16, stop=[stop])
    assert [g[: g.index(stop)] if stop in g else g for g in got] == eager
    lengths = [len(r) for r in eager]
    assert min(lengths) < max(lengths) or max(lengths) < 16  # rows really stopped apart
    assert _gen(llama, prompts, None, "static", tokens=16) == eager
    if all(stop in g for g in got):  # every row stopped: the batch ended early
        assert engine.timing["decode_steps"] < 15


def test_ignore_eos_never_chooses_eos(llama):
    prompts = [prompt_ids(llama, q) for q in QUESTIONS]
    plain = _gen(llama, prompts, None, "eager", tokens=12)
    llama.model.generation_config.eos_token_id = plain[1][3]
    eager = _gen(llama, prompts, None, "eager", tokens=12, ignore_eos=True)
    assert _gen(llama, prompts, None, "static", tokens=12, ignore_eos=True) == eager
    assert all(len(r) == 12 for r in eager)


def test_steering_buffers_steer_compiled_code_exactly_as_eager(llama):
    """Changing the configuration between two calls changes the output as eager steering does,
    with no recompile: the trap (a compiled step ignoring new steering) cannot happen."""
    prompts = [prompt_ids(llama, q) for q in QUESTIONS]
    _, a, b, _ = _configs(llama.hidden_size, seed=3)
    engine = Engine(llama, compile="eager", max_batch=4)
    outs = {}
    for name, rows in (("a", [a] * 4), ("b", [b] * 4), ("none", None), ("mix", [a, b, (), a])):
        got = engine.generate(prompts, rows, max_new_tokens=10, stop=[llama.tokenizer.eos_token_id])
        eager = _gen(llama, prompts, rows, "eager", tokens=10)
        assert [g[: len(e)] for g, e in zip(got, eager, strict=True)] == eager, name
        outs[name] = eager
    assert engine.compiles == 1
    assert outs["a"] != outs["b"] != outs["none"]


def test_hook_added_after_compiling_is_refused(llama):
    prompts = [prompt_ids(llama, "Hello")]
    engine = Engine(llama, compile="eager", max_batch=2)
    first = engine.generate(prompts, max_new_tokens=4)
    handle = llama.module(1, "residual").register_forward_hook(lambda _m, _i, o: o * 2)
    with pytest.raises(EngineError, match="ignore a new hook"):
        engine.generate(prompts, max_new_tokens=4)
    handle.remove()
    assert engine.generate(prompts, max_new_tokens=4) == first
    term = SteerTerm(0, "residual", torch.ones(llama.hidden_size), 1.0)
    with steer(llama, [(term,)]), pytest.raises(EngineError, match="steer\\(\\) context"):
        engine.generate(prompts, max_new_tokens=4)
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.generate(prompts, max_new_tokens=4)
    assert all(not m._forward_hooks for m in llama.model.modules())


def test_the_trap_itself_a_late_hook_is_ignored_by_compiled_code(llama):
    """Why the engine refuses late hooks: torch's compiled code skips them silently."""
    if not torch._dynamo.config.skip_nnmodule_hook_guards:
        pytest.skip("this torch guards on hooks (recompiles instead of ignoring them)")
    torch._dynamo.reset()
    ids = torch.tensor([prompt_ids(llama, "Hello")])

    def logits() -> torch.Tensor:
        return llama.model(input_ids=ids).logits

    compiled = torch.compile(logits, backend="eager", fullgraph=True)
    with torch.inference_mode():
        before = compiled()
        handle = llama.module(1, "residual").register_forward_hook(lambda _m, _i, o: o + 5.0)
        try:
            late, eager = compiled(), logits()
        finally:
            handle.remove()
    assert torch.equal(late, before)  # ignored
    assert not torch.allclose(eager, before)  # yet it changes the model


def test_hooks_are_inert_outside_the_engine(llama):
    ids = torch.tensor([prompt_ids(llama, "Why is the sky blue?")])
    with torch.inference_mode():
        before = llama.model(input_ids=ids).logits
    engine = Engine(llama, compile=False, max_batch=2)
    rows = [(SteerTerm(1, "residual", torch.randn(llama.hidden_size), 50.0),)]
    engine.generate([ids[0].tolist()], rows, max_new_tokens=3)
    with torch.inference_mode():
        assert torch.equal(llama.model(input_ids=ids).logits, before)


def test_steering_a_site_the_engine_lacks_is_an_error(llama):
    engine = Engine(llama, compile=False, sites=[(1, "residual")], max_batch=2)
    row = (SteerTerm(0, "residual", torch.ones(llama.hidden_size), 1.0),)
    with pytest.raises(SiteError, match="not a steering site"):
        engine.generate([prompt_ids(llama, "Hi")], [row], max_new_tokens=2)


def test_buckets_are_reused_across_batches(llama):
    assert bucket(3, 20, 12, 64, 128) == (4, 128)
    assert bucket(5, 120, 12, 64, 128) == (8, 256)
    assert bucket(40, 10, 10, 48, 128) == (48, 128)
    with pytest.raises(EngineError):
        bucket(65, 10, 10, 64, 128)
    engine = Engine(llama, compile="eager", max_batch=8)
    qs = [prompt_ids(llama, q) for q in QUESTIONS]
    for batch in (qs[:3], qs, qs[1:], qs + qs[:1]):
        engine.generate(batch, max_new_tokens=3)
    assert engine.compiles == 2  # 3 and 4 rows share the 4-row bucket; 5 rows take 8


def test_two_row_buckets_when_asked():
    assert bucket(3, 20, 12, 256, 128, small=64) == (64, 128)
    assert bucket(64, 20, 12, 256, 128, small=64) == (64, 128)
    assert bucket(65, 20, 12, 256, 128, small=64) == (256, 128)
    assert bucket(200, 20, 12, 256, 128, small=64) == (256, 128)
    assert bucket(10, 20, 12, 32, 128, small=64) == (32, 128)


def test_sampling_runs_and_repeats_with_its_seed(llama):
    prompts = [prompt_ids(llama, q) for q in QUESTIONS]
    a = _gen(llama, prompts, None, "static", temperature=1.0, seed=7)
    b = _gen(llama, prompts, None, "static", temperature=1.0, seed=7)
    greedy = _gen(llama, prompts, None, "static")
    assert a == b and a != greedy
    assert all(0 <= t < len(llama.tokenizer) for r in a for t in r)


def test_engine_choice():
    cpu = tiny_model("llama", layers=1)
    assert engine_kind("auto", cpu) == "eager"
    assert engine_kind("compiled", cpu) == "compiled"
    with pytest.raises(ValueError, match="unknown engine"):
        engine_kind("fast", cpu)


@pytest.mark.parametrize("q_len", [1, 5])
def test_folded_attention_equals_transformers_sdpa(q_len):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from steerlab.attention import folded_sdpa

    class Attn:
        num_key_value_groups = 4

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, q_len, 16, generator=g)
    k, v = torch.randn(3, 2, 7, 16, generator=g), torch.randn(3, 2, 7, 16, generator=g)
    mask = torch.rand(3, 1, q_len, 7, generator=g) > 0.3
    mask[..., 0] = True
    got, _ = folded_sdpa(Attn(), q, k, v, mask, scaling=0.25)
    want, _ = sdpa_attention_forward(Attn(), q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(got, want)
