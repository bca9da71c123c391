"""Vector files, model resolution errors and variant checks."""

import json

import pytest
import torch

from conftest import tiny_model
from steerlab.models import ModelError, ModelSpec, check_variants, resolve_architecture
from steerlab.vectors import TraitVectors, VectorFileError, load_vectors


def _vectors(n_layers=3, d=8):
    v = torch.randn(n_layers, d)
    meta = {
        "model": "m",
        "hidden_size": d,
        "n_layers": n_layers,
        "component": "residual",
        "norms": [2.0, 4.0, 8.0][:n_layers],
        "position": "response[:10]",
        "method": "mean_diff",
    }
    return TraitVectors(v / v.norm(dim=1, keepdim=True), meta)


def test_roundtrip_is_exact_and_records_convention(tmp_path):
    tv = _vectors()
    path = tv.save(tmp_path / "v.safetensors")
    back = load_vectors(path, {"hidden_size": 8, "n_layers": 3})
    assert torch.equal(back.vectors, tv.vectors)
    assert back.meta["layer_convention"].startswith("0-based decoder block output")
    assert back.meta["steerlab_version"]
    assert json.loads(path.with_suffix(".json").read_text())["method"] == "mean_diff"
    assert b"pickle" not in path.read_bytes()[:64]


def test_relative_coefficients_scale_by_layer_norm():
    tv = _vectors()
    assert tv.term(1, 0.5).coef == pytest.approx(2.0)
    assert tv.term(2, 0.5, "absolute").coef == pytest.approx(0.5)
    with pytest.raises(ValueError, match="valid: relative, absolute"):
        tv.absolute(0, 1.0, "percent")


def test_loading_for_another_model_fails(tmp_path):
    path = _vectors().save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match="hidden_size=8.*hidden_size=16"):
        load_vectors(path, {"hidden_size": 16})
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(VectorFileError, match="not a steerlab vector file"):
        load_vectors(tmp_path / "junk.safetensors")


def test_unknown_architecture_names_what_to_configure():
    model = tiny_model("llama").model
    model.config.model_type = "mystery"
    with pytest.raises(ModelError, match=r"set model.arch.layers, model.arch.attn_out"):
        resolve_architecture(model)
    layers, attn, mlp = resolve_architecture(
        model,
        {"layers": "model.layers", "attn_out": "self_attn.o_proj", "mlp_out": "mlp.down_proj"},
    )
    assert len(layers) == 3 and attn == "self_attn.o_proj"


def test_variants_must_share_shape(tmp_path):
    a, b = tiny_model("llama", layers=3), tiny_model("llama", layers=4)
    for m, d in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        m.model.config.save_pretrained(d)
    assert check_variants(ModelSpec("x", str(tmp_path / "a"), str(tmp_path / "a"))) == (3, 64)
    with pytest.raises(ModelError, match=r"\(3, 64\).*\(4, 64\)"):
        check_variants(ModelSpec("x", str(tmp_path / "a"), str(tmp_path / "b")))
