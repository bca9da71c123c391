"""steerlab.monitor: projections of responses on a trait vector (per token, mean over the
response, last prompt token), exact on tiny models against Hugging Face's own hidden states and
against steerlab's capture; the CLI on a real sweep's steered answers (files, HTML, MLflow); and
on the embedded model, that it measures the trait (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SWEEP
from steerlab.monitor import MonitorError, Pair, center, main, project, read_jsonl, summary
from steerlab.tokenview import colour, render

PAIRS = [
    Pair("Hi there", "I will help you."),
    Pair("What now?", "Nothing <b>bold</b> & more", system="Be brief."),
    Pair("x", "y"),
]


def test_projections_are_hf_hidden_states_on_the_unit_direction(llama):
    from steerlab.generation import prompt_ids

    d = torch.randn(llama.hidden_size)
    unit = d / d.norm()
    rows = project(llama, d * 7, 1, PAIRS, batch_size=2)  # left-padded batches, any scale
    for p, r in zip(PAIRS, rows, strict=True):
        a = prompt_ids(llama, p.prompt, p.system)
        b = llama.tokenizer(p.response, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            hs = llama.model(input_ids=torch.tensor([a + b]), output_hidden_states=True)
        proj = hs.hidden_states[2][0] @ unit  # layer 1 = hidden_states[2]
        assert r["per_token"] == pytest.approx(proj[len(a) :].tolist(), abs=1e-4)
        assert r["last_prompt"] == pytest.approx(float(proj[len(a) - 1]), abs=1e-4)
        assert r["mean_response"] == pytest.approx(float(proj[len(a) :].mean()), abs=1e-4)
        assert "".join(r["tokens"]) == p.response


def test_the_response_mean_is_what_capture_averages(llama):
    """Monitoring and extraction read the same activations: the mean over response[:] is the
    capture window mean projected."""
    from steerlab.capture import capture
    from steerlab.generation import Sample, prompt_ids
    from steerlab.positions import parse_position

    d = torch.randn(llama.hidden_size)
    samples = [
        Sample(
            prompt_ids(llama, p.prompt, p.system),
            llama.tokenizer(p.response, add_special_tokens=False)["input_ids"],
            p.response,
        )
        for p in PAIRS
    ]
    cap = capture(llama, samples, [parse_position("response[:]")], ["attn_contribution"])
    rows = project(llama, d, 2, PAIRS, component="attn_contribution")
    want = cap.means["attn_contribution"][0, 2] @ (d / d.norm())
    assert [r["mean_response"] for r in rows] == pytest.approx(want.tolist(), abs=1e-4)


def test_centre_and_summary():
    rows = [
        {"per_token": [1.0, 3.0], "mean_response": 2.0, "last_prompt": 0.0, "coef": 0.0},
        {"per_token": [4.0], "mean_response": 4.0, "last_prompt": 1.0, "coef": 0.5},
        {"per_token": [6.0, 6.0], "mean_response": 6.0, "last_prompt": 2.0, "coef": 1.0},
    ]
    assert center(rows, "mean") == 4.0
    assert rows[0]["per_token"] == [-3.0, -1.0] and rows[2]["mean_response"] == 2.0
    s = summary(rows)
    assert s["spearman_coef"] == pytest.approx(1.0) and "auroc_response" not in s
    labelled = [
        r | {"label": lab} for r, lab in zip(rows, ["negative", "positive", 1], strict=True)
    ]
    assert summary(labelled)["auroc_response"] == 1.0
    with pytest.raises(MonitorError):
        center(rows, "median")


def test_html_escapes_text_and_colours_by_sign():
    rows = [
        {
            "prompt": "<script>",
            "tokens": ["a", "<b>"],
            "per_token": [2.0, -2.0],
            "mean_response": 0.0,
            "last_prompt": 1.0,
            "label": "positive",
        }
    ]
    page = render(rows, "t")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page
    assert colour(1.0, 1.0) == "rgb(255,0,0)" and colour(-1.0, 1.0) == "rgb(0,0,255)"
    assert colour(0.0, 1.0) == "rgb(255,255,255)" and 'title="+2.000"' in page


def test_jsonl_input_names_the_bad_line(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"question": "q", "answer": "a", "label": 1}\n{"prompt": "p"}\n')
    with pytest.raises(MonitorError, match=r"in.jsonl:2"):
        read_jsonl(f)
    f.write_text('{"question": "q", "answer": "a", "label": 1}\n')
    assert read_jsonl(f)[0].extra == {"label": 1}


def test_cli_on_a_sweeps_steered_answers_writes_files_and_an_mlflow_run(user_root, tmp_path):
    from steerlab import tracking
    from steerlab.api import load

    out = tmp_path / "mon"
    args = ["--study", str(user_root / SWEEP), "--out", str(out), "--store", str(tmp_path)]
    assert main([*args, "--center", "mean"]) == 0
    rows = [json.loads(x) for x in (out / "projections.jsonl").read_text().splitlines()]
    trials = json.loads((user_root / SWEEP / "trials.json").read_text())
    assert len(rows) == 2 * len(trials)  # 2 steering questions per trial
    assert {r["trial"] for r in rows} == {t["trial"] for t in trials}
    assert {r["coef"] for r in rows} == {t["coef"] for t in trials}
    best = load(user_root / SWEEP)
    assert {r["layer"] for r in rows} == set(best.layers)  # read where the best trial steers
    assert sum(v for r in rows for v in r["per_token"]) == pytest.approx(0.0, abs=1e-3)
    html = (out / "tokens.html").read_text()
    assert html.count('class="r"') == len(rows) and "mean over response" in html
    client = tracking.client(tmp_path)
    exp = client.get_experiment_by_name("monitor")
    [run] = client.search_runs([exp.experiment_id])
    assert run.data.tags["steerlab.kind"] == "monitor"
    assert run.data.metrics["n_responses"] == len(rows) and "spearman_coef" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"projections.jsonl", "tokens.html"}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded model and an evil vector from steerlab's own natural extraction: 60 prefix
    pairs answered (10 tokens), the vector fitted on the first 40 pairs' response[:10] means,
    the last 20 held out."""
    from steerlab.config import ExtractionConfig, VetConfig
    from steerlab.data import TRAITS_DIR, load_trait
    from steerlab.extraction import cached_capture, elicit, extract_vectors
    from steerlab.models import load_model
    from steerlab.positions import parse_position

    model = load_model("embedded:smollm2")
    trait = load_trait(TRAITS_DIR / "evil")
    tmp = tmp_path_factory.mktemp("embedded-monitor")
    cfg = ExtractionConfig(
        source="natural", max_new_tokens=10, max_pairs=60, batch_size=60, vet=VetConfig(False)
    )
    el = elicit(model, trait, cfg, tmp)
    fit = [p < 40 for p in el.pairs]
    pos = parse_position("response[:10]")
    cap = cached_capture(model, el.samples, [pos], ["residual"], 60, tmp)
    meta = {"model": "smollm2", "model_ref": "embedded:smollm2", "hidden_size": model.hidden_size}
    paths = extract_vectors(cap, el.labels, fit, "mean_diff", meta, tmp)
    return model, trait, el, fit, paths[(str(pos), "residual")]


