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


def test_damaged_trial_folders_are_named_in_one_pass_and_rebuilt_from_the_study(tmp_path, tiny_dir):
    """Two trials whose MLflow runs are gone must be logged again from their folders, and both
    folders are damaged (metrics.json cut short, responses.jsonl garbage): one line names each,
    each is rebuilt from the study, and the next run has nothing left to do (the advice used to
    loop: "run the same command again" failed the same way forever)."""
    import json

    import mlflow
    import optuna

    root = tmp_path / "root"
    args = [*tiny_args(root, tiny_dir), "search.n_trials=4"]
    first = run_steerlab(*args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    [sweep] = {p.parent for p in root.glob("multirun/**/optuna.db")}
    metrics = sweep / "1" / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    (sweep / "2" / "responses.jsonl").write_bytes(b"\x80\xff{not json\n")
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    for r in client.search_runs(exps):
        if r.data.tags.get("steerlab.trial") in ("1", "2"):
            client.delete_run(r.info.run_id)

    again = run_steerlab(*args, timeout=300)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    for n, file in ((1, "metrics.json"), (2, "responses.jsonl")):
        said = [line for line in out.splitlines() if f"trial {n}: folder {sweep / str(n)}" in line]
        assert len(said) == 1 and file in said[0] and "rebuilt from the study" in said[0], out
        assert (sweep / str(n) / f"{file}.damaged").is_file()
    assert "its answers are lost" in out
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{sweep}/optuna.db")
    trial = {t.number: t for t in study.trials}
    runs = {
        r.data.tags["steerlab.trial"]: r
        for r in client.search_runs(exps, "attributes.status = 'FINISHED'")
        if r.data.tags.get("steerlab.kind") == "trial"
    }
    assert sorted(runs) == ["0", "1", "2", "3"]
    for n in (1, 2):
        assert runs[str(n)].data.metrics["trait"] == round(trial[n].user_attrs["trait"], 2)
        assert (
            json.loads((sweep / str(n) / "metrics.json").read_text())["trait"]
            == (trial[n].user_attrs["trait"])
        )
    third = run_steerlab(*args, timeout=300)
    assert third.returncode == 0 and "rebuilt" not in third.stdout + third.stderr, third.stderr


def test_mlflow_keeps_one_run_per_complete_trial_when_workers_logged_one_twice(tmp_path, tiny_dir):
    """Workers that log a missing trial at the same moment each make a FINISHED run of it, and a
    run logged before its trial's tell failed belongs to no COMPLETE trial (CI: 19 runs for 9
    trials after a database restart). The next run makes MLflow mirror the study again: one
    run per COMPLETE trial, the same one whichever worker cleans, the best flag kept."""
    import mlflow

    from steerlab.runlog import log_child

    root = tmp_path / "root"
    args = [*tiny_args(root, tiny_dir), "search.n_trials=4"]
    first = run_steerlab(*args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]

    def trial_runs() -> list:
        return [r for r in client.search_runs(exps, "attributes.status = 'FINISHED'")
                if r.data.tags.get("steerlab.kind") == "trial"]  # fmt: skip

    runs = {r.data.tags["steerlab.trial"]: r for r in trial_runs()}
    assert sorted(runs) == ["0", "1", "2", "3"]
    best = next(n for n, r in runs.items() if r.data.tags.get("steerlab.best") == "true")
    for n in (best, best, "7"):  # the best trial logged twice more; trial 7 is not in the study
        r = runs[best]
        tags = {k: v for k, v in r.data.tags.items() if k.startswith("steerlab.")}
        log_child(root, client.get_experiment(r.info.experiment_id).name, f"trial-{n}",
                  r.data.tags["mlflow.parentRunId"], {**tags, "steerlab.trial": n},
                  {}, r.data.metrics)  # fmt: skip
    assert len(trial_runs()) == 7

    again = run_steerlab(*args, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    left = trial_runs()
    assert sorted(r.data.tags["steerlab.trial"] for r in left) == ["0", "1", "2", "3"]
    assert [r.data.tags["steerlab.trial"] for r in left
            if r.data.tags.get("steerlab.best") == "true"] == [best]  # fmt: skip
