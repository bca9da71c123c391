"""`python -m steerlab.imports FILE`: vectors made by other tools as steerlab vector files.

So a vector found elsewhere can be searched and steered like steerlab's own
(`steering.vector=OUT`):

* llama.cpp / repeng control vectors (`.gguf`, `general.architecture = controlvector`): tensor
  `direction.N` is what llama.cpp adds to the output of 0-based decoder block N (the module
  docstring of `steerlab.export` gives the source lines), so it becomes steerlab layer N; the
  file's only runtime meaning is llama.cpp's, whatever layer numbering made it. Layers without
  a tensor have no direction (`meta["layers"]` lists those that do).
* Persona Vectors (`.pt`, one `[layers + 1, hidden]` tensor per file, `torch.save`d): row L is a
  mean difference of Hugging Face `hidden_states[L]`, the output of block L-1 (their steering
  hooks `model.layers[L-1]`), so row L becomes steerlab layer L-1; row 0 (the embeddings) has no
  steerlab layer and is dropped. Read with `torch.load(weights_only=True)`, which loads tensors
  and refuses arbitrary pickled objects (in one line, `models.pickle_refusal`) without running
  them.

Directions are stored unit-norm (steerlab's convention) with each original norm in
`source_norms`: the other tool's coefficient c at layer L is steerlab's absolute coefficient
c x source_norms[L]. Relative coefficients need each layer's activation norm: with `--model` it
is measured as extraction measures it (`capture`: median token norm of the layer's output, each
sequence's first token left out) over the shipped traits' extraction questions as chat prompts
and their natural prefixes as plain text; without a model the file is absolute-only, and a
relative coefficient on it fails saying so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import prog
from steerlab.vectors import TraitVectors, VectorFileError

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel

KINDS = ("auto", "gguf", "persona")
N_NORM_TEXTS = 64  # per kind of text (chat questions, plain prefixes): a stable median


def read_gguf(path: Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """`direction.N` tensors of a control-vector GGUF (layer -> vector) and its hint."""
    import gguf
    import torch

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise VectorFileError(f"{path}: not a GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if arch != "controlvector":
        raise VectorFileError(
            f"{path}: general.architecture is {arch!r}, not 'controlvector' (a model file?)"
        )
    out: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        head, _, num = t.name.partition(".")
        if head != "direction" or not num.isdigit():
            raise VectorFileError(f"{path}: unexpected tensor {t.name!r} (want direction.<N>)")
        v = torch.from_numpy(t.data.astype("float32").reshape(-1).copy())
        la = int(num)
        out[la] = out[la] + v if la in out else v  # llama.cpp sums repeats of a layer
    if not out:
        raise VectorFileError(f"{path}: no direction.<N> tensors")
    if 0 in out:
        raise VectorFileError(f"{path}: has direction.0, which llama.cpp rejects (layer 0)")
    return dict(sorted(out.items())), {"model_hint": _field(reader, "controlvector.model_hint")}


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def read_persona(path: Path) -> dict[int, torch.Tensor]:
    """Rows 1..L of a Persona Vectors tensor as steerlab layers 0..L-1."""
    import torch

    from steerlab.models import pickle_refusal

    try:
        t = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal is the same user error
        raise VectorFileError(pickle_refusal(path, e)) from None
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise VectorFileError(
            f"{path}: expected one [layers + 1, hidden] tensor (Persona Vectors), got {shape}"
        )
    return {la - 1: t[la].float() for la in range(1, t.shape[0])}


def norm_texts(model: LoadedModel) -> list[list[int]]:
    """Token ids of the texts norms are measured on: the shipped traits' extraction questions
    as chat prompts and their natural prefixes as plain text (what the pipeline feeds)."""
    from steerlab.data import TRAITS_DIR, load_trait
    from steerlab.generation import prompt_ids

    traits = [load_trait(d) for d in sorted(p.parent for p in TRAITS_DIR.glob("*/trait.yaml"))]
    questions = [q for t in traits for q in t.questions][:N_NORM_TEXTS]
    prefixes = [s for t in traits for pair in t.natural for s in pair][:N_NORM_TEXTS]
    return [prompt_ids(model, q) for q in questions] + [
        prompt_ids(model, s, chat=False) for s in prefixes
    ]


def measure_norms(model: LoadedModel, component: str = "residual") -> list[float]:
    """Each layer's median token activation norm on `norm_texts`, as capture measures it (the
    unit of relative coefficients)."""
    from steerlab.capture import capture
    from steerlab.generation import Sample
    from steerlab.positions import Position

    samples = [Sample(ids, [], "") for ids in norm_texts(model)]
    return capture(model, samples, [Position("all")], [component], batch_size=16).norms[component]


def to_vectors(
    directions: dict[int, torch.Tensor],
    meta: dict[str, Any],
    n_layers: int | None = None,
    norms: list[float] | None = None,
) -> TraitVectors:
    """Unit rows (zeros where there is no direction) with the original norms kept."""
    import torch

    d = len(next(iter(directions.values())))
    rows_n = n_layers if n_layers is not None else max(directions) + 1
    if max(directions) >= rows_n:
        raise VectorFileError(f"layer {max(directions)} is beyond the model's {rows_n} layers")
    rows, source_norms = torch.zeros(rows_n, d), [0.0] * rows_n
    for la, v in directions.items():
        if len(v) != d:
            raise VectorFileError(f"layer {la} has size {len(v)}, others {d}")
        n = float(v.norm())
        source_norms[la] = n
        rows[la] = v / max(n, 1e-12)
    keep = [la for la, v in directions.items() if float(v.norm()) > 0]
    meta = meta | {
        "hidden_size": d,
        "component": "residual",
        "layers": keep,
        "source_norms": source_norms,
        "coef_units_default": "relative" if norms else "absolute",
    }
    if n_layers is not None:
        meta["n_layers"] = n_layers
    if norms:
        meta["norms"] = norms
    return TraitVectors(rows, meta)


def import_file(
    path: Path,
    out: Path,
    kind: str = "auto",
    model: LoadedModel | None = None,
    model_name: str | None = None,
    trait: str | None = None,
    n_layers: int | None = None,
) -> TraitVectors:
    """Convert `path` (kind: gguf, persona or auto by suffix) into a steerlab vector file, with
    one row per model layer when the layer count is known (`model`, `n_layers`, or a Persona
    Vectors file's own shape): what `steering.vector=` checks against the model."""
    if not path.is_file():
        raise VectorFileError(f"{path}: file not found")
    kind = {".gguf": "gguf", ".pt": "persona", ".pth": "persona"}.get(path.suffix, kind)
    if kind == "gguf":
        directions, extra = read_gguf(path)
        source = "llama.cpp control vector (GGUF)"
    elif kind == "persona":
        directions, extra = read_persona(path), {}
        source = "Persona Vectors (.pt; row L = hidden_states[L] = steerlab layer L-1)"
    else:
        raise VectorFileError(f"{path}: unknown kind; give --kind gguf or --kind persona")
    given = n_layers  # what the user said, not what the file implies
    if kind == "persona":
        if n_layers is not None and n_layers != len(directions):
            raise VectorFileError(f"{path}: has {len(directions)} layers, not {n_layers}")
        n_layers = len(directions)
    norms = None
    meta: dict[str, Any] = {
        "trait": trait or path.stem,
        "source": "imported",
        "position": "?",
        "method": "imported",
        "imported_from": str(path.resolve()),
        "imported_format": source,
        **{k: v for k, v in extra.items() if v is not None},
    }
    if model is not None:
        d = len(next(iter(directions.values())))
        if d != model.hidden_size:
            raise VectorFileError(
                f"{path}: vectors of size {d}, but {model.ref} has hidden size {model.hidden_size}"
            )
        if n_layers is not None and n_layers != model.n_layers:
            said = f"--n-layers {given}" if given is not None else f"{path} has {n_layers} layers"
            raise VectorFileError(f"{said}, but {model.ref} has {model.n_layers}")
        n_layers = model.n_layers
        norms = measure_norms(model)
        meta |= {"model": model_name or model.ref, "model_ref": model.ref}
    elif model_name:
        meta["model"] = model_name
    vecs = to_vectors(directions, meta, n_layers, norms)
    vecs.save(out)
    return vecs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog("steerlab.imports"),
        description="Import a llama.cpp/repeng control vector (.gguf) or a Persona Vectors "
        "tensor (.pt, [layers+1, hidden]) as a steerlab vector file. With --model, each "
        "layer's activation norm is measured so relative coefficients work; without, the "
        "file is absolute-only (steering.coef_units=absolute).",
        epilog="then: python -m steerlab -m steering.vector=OUT [steering.coef_units=absolute]",
    )
    p.add_argument("file", type=Path, help="a .gguf control vector or a Persona Vectors .pt")
    p.add_argument("--out", type=Path, help="output .safetensors (default: next to FILE)")
    p.add_argument("--kind", choices=KINDS, default="auto", help="format (auto: by suffix)")
    p.add_argument("--model", help="model to measure norms with (HF path/id or embedded:smollm2)")
    p.add_argument("--model-name", help="the model's steerlab config name (e.g. smollm2)")
    p.add_argument("--trait", help="trait name to record (default: the file name)")
    p.add_argument("--n-layers", type=int, help="the model's layer count (a GGUF has none)")
    args = p.parse_args(argv)
    out = args.out or args.file.with_suffix(".safetensors")
    try:
        model = None
        if args.model:
            from steerlab.models import load_model

            model = load_model(args.model)
        vecs = import_file(
            args.file, out, args.kind, model, args.model_name, args.trait, args.n_layers
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"steerlab.imports: error: {e}", file=sys.stderr)
        return 2
    units = vecs.meta["coef_units_default"]
    print(
        f"imported {args.file} -> {out}\n  layers {vecs.layers[0]}..{vecs.layers[-1]} "
        f"({len(vecs.layers)} with a direction), hidden size {vecs.vectors.shape[1]}, "
        f"units: {'relative or absolute' if units == 'relative' else 'absolute only'}\n"
        f"  steer: python -m steerlab steering.vector={out}"
        + ("" if units == "relative" else " steering.coef_units=absolute")
        + (
            ""
            if "n_layers" in vecs.meta
            else "\n  (rows only up to its last layer: give --model or --n-layers so "
            "steering.vector= matches the model's layer count; the API needs neither)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
