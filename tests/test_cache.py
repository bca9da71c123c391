"""The on-disk caches every stage resumes from: `JsonlStore` (records survive a re-open, a write
torn by a kill is skipped, the last record of an index wins) and `digest` (the cache key: stable,
independent of dict key order, different for different inputs). A wrong key or a lost record
silently reuses or recomputes results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerlab.cache import JsonlStore, digest


def test_records_persist_across_instances(tmp_path):
    path = tmp_path / "s.jsonl"
    JsonlStore(path).add([{"i": 0, "text": "zero"}, {"i": 2, "text": "two"}])
    again = JsonlStore(path)
    assert again.records == {0: {"i": 0, "text": "zero"}, 2: {"i": 2, "text": "two"}}
    again.add([{"i": 1, "text": "un été"}])
    third = JsonlStore(path)
    assert third.ordered(3) == [
        {"i": 0, "text": "zero"},
        {"i": 1, "text": "un été"},
        {"i": 2, "text": "two"},
    ]


def test_a_missing_file_is_an_empty_store(tmp_path):
    store = JsonlStore(tmp_path / "none.jsonl")
    assert store.records == {}
    assert store.missing(3) == [0, 1, 2]
    assert not (tmp_path / "none.jsonl").exists()


def test_missing_and_ordered(tmp_path):
    store = JsonlStore(tmp_path / "s.jsonl")
    store.add([{"i": 3, "v": "d"}, {"i": 0, "v": "a"}, {"i": 5, "v": "f"}])
    assert store.missing(6) == [1, 2, 4]
    assert store.missing(3) == [1, 2]
    assert store.missing(0) == []
    assert store.ordered(1) == [{"i": 0, "v": "a"}]
    assert store.ordered(0) == []
    with pytest.raises(KeyError):
        store.ordered(2)  # index 1 was never added


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "s.jsonl"
    JsonlStore(path).add([{"i": 0, "v": 10}, {"i": 1, "v": 11}])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"i": 2, "v": 1')  # a kill mid-write
    store = JsonlStore(path)
    assert store.records == {0: {"i": 0, "v": 10}, 1: {"i": 1, "v": 11}}
    assert store.missing(3) == [2]


def test_appending_after_a_torn_line_keeps_every_new_record(tmp_path):
    """A resumed stage appends after the fragment a kill left: the append starts on a line of
    its own, so the record written next to the fragment survives re-opening too."""
    path = tmp_path / "s.jsonl"
    JsonlStore(path).add([{"i": 0, "v": 10}])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"i": 1, "v"')
    JsonlStore(path).add([{"i": 1, "v": 11}, {"i": 2, "v": 12}])
    store = JsonlStore(path)
    assert store.records[0] == {"i": 0, "v": 10}
    assert store.records[2] == {"i": 2, "v": 12}
    assert store.records[1] == {"i": 1, "v": 11}
    assert store.missing(3) == []


def test_later_record_with_the_same_index_wins(tmp_path):
    path = tmp_path / "s.jsonl"
    store = JsonlStore(path)
    store.add([{"i": 0, "v": "old"}, {"i": 1, "v": "keep"}])
    store.add([{"i": 0, "v": "new"}])
    assert store.records[0] == {"i": 0, "v": "new"}
    assert JsonlStore(path).ordered(2) == [{"i": 0, "v": "new"}, {"i": 1, "v": "keep"}]
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"i": 0, "v": "old"}, {"i": 1, "v": "keep"}, {"i": 0, "v": "new"}]


def test_add_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c" / "s.jsonl"
    JsonlStore(path).add([{"i": 0}])
    assert path.read_text(encoding="utf-8") == '{"i": 0}\n'


def test_add_writes_non_ascii_verbatim(tmp_path):
    path = tmp_path / "s.jsonl"
    JsonlStore(path).add([{"i": 0, "t": "naïve ☃"}])
    assert path.read_text(encoding="utf-8") == '{"i": 0, "t": "naïve ☃"}\n'


def test_digest_is_stable_and_ignores_dict_key_order():
    a = digest("model", [1, 2, 3], {"x": 1, "y": [2.5, None]})
    assert a == digest("model", [1, 2, 3], {"x": 1, "y": [2.5, None]})
    assert a == digest("model", [1, 2, 3], {"y": [2.5, None], "x": 1})
    assert len(a) == 16
    assert all(c in "0123456789abcdef" for c in a)


def test_digest_known_value():
    """Cached files on disk are named by these keys, so the hash must not drift between versions
    (values pinned from the current implementation)."""
    assert digest("a", {"k": 1}) == "750bc6ee007b781f"
    assert digest("a", {"k": 1}, n=24) == "750bc6ee007b781f79f37fb5"


def test_digest_turns_non_json_parts_into_strings():
    assert digest(Path("cache/x.jsonl")) == digest("cache/x.jsonl")


def test_digest_differs_for_different_parts():
    keys = {
        digest("a"),
        digest("b"),
        digest("a", "b"),
        digest("ab"),
        digest(["a", "b"]),
        digest("b", "a"),
        digest({"x": 1}),
        digest({"x": 2}),
        digest({"y": 1}),
        digest(1),
        digest("1"),
        digest(),
    }
    assert len(keys) == 12


def test_digest_honours_n():
    full = digest("x", n=64)
    assert len(full) == 64
    assert digest("x", n=8) == full[:8]
    assert digest("x", n=24) == full[:24]
    assert digest("x") == full[:16]


def test_a_damaged_line_sets_the_file_aside_keeps_the_good_records_and_warns_once(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    JsonlStore(path).add([{"i": 0, "v": 10}, {"i": 1, "v": 11}, {"i": 2, "v": 12}])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"i": 1, "v": \x80\xff}\n' + b'{"v": 3}\n' + lines[2])
    with caplog.at_level("WARNING", logger="steerlab.cache"):
        store = JsonlStore(path)
    assert store.records == {0: {"i": 0, "v": 10}, 2: {"i": 2, "v": 12}}
    assert store.missing(3) == [1]
    [warning] = [r.getMessage() for r in caplog.records]
    assert str(path) in warning and "2 unreadable line(s)" in warning and "redoing" in warning
    assert b"\x80" in (tmp_path / "s.jsonl.damaged").read_bytes()  # kept to inspect
    caplog.clear()
    store.add([{"i": 1, "v": 11}])
    with caplog.at_level("WARNING", logger="steerlab.cache"):
        assert JsonlStore(path).missing(3) == []  # rewritten clean: no second warning
    assert not caplog.records


def test_a_kill_fragment_is_cut_before_the_next_append_and_is_no_damage(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    JsonlStore(path).add([{"i": 0, "v": 10}])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"i": 1, "v"')
    with caplog.at_level("WARNING", logger="steerlab.cache"):
        JsonlStore(path).add([{"i": 1, "v": 11}])
        assert JsonlStore(path).records == {0: {"i": 0, "v": 10}, 1: {"i": 1, "v": 11}}
    assert not caplog.records and b'"v"{' not in path.read_bytes()
    with path.open("a", encoding="utf-8") as f:
        f.write('{"i": 2, "v": 12}')  # whole, only its newline lost
    JsonlStore(path).add([{"i": 3, "v": 13}])
    assert JsonlStore(path).missing(4) == []


def test_a_judge_record_without_its_scores_is_redone(tmp_path, caplog):
    from steerlab.cache import KeyedJsonlStore

    path = tmp_path / "j.jsonl"
    path.write_text('{"k": "a", "trait": 1, "coherence": 2}\n{"k": "b", "trait": 3}\n')
    with caplog.at_level("WARNING", logger="steerlab.cache"):
        store = KeyedJsonlStore(path, ("k", "trait", "coherence"))
    assert list(store.records) == ["a"] and "1 unreadable line(s)" in caplog.text
