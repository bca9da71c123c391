"""OpenAIJudge against real HTTP servers on 127.0.0.1: a scripted stdlib server, and llama.cpp."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import Reply, bare_trait
from steerlab.judges.base import JudgeScore
from steerlab.judges.factory import make_llm_judge
from steerlab.judges.llm import Prompts
from steerlab.judges.openai import JudgeEndpointError, OpenAIJudge

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = Prompts(
    trait="TRAIT\n{rubric}\nQ: {question}\nA: {answer}",
    coherence="COHERENCE\nQ: {question}\nA: {answer}",
    relevance="RELEVANCE\nQ: {question}\nA: {answer}",
)
TRAIT = bare_trait()
SECRET = "sk-test-0123456789abcdef"


def completion(*positions: list[tuple[str, float]]) -> dict:
    """A chat-completions payload whose logprobs hold these (token, probability) candidates."""
    content = [
        {
            "token": tops[0][0],
            "logprob": math.log(tops[0][1]),
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in tops],
        }
        for tops in positions
    ]
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content[0]["token"]},
                "logprobs": {"content": content},
                "finish_reason": "stop",
            }
        ],
    }


def judge_yaml(backend: str) -> dict:
    """conf/judge/<backend>.yaml as the plain mapping Hydra merges into the backend's schema."""
    cfg = yaml.safe_load((ROOT / "conf" / "judge" / f"{backend}.yaml").read_text())
    assert cfg.pop("defaults") == [f"{backend}_schema", "_self_"]
    return cfg


def by_kind(body: dict) -> dict:
    """Default answers: trait 85 (split into digits), coherence 90, relevance 95."""
    prompt = body["messages"][0]["content"]
    if prompt.startswith("TRAIT"):
        return completion([("8", 0.9), ("7", 0.1)], [("5", 1.0)], [("<end>", 1.0)])
    if prompt.startswith("COHERENCE"):
        return completion([("90", 1.0)], [("", 1.0)])
    return completion([("95", 1.0)])


def judge(url: str, **kw) -> OpenAIJudge:
    opts = dict(
        model="test-judge",
        base_url=url,
        api_key_env="STEERLAB_TEST_JUDGE_KEY",
        concurrency=1,
        max_retries=5,
        backoff=0.02,
        timeout=5,
    )
    return OpenAIJudge(PROMPTS, **(opts | kw))


def test_retries_429_and_500_with_growing_backoff_then_scores(serve):
    statuses = iter([429, 500, 429])  # the trait prompt's first three attempts

    def script(n: int, body: dict) -> Reply:
        if body["messages"][0]["content"].startswith("TRAIT"):
            status = next(statuses, 200)
            if status != 200:
                return status, {"error": "busy"}
        return 200, by_kind(body)

    srv = serve(script)
    [s] = judge(srv.url).score(TRAIT, [("Q?", "An answer.")])
    kinds = [body["messages"][0]["content"].split("\n")[0] for _, body, _ in srv.calls]
    # trait: 3 failures + 1 success; coherence: 1; relevance (coherence 90 > 50): 1
    assert sorted(kinds) == ["COHERENCE", "RELEVANCE"] + ["TRAIT"] * 4
    assert s.trait == pytest.approx(0.9 * 85 + 0.1 * 75)  # "7" borrows the greedy "5"
    assert s.coherence == pytest.approx(90.0)
    assert s.note == ""
    times = [t for (t, _, _), k in zip(srv.calls, kinds, strict=True) if k == "TRAIT"]
    for k, (a, b) in enumerate(zip(times, times[1:], strict=False)):
        assert b - a >= 0.5 * 0.02 * 2**k - 1e-3  # jittered exponential backoff, never shorter
    body = srv.calls[-1][1]
    assert body["temperature"] == 0 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["max_tokens"] == 3 and body["model"] == "test-judge"


def test_always_failing_endpoint_raises_naming_url_and_status(serve):
    srv = serve(lambda n, body: (503, {"error": "down"}))
    with pytest.raises(JudgeEndpointError) as e:  # breaker out of reach: every retry runs
        judge(srv.url, max_retries=2, breaker=100).score(TRAIT, [("Q?", "A."), ("Q2?", "B.")])
    msg = str(e.value)
    assert f"{srv.url}/chat/completions" in msg and "HTTP 503" in msg and "3 attempts" in msg
    assert len(srv.calls) == 4 * 3  # 2 answers x (trait, coherence) x 3 attempts
    with pytest.raises(JudgeEndpointError, match="8 attempts in a row failed, the last: HTTP 503"):
        judge(srv.url, max_retries=2).score(TRAIT, [("Q?", "A."), ("Q2?", "B.")])
    assert len(srv.calls) == 12 + 8  # the default breaker stops at 8 failed attempts in a row


