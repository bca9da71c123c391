"""Validate a judge against human labels: `python -m steerlab.judge_validation judge=offline`.

Reads `data` (a JSONL file or a folder of *.jsonl; rows `{trait, question, answer, trait_score,
coherence}`, `trait` naming a configured trait, conf/trait/<name>.yaml), scores every row with
the configured judge, and reports Spearman's rho per trait between the judge and the labels, for
the trait score and for coherence. The table and per-row scores go to MLflow (experiment
`judge-validation` under `<paths.root>/mlruns`); the last line printed is
`trait_spearman_min=<x> coherence_spearman_min=<y>`, the lowest rho over traits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from steerlab import tracking
from steerlab.config import ModelConfig, register
from steerlab.data import (
    CONF_DIR,
    LABELLED_KEYS,
    PROJECT_ROOT,
    TraitDataError,
    load_trait,
    read_jsonl,
)
from steerlab.judges.base import cached_scores
from steerlab.judges.factory import make_judge
from steerlab.judges.metrics import spearman
from steerlab.markdown import cell
from steerlab.markdown import table as md_table
from steerlab.models import load_model

register()  # the judge yaml files pull their schemas from the ConfigStore
KEYS = ("trait", *LABELLED_KEYS)


@dataclass(frozen=True)
class Row:
    trait: str
    question: str
    answer: str
    trait_score: float
    coherence: float
    where: str  # file:line


def configured_traits(conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """Trait config name (conf/trait/<name>.yaml) -> trait folder."""
    out = {}
    for f in sorted((conf_dir / "trait").glob("*.yaml")):
        node = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        if isinstance(node, dict) and node.get("dir"):
            out[f.stem] = str(node["dir"])
    return out


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p if (PROJECT_ROOT / p).exists() else p


def read_rows(data: str | Path, traits: dict[str, str]) -> list[Row]:
    """Every labelled row of a file or a folder of *.jsonl; unknown traits fail with file:line."""
    path = _resolve(data)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise TraitDataError(f"{path}: no *.jsonl files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise TraitDataError(f"{path}: no such file or folder (data=...)")
    rows = []
    for f in files:
        for n, r in read_jsonl(f, KEYS):
            if r["trait"] not in traits:
                raise TraitDataError(
                    f"{f}:{n}: unknown trait {r['trait']!r}; valid: {', '.join(sorted(traits))} "
                    f"(configured in {CONF_DIR / 'trait'})"
                )
            rows.append(
                Row(
                    r["trait"],
                    r["question"],
                    r["answer"],
                    float(r["trait_score"]),
                    float(r["coherence"]),
                    f"{f}:{n}",
                )
            )
    if not rows:
        raise TraitDataError(f"{path}: no labelled rows")
    return rows


def scored_spearman(pred: list[float | None], gold: list[float]) -> tuple[float, int]:
    """Spearman's rho over the rows the judge scored, and how many it scored."""
    pairs = [(p, g) for p, g in zip(pred, gold, strict=True) if p is not None]
    return spearman([p for p, _ in pairs], [g for _, g in pairs]), len(pairs)


def mae(pred: list[float | None], gold: list[float]) -> float:
    d = [abs(p - g) for p, g in zip(pred, gold, strict=True) if p is not None]
    return sum(d) / len(d) if d else math.nan


def markdown(table: list[dict[str, Any]]) -> str:
    """The validation table in Markdown, floats to 4 decimals."""
    rows = [[f"{v:.4f}" if isinstance(v, float) else cell(v) for v in r.values()] for r in table]
    return "\n".join(md_table(list(table[0]), rows))


def typed(node: DictConfig, schema: type) -> DictConfig:
    """Merge a config group into its schema so typos fail naming the valid keys."""
    return OmegaConf.merge(OmegaConf.structured(schema), node)


