"""Random weights of a real shape as a model reference (`random:<shape>[@seed]`): the whole
pipeline on a machine with no weights (a GPU box), with the refusals that keep it honest."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import pytest
import torch

from conftest import REPO, WORK, run_steerlab
from steerlab.models import SHAPES, ModelError, load_model, shape_of
from steerlab.vocab import byte_tokenizer

STUDY = [
    "-m",
    "trait=evil",
    "position=10",
    "model=random_tiny",
    "judge=hf",
    "judge.model=random:tiny-qwen2",
    "extraction.vet.enabled=false",
    "extraction.max_pairs=8",
    "extraction.max_new_tokens=8",
    "steering.n_questions=2",
    "steering.max_new_tokens=8",
    "steering.layer=1",
    "search.n_trials=4",
    "search.batch_size=4",
]


def test_a_random_reference_loads_with_its_shape_and_seed():
    a = load_model("random:tiny-llama@3")
    assert (
        a.ref == "random:tiny-llama@3" and a.n_layers == SHAPES["tiny-llama"]["num_hidden_layers"]
    )
    assert shape_of("random:tiny-llama@3") == (a.n_layers, a.hidden_size)
    same, other = load_model("random:tiny-llama@3"), load_model("random:tiny-llama@4")
    w = [m.model.get_output_embeddings().weight for m in (a, same, other)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    with pytest.raises(ModelError, match=r"unknown random model shape 'nope'; valid: random:"):
        load_model("random:nope")
    with pytest.raises(ModelError, match="whole number"):
        load_model("random:tiny-llama@x")


def test_the_byte_tokenizer_grows_to_the_shape_and_every_id_decodes():
    tok = byte_tokenizer(2000)
    assert len(tok) == 2000
    assert all(tok.decode([i]) for i in range(3, 2000))  # specials aside, every id is text
    words = tok.tokenize("the answer is here")
    assert len(words) < len("the answer is here")  # merges: fewer tokens than bytes
    assert tok.decode(tok("the answer is here")["input_ids"]) == "the answer is here"


def test_a_random_judge_answers_in_numbers():
    from conftest import bare_trait
    from steerlab.judges.hf import HFJudge
    from steerlab.judges.llm import Prompts

    prompts = Prompts(
        trait="Rate {answer} 0-100:", coherence="Coherence of {answer}:", relevance="{answer}?"
    )
    pairs = [("Q?", "An answer."), ("Why?", "Because it is so."), ("Hi", "Hello there.")]
    scores = HFJudge(prompts, "random:tiny-qwen2").score(bare_trait(), pairs)
    assert all(s.trait is not None and 0 <= s.trait <= 100 for s in scores)
    assert all(s.coherence is not None and 0 <= s.coherence <= 100 for s in scores)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.steering=random:nope", r"model.steering=random:nope: unknown random model shape"),
        ("judge.model=random:nope", r"judge.model=random:nope: unknown random model shape"),
        ("extraction.vet.enabled=true", r"judge.model=random:tiny-qwen2 has random weights.*"
         r"set extraction.vet.enabled=false"),
    ],
)  # fmt: skip
def test_refusals_are_one_line_before_any_work(tmp_path, override, message):
    r = run_steerlab(*STUDY[1:], override, f"paths.root={tmp_path}", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    [line] = [x for x in r.stderr.splitlines() if x.startswith("steerlab: error:")]
    assert re.search(message, line), line
    assert not (tmp_path / "cache").exists()  # refused before any model loaded


@pytest.mark.slow
def test_a_whole_study_runs_on_random_models_with_a_random_hf_judge(tmp_path):
    r = run_steerlab(*STUDY, f"paths.root={tmp_path}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    notes = [x for x in (r.stdout + r.stderr).splitlines() if "random weights (" in x]
    assert len(notes) == 1 and "scores are noise" in notes[0]
    [trials] = list((tmp_path / "multirun").rglob("trials.json"))
    rows = json.loads(trials.read_text())
    assert len(rows) == 4 and all(0 <= t["coherence"] <= 100 for t in rows)
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
        [(kids,)] = db.execute(
            "select count(*) from tags where key = 'steerlab.kind' and value = 'trial'"
        ).fetchall()
    assert kids == 4
    report = subprocess.run(
        [sys.executable, "-m", "steerlab.report", "--root", str(tmp_path), "--experiment",
         "random-tiny/evil", "--out", str(tmp_path / "report"), "--no-log"],
        cwd=WORK, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    assert "random-tiny/evil" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_the_sweep_bench_runs_its_studies_and_prints_its_line(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "bench/sweep_bench.py"), "--tiny", "--studies", "natural",
         "--out", str(tmp_path)],
        cwd=WORK, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    got = dict(kv.split("=") for kv in last.split())
    for key in (
        "trials_per_hour",
        "first_trial_s",
        "gen_frac",
        "judge_frac",
        "other_frac",
        "peak_gib",
        "compiles",
        "first_trial_warm_s",
        "model_diff_projected_h",
    ):
        assert key in got, last
    fracs = [float(got[k]) for k in ("gen_frac", "judge_frac", "other_frac")]
    assert all(0 <= f <= 1 for f in fracs) and abs(sum(fracs) - 1) < 0.01
    assert float(got["trials_per_hour"]) > 0 and float(got["first_trial_s"]) > 0
    assert "| search/generate |" in r.stdout and "| search/judge |" in r.stdout


def test_a_real_shape_tokenizes_as_a_real_model_and_never_picks_an_id_past_it():
    """A shape with a real vocabulary gets the shipped SmolLM2 BPE (its prompts take the tokens a
    real model's do: ~4 characters a token, not the byte tokenizer's ~2.2); the shape's extra
    ids keep their weights but are never generated, also under a random judge's digit head."""
    from steerlab.generation import GenConfig, generate
    from steerlab.models import numeric_head, random_model
    from steerlab.vocab import BPE_SIZE, random_tokenizer

    text = " ".join(json.loads(x)["question"] for x in (REPO / "traits/evil/questions.jsonl")
                    .read_text().splitlines())  # fmt: skip
    real, old = random_tokenizer(128256), byte_tokenizer(128256)
    assert len(real) == BPE_SIZE and len(text) / len(real(text)["input_ids"]) > 3.5
    assert len(text) / len(old(text)["input_ids"]) < 2.8
    shape = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, vocab_size=60000)  # fmt: skip
    lm = random_model(shape, dtype="float32", device="cpu", seed=1)
    assert lm.model.get_output_embeddings().weight.shape[0] == 60000  # the shape's compute
    prompts = [lm.tokenizer(q)["input_ids"] for q in ("Hello there.", "What do you do?")]
    out = generate(lm, prompts, GenConfig(max_new_tokens=12, batch_size=2, engine="eager"))
    assert all(i < BPE_SIZE for s in out for i in s.response_ids) and all(s.text for s in out)
    numeric_head(lm)
    bias = lm.model.get_output_embeddings().bias
    assert bool((bias[BPE_SIZE:] < -1e3).all()) and float(bias[:BPE_SIZE].max()) > 0