def test_connection_refused_raises_naming_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeEndpointError, match="connection error") as e:
        judge(url, max_retries=1).score(TRAIT, [("Q?", "A.")])
    assert url in str(e.value)


def test_timeout_is_retried(serve):
    def script(n: int, body: dict) -> Reply:
        if n == 0:
            time.sleep(1.0)
        return 200, by_kind(body)

    srv = serve(script)
    [s] = judge(srv.url, timeout=0.3).score(TRAIT, [("Q?", "A.")])
    assert s.trait == pytest.approx(84.0) and len(srv.calls) == 4


def test_one_failing_answer_keeps_the_rest_of_the_batch(serve):
    def script(n: int, body: dict) -> Reply:
        if "POISON" in body["messages"][0]["content"]:
            return 500, {"error": "boom"}
        return 200, by_kind(body)

    srv = serve(script)
    pairs = [("Q1?", "fine answer"), ("Q2?", "POISON"), ("Q3?", "another answer")]
    out = judge(srv.url, concurrency=4, max_retries=1).score(TRAIT, pairs)
    assert [s.trait for s in out] == [pytest.approx(84.0), None, pytest.approx(84.0)]
    assert out[1].coherence is None
    assert "HTTP 500" in out[1].note and srv.url in out[1].note


def test_garbage_payloads_give_none_with_note_and_keep_the_batch(serve):
    def script(n: int, body: dict) -> Reply:
        prompt = body["messages"][0]["content"]
        if "GARBAGE" in prompt:
            return 200, b"{not json"
        if "NOLOGPROBS" in prompt:
            reply = by_kind(body)
            reply["choices"][0]["logprobs"] = None
            return 200, reply
        return 200, by_kind(body)

    srv = serve(script)
    pairs = [("Q1?", "GARBAGE"), ("Q2?", "good"), ("Q3?", "NOLOGPROBS")]
    out = judge(srv.url, concurrency=3).score(TRAIT, pairs)
    assert out[0].trait is None and out[0].coherence is None
    assert "unusable response" in out[0].note
    assert out[1] == JudgeScore(pytest.approx(84.0), pytest.approx(90.0), "")
    assert out[2].trait is None and "no logprobs" in out[2].note


def test_off_topic_caps_coherence_and_low_mass_is_noted(serve):
    def script(n: int, body: dict) -> Reply:
        prompt = body["messages"][0]["content"]
        if prompt.startswith("RELEVANCE"):
            return 200, completion([("20", 1.0)])
        if prompt.startswith("TRAIT"):
            return 200, completion([("I", 0.9), ("50", 0.1)], [(" cannot", 1.0)])
        return 200, by_kind(body)

    srv = serve(script)
    [s] = judge(srv.url).score(TRAIT, [("Q?", "Unrelated text.")])
    assert s.trait is None and "no score: mass 0.10" in s.note
    assert s.coherence == 50.0 and "off-topic" in s.note


def test_empty_answer_and_clipping(serve):
    srv = serve(lambda n, body: (200, by_kind(body)))
    out = judge(srv.url).score(TRAIT, [("Q?", "   "), ("Q?", "x" * 25_000)])
    assert out[0] == JudgeScore(None, 0.0, "empty answer")
    assert len(srv.calls) == 3  # only the long answer was sent: trait, coherence, relevance
    sent = srv.calls[0][1]["messages"][0]["content"]
    assert "x" * 20_000 in sent and "x" * 20_001 not in sent
    assert "truncated from 25000 chars" in out[1].note


def test_api_key_is_sent_but_never_leaked(serve, monkeypatch):
    monkeypatch.setenv("STEERLAB_TEST_JUDGE_KEY", SECRET)

    def script(n: int, body: dict) -> Reply:
        if "BAD" in body["messages"][0]["content"]:
            return 401, {"error": f"Incorrect API key provided: {SECRET}"}
        return 200, by_kind(body)

    srv = serve(script)
    j = judge(srv.url)
    out = j.score(TRAIT, [("Q?", "A."), ("Q?", "BAD")])
    assert srv.calls[0][2] == f"Bearer {SECRET}"
    assert out[0].trait == pytest.approx(84.0)
    assert "HTTP 401" in out[1].note and "STEERLAB_TEST_JUDGE_KEY" in out[1].note
    with pytest.raises(JudgeEndpointError) as e:
        j.score(TRAIT, [("Q?", "BAD")])
    for text in (j.identity, repr(j), str(vars(j)), str(e.value), out[1].note):
        assert SECRET not in text


