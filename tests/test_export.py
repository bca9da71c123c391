"""steerlab.export and steerlab.imports: a found vector as a self-describing safetensors + JSON
or a llama.cpp control-vector GGUF, and vectors from llama.cpp/repeng GGUFs and Persona Vectors
`.pt` files as steerlab vector files. Exact: what a file holds is what steerlab adds."""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import pytest
import torch

from conftest import SWEEP, WORK, tiny_args, tiny_model
from steerlab import portable
from steerlab.api import Steering, Term, load
from steerlab.export import ExportError, export_gguf, export_steerlab, main, per_layer
from steerlab.imports import import_file, norm_texts
from steerlab.vectors import TraitVectors, VectorFileError, load_vectors

NORMS = [2.0, 3.0, 5.0]


@pytest.fixture
def vfile(tmp_path):
    g = torch.Generator().manual_seed(2)
    v = torch.nn.functional.normalize(torch.randn(3, 64, generator=g), dim=-1)
    meta = {"component": "residual", "norms": NORMS, "hidden_size": 64, "n_layers": 3}
    return TraitVectors(v, meta | {"model": "tiny", "trait": "evil"}).save(
        tmp_path / "v.safetensors"
    )


def read_gguf(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: torch.from_numpy(t.data.copy()) for t in r.tensors}


def test_gguf_holds_llama_cpp_control_vector_fields_and_the_whole_added_vector(tmp_path, vfile):
    st = load(vfile, layer=2, coef=0.4)
    out = export_gguf(st, tmp_path / "evil.gguf", hint="llama")
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 1
    assert list(tensors) == ["direction.2"]
    want = 0.4 * NORMS[2] * load_vectors(vfile).vectors[2]
    assert tensors["direction.2"].dtype == torch.float32
    assert torch.equal(tensors["direction.2"], want)
    meta = json.loads(fields["steerlab.export"])
    assert meta["coef_absolute"] == {"2": pytest.approx(0.4 * NORMS[2])}
    assert meta["component"] == "residual" and meta["layers"] == [2]
    assert json.loads(out.with_suffix(".json").read_text()) == meta


