"""`python -m steerlab.monitor`: project responses onto a trait vector, to watch a trait.

Persona Vectors and trait-interp use a trait direction as a monitor as well as a steer: how far
a response's activations point along it. Inputs are prompt/response pairs: a JSONL (`prompt` or
`question`, `response` or `answer`, optional `system`; other keys such as `label` are kept), or
a study's steered answers (a sweep folder: every trial folder's `responses.jsonl`, with the
trial's layer and coef from its `config.yaml`). Each pair is teacher-forced through the
*unsteered* model (chat-templated prompt, or plain text with `--plain`, then the response) and
the output of decoder block L (the vector's component) is projected on the unit direction:

* `per_token`: every response token's projection (trait-interp's per-token view);
* `mean_response`: their mean (Persona Vectors' `proj`: the mean response activation, projected);
* `last_prompt`: the last prompt token's (their `prompt_last_proj`, which predicts the response);
* with `--center mean`, every value minus the mean response-token projection of the whole input,
  so the signs read as above/below this set's average (`center` is recorded).

Writes `projections.jsonl` (a row per response), `tokens.html` (`steerlab.tokenview`) and an
MLflow run (experiment `monitor` by default) with the summary metrics: means, and when the rows
carry them the Spearman correlation of `mean_response` with the steering `coef` and the AUROC of
positive vs negative `label`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import prog

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel

CENTERS = ("none", "mean")


class MonitorError(ValueError):
    """Input the monitor cannot read; the message names the file and line."""


@dataclass
class Pair:
    prompt: str
    response: str
    system: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # label, trial, coef, ...: kept


def read_jsonl(path: Path) -> list[Pair]:
    """Prompt/response pairs: `prompt`|`question`, `response`|`answer`, optional `system`."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = row.pop("prompt") if "prompt" in row else row.pop("question")
            response = row.pop("response") if "response" in row else row.pop("answer")
        except (ValueError, KeyError, AttributeError, TypeError):
            raise MonitorError(
                f"{path}:{n}: need a JSON object with prompt (or question) and response (or answer)"
            ) from None
        out.append(Pair(str(prompt), str(response), row.pop("system", None), row))
    if not out:
        raise MonitorError(f"{path}: no rows")
    return out


def read_study(folder: Path) -> list[Pair]:
    """Every trial's steered answers of a sweep folder, with the trial's layer and coef."""
    from omegaconf import OmegaConf

    out = []
    for f in sorted(folder.glob("*/responses.jsonl"), key=lambda p: int(p.parent.name)):
        cfg = (
            OmegaConf.load(f.parent / "config.yaml") if (f.parent / "config.yaml").is_file() else {}
        )
        steer = {
            "trial": int(f.parent.name),
            "layer_steered": OmegaConf.select(cfg, "steering.layer") if cfg else None,
            "coef": OmegaConf.select(cfg, "steering.coef") if cfg else None,
        }
        out += [Pair(p.prompt, p.response, p.system, p.extra | steer) for p in read_jsonl(f)]
    if not out:
        raise MonitorError(f"{folder}: no trial folders with responses.jsonl")
    return out


def project(
    model: LoadedModel,
    direction: torch.Tensor,
    layer: int,
    pairs: Sequence[Pair],
    component: str = "residual",
    chat: bool = True,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Per response: tokens, per-token projections, their mean, the last prompt token's."""
    import torch

    from steerlab.generation import forward_inputs, prompt_ids

    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    tok = model.tokenizer
    seqs = []
    for p in pairs:
        a = prompt_ids(model, p.prompt, p.system, chat=chat)
        b = list(tok(p.response, add_special_tokens=False)["input_ids"])
        if not b:
            raise MonitorError(f"empty response to {p.prompt[:60]!r}")
        seqs.append((a, b))
    grabbed: dict[str, torch.Tensor] = {}

    def hook(_m: Any, _i: Any, output: Any) -> None:
        grabbed["h"] = output[0] if isinstance(output, tuple) else output

    rows: list[dict[str, Any]] = []
    handle = model.module(layer, component).register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, len(seqs), batch_size):
                batch = seqs[start : start + batch_size]
                inputs = forward_inputs(model, [a + b for a, b in batch])
                model.model(**inputs, use_cache=False)
                proj = (grabbed["h"].float() @ unit.to(grabbed["h"].device)).cpu()  # [B, T]
                width = proj.shape[1]
                for r, (_, b) in enumerate(batch):
                    start_resp = width - len(b)
                    per = proj[r, start_resp:].tolist()
                    p = pairs[start + r]
                    rows.append(
                        {
                            "prompt": p.prompt,
                            "response": p.response,
                            **p.extra,
                            "tokens": [tok.decode([t]) for t in b],
                            "per_token": per,
                            "mean_response": sum(per) / len(per),
                            "last_prompt": float(proj[r, start_resp - 1]),
                        }
                    )
    finally:
        handle.remove()
    return rows


