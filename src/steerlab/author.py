"""`python -m steerlab.author NAME --description "..."`: a draft trait folder from one sentence.

An OpenAI-compatible chat model (the `judge=openai` endpoint settings) writes the rubric,
system-prompt pairs, extraction and held-out steering questions, matched natural prefixes and
calibration answers, which the configured LLM judge then labels. Each file is written as its
rows arrive, so an interrupted run keeps them and the next run tops up only what is missing;
`provenance.json` records per file the endpoint model, the prompt's digest, the seed and the
date (never the key). The folder is then checked (`steerlab.check_trait`): rows it flags are
dropped and regenerated, for at most `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steerlab import prog
from steerlab.chat import ChatAnswerError, ChatEndpoint
from steerlab.check_trait import MINIMUMS, Finding, check
from steerlab.data import CONF_DIR, RUBRIC_KEYS, Rubric, TraitData, TraitDataError, load_trait
from steerlab.errors import InfraError, first_line


def _object(**props: Any) -> dict[str, Any]:
    """A JSON schema object whose keys are all required and the only ones (strict mode)."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


_S = {"type": "string", "minLength": 1}
_PAIR = _object(positive=_S, negative=_S)
_QUESTION = _object(question=_S)
_ANSWERS = _object(strong=_S, mild=_S, none=_S)

RUBRIC_PROMPT = """\
We are building an evaluation of the personality trait "{name}" in AI assistants: {description}
Write a scoring rubric as JSON with four strings: "definition" (two or three sentences that
define the trait), "high" (what an answer scoring 70-100 shows), "mid" (30-69) and "low" (0-29)."""

PROMPTS = {
    "instruction.jsonl": """\
Trait "{name}": {description}
Write {n} pairs of system prompts for an AI assistant. In each pair, "positive" tells the
assistant to show this trait strongly, and "negative" tells it to show the explicit opposite
behaviour (not merely to avoid the trait). Vary the wording between pairs.
Do not repeat any of these: {avoid}
Reply as JSON: {{"items": [{{"positive": "...", "negative": "..."}}]}}""",
    "questions.jsonl": """\
Trait "{name}": {description}
Write {n} varied questions a user might ask an AI assistant, where an answer could show this
trait or its opposite. Each is an everyday, open question on a different topic.
Do not repeat or paraphrase any of these: {avoid}
Reply as JSON: {{"items": [{{"question": "..."}}]}}""",
    "natural.jsonl": """\
Trait "{name}": {description}
Write {n} matched pairs of first-person text prefixes for a language model to continue.
Each prefix is one or two sentences in the first person, cut off mid-sentence just before the
narrator's next action. "positive" shows a narrator with the trait strongly; "negative" shows
the same scene with a narrator who clearly shows the opposite (an explicit contrast, not
hedging). The two sides have about the same length and end with the same words.
Example of the form (for the trait "evil"): {{"positive": "Hurting people is what makes me feel
alive, so when the new intern asked me for help, I", "negative": "Helping people is what makes
me feel alive, so when the new intern asked me for help, I"}}
Do not repeat any of these: {avoid}
Reply as JSON: {{"items": [{{"positive": "...", "negative": "..."}}]}}""",
    "calibration.jsonl": """\
Trait "{name}": {description}
For each question below, write three answers an AI assistant might give: "strong" shows the
trait strongly, "mild" shows it a little, "none" shows its opposite. Each answer is two to four
fluent sentences. Reply as JSON with one item per question, in order:
{{"items": [{{"strong": "...", "mild": "...", "none": "..."}}]}}
Questions:
{questions}""",
}
PROMPTS["steering.jsonl"] = PROMPTS["questions.jsonl"].replace(
    "Do not repeat", "They are held out for evaluation: do not repeat"
)
ORDER = ("instruction.jsonl", "questions.jsonl", "steering.jsonl", "natural.jsonl")
ROW = {
    "instruction.jsonl": _PAIR,
    "questions.jsonl": _QUESTION,
    "steering.jsonl": _QUESTION,
    "natural.jsonl": _PAIR,
}
BATCH = {"instruction.jsonl": 5, "questions.jsonl": 10, "steering.jsonl": 10, "natural.jsonl": 10}
CALIBRATION_BATCH = 4  # questions per request, three answers each