# Layer 15 of 30. Measured here: mean projection per coef 0, 0.2, 0.4, 0.6 = -4.35, -0.65, 6.05,
# 8.92, Spearman(coef, projection) over 20 answers 0.861 (0.77-0.82 at layers 18 and 21 in a
# 60-pair variant); AUROC of the mean over response tokens 0.769 on the 40 fitted pairs, 0.605 on
# the 20 held-out pairs (last prompt token 0.619 / 0.615). The held-out figure is low because the
# data are: a 135M model's 10-token completions carry the trait weakly (the extraction's own
# held-out accuracy at these layers is 0.45-0.65, `layer_stats.val_acc`), so its threshold only
# asks for better than chance with a margin; steered answers carry it strongly.
LAYER = 15


@pytest.mark.slow
def test_steered_answers_project_higher_with_the_coefficient(embedded, capsys):
    from steerlab.api import load
    from steerlab.generation import GenConfig, generate, prompt_ids
    from steerlab.judges.metrics import spearman

    model, trait, _, _, vector = embedded
    st = load(vector, layer=LAYER, coef=1.0)
    coefs, questions = [0.0, 0.2, 0.4, 0.6], trait.steering_questions[:5]
    grid = [(c, q) for c in coefs for q in questions]
    steering = [st.at(coef=c).steer_terms() if c else () for c, _ in grid]
    answers = generate(
        model, [prompt_ids(model, q) for _, q in grid], GenConfig(24, batch_size=20), steering
    )
    pairs = [
        Pair(q, a.text or ".", extra={"coef": c}) for (c, q), a in zip(grid, answers, strict=True)
    ]
    rows = project(model, st.vectors.vectors[LAYER], LAYER, pairs, batch_size=20)  # unsteered
    means = [
        sum(r["mean_response"] for r in rows if r["coef"] == c) / len(questions) for c in coefs
    ]
    rho = spearman([r["coef"] for r in rows], [r["mean_response"] for r in rows])
    with capsys.disabled():
        print(
            f"\nsteered answers, layer {LAYER}: mean projection per coef {coefs}: "
            f"{[round(m, 2) for m in means]}; Spearman(coef, projection) over "
            f"{len(rows)} answers = {rho:.3f}"
        )
    assert means == sorted(means) and len(set(means)) == len(means)
    assert rho >= 0.6


@pytest.mark.slow
def test_positive_and_negative_extraction_responses_separate(embedded, capsys):
    from steerlab.vectors import load_vectors

    model, _, el, fit, vector = embedded
    direction = load_vectors(vector).vectors[LAYER]
    pairs = [
        Pair(ctx, s.text or ".", extra={"label": int(lab)})
        for ctx, s, lab in zip(el.contexts, el.samples, el.labels, strict=True)
    ]
    rows = project(model, direction, LAYER, pairs, chat=False, batch_size=40)  # natural: plain
    inside = summary([r for r, f in zip(rows, fit, strict=True) if f])
    held = summary([r for r, f in zip(rows, fit, strict=True) if not f])
    with capsys.disabled():
        print(
            f"\nextraction responses, layer {LAYER}: AUROC mean over response "
            f"{inside['auroc_response']:.3f} (the 40 fitted pairs), "
            f"{held['auroc_response']:.3f} (20 held-out pairs); last prompt token "
            f"{inside['auroc_last_prompt']:.3f} / {held['auroc_last_prompt']:.3f}"
        )
    assert inside["auroc_response"] >= 0.7
    assert held["auroc_response"] >= 0.55
