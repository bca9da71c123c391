"""steerlab.api: load a vector (file, export, saved ensemble, sweep folder, MLflow run id) and
steer a Hugging Face model the user loaded themselves. Exact on tiny random models: `apply` must
add exactly what the search's per-row hooks add, in relative or absolute units, to every row of
any batch, and leave the model and its tokenizer as they were."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ENSEMBLE, SWEEP
from steerlab import records
from steerlab.api import LoadError, load
from steerlab.ensembles import Ensemble, save_ensemble
from steerlab.steering import steer
from steerlab.vectors import TraitVectors, VectorFileError, load_vectors

NORMS = [2.0, 3.0, 5.0]


@pytest.fixture
def vfile(tmp_path, llama):
    g = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(3, llama.hidden_size, generator=g), dim=-1)
    meta = {"component": "residual", "norms": NORMS, "hidden_size": llama.hidden_size}
    return TraitVectors(v, meta | {"n_layers": 3, "model": "tiny", "trait": "evil"}).save(
        tmp_path / "v.safetensors"
    )


def logits(model, ids):
    with torch.inference_mode():
        return model.model(input_ids=ids).logits


IDS = torch.tensor([[5, 6, 7, 8, 9]] * 3)


def test_apply_adds_exactly_the_per_row_terms_and_restores_the_model(llama, vfile):
    before = logits(llama, IDS)
    st = load(vfile, layer=1, coef=0.5)
    assert st.absolute() == [(1, 0.5 * NORMS[1])]  # relative: coef x the layer's norm
    with steer(llama, [st.steer_terms()] * 3):
        per_row = logits(llama, IDS)
    with st.apply(llama.model) as m:  # the plain HF model, as a user has it
        assert m is llama.model
        ours = logits(llama, IDS)
        one = logits(llama, IDS[:1])  # any batch size: every row is steered
    assert torch.equal(ours, per_row)
    assert torch.allclose(one, per_row[:1], atol=1e-6)  # batch 1: other kernels, same sums
    assert not torch.allclose(ours, before)
    assert torch.equal(logits(llama, IDS), before)
    assert all(not mod._forward_hooks for mod in llama.model.modules())


def test_absolute_units_give_the_same_steering(llama, vfile):
    rel = load(vfile, layer=2, coef=0.3)
    ab = load(vfile, layer=2, coef=0.3 * NORMS[2], units="absolute")
    with rel.apply(llama.model):
        a = logits(llama, IDS)
    with ab.apply(llama.model):
        b = logits(llama, IDS)
    assert torch.allclose(a, b, atol=1e-6)
    assert rel.at(coef=0.6).absolute() == [(2, pytest.approx(0.6 * NORMS[2]))]
    assert rel.scaled(-1).absolute() == [(2, pytest.approx(-0.3 * NORMS[2]))]


def test_generate_with_beams_and_several_sequences_and_the_tokenizer_untouched(llama, vfile):
    tok, model = llama.tokenizer, llama.model
    tok.padding_side = "right"  # the user's choice must survive
    ids = torch.tensor([[5, 6, 7]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    plain = model.generate(ids, **kw)
    with load(vfile, layer=1, coef=8.0).apply(model):
        steered = model.generate(ids, **kw)
        beams = model.generate(ids, num_beams=3, num_return_sequences=3, **kw)
    assert not torch.equal(plain, steered)
    assert beams.shape[0] == 3
    assert tok.padding_side == "right"
    assert torch.equal(model.generate(ids, **kw), plain)


def test_a_saved_ensemble_by_name_steers_all_its_layers(tmp_path, llama, vfile):
    ens = Ensemble(str(vfile), "residual", [0, 2], [0.2, 0.4])
    save_ensemble(ens, "evil-test", tmp_path)
    st = load("evil-test", root=tmp_path)
    assert st.layers == [0, 2] and st.units == "relative"
    assert st.absolute() == [(0, 0.2 * NORMS[0]), (2, pytest.approx(0.4 * NORMS[2]))]
    with steer(llama, [ens.terms()] * 3):
        want = logits(llama, IDS)
    with st.apply(llama.model):
        assert torch.equal(logits(llama, IDS), want)
    assert load(tmp_path / "ensembles" / "evil-test.json").layers == [0, 2]
    with pytest.raises(LoadError, match="scaled"):
        st.at(coef=1.0)
    assert st.scaled(2).absolute()[1][1] == pytest.approx(0.8 * NORMS[2])


def test_errors_say_what_to_do(tmp_path, llama, vfile):
    bare = load(vfile)
    with pytest.raises(LoadError, match="give layer= and coef="), bare.apply(llama.model):
        pass
    with pytest.raises(LoadError, match="not a vector file, a sweep or trial folder"):
        load("no-such-thing", root=tmp_path)
    with pytest.raises(LoadError, match="needs coef="):
        load(vfile, layer=1, coef=0.2).at(units="absolute")
    with pytest.raises(ValueError, match="outside 0..2"):
        load(vfile, layer=7, coef=0.2)
    other = TraitVectors(torch.ones(3, 8) / 8**0.5, {"component": "residual", "norms": NORMS})
    path = other.save(tmp_path / "small.safetensors")
    with pytest.raises(LoadError, match="hidden size 8"), load(path, layer=1, coef=1).apply(llama):
        pass
    absolute_only = TraitVectors(torch.ones(3, 64) / 8, {"component": "residual", "layers": [1]})
    path = absolute_only.save(tmp_path / "abs.safetensors")
    with pytest.raises(VectorFileError, match="absolute units"):
        load(path, layer=1, coef=0.3)
    with pytest.raises(ValueError, match="no direction"):
        load(path, layer=2, coef=0.3, units="absolute")


def best_row(folder):
    rows = json.loads((folder / "trials.json").read_text())
    trials = records.trials_from_rows(rows, 0.0)
    return records.best(trials)


def test_a_sweep_folder_means_its_best_valid_trial(user_root, monkeypatch):
    folder = user_root / SWEEP
    best = best_row(folder)
    monkeypatch.chdir(user_root)
    st = load(SWEEP)  # relative, as a user types it after `make run`
    assert (st.layers, st.coef, st.units) == ([best.layer], best.coef, "relative")
    p = st.provenance
    assert p["kind"] == "sweep" and p["trial"] == best.number and p["rule"].startswith("best valid")
    assert p["scores"] == {"trait": best.trait, "coherence": best.coherence, "delta": best.delta}
    assert p["ci95"]["delta"] == best.delta_ci and best.delta_ci is not None  # its uncertainty
    held = json.loads((folder / "confirmation.json").read_text())
    assert held["trial"] == best.number and p["held_out"]["n_questions"] == len(held["rows"]) == 6
    vecs = load_vectors(__import__("pathlib").Path(p["vector_files"][0]))
    assert st.absolute() == [(best.layer, best.coef * vecs.norms[best.layer])]
    # the same trial through the parent run's id, a trial folder and the trial's own run id
    by_run = load(p["sweep_run_id"], root=user_root)
    assert (by_run.layers, by_run.coef) == (st.layers, st.coef)
    trial = load(folder / str(best.number))
    assert (trial.layers, trial.coef, trial.provenance["kind"]) == (st.layers, st.coef, "trial")
    by_trial_run = load(p["trial_run_id"], store=user_root)
    assert (by_trial_run.layers, by_trial_run.coef) == (st.layers, st.coef)
    other = next(r for r in json.loads((folder / "trials.json").read_text()) if r["trial"] == 3)
    assert load(folder / "3").coef == pytest.approx(other["coef"])


def test_an_ensemble_sweep_and_its_saved_ensemble_agree(user_root):
    folder = (
        user_root / "multirun/smollm2/evil/natural-mean_diff-10/attn_contribution-cmaes_ensemble"
    )
    st = load(folder)
    saved = load(ENSEMBLE, root=user_root)
    assert st.component == saved.component == "attn_contribution"
    assert st.layers == saved.layers == [11, 13, 15]
    # trial tables keep ensemble weights to 6 decimals (records.Trial.row); the saved file, all
    assert [c for _, c in st.absolute()] == pytest.approx(
        [c for _, c in saved.absolute()], rel=1e-5
    )


def test_an_unknown_run_id_and_a_folder_without_store_fail_in_one_line(user_root, tmp_path):
    with pytest.raises(LoadError, match="no MLflow run 0{32}"):
        load("0" * 32, root=user_root)
    with pytest.raises(LoadError, match="no MLflow store"):
        load("0" * 32, root=tmp_path)
    lonely = tmp_path / "sweep"
    (lonely / "0").mkdir(parents=True)
    (lonely / "0" / "config.yaml").write_text("paths:\n  root: .\n")
    with pytest.raises(LoadError, match="no MLflow store found"):
        load(lonely)


def test_a_folder_never_finds_the_current_directory_s_store(user_root, tmp_path, monkeypatch):
    """A sweep folder's store is the one its configs or its multirun/ root name: a store that
    happens to be in the current directory (a checkout after `make run`) is not searched."""
    lonely = tmp_path / "sweep"
    (lonely / "0").mkdir(parents=True)
    (lonely / "0" / "config.yaml").write_text("paths:\n  root: .\n")
    monkeypatch.chdir(user_root)  # holds a real MLflow store of other sweeps
    with pytest.raises(LoadError, match="no MLflow store found"):
        load(lonely)