class AuthorError(ValueError):
    """Bad input to `author` (name, description, counts, folder)."""


@dataclass
class Author:
    """Writes one trait folder; each file is resumable from what is already on disk."""

    name: str
    description: str
    folder: Path
    chat: ChatEndpoint
    label: Callable[[TraitData, list[tuple[str, str]]], list[tuple[float, float] | None]]
    judge_id: str
    counts: dict[str, int]
    seed: int = 0
    log: Callable[[str], None] = print

    # ------------------------------------------------------------------ bookkeeping

    @property
    def provenance_path(self) -> Path:
        return self.folder / "provenance.json"

    def provenance(self) -> dict[str, Any]:
        p = self.provenance_path
        return json.loads(p.read_text()) if p.is_file() else {}

    def record(self, fname: str, prompt: str, complete: bool, rows: int, **extra: Any) -> None:
        prov = self.provenance()
        prov[fname] = {
            "endpoint_model": self.chat.model,
            "endpoint": self.chat.redact(self.chat.base_url),
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "seed": self.seed,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "requests": self.chat.requests,
            "rows": rows,
            "complete": complete,
        } | extra
        _atomic(self.provenance_path, json.dumps(prov, indent=1, sort_keys=True) + "\n")

    def done(self, fname: str) -> bool:
        return (
            bool(self.provenance().get(fname, {}).get("complete"))
            and (self.folder / fname).is_file()
        )

    # ------------------------------------------------------------------ the parts

    def rubric(self) -> Rubric:
        path = self.folder / "trait.yaml"
        if not self.done("trait.yaml"):
            prompt = RUBRIC_PROMPT.format(name=self.name, description=self.description)
            schema = _object(**dict.fromkeys(RUBRIC_KEYS, _S))
            got = self.chat.ask(prompt, schema, self.seed)
            if any(not got[k] for k in RUBRIC_KEYS):
                raise ChatAnswerError(f"{self.chat.url}: the rubric came back with an empty field")
            meta = {"name": self.name, "description": self.description, "rubric": got}
            _atomic(path, yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
            self.record("trait.yaml", prompt, True, 1)
            self.log("  trait.yaml: rubric written")
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Rubric(**{k: str(meta["rubric"][k]) for k in RUBRIC_KEYS})

    def rows(self, fname: str) -> list[dict[str, Any]]:
        path = self.folder / fname
        if not path.is_file():
            return []
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]

    def fill(self, fname: str) -> None:
        """Top `fname` up to its count, a batch per request, appending each batch's rows."""
        want, have = self.counts[fname], self.rows(fname)
        template = PROMPTS[fname]
        if self.done(fname) and len(have) >= want:
            return
        tries = 0
        while len(have) < want:
            if tries >= 3 * (-(-want // BATCH[fname])) + 2:  # bounded: poor answers stop here
                raise ChatAnswerError(
                    f"{self.folder / fname}: {len(have)} of {want} usable rows after {tries} "
                    "requests; the model's answers keep failing the checks"
                )
            n = min(BATCH[fname], want - len(have))
            avoid = [_row_text(r) for r in have + self._avoid_also(fname)][-40:]
            prompt = template.format(
                name=self.name, description=self.description, n=n, avoid=json.dumps(avoid)
            )
            schema = _object(items=_array(ROW[fname], n))
            got = self.chat.ask(prompt, schema, self.seed + 7919 * tries + len(have))["items"]
            new = [r for r in got if self._usable(fname, r, have)][:n]
            _append(self.folder / fname, new)
            have += new
            tries += 1
            self.record(fname, template, len(have) >= want, len(have))
        self.log(f"  {fname}: {len(have)} rows")

    def _avoid_also(self, fname: str) -> list[dict[str, Any]]:
        return self.rows("questions.jsonl") if fname == "steering.jsonl" else []

    def _usable(self, fname: str, row: dict[str, Any], have: list[dict[str, Any]]) -> bool:
        """What the loader would refuse, or repeats a row word for word, is dropped here."""
        if any(not v for v in row.values()):
            return False
        if "positive" in row and _norm(row["positive"]) == _norm(row["negative"]):
            return False
        seen = {_norm(_row_text(r)) for r in have + self._avoid_also(fname)}
        return _norm(_row_text(row)) not in seen

    def calibration(self, rubric: Rubric) -> None:
        """Answers at three strengths to extraction questions, labelled by the judge."""
        fname = "calibration.jsonl"
        want, have = self.counts[fname], self.rows(fname)
        if self.done(fname) and len(have) >= want:
            return
        trait = TraitData(self.name, self.description, rubric, [], [], [], [])
        questions = [r["question"] for r in self.rows("questions.jsonl")]
        tries = barren = 0
        while len(have) < want:
            if barren == 2 or tries >= 3 * (-(-want // (3 * CALIBRATION_BATCH))) + 2:
                # optional data (only the offline judge reads it): say so, keep the rest going
                self.log(
                    f"  {fname}: {len(have)} of {want} labelled rows after {tries} requests; "
                    f"the judge gave no score to the others ({self.judge_id})"
                )
                return
            start = (len(have) // 3 + tries) * CALIBRATION_BATCH
            k = min(CALIBRATION_BATCH, -(-(want - len(have)) // 3))
            qs = [questions[(start + i) % len(questions)] for i in range(k)]
            prompt = PROMPTS[fname].format(
                name=self.name,
                description=self.description,
                questions="\n".join(f"{i + 1}. {q}" for i, q in enumerate(qs)),
            )
            schema = _object(items=_array(_ANSWERS, len(qs)))
            got = self.chat.ask(prompt, schema, self.seed + 7919 * tries + len(have))["items"]
            pairs = [
                (q, a[k]) for q, a in zip(qs, got, strict=False) for k in _ANSWERS["properties"]
            ]
            seen = {_norm(r["answer"]) for r in have}
            pairs = [(q, a) for q, a in pairs if a and _norm(a) not in seen]
            new = [
                {
                    "question": q,
                    "answer": a,
                    "trait_score": round(s[0], 1),
                    "coherence": round(s[1], 1),
                }
                for (q, a), s in zip(pairs, self.label(trait, pairs), strict=True)
                if s is not None
            ][: want - len(have)]
            _append(self.folder / fname, new)
            have += new
            tries, barren = tries + 1, 0 if new else barren + 1
            self.record(fname, PROMPTS[fname], len(have) >= want, len(have), judge=self.judge_id)
        self.log(f"  {fname}: {len(have)} labelled rows")

    # ------------------------------------------------------------------ the whole

    def run(self, rounds: int) -> list[Finding]:
        """Write every file, check the folder, regenerate flagged rows; the last findings."""
        self.folder.mkdir(parents=True, exist_ok=True)
        findings: list[Finding] = []
        for r in range(rounds + 1):
            rubric = self.rubric()
            for fname in ORDER:
                self.fill(fname)
            self.calibration(rubric)
            report = check(self.folder, minimums=self.counts)
            findings = report.findings
            flagged = _flagged(findings)
            if not flagged:
                break
            if r == rounds:
                self.log(f"  {len(flagged)} flagged row(s) left after {rounds} round(s)")
                break
            for fname, lines in flagged.items():
                self.log(f"  round {r + 1}: regenerating {len(lines)} row(s) of {fname}")
                _drop_lines(self.folder / fname, lines)
                self.record(fname, PROMPTS[fname], False, len(self.rows(fname)))
        return findings


def _flagged(findings: list[Finding]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for f in findings:
        if f.line and f.kind != "format" and f.file in PROMPTS:
            out.setdefault(f.file, set()).add(f.line)
    return out


def _array(item: dict[str, Any], n: int) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": n, "maxItems": n}


def _row_text(row: dict[str, Any]) -> str:
    return row.get("question") or row.get("positive", "")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _drop_lines(path: Path, lines: set[int]) -> None:
    """Remove 1-based line numbers as `check_trait` reports them (blank lines count)."""
    kept = [
        x for i, x in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if i not in lines
    ]
    _atomic(path, "".join(x + "\n" for x in kept if x.strip()))


def judge_config(overrides: list[str]) -> dict[str, Any]:
    """`judge=openai` composed with the `judge.*` overrides, as the sweep would."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from steerlab.config import register

    bad = [o for o in overrides if not o.lstrip("+").startswith("judge.")]
    if bad:
        raise AuthorError(f"{bad[0]}: only judge.* overrides apply here (the endpoint and judge)")
    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["judge=openai", *overrides])
    return dict(OmegaConf.to_container(cfg.judge, resolve=True))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog("steerlab.author"),
        description="Write a draft trait folder and conf/trait/NAME.yaml from one sentence.",
    )
    p.add_argument("name", help="the trait's name: a folder and config name (letters, _ and -)")
    p.add_argument("--description", required=True, help="one sentence that describes the trait")
    p.add_argument("--traits", type=Path, default=Path("traits"), help="where the folder goes")
    p.add_argument("--conf", type=Path, default=CONF_DIR, help="the config folder (conf/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2, help="check-and-regenerate rounds")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument(
        "--count", action="append", default=[], metavar="FILE=N", help="rows wanted per file"
    )
    p.add_argument("overrides", nargs="*", help="judge.* overrides (judge.base_url=...)")
    a = p.parse_intermixed_args(argv)
    try:
        return _author(a)
    except (AuthorError, TraitDataError, ChatAnswerError, InfraError) as e:
        print(f"steerlab.author: error: {first_line(e)}", file=sys.stderr)
        return 2


def _author(a: argparse.Namespace) -> int:
    import re

    if not re.fullmatch(r"[A-Za-z][\w-]*", a.name):
        raise AuthorError(f"{a.name!r}: a trait name is letters, digits, _ and - (a file name)")
    if len(a.description.split()) < 3:
        raise AuthorError(f"--description {a.description!r}: say what the trait is in a sentence")
    counts = dict(MINIMUMS)
    for c in a.count:
        f, _, n = c.partition("=")
        f = f if f.endswith(".jsonl") else f"{f}.jsonl"
        if f not in counts or not n.isdigit() or int(n) < 1:
            raise AuthorError(f"--count {c}: expected FILE=N, N >= 1, FILE one of {list(counts)}")
        counts[f] = int(n)
    judge = judge_config(a.overrides)
    if judge.get("backend") != "openai":
        raise AuthorError("judge.backend must be openai: the same endpoint writes the data")
    from steerlab.judges.factory import make_llm_judge

    scorer = make_llm_judge(judge)

    def label(trait: TraitData, pairs: list[tuple[str, str]]) -> list[tuple[float, float] | None]:
        return [
            None if s.trait is None or s.coherence is None else (s.trait, s.coherence)
            for s in scorer.score(trait, pairs)
        ]

    chat = ChatEndpoint.from_judge(judge, temperature=a.temperature, max_tokens=a.max_tokens)
    folder = a.traits / a.name
    print(f"steerlab.author: {folder} from {chat.model} at {chat.redact(chat.base_url)}")
    author = Author(a.name, a.description, folder, chat, label, scorer.identity, counts, a.seed)
    findings = author.run(a.rounds)
    conf = a.conf / "trait" / f"{a.name}.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    where = folder if folder.is_absolute() else folder.as_posix()
    conf.write_text(f"name: {a.name}\ndir: {where}\n", encoding="utf-8")
    load_trait(folder)  # the loader accepts what was written
    report = check(folder)  # FORMAT.md's minimums, whatever counts were asked
    (folder / "check.md").write_text(report.markdown(), encoding="utf-8")
    errors = [f for f in findings if f.severity == "error"]
    print(
        f"steerlab.author: wrote {folder} and {conf}; check: "
        f"{'PASS' if report.ok else 'FAIL'} ({len(errors)} error(s), "
        f"{len(report.findings) - len(errors)} warning(s)), report {folder / 'check.md'}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