def test_gguf_refuses_layer_0_and_other_components(tmp_path, vfile):
    with pytest.raises(ExportError, match="layer 0"):
        export_gguf(load(vfile, layer=0, coef=0.4), tmp_path / "x.gguf")
    attn = load_vectors(vfile)
    attn.meta["component"] = "attn_contribution"
    with pytest.raises(ExportError, match="only residual vectors"):
        export_gguf(Steering(attn, (Term(attn, 1, 0.3),)), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_steerlab_format_is_self_describing_and_loads_back_to_the_same_steering(tmp_path, vfile):
    st = load(vfile, layer=1, coef=0.3)
    out = export_steerlab(st, tmp_path / "e.safetensors")
    ex = portable.read(out)
    assert ex.meta["format"] == portable.FORMAT and "decoder block" in ex.meta["apply"]
    assert ex.coef_absolute == {1: pytest.approx(0.3 * NORMS[1])}
    assert ex.meta["coef"] == {"1": 0.3} and ex.meta["norm"] == {"1": NORMS[1]}
    assert ex.meta["provenance"]["kind"] == "file"
    assert torch.equal(ex.directions[1], load_vectors(vfile).vectors[1])
    back = load(out)
    assert back.units == "absolute" and back.provenance["kind"] == "export"
    assert torch.allclose(back.deltas()[1], st.deltas()[1])


def test_terms_at_one_layer_are_exported_as_their_sum(tmp_path, vfile):
    vecs = load_vectors(vfile)
    st = Steering(vecs, (Term(vecs, 1, 0.2), Term(vecs, 2, 0.1), Term(vecs, 1, -0.5)))
    d, c, rel = per_layer(st)[1]
    want = (0.2 - 0.5) * NORMS[1] * vecs.vectors[1]
    assert rel is None and c == pytest.approx(float(want.norm()))
    assert torch.allclose(c * d, want)
    _, tensors = read_gguf(export_gguf(st, tmp_path / "m.gguf"))
    assert torch.allclose(tensors["direction.1"], want)
    assert sorted(tensors) == ["direction.1", "direction.2"]


def test_gguf_import_is_the_inverse_of_export(tmp_path, vfile):
    st = load(vfile, layer=2, coef=0.4)
    path = export_gguf(st, tmp_path / "evil.gguf", hint="llama")
    vecs = import_file(path, tmp_path / "imported.safetensors", trait="evil")
    assert vecs.layers == [2] and vecs.meta["model_hint"] == "llama"
    assert vecs.meta["source_norms"][2] == pytest.approx(0.4 * NORMS[2])
    assert torch.allclose(vecs.vectors[2], load_vectors(vfile).vectors[2], atol=1e-6)
    assert not vecs.has_norms and vecs.meta["coef_units_default"] == "absolute"
    again = load(tmp_path / "imported.safetensors", layer=2, coef=1.0, units="absolute")
    assert torch.allclose(again.deltas()[2] * 0.4 * NORMS[2], st.deltas()[2], atol=1e-6)
    with pytest.raises(VectorFileError, match="import it again with --model"):
        again.at(coef=0.1, units="relative").absolute()
    padded = import_file(path, tmp_path / "padded.safetensors", n_layers=5)
    assert padded.vectors.shape == (5, 64) and padded.meta["n_layers"] == 5
    assert load_vectors(tmp_path / "padded.safetensors", {"n_layers": 5, "hidden_size": 64})


def test_gguf_import_rejects_layer_0_and_model_files(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "zero.gguf"), "controlvector")
    w.add_tensor("direction.0", torch.ones(4).numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(VectorFileError, match="direction.0"):
        import_file(tmp_path / "zero.gguf", tmp_path / "z.safetensors")
    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    w.add_tensor("token_embd.weight", torch.ones(4, 4).numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(VectorFileError, match="not 'controlvector'"):
        import_file(tmp_path / "model.gguf", tmp_path / "m.safetensors")


def test_persona_vectors_row_l_is_steerlab_layer_l_minus_1(tmp_path):
    g = torch.Generator().manual_seed(3)
    pv = torch.randn(4, 64, generator=g)  # embeddings + 3 layers
    torch.save(pv, tmp_path / "evil_response_avg_diff.pt")
    vecs = import_file(tmp_path / "evil_response_avg_diff.pt", tmp_path / "pv.safetensors")
    assert vecs.vectors.shape == (3, 64) and vecs.layers == [0, 1, 2]
    assert vecs.meta["n_layers"] == 3 and vecs.meta["trait"] == "evil_response_avg_diff"
    for la in range(3):
        assert torch.allclose(vecs.vectors[la] * pv[la + 1].norm(), pv[la + 1], atol=1e-5)
        assert vecs.meta["source_norms"][la] == pytest.approx(float(pv[la + 1].norm()))
    # their coefficient c at their layer L is absolute c x source_norms at steerlab layer L-1
    st = load(tmp_path / "pv.safetensors", layer=1, coef=2.0 * vecs.meta["source_norms"][1])
    assert st.units == "absolute"  # the file's default: it has no norms
    assert torch.allclose(st.deltas()[1], 2.0 * pv[2], atol=1e-5)
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    with pytest.raises(VectorFileError, match=r"\[layers \+ 1, hidden\]"):
        import_file(tmp_path / "dict.pt", tmp_path / "d.safetensors")


def test_import_with_a_model_measures_norms_as_capture_does(tmp_path, llama):
    torch.save(torch.randn(4, 64), tmp_path / "pv.pt")
    vecs = import_file(tmp_path / "pv.pt", tmp_path / "pv.safetensors", model=llama)
    assert vecs.has_norms and vecs.meta["coef_units_default"] == "relative"
    # independently, one text at a time: the median norm of HF hidden_states[L + 1] over every
    # token but each text's first (HF's last entry has the final norm applied: layers 0, 1)
    per_layer = [[], []]
    with torch.inference_mode():
        for ids in norm_texts(llama):
            hs = llama.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            for la in (0, 1):
                per_layer[la].append(hs.hidden_states[la + 1][0, 1:].norm(dim=-1))
    want = [float(torch.cat(v).median()) for v in per_layer]
    assert vecs.meta["norms"][:2] == pytest.approx(want, rel=1e-5)
    assert load(tmp_path / "pv.safetensors", layer=1, coef=0.5).absolute() == [
        (1, 0.5 * vecs.meta["norms"][1])
    ]


def test_cli_exports_a_sweeps_best_trial_and_says_why_it_cannot(tmp_path, user_root, capsys):
    out = tmp_path / "best.gguf"
    assert main([str(user_root / SWEEP), "--format", "gguf", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported layer" in text and "--control-vector" in text
    fields, tensors = read_gguf(out)
    st = load(user_root / SWEEP)
    assert list(tensors) == [f"direction.{st.layers[0]}"]
    assert json.loads(fields["steerlab.export"])["provenance"]["kind"] == "sweep"
    assert main([str(user_root / SWEEP), "--out", str(tmp_path / "best.safetensors")]) == 0
    assert (
        portable.read(tmp_path / "best.safetensors").meta["provenance"]["trial"]
        == (st.provenance["trial"])
    )
    bare = st.provenance["vector_files"][0]
    assert main([bare, "--out", str(tmp_path / "x.gguf")]) == 2
    assert "give layer= and coef=" in capsys.readouterr().err
    help_text = subprocess.run(
        [sys.executable, "-m", "steerlab.export", "--help"], capture_output=True, text=True
    ).stdout
    assert "--format {steerlab,gguf}" in help_text and "llama.cpp control vector" in help_text


def test_an_imported_vector_steers_a_run_in_absolute_units_only(tmp_path, tiny_dir):
    torch.save(torch.randn(4, 64), tmp_path / "pv.pt")
    import_file(tmp_path / "pv.pt", tmp_path / "pv.safetensors")

    def run(*extra):
        args = [a for a in tiny_args(tmp_path, tiny_dir, *extra) if a != "-m"]
        cmd = [
            sys.executable,
            "-m",
            "steerlab",
            *args,
            f"steering.vector={tmp_path}/pv.safetensors",
        ]
        return subprocess.run(cmd, cwd=WORK, capture_output=True, text=True, timeout=600)

    refused = run()
    assert refused.returncode == 2 and "relative coefficients need" in refused.stderr
    assert refused.stderr.count("\n") == 1  # one line, before any model loads
    done = run("steering.coef_units=absolute", "steering.coef=2.0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "layer 1 coef 2 (absolute)" in done.stdout and "imported" in done.stdout


def test_tiny_model_fixture_sizes_match():  # guards the helpers above against conftest drift
    assert tiny_model("llama").hidden_size == 64


@pytest.mark.parametrize(
    "args",
    [["--coef", "nan"], ["--coef", "inf", "--format", "gguf"], ["--coef", "0.3", "--scale", "nan"]],
)
def test_non_finite_coefficients_are_refused_and_nothing_is_written(tmp_path, vfile, args, capsys):
    from steerlab.export import main

    out = tmp_path / "out" / "x.gguf"
    assert main([str(vfile), "--layer", "1", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a finite number" in err[0], err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_persona_file_of_another_depth_names_its_own_layer_count(tmp_path, llama):
    """The message says what the file has, not a `--n-layers` the user never gave."""
    from steerlab.imports import import_file
    from steerlab.vectors import VectorFileError

    pt = tmp_path / "evil.pt"
    torch.save(torch.randn(7, llama.hidden_size), pt)  # 6 layers; the model has 3
    with pytest.raises(VectorFileError) as e:
        import_file(pt, tmp_path / "v.safetensors", model=llama)
    assert "has 6 layers" in str(e.value) and "--n-layers" not in str(e.value)
