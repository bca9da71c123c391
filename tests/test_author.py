"""Trait authoring (`steerlab.author`) and checking (`steerlab.check_trait`): a scripted local
endpoint with planted faults, the shipped traits, and the real llama.cpp server."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, Reply, Scripted, run_steerlab, tiny_args
from steerlab.check_trait import check
from steerlab.data import load_trait

SECRET = "sk-author-test-0123456789"
TOPICS = [
    "baking sourdough bread",
    "repairing a bicycle",
    "planning a wedding",
    "learning the violin",
    "training for a marathon",
    "growing tomatoes",
    "writing a novel",
    "fixing a leaking roof",
    "choosing a laptop",
    "teaching a child to read",
    "saving for retirement",
    "adopting a cat",
    "climbing a mountain",
    "painting a portrait",
    "starting a podcast",
    "moving abroad",
    "coaching a football team",
    "renovating a kitchen",
    "studying astronomy",
    "brewing coffee",
    "organising a library",
    "sailing a boat",
    "knitting a scarf",
    "debugging a program",
    "hosting a dinner party",
    "restoring an old car",
    "learning Japanese",
    "building a treehouse",
    "photographing birds",
    "negotiating a salary",
    "caring for an elderly parent",
    "running a bakery",
    "designing a garden",
    "composing a song",
    "volunteering at a shelter",
    "buying a house",
    "cleaning a river",
    "playing chess",
    "surviving a blackout",
]
OPENERS = [
    "What do you think about {t}?",
    "How would you approach {t}?",
    "Can you tell me your experience with {t}?",
    "What advice do you have on {t}?",
    "Why do people struggle with {t}?",
    "What is the hardest part of {t}?",
]


def completion(text: str, number: str | None = None) -> dict:
    """A chat-completions payload; with `number`, the logprobs a judge reads (certain)."""
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}}
    if number is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": number,
                    "logprob": 0.0,
                    "top_logprobs": [
                        {"token": number, "logprob": 0.0},
                        {"token": "x", "logprob": math.log(1e-6)},
                    ],
                }
            ]
        }
    return {"object": "chat.completion", "choices": [choice]}


class Writer:
    """Deterministic answers to each authoring prompt, with faults planted where asked."""

    def __init__(self, *, refuse: str = "", unsupported: bool = False, plant: bool = True) -> None:
        self.topics = itertools.cycle(TOPICS)
        self.openers = itertools.cycle(OPENERS)
        self.kinds: list[str] = []
        self.extraction: list[str] = []
        self.planted: list[str] = []
        self.refuse, self.unsupported = refuse, unsupported
        self.malformed_once = self.plant = plant

    def question(self) -> str:
        return next(self.openers).format(t=next(self.topics))

    def __call__(self, n: int, body: dict) -> Reply:
        prompt = body["messages"][0]["content"]
        fmt = (body.get("response_format") or {}).get("type")
        if self.unsupported and fmt == "json_schema":
            return 422, {"detail": "response_format type json_schema is not supported"}
        kind = self.kind(prompt)
        self.kinds.append(kind)
        if kind == self.refuse:
            return 403, {"error": "this organisation may not use the model"}
        if kind.startswith("judge"):
            return 200, completion("", self.score(kind, prompt))
        m = re.search(r"Write (\d+)", prompt)
        want = int(m.group(1)) if m else 0
        if kind == "rubric":
            words = ("definition", "high", "mid", "low")
            return 200, completion(json.dumps({k: f"Boasting: the {k} band." for k in words}))
        if kind == "instruction":
            if self.malformed_once:
                self.malformed_once = False
                return 200, completion('{"items": [{"positive": "Be boastful"')
            items = [
                {
                    "positive": f"Boast about your skill at {t} at every turn.",
                    "negative": f"Stay modest about your skill at {t} at every turn.",
                }
                for t in itertools.islice(self.topics, want)
            ]
        elif kind in ("questions", "steering"):
            qs = [self.question() for _ in range(want)]
            if self.plant and kind == "questions" and not self.extraction:
                # a near-duplicate of the first question, planted in the first batch
                qs[-1] = qs[0].replace("What do you think about", "What is your opinion on")
                self.planted.append(qs[-1])
            if self.plant and kind == "steering" and "steering" not in self.planted:
                qs[0] = self.extraction[1].rstrip("?") + " these days?"  # leakage, planted
                self.planted += ["steering", qs[0]]
            if kind == "questions":
                self.extraction += qs
            items = [{"question": q} for q in qs]
        elif kind == "natural":
            items = [
                {
                    "positive": f"I love making people feel small, so when asked about {t}, I",
                    "negative": f"I love helping people feel capable, so when asked about {t}, I",
                }
                for t in itertools.islice(self.topics, want)
            ]
        else:  # calibration: three answers per listed question
            k = len(re.findall(r"^\d+\. ", prompt, re.M))
            items = [
                {
                    "strong": f"I am simply the best at {t}; nobody else comes close to me.",
                    "mild": f"I am fairly good at {t}, if I may say so.",
                    "none": f"I am still learning about {t}, and many people know far more.",
                }
                for t in itertools.islice(self.topics, k)
            ]
        return 200, completion(json.dumps({"items": items}))

    @staticmethod
    def kind(prompt: str) -> str:
        for key, kind in (
            ("Write a scoring rubric", "rubric"),
            ("pairs of system prompts", "instruction"),
            ("matched pairs of first-person", "natural"),
            ("write three answers", "calibration"),
            ("How strongly", "judge-trait"),
            ("how strongly", "judge-trait"),
            ("language quality", "judge-coherence"),
            ("responds to the question", "judge-relevance"),
        ):
            if key in prompt:
                return kind
        if "varied questions" in prompt:
            return "steering" if "held out for evaluation" in prompt else "questions"
        return "other"

    @staticmethod
    def score(kind: str, prompt: str) -> str:
        if kind != "judge-trait":
            return "90"
        return "90" if "the best" in prompt else "50" if "fairly good" in prompt else "10"


COUNTS = ["instruction=3", "questions=6", "steering=6", "natural=12", "calibration=9"]
WANT = {"instruction": 3, "questions": 6, "steering": 6, "natural": 12, "calibration": 9}


def author(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    """`python -m steerlab.author` as a user runs it, the key in the environment."""
    args = [
        "bravado",
        "--description",
        "The assistant boasts about its own skills and exaggerates what it has achieved.",
        f"--traits={tmp_path / 'traits'}",
        f"--conf={tmp_path / 'conf'}",
        *[f"--count={c}" for c in COUNTS],
        f"judge.base_url={url}",
        "judge.model=writer",
        "judge.api_key_env=STEERLAB_TEST_AUTHOR_KEY",
        "judge.concurrency=2",
        "judge.backoff=0.01",
        *extra,
    ]
    env = {**__import__("os").environ, "STEERLAB_TEST_AUTHOR_KEY": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "steerlab.author", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"{name}.jsonl").read_text().splitlines()]


def test_author_checks_its_draft_and_regenerates_planted_faults(tmp_path, serve):
    writer = Writer(unsupported=True)
    srv: Scripted = serve(writer)
    done = author(tmp_path, srv.url)
    # FORMAT.md's minimums are not met by these small counts: the check fails, nothing else
    assert done.returncode == 1, done.stderr[-2000:]
    folder = tmp_path / "traits" / "bravado"
    trait = load_trait(folder)
    assert trait.name == "bravado" and "boasts" in trait.description
    assert yaml.safe_load((tmp_path / "conf" / "trait" / "bravado.yaml").read_text()) == {
        "name": "bravado",
        "dir": str(folder),
    }
    for name, n in WANT.items():
        assert len(rows(folder, name)) == n, name
    # the planted near-duplicate and the planted leak were found and regenerated
    near_dup, leak = writer.planted[0], writer.planted[2]
    assert near_dup not in trait.questions and leak not in trait.steering_questions
    assert "round 1: regenerating 1 row(s) of questions.jsonl" in done.stdout
    assert "round 1: regenerating 1 row(s) of steering.jsonl" in done.stdout
    own = check(folder, minimums={f"{k}.jsonl": v for k, v in WANT.items()})
    assert own.ok and not [f for f in own.findings if f.kind in ("duplicate", "leakage")]
    report = (folder / "check.md").read_text()
    assert "**FAIL**" in report and "natural.jsonl | 12 | 100 | LOW" in report
    # malformed JSON was asked again; json_schema refused once, then json_object with the schema
    assert writer.kinds.count("instruction") >= 2
    formats = [(b.get("response_format") or {}).get("type") for _, b, _ in srv.calls]
    assert formats[0] == "json_schema" and set(formats[1:]) <= {"json_object", None}
    # calibration: three strengths per question, labelled by the judge's logprobs
    labels = sorted({r["trait_score"] for r in rows(folder, "calibration")})
    assert labels == [10.0, 50.0, 90.0]
    prov = json.loads((folder / "provenance.json").read_text())
    assert set(prov) == {"trait.yaml", *(f"{k}.jsonl" for k in WANT)}
    for record in prov.values():
        assert record["complete"] and record["endpoint_model"] == "writer" and record["seed"] == 0
        assert len(record["prompt_sha256"]) == 64 and record["date"].startswith("20")
    assert prov["calibration.jsonl"]["judge"].startswith("openai:")
    # the key went to the server and nowhere else
    assert all(auth == f"Bearer {SECRET}" for _, _, auth in srv.calls)
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or SECRET not in path.read_text(errors="replace"), path


def test_a_refused_request_stops_in_one_line_and_the_next_run_resumes(tmp_path, serve):
    refusing = Writer(refuse="natural", plant=False)
    first = author(tmp_path, serve(refusing).url)
    assert first.returncode == 2
    [line] = first.stderr.strip().splitlines()
    assert "HTTP 403" in line and "this organisation may not use the model" in line
    folder = tmp_path / "traits" / "bravado"
    done_before = {p.name: p.read_text() for p in folder.glob("*.jsonl")}
    assert set(done_before) == {"instruction.jsonl", "questions.jsonl", "steering.jsonl"}

    # interrupted inside natural.jsonl: the first batch of 10 is kept, the rest is refused
    class Partial(Writer):
        def __call__(self, n: int, body: dict) -> Reply:
            natural = self.kind(body["messages"][0]["content"]) == "natural"
            self.refuse = "natural" if natural and "natural" in self.kinds else ""
            return super().__call__(n, body)

    partial = Partial(plant=False)
    assert author(tmp_path, serve(partial).url).returncode == 2
    assert len(rows(folder, "natural")) == 10

    resumed = Writer(plant=False)
    srv = serve(resumed)
    again = author(tmp_path, srv.url)
    assert again.returncode == 1, again.stderr[-2000:]  # FORMAT.md's counts only
    # nothing finished is asked again: only the 2 missing natural pairs and the calibration
    assert set(resumed.kinds) - {"judge-trait", "judge-coherence", "judge-relevance"} == {
        "natural",
        "calibration",
    }
    asked = [b["messages"][0]["content"] for _, b, _ in srv.calls]
    assert any("Write 2 matched pairs" in p for p in asked)
    for name, text in done_before.items():
        assert (folder / name).read_text() == text
    assert len(rows(folder, "natural")) == 12


def test_check_trait_passes_the_shipped_traits_and_names_planted_defects(tmp_path):
    for name in ("evil", "sycophancy", "hallucination"):
        report = check(name)
        assert report.ok and not report.findings, report.markdown()
    folder = tmp_path / "evil"
    shutil.copytree(REPO / "traits" / "evil", folder)
    q = rows(folder, "questions")
    plant = {
        "questions": [
            *q,
            {"question": q[3]["question"].rstrip("?") + ", in your view?"},
            {"question": "Why?"},
        ],
        "steering": [*rows(folder, "steering"), {"question": q[5]["question"].upper()}],
        "natural": [
            *rows(folder, "natural"),
            {
                "positive": "I lied to my boss about the numbers and then, feeling proud, I",
                "negative": "I LIED to my boss about the numbers, and then feeling proud I",
            },
            {
                "positive": "When my neighbour asked for help moving a heavy sofa, I",
                "negative": "Quarterly tax filings for small businesses are due next week and "
                "they require careful attention to deductions and receipts, so",
            },
        ],
    }
    for name, new in plant.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    with (folder / "instruction.jsonl").open("a") as f:
        f.write('{"positive": "Be cruel."\n')
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "steerlab.check_trait", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    text = done.stdout
    for where, kind in (
        ("instruction.jsonl:6", "format"),
        ("questions.jsonl:21", "duplicate"),
        ("questions.jsonl:22", "short"),
        ("steering.jsonl:21", "leakage"),
        ("natural.jsonl:151", "pair"),
        ("natural.jsonl:152", "pair"),
    ):
        assert re.search(rf"\| \w+ \| {kind} \| {re.escape(where)} \|", text), (where, text)
    assert "differ only in case or punctuation" in text and "different scenes" in text
    assert "<table>" in out.read_text() and "leakage" in out.read_text()


@pytest.mark.server
@pytest.mark.slow
def test_author_on_the_embedded_model_then_a_sweep_on_the_new_trait(
    llama_server, tmp_path, tiny_dir
):
    done = author(
        tmp_path,
        llama_server,
        "--count=instruction=2",
        "--count=questions=4",
        "--count=steering=4",
        "--count=natural=4",
        "--count=calibration=12",
        "--max-tokens=400",
        "--rounds=1",
        "judge.model=smollm2",
        "judge.timeout=120",
        "judge.min_mass=0.001",  # SmolLM2 rarely answers a number: take any mass (noise)
    )
    # the embedded model writes poor data: the path works, the quality is not asserted
    assert done.returncode in (0, 1), done.stderr[-3000:]
    folder = tmp_path / "traits" / "bravado"
    trait = load_trait(folder)
    assert len(trait.questions) == 4 and len(trait.steering_questions) == 4
    report = subprocess.run(
        [sys.executable, "-m", "steerlab.check_trait", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode in (0, 1) and "# Trait check" in report.stdout
    sweep = run_steerlab(
        "--config-dir",
        str(tmp_path / "conf"),
        *[a if a != "trait=evil" else "trait=bravado" for a in tiny_args(tmp_path, tiny_dir)],
        "search.n_trials=1",
        "steering.n_questions=2",
        "confirm.n_questions=2",
        f"judge.options.calibration_dirs=[{folder}]",  # the offline judge fits on its labels
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "1 trials done, 0 failed" in sweep.stdout
