"""cached_scores on the project's keyed JSONL store: reuse, retry of unscored pairs, torn lines."""

import json

from conftest import bare_trait
from steerlab.cache import JsonlStore, KeyedJsonlStore
from steerlab.judges.base import JudgeScore, cached_scores

TRAIT = bare_trait()


class Stub:
    identity = "stub-judge"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, trait, pairs):
        self.calls.append([a for _, a in pairs])
        return [
            JudgeScore(None, None, "down") if "DOWN" in a else JudgeScore(len(a), 50.0, "")
            for _, a in pairs
        ]


def test_scores_are_reused_and_unscored_pairs_retried(tmp_path):
    judge = Stub()
    pairs = [("q", "a"), ("q", "bb"), ("q", "DOWN"), ("q", "a")]
    first = cached_scores(judge, TRAIT, pairs, tmp_path)
    assert first == [
        JudgeScore(1, 50.0, ""),
        JudgeScore(2, 50.0, ""),
        JudgeScore(None, None, "down"),
        JudgeScore(1, 50.0, ""),
    ]
    assert [sorted(c) for c in judge.calls] == [["DOWN", "a", "bb"]]  # a duplicate: scored once
    assert cached_scores(judge, TRAIT, pairs, tmp_path) == first
    assert judge.calls[1:] == [["DOWN"]]  # nothing scored last time: asked again
    [path] = (tmp_path / "judge").glob("*.jsonl")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["trait"], r["coherence"], r["note"]) for r in recs) == [
        (1, 50.0, ""),
        (2, 50.0, ""),
    ]
    assert len(KeyedJsonlStore(path).records) == 2


def test_a_torn_line_is_ignored_and_the_rest_kept(tmp_path):
    judge = Stub()
    cached_scores(judge, TRAIT, [("q", "a"), ("q", "bb")], tmp_path)
    [path] = (tmp_path / "judge").glob("*.jsonl")
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:10])  # killed while writing the second record
    assert cached_scores(judge, TRAIT, [("q", "a"), ("q", "bb")], tmp_path)[1].trait == 2
    assert judge.calls[1:] == [["bb"]]


def test_indexed_store_keeps_its_api(tmp_path):
    store = JsonlStore(tmp_path / "s.jsonl")
    store.add([{"i": 1, "x": "b"}, {"i": 0, "x": "a"}])
    again = JsonlStore(tmp_path / "s.jsonl")
    assert again.missing(3) == [2]
    assert [r["x"] for r in again.ordered(2)] == ["a", "b"]