def center(rows: list[dict[str, Any]], how: str) -> float:
    """Subtract the input's mean response-token projection (`mean`) from every value."""
    if how == "none":
        return 0.0
    if how not in CENTERS:
        raise MonitorError(f"unknown --center {how!r}; valid: {', '.join(CENTERS)}")
    vals = [v for r in rows for v in r["per_token"]]
    c = sum(vals) / len(vals)
    for r in rows:
        r["per_token"] = [v - c for v in r["per_token"]]
        r["mean_response"] -= c
        r["last_prompt"] -= c
    return c


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means; Spearman of mean_response with coef; AUROC of positive vs negative labels."""
    from sklearn.metrics import roc_auc_score

    from steerlab.judges.metrics import spearman

    out = {
        "n_responses": float(len(rows)),
        "mean_response": sum(r["mean_response"] for r in rows) / len(rows),
        "mean_last_prompt": sum(r["last_prompt"] for r in rows) / len(rows),
    }
    with_coef = [r for r in rows if isinstance(r.get("coef"), int | float)]
    if len({r["coef"] for r in with_coef}) > 1:
        coefs = [float(r["coef"]) for r in with_coef]
        out["spearman_coef"] = spearman(coefs, [r["mean_response"] for r in with_coef])
        out["spearman_coef_last_prompt"] = spearman(coefs, [r["last_prompt"] for r in with_coef])
    labels = [(positive(r.get("label")), r) for r in rows]
    labelled = [(y, r) for y, r in labels if y is not None]
    if len({y for y, _ in labelled}) == 2:
        ys = [y for y, _ in labelled]
        out["auroc_response"] = float(roc_auc_score(ys, [r["mean_response"] for _, r in labelled]))
        out["auroc_last_prompt"] = float(roc_auc_score(ys, [r["last_prompt"] for _, r in labelled]))
    return out


def positive(label: Any) -> int | None:
    """1 for a trait-positive label (1, true, "positive", "pos"), 0 for a negative one."""
    if isinstance(label, bool | int) and label in (0, 1):
        return int(label)
    text = str(label).lower()
    return (
        1
        if text in ("positive", "pos", "1", "true")
        else 0
        if text in ("negative", "neg", "0", "false")
        else None
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("steerlab.monitor"),
        description="Project responses onto a trait vector with the unsteered model: per "
        "response the mean over response tokens and the last prompt token (as Persona Vectors), "
        "and per token (as trait-interp). Writes projections.jsonl, tokens.html and an MLflow run.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jsonl", type=Path, help="prompt/response (or question/answer) pairs")
    src.add_argument("--study", type=Path, help="a sweep folder: every trial's steered answers")
    p.add_argument("--vector", help="anything steerlab.api.load takes (default: --study's best)")
    p.add_argument("--layer", type=int, help="layer to read (default: the vector's best layer)")
    p.add_argument("--model", help="model (default: the study's or the vector's steering model)")
    p.add_argument("--plain", action="store_true", help="prompts as plain text, no chat template")
    p.add_argument("--center", choices=CENTERS, default="none", help="subtract the input mean")
    p.add_argument("--out", type=Path, default=Path("monitor"), help="output folder")
    p.add_argument("--store", default=".", help="MLflow store: a root folder or server URL")
    p.add_argument("--experiment", default="monitor", help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true", help="write files only")
    p.add_argument("--batch-size", type=int, default=8)
    return p


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from steerlab.api import load
    from steerlab.models import load_model

    pairs = read_study(args.study) if args.study else read_jsonl(args.jsonl)
    ref = args.vector or args.study
    if ref is None:
        raise MonitorError("--vector is needed with --jsonl")
    st = load(ref)
    layer = (
        args.layer if args.layer is not None else (st.layers[0] if len(st.layers) == 1 else None)
    )
    if layer is None:
        raise MonitorError(f"give --layer (the vector {ref} has layers {st.vectors.layers})")
    model_ref = args.model or st.provenance.get("model_ref") or st.vectors.meta.get("model_ref")
    if not model_ref:
        raise MonitorError("give --model (the vector does not name its model)")
    model = load_model(str(model_ref))
    st.check(model)
    rows = project(
        model,
        st.vectors.vectors[layer],
        layer,
        pairs,
        st.component,
        not args.plain,
        args.batch_size,
    )
    c = center(rows, args.center)
    stats = summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"vector": str(ref), "layer": layer, "model": str(model_ref), "center": c}
    with (args.out / "projections.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(meta | r, ensure_ascii=False) + "\n")
    note = f"{st.describe()}; read at layer {layer} of {model_ref}; centre {c:+.3f}"
    from steerlab import tokenview

    tokenview.write(args.out / "tokens.html", rows, f"projection on {ref}", note)
    if not args.no_mlflow:
        log(args, meta, stats)
    return rows, stats


def log(args: argparse.Namespace, params: dict[str, Any], stats: dict[str, float]) -> None:
    from steerlab import tracking
    from steerlab.studies import as_store

    src = args.study or args.jsonl
    params = params | {"input": str(src), "plain": args.plain, "center_how": args.center}
    tags = {"steerlab.kind": "monitor"}
    with tracking.run(
        as_store(args.store), args.experiment, f"monitor-{Path(src).name}", params, tags=tags
    ) as mlflow:
        mlflow.log_metrics(stats)
        mlflow.log_artifact(str(args.out / "projections.jsonl"))
        mlflow.log_artifact(str(args.out / "tokens.html"))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rows, stats = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"steerlab.monitor: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(rows)} responses -> {args.out / 'projections.jsonl'}, {args.out / 'tokens.html'}")
    print("  " + "  ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
