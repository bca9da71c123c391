"""Elicit contrasting responses, vet them with the judge, and extract per-layer vectors.

Everything is cached by content: responses (per prompt set and generation settings), judge scores
(per text), window-mean activations (per sample set, positions and components; one pass serves
every method), and vector files (per source/position/component/method).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steerlab.cache import digest, set_aside
from steerlab.generation import GenConfig, Sample, cached_generate, prompt_ids
from steerlab.positions import Position

if TYPE_CHECKING:
    from steerlab.capture import Captured
    from steerlab.config import ExtractionConfig, VetConfig
    from steerlab.data import TraitData
    from steerlab.judges.base import JudgeScore
    from steerlab.models import LoadedModel

SOURCES = ("natural", "instruction")


class VettingError(ValueError):
    """Too few responses survived vetting to extract a vector."""


@dataclass(frozen=True)
class Elicited:
    """Contrasting responses: `labels[i]` is 1 for the positive side, `pairs[i]` its pair index."""

    samples: list[Sample]
    labels: list[int]
    pairs: list[int]
    contexts: list[str]  # what the judge sees as the question: prefix or user question
    source: str


def elicit(model: LoadedModel, trait: TraitData, cfg: ExtractionConfig, cache: Path) -> Elicited:
    """Generate positive and negative responses in one batched, cached pass.

    natural: the model completes matched prefixes as plain text (no chat template).
    instruction: the model answers each extraction question under each system prompt pair.
    """
    rows: list[tuple[list[int], int, int, str]] = []  # (prompt ids, label, pair, context)
    if cfg.source == "natural":
        for p, (pos, neg) in enumerate(trait.natural[: cfg.max_pairs]):
            rows += [
                (prompt_ids(model, pos, chat=False), 1, p, pos),
                (prompt_ids(model, neg, chat=False), 0, p, neg),
            ]
    elif cfg.source == "instruction":
        questions = trait.questions[: cfg.max_pairs]
        for s, (pos_sys, neg_sys) in enumerate(trait.instructions):
            for q_i, q in enumerate(questions):
                pair = s * len(questions) + q_i
                rows += [
                    (prompt_ids(model, q, system=pos_sys), 1, pair, q),
                    (prompt_ids(model, q, system=neg_sys), 0, pair, q),
                ]
    else:
        raise ValueError(f"unknown extraction source {cfg.source!r}; valid: {', '.join(SOURCES)}")
    rows = [r for r in rows for _ in range(cfg.rollouts)]
    gen = GenConfig(cfg.max_new_tokens, cfg.temperature, cfg.rollouts, cfg.seed, cfg.batch_size)
    samples = cached_generate(model, [r[0] for r in rows], gen, cache, desc=f"elicit {cfg.source}")
    return Elicited(
        samples, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], cfg.source
    )


def vet(elicited: Elicited, scores: Sequence[JudgeScore], cfg: VetConfig) -> list[bool]:
    """Keep positives scoring >= pos_min and negatives <= neg_max (optionally both of a pair)."""
    if not cfg.enabled:
        return [bool(s.response_ids) for s in elicited.samples]
    keep = [
        bool(smp.response_ids)
        and sc.trait is not None
        and (sc.trait >= cfg.pos_min if lab else sc.trait <= cfg.neg_max)
        for smp, sc, lab in zip(elicited.samples, scores, elicited.labels, strict=True)
    ]
    if cfg.paired:
        ok_pairs: dict[int, set[int]] = {}
        for k, lab, pair in zip(keep, elicited.labels, elicited.pairs, strict=True):
            if k:
                ok_pairs.setdefault(pair, set()).add(lab)
        keep = [k and ok_pairs.get(p) == {0, 1} for k, p in zip(keep, elicited.pairs, strict=True)]
    n_pos = sum(k for k, lab in zip(keep, elicited.labels, strict=True) if lab)
    n_neg = sum(k for k, lab in zip(keep, elicited.labels, strict=True) if not lab)
    if min(n_pos, n_neg) < cfg.min_per_side:
        total_pos = sum(elicited.labels)
        raise VettingError(
            f"vetting kept {n_pos}/{total_pos} positives (trait >= {cfg.pos_min}) and "
            f"{n_neg}/{len(keep) - total_pos} negatives (trait <= {cfg.neg_max}); need "
            f"{cfg.min_per_side} per side. Loosen extraction.vet.pos_min/neg_max, lower "
            "extraction.vet.min_per_side, add data, or set extraction.vet.enabled=false"
        )
    return keep


def cached_capture(
    model: LoadedModel,
    samples: Sequence[Sample],
    positions: Sequence[Position],
    components: Sequence[str],
    batch_size: int,
    cache: Path,
) -> Captured:
    """Window means for all layers, loaded from disk when this exact capture was done before."""
    import torch
    from safetensors.torch import load_file, save_file

    from steerlab.capture import Captured, capture

    key = digest(
        model.ref,
        [(s.prompt_ids, s.response_ids) for s in samples],
        [str(p) for p in positions],
        list(components),
    )
    path = cache / "activations" / f"{key}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            norms = json.loads(path.with_suffix(".json").read_text())
            means = {c: t[c] for c in components}
            return Captured(means, norms, t["valid"].bool(), list(positions))
        except Exception as e:  # noqa: BLE001 - any unreadable entry is redone
            set_aside(path, str(e).splitlines()[0][:120], path.with_suffix(".json"))
    cap = capture(model, samples, positions, components, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**cap.means, "valid": cap.valid.to(torch.uint8)}, str(path.with_suffix(".tmp")))
    path.with_suffix(".json").write_text(json.dumps(cap.norms))
    path.with_suffix(".tmp").replace(path)
    return cap


def extract_vectors(
    cap: Captured,
    labels: Sequence[int],
    keep: Sequence[bool],
    method: str,
    meta: dict,
    out_dir: Path,
    val_frac: float = 0.1,
    seed: int = 0,
) -> dict[tuple[str, str], Path]:
    """One vector file per (position, component) for `method`; reuses existing files. A bar
    over the layers to fit (a probe trains one classifier per layer and component)."""
    import torch
    from tqdm.auto import tqdm

    from steerlab.methods import extract_layer
    from steerlab.vectors import TraitVectors

    labels_t = torch.tensor(labels)
    keep_t = torch.tensor(keep)
    paths: dict[tuple[str, str], Path] = {}
    todo = sum(
        means.shape[1]
        for pos in cap.positions
        for comp, means in cap.means.items()
        if not _readable(out_dir / pos.slug / f"{comp}_{method}.safetensors")
    )
    bar = tqdm(total=todo, desc=f"extract {method} (layers)", leave=False, disable=not todo)
    for p, pos in enumerate(cap.positions):
        use = keep_t & cap.valid[p]
        for comp, means in cap.means.items():
            path = out_dir / pos.slug / f"{comp}_{method}.safetensors"
            paths[(str(pos), comp)] = path
            if path.is_file():
                continue
            x = means[p]  # [L, N, d]
            rows, stats = [], []
            for layer in range(x.shape[0]):
                bar.update(1)
                v, st = extract_layer(
                    method,
                    x[layer][use & (labels_t == 1)],
                    x[layer][use & (labels_t == 0)],
                    val_frac,
                    seed,
                )
                rows.append(v)
                stats.append(st.__dict__)
            TraitVectors(
                torch.stack(rows),
                meta
                | {
                    "position": str(pos),
                    "component": comp,
                    "method": method,
                    "norms": cap.norms[comp],
                    "layer_stats": stats,
                    "n_pos": int((use & (labels_t == 1)).sum()),
                    "n_neg": int((use & (labels_t == 0)).sum()),
                },
            ).save(path)
    bar.close()
    return paths


def _readable(path: Path) -> bool:
    """Whether the cached vector file `path` can be read; one that cannot is set aside."""
    from steerlab.vectors import load_vectors

    if not path.is_file():
        return False
    try:
        load_vectors(path)
        return True
    except ValueError as e:
        set_aside(path, str(e).removeprefix(f"{path}: "), path.with_suffix(".json"))
        return False