def run(cfg: DictConfig) -> dict[str, float]:
    judge_cfg, model_cfg = cfg.judge, typed(cfg.model, ModelConfig)  # judge: typed by its yaml
    root, cache = Path(cfg.paths.root), Path(cfg.paths.cache)
    traits = configured_traits()
    rows = read_rows(cfg.data, traits)
    names = sorted({r.trait for r in rows})

    t0 = time.perf_counter()
    model = None  # the LLM judges load their own judge model from judge.model
    if judge_cfg.backend == "offline":
        model = load_model(
            model_cfg.steering, model_cfg.dtype, model_cfg.device, dict(model_cfg.arch or {})
        )
    judge = make_judge(judge_cfg, model, cache)
    t_load = time.perf_counter() - t0

    scored: dict[str, list[tuple[Row, Any]]] = {}
    for name in names:
        trait = load_trait(traits[name])
        mine = [r for r in rows if r.trait == name]
        scores = cached_scores(judge, trait, [(r.question, r.answer) for r in mine], cache)
        scored[name] = list(zip(mine, scores, strict=True))
    t_score = time.perf_counter() - t0 - t_load

    table = []
    for name in names:
        rs = scored[name]
        t_rho, t_n = scored_spearman([s.trait for _, s in rs], [r.trait_score for r, _ in rs])
        c_rho, c_n = scored_spearman([s.coherence for _, s in rs], [r.coherence for r, _ in rs])
        table.append(
            {
                "trait": name,
                "n": len(rs),
                "scored": min(t_n, c_n),
                "trait_spearman": t_rho,
                "coherence_spearman": c_rho,
                "trait_mae": mae([s.trait for _, s in rs], [r.trait_score for r, _ in rs]),
                "coherence_mae": mae([s.coherence for _, s in rs], [r.coherence for r, _ in rs]),
            }
        )
    t_min = min(r["trait_spearman"] for r in table)
    c_min = min(r["coherence_spearman"] for r in table)
    md = markdown(table)
    print(f"\njudge: {judge.identity}\ndata: {_resolve(cfg.data)} ({len(rows)} rows)\n")
    print(md + "\n")
    print(f"load {t_load:.1f} s, scoring {t_score:.1f} s")

    params = {
        "judge": OmegaConf.to_container(judge_cfg, resolve=True),
        "model": OmegaConf.to_container(model_cfg, resolve=True),
        "data": str(_resolve(cfg.data)),
        "rows": len(rows),
        "identity": judge.identity,
    }
    params["judge"].pop("prompts", None)  # long texts: logged as an artifact instead
    metrics = {
        "trait_spearman_min": t_min,
        "coherence_spearman_min": c_min,
        "score_seconds": t_score,
    }
    for r in table:
        for k in ("trait_spearman", "coherence_spearman", "trait_mae", "coherence_mae"):
            metrics[f"{r['trait']}/{k}"] = r[k]
    with tracking.run(
        root,
        "judge-validation",
        f"{judge_cfg.backend}-{len(rows)}rows",
        params,
        tags={"steerlab.kind": "judge-validation"},
    ) as mlflow:
        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
        mlflow.log_table({k: [r[k] for r in table] for k in table[0]}, "validation_table.json")
        mlflow.log_text(md + "\n", "validation_table.md")
        mlflow.log_dict(OmegaConf.to_container(judge_cfg, resolve=True), "judge_config.json")
        per_row = [(r, s) for name in names for r, s in scored[name]]
        mlflow.log_table(
            {
                "where": [r.where for r, _ in per_row],
                "trait": [r.trait for r, _ in per_row],
                "label_trait": [r.trait_score for r, _ in per_row],
                "judge_trait": [s.trait for _, s in per_row],
                "label_coherence": [r.coherence for r, _ in per_row],
                "judge_coherence": [s.coherence for _, s in per_row],
                "note": [s.note for _, s in per_row],
            },
            "scores.json",
        )
    print(f"trait_spearman_min={t_min:.4f} coherence_spearman_min={c_min:.4f}")
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="validate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