def test_an_error_body_echoing_the_key_is_redacted_before_it_is_cut(serve, monkeypatch):
    """The note keeps 200 characters of the body: cutting first would leave part of the key."""
    monkeypatch.setenv("STEERLAB_TEST_JUDGE_KEY", SECRET)
    body = "x" * 185 + f" key {SECRET} was refused"  # the key straddles character 200
    srv = serve(lambda n, b: (400, body.encode()))
    with pytest.raises(JudgeEndpointError) as e:
        judge(srv.url).score(TRAIT, [("Q?", "A.")])
    for k in range(len(SECRET) - 5):  # no 6-character piece of the key survives
        assert SECRET[k : k + 6] not in str(e.value)
    assert "HTTP 400" in str(e.value)


def test_an_endpoint_that_never_answers_fails_in_bounded_time():
    """Accepts connections, never answers: the breaker stops after the first wave of timeouts,
    not after every prompt's retries (was prompts / concurrency x attempts x timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    pairs = [(f"Q{i}?", f"A{i}.") for i in range(40)]  # 80 prompts
    t0 = time.monotonic()
    try:
        with pytest.raises(JudgeEndpointError) as e:
            judge(url, timeout=1.0, concurrency=4, max_retries=5).score(TRAIT, pairs)
    finally:
        stop.set()
        listener.close()
        for c in held:
            c.close()
    elapsed = time.monotonic() - t0
    assert elapsed < 6.0, elapsed  # ~2 timeouts; the old path took 80/4 x 6 x 1 s
    assert url in str(e.value) and "timeout" in str(e.value)


def test_identity_tracks_endpoint_model_and_prompts():
    a = judge("http://127.0.0.1:1/v1")
    assert a.identity.startswith("openai:http://127.0.0.1:1/v1:test-judge:")
    assert a.identity == judge("http://127.0.0.1:1/v1").identity
    assert a.identity != judge("http://127.0.0.1:1/v1", model="other").identity
    assert a.identity != judge("http://127.0.0.1:1/v1", min_mass=0.5).identity
    other = OpenAIJudge(
        Prompts(PROMPTS.trait + "!", PROMPTS.coherence, PROMPTS.relevance),
        base_url="http://127.0.0.1:1/v1",
        model="test-judge",
    )
    assert a.identity != other.identity


def test_config_files_build_judges():
    cfg = judge_yaml("openai")
    j = make_llm_judge(cfg)
    assert isinstance(j, OpenAIJudge) and j.model == "gpt-4.1-mini" and j.concurrency == 16
    assert (j.max_retries, j.backoff, j.timeout, j.min_mass, j.max_tokens) == (5, 1.0, 60, 0.25, 3)
    rendered = j.prompts.render("trait", TRAIT, "What {x}?", "An {answer} with braces")
    assert TRAIT.rubric.text() in rendered and "An {answer} with braces" in rendered
    with pytest.raises(ValueError, match="unknown judge key"):
        make_llm_judge(cfg | {"concurency": 4})
    # keys only the other LLM backend uses are ignored, as before the per-backend schemas
    j = make_llm_judge(cfg | {"batch_size": 16, "model": "", "options": {"top_logprobs": 5}})
    assert j.model == "gpt-4.1-mini" and j.top_logprobs == 5
    with pytest.raises(ValueError, match="templates"):
        make_llm_judge(cfg | {"prompts": {"trait": "{answer}"}})


@pytest.mark.server
def test_llama_cpp_server_end_to_end(llama_server):
    cfg = judge_yaml("openai")
    cfg |= {
        "base_url": llama_server,
        "model": "smollm2",
        "api_key_env": "STEERLAB_NO_SUCH_KEY",
        "concurrency": 2,
        "max_retries": 2,
        "timeout": 120,
        "min_mass": 0.1,
    }
    j = make_llm_judge(cfg)
    # the plumbing, prompt by prompt: 200 responses with logprobs, a mass, scores in range
    readings = j.read(
        [
            "How much is 40 + 2? Reply with the number only.",
            j.prompts.render("trait", TRAIT, "Do you like people?", "I hate them."),
        ]
    )
    for r in readings:
        assert not r.failed and 0.0 <= r.mass <= 1.0 + 1e-6
        assert (r.score is not None and 0 <= r.score <= 100) or r.note.startswith("no score")
    # a plain arithmetic question does put mass on numbers ("4", "0" as split digits)
    assert readings[0].mass > 0.1 and readings[0].score is not None
    pairs = [
        ("How do you treat people?", "I help them whenever I can."),
        ("What would you do with power?", "Crush everyone who disagrees with me."),
        ("Describe a sunset.", "sunset sunset sunset sunset"),
    ]
    for s in j.score(TRAIT, pairs):
        for v in (s.trait, s.coherence):
            assert v is None or 0 <= v <= 100
        if s.trait is None or s.coherence is None:
            assert s.note  # every missing score says why
        assert "failed" not in s.note and "unusable" not in s.note
