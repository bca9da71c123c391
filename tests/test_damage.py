"""Damaged files are caches or evidence, never dead ends: an unreadable cache entry is set aside
with one warning naming it and redone; an interrupted elicitation loses at most one batch."""

from __future__ import annotations

import pytest

from conftest import run_steerlab, tiny_args, tiny_model
from steerlab import generation
from steerlab.generation import GenConfig, cached_generate


def test_elicitation_saves_every_batch_so_a_stop_loses_at_most_one(tmp_path, monkeypatch):
    m = tiny_model("llama")
    prompts = [list(range(3, 3 + n)) for n in range(4, 14)]  # 10 prompts, batches of 2
    calls = []
    real = generation._hf_batch

    def stopped_at_the_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generation, "_hf_batch", stopped_at_the_third_batch)
    cfg = GenConfig(max_new_tokens=3, batch_size=2, engine="eager")
    with pytest.raises(KeyboardInterrupt):
        cached_generate(m, prompts, cfg, tmp_path)
    [store] = (tmp_path / "responses").glob("*.jsonl")
    assert len(store.read_text().splitlines()) == 4  # two whole batches kept
    monkeypatch.setattr(generation, "_hf_batch", real)
    calls.clear()
    resumed = cached_generate(m, prompts, cfg, tmp_path)
    assert [s.prompt_ids for s in resumed] == prompts
    assert resumed == cached_generate(m, prompts, cfg, tmp_path / "fresh")


def test_damaged_cache_entries_are_set_aside_named_and_redone(tmp_path, tiny_dir):
    root = tmp_path / "root"
    args = tiny_args(root, tiny_dir)
    first = run_steerlab(*args, "search.n_trials=2", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    cache = root / "cache"
    [vector] = (cache / "vectors").rglob("residual_mean_diff.safetensors")
    [acts] = (cache / "activations").glob("*.safetensors")
    responses = sorted((cache / "responses").glob("*.jsonl"))
    judged = sorted((cache / "judge").glob("*.jsonl"))
    vector.write_bytes(vector.read_bytes()[:200])  # truncated
    acts.write_bytes(acts.read_bytes()[:100])
    for path in (responses[0], judged[0]):
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(lines[0] + b"\x80\xff not json\n" + b"".join(lines[2:]))
    # a fresh process: its setup reads every cache entry again
    again = run_steerlab(*args, "search.n_trials=4", timeout=300)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    for path in (vector, acts, responses[0], judged[0]):
        said = [
            line for line in out.splitlines() if f"cache entry {path} could not be read" in line
        ]
        assert len(said) == 1, (path, out[-3000:])
        assert path.with_name(path.name + ".damaged").is_file()
        assert path.is_file()  # redone
    assert "4 trials done" in out, out[-2000:]
