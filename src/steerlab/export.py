"""`python -m steerlab.export REF`: a found vector as a file other tools read.

REF is anything `steerlab.api.load` takes: a sweep folder or an MLflow run id (its best valid
trial), a saved ensemble, or a vector file with `--layer` and `--coef`. Two formats:

* `--format steerlab` (default): a self-describing safetensors + JSON (`steerlab.portable`):
  unit `direction.<L>` tensors, the absolute coefficient per layer, the component, the layer
  convention, the model and the provenance (sweep, trial, scores, vector file).
* `--format gguf`: a llama.cpp control vector, the format repeng writes: `general.architecture
  = controlvector`, `controlvector.model_hint`, `controlvector.layer_count`, and one F32 tensor
  `direction.<N>` per layer holding the whole added vector (absolute coefficient x direction),
  so llama.cpp's scale 1 (`--control-vector FILE`) is steerlab's coefficient.

What llama.cpp does with it, read in the llama.cpp bundled with llama-cpp-python 0.3.36 (vendor
commit 0c1e570): `common_control_vector_load` (common/common.cpp) reads every `direction.<N>`
tensor (F32, 1-D, one size), refuses N = 0 ("invalid (zero) direction tensor layer index": the
whole file is skipped), sums tensors of one layer and multiplies by the user's strength, into a
buffer that starts at layer 1; `llama_set_adapter_cvec` -> `llama_adapter_cvec::apply`
(src/llama-adapter.cpp) copies buffer slice `[n_embd*(il-1), n_embd*il)` to layer `il`'s tensor
for `il = 1 .. n_layer-1` (there is never a tensor for layer 0); and `build_cvec(cur, il)` adds it
at the end of decoder block `il`, after the feed-forward residual add (`l_out`, src/models/
llama.cpp and the other architectures), so `direction.N` is added to the output of 0-based block
N at every position: steerlab's layer N, residual component. `model_hint` and `layer_count` are
written for other readers (repeng); llama.cpp reads neither. Hence only residual vectors export,
and layer 0 is an error here rather than a file llama.cpp silently skips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import LAYER_CONVENTION, __version__, prog

if TYPE_CHECKING:
    import torch

    from steerlab.api import Steering

FORMATS = ("steerlab", "gguf")
ARCH = "controlvector"


class ExportError(ValueError):
    """A steering that the chosen format cannot carry."""


def per_layer(st: Steering) -> dict[int, tuple[torch.Tensor, float, float | None]]:
    """Layer -> (unit direction, absolute coefficient, coefficient in the steering's units when
    one term steers the layer). Several terms at one layer become their sum."""
    deltas, counts = st.deltas(), {la: st.layers.count(la) for la in st.layers}
    out: dict[int, tuple[torch.Tensor, float, float | None]] = {}
    for t, (la, coef_abs) in zip(st.terms, st.absolute(), strict=True):
        if counts[la] == 1:
            out[la] = (t.vectors.vectors[la].float(), coef_abs, t.coef)
    for la, delta in deltas.items():
        if counts[la] > 1:
            norm = float(delta.norm())
            out[la] = (delta / max(norm, 1e-12), norm, None)
    return dict(sorted(out.items()))


def describe(st: Steering) -> dict[str, Any]:
    """The JSON both formats carry: what to add where, for which model, from where."""
    m = st.vectors.meta
    layers = per_layer(st)
    norms = m.get("norms") or []
    return {
        "component": st.component,
        "layers": list(layers),
        "coef_absolute": {str(la): c for la, (_, c, _) in layers.items()},
        "coef_units": st.units,
        "coef": {str(la): c for la, (_, _, c) in layers.items() if c is not None},
        "norm": {str(la): norms[la] for la in layers if la < len(norms)},
        "layer_convention": LAYER_CONVENTION,
        "model": m.get("model"),
        "model_ref": m.get("model_ref"),
        "hidden_size": int(st.vectors.vectors.shape[1]),
        "n_layers": m.get("n_layers", len(st.vectors.vectors)),
        "steerlab_version": __version__,
        "provenance": st.provenance,
    }


def export_steerlab(st: Steering, out: Path) -> Path:
    from steerlab import portable

    meta = describe(st)
    directions = {la: v for la, (v, _, _) in per_layer(st).items()}
    return portable.write(out, directions, meta)


def model_hint(meta: dict[str, Any]) -> str:
    """The model's `model_type` when its config is on disk (what repeng writes), else its name."""
    from steerlab.models import CACHE_HOME

    ref = str(meta.get("model_ref") or "")
    where = (
        CACHE_HOME / "models" / ref.split(":", 1)[1] if ref.startswith("embedded:") else Path(ref)
    )
    try:
        return str(json.loads((where / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError):
        return str(meta.get("model") or "unknown")


def export_gguf(st: Steering, out: Path, hint: str | None = None) -> Path:
    """A llama.cpp control vector: `direction.N` = absolute coef x direction at layer N."""
    import gguf
    import numpy as np

    if st.component != "residual":
        raise ExportError(
            f"this vector steers {st.component}; llama.cpp control vectors add to the residual "
            "stream (each decoder block's output), so only residual vectors export to GGUF "
            "(use --format steerlab)"
        )
    deltas = st.deltas()
    if 0 in deltas:
        raise ExportError(
            "layer 0 cannot be exported to llama.cpp: it never applies a control vector to the "
            "first decoder block's output and rejects a file with direction.0 (steer layer >= 1)"
        )
    meta = describe(st)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), ARCH)
    w.add_string(f"{ARCH}.model_hint", hint or model_hint(st.vectors.meta))
    w.add_uint32(f"{ARCH}.layer_count", len(deltas))
    w.add_string("steerlab.export", json.dumps(meta))
    for la, delta in deltas.items():
        w.add_tensor(f"direction.{la}", delta.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return out


def default_name(st: Steering, fmt: str) -> Path:
    m = st.vectors.meta
    parts = [m.get("trait"), m.get("model"), "-".join(f"L{la}" for la in sorted(set(st.layers)))]
    stem = "-".join(str(p) for p in parts if p) or "steering"
    return Path(f"{stem}.{'gguf' if fmt == 'gguf' else 'safetensors'}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("steerlab.export"),
        description="Export a steering vector steerlab found: the best valid trial of a sweep "
        "(its folder or MLflow run id), one trial, a saved ensemble, or a vector file at a "
        "--layer and --coef. Writes a self-describing safetensors + JSON (default) or a "
        "llama.cpp control vector (--format gguf, residual component, layers >= 1).",
        epilog="Examples:\n"
        "  python -m steerlab.export multirun/smollm2/evil/natural-mean_diff-10/residual-tpe\n"
        "  python -m steerlab.export RUN_ID --format gguf --out evil.gguf\n"
        "  python -m steerlab.export cache/vectors/.../residual_mean_diff.safetensors "
        "--layer 13 --coef 0.35\n"
        "then: llama-cli -m model.gguf --control-vector evil.gguf  (scale 1 = steerlab's coef)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ref", help="sweep or trial folder, MLflow run id, ensemble, or vector file")
    p.add_argument("--format", choices=FORMATS, default="steerlab", help="output format")
    p.add_argument("--out", type=Path, help="output file (default: <trait>-<model>-L<n>.<ext>)")
    p.add_argument("--layer", type=int, help="layer (0-based decoder block) for a vector file")
    p.add_argument("--coef", type=float, help="coefficient, in --units")
    p.add_argument("--units", choices=("relative", "absolute"), help="units of --coef")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every coefficient")
    p.add_argument("--store", help="MLflow store: a root folder or a tracking server URL")
    p.add_argument("--root", default=".", help="where ensembles/ and the default store are")
    p.add_argument("--model-hint", help="GGUF controlvector.model_hint (default: model_type)")
    return p


def main(argv: list[str] | None = None) -> int:
    from steerlab.api import load

    args = parser().parse_args(argv)
    try:
        st = load(
            args.ref,
            layer=args.layer,
            coef=args.coef,
            units=args.units,
            store=args.store,
            root=args.root,
        )
        if args.scale != 1.0:
            st = st.scaled(args.scale)
        st.steer_terms()  # a bare vector file without --layer/--coef fails here, in one line
        out = args.out or default_name(st, args.format)
        if args.format == "gguf":
            path = export_gguf(st, out, args.model_hint)
        else:
            path = export_steerlab(st, out)
    except (ValueError, FileNotFoundError) as e:
        print(f"steerlab.export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {st.describe()}\n  -> {path} (+ {path.with_suffix('.json').name})")
    for la, c in st.absolute():
        print(f"  layer {la}: coefficient {c:.6g} (absolute)")
    if args.format == "gguf":
        print(f"  llama.cpp: llama-cli -m MODEL.gguf --control-vector {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
