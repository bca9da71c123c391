"""Batched generation with left padding, optional per-row steering, and an on-disk cache.

Responses keep their exact token ids so capture can teacher-force them without re-tokenising.
Two engines sit behind `generate`: `eager` (Hugging Face `generate` with `steering.steer` hooks,
the reference, what CPU runs) and `compiled` (`steerlab.engine`: static KV cache and CUDA graphs,
steered through buffers that exist before compiling); `auto` picks compiled on CUDA. `static` is
the compiled engine's code run eagerly, on any device (how the tests check it against eager).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import timing
from steerlab.cache import JsonlStore, digest

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel
    from steerlab.steering import Terms


@dataclass(frozen=True)
class GenConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    rollouts: int = 1  # answers per prompt (sampled when temperature > 0)
    seed: int = 0
    batch_size: int = 16
    ignore_eos: bool = False  # always generate max_new_tokens (fixed-length benchmarks)
    engine: str = "auto"  # auto | eager | compiled | static (module docstring); not a cache key


ENGINES = ("auto", "eager", "compiled", "static")


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    text: str


def prompt_ids(
    model: LoadedModel, user: str, system: str | None = None, chat: bool = True
) -> list[int]:
    """Token ids of a prompt: chat-templated (instruct use) or plain text (completion use)."""
    tok = model.tokenizer
    if not chat or tok.chat_template is None:
        return list(tok(user, add_special_tokens=True)["input_ids"])
    messages = [{"role": "user", "content": user}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    try:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception:  # templates without a system role (Gemma): fold it into the user turn
        if system is None:
            raise
        merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
        ids = tok.apply_chat_template(merged, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _stop_ids(model: LoadedModel) -> set[int]:
    eos = model.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return ids


def _eos_ids(model: LoadedModel) -> list[int]:
    """The generation config's EOS ids: what `min_new_tokens` suppresses in HF `generate`."""
    eos = model.model.generation_config.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]


def engine_kind(engine: str, model: LoadedModel) -> str:
    """The engine that runs: `auto` is compiled on CUDA and eager elsewhere."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "auto":
        return "compiled" if model.device.type == "cuda" else "eager"
    return engine


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(s) for s in seqs)
    ids = [[pad_id] * (width - len(s)) + list(s) for s in seqs]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
    return ids, mask


GPU_BATCH_TOKENS = 16384  # padded tokens per teacher-forced forward on CUDA (capture, judges)


def batch_tokens_for(model: LoadedModel, batch_tokens: int | None) -> int | None:
    """-1 means the device's default: a token budget on CUDA, fixed row counts elsewhere."""
    if batch_tokens == -1:
        return GPU_BATCH_TOKENS if model.device.type == "cuda" else None
    return batch_tokens


def length_batches(
    lengths: Sequence[int], batch_size: int, batch_tokens: int | None = None, max_rows: int = 1024
) -> list[list[int]]:
    """Indices in length order, cut into batches of `batch_size` rows; with `batch_tokens`, a
    batch takes more rows while rows x its longest length stays within that budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        fits = cur is not None and (
            len(cur) < batch_size
            or (batch_tokens is not None and (len(cur) + 1) * lengths[i] <= batch_tokens)
        )
        if fits and len(cur) < max_rows:
            cur.append(i)
        else:
            batches.append([i])
    return batches


def forward_inputs(model: LoadedModel, seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """A left-padded batch for a teacher-forced forward pass, with position ids numbered from the
    mask as `generate()` numbers them, so padding never shifts a sequence's positions."""
    import torch

    ids, mask = left_pad(seqs, model.tokenizer.pad_token_id)
    attn = torch.tensor(mask, device=model.device)
    return {
        "input_ids": torch.tensor(ids, device=model.device),
        "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
    }


def generate(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    cfg: GenConfig,
    steering: Sequence[Terms] | None = None,
    desc: str = "generate",
    bar: Any = None,
    done: Callable[[list[int], list[Sample]], None] | None = None,
) -> list[Sample]:
    """Answer every prompt once (the caller repeats prompts for rollouts); batched, length-sorted.

    `steering[i]` steers prompt i; batches are formed from the same index order, so a row can
    never receive another row's steering. `bar`: a progress bar of the caller's to advance (one
    bar for a stage that generates in several calls), else this call shows its own. `done`
    receives each finished batch (prompt indices, samples), e.g. to save it at once.
    """
    with timing.stage("generate"):
        return _generate(model, prompts, cfg, steering, desc, bar, done)


def _generate(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    cfg: GenConfig,
    steering: Sequence[Terms] | None,
    desc: str,
    bar: Any,
    done: Callable[[list[int], list[Sample]], None] | None = None,
) -> list[Sample]:
    import torch
    from tqdm.auto import tqdm

    if steering is not None and len(steering) != len(prompts):
        raise ValueError(f"{len(steering)} steering rows for {len(prompts)} prompts")
    kind = engine_kind(cfg.engine, model)
    tok, stop = model.tokenizer, _stop_ids(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Sample | None] = [None] * len(prompts)
    if cfg.temperature > 0:
        torch.manual_seed(cfg.seed)
    own = bar is None
    if own:
        # shown even for one batch: a slow model's single generate says what it is doing
        bar = tqdm(total=len(prompts), desc=desc, leave=False, disable=not prompts)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        batch = [prompts[i] for i in idx]
        rows = [steering[i] for i in idx] if steering is not None else [()] * len(idx)
        if kind == "eager":
            responses = _hf_batch(model, batch, rows, cfg)
        else:
            from steerlab.engine import engine_for

            engine = engine_for(model, compile=kind == "compiled", max_batch=cfg.batch_size)
            responses = engine.generate(
                batch,
                rows,
                max_new_tokens=cfg.max_new_tokens,
                stop=sorted(stop),
                suppress=_eos_ids(model) if cfg.ignore_eos else (),
                temperature=cfg.temperature,
            )
        for resp, i in zip(responses, idx, strict=True):
            cut = next((k for k, t in enumerate(resp) if t in stop), len(resp))
            resp = resp[:cut]
            out[i] = Sample(list(prompts[i]), resp, tok.decode(resp, skip_special_tokens=True))
        if done is not None:
            done(idx, [out[i] for i in idx])  # type: ignore[misc]
        bar.update(len(idx))
    if own:
        bar.close()
    return [s for s in out if s is not None]


def _hf_batch(
    model: LoadedModel, prompts: Sequence[Sequence[int]], rows: Sequence[Terms], cfg: GenConfig
) -> list[list[int]]:
    """One batch through Hugging Face `generate`, steered by `steer` hooks: the eager engine."""
    import torch

    from steerlab.steering import steer

    sampling = cfg.temperature > 0
    ids, mask = left_pad(prompts, model.tokenizer.pad_token_id)
    with torch.inference_mode(), steer(model, rows):
        seqs = model.model.generate(
            input_ids=torch.tensor(ids, device=model.device),
            attention_mask=torch.tensor(mask, device=model.device),
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.max_new_tokens if cfg.ignore_eos else None,
            do_sample=sampling,
            temperature=cfg.temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    return seqs[:, len(ids[0]) :].tolist()


RESPONSE_FIELDS = ("i", "prompt_ids", "response_ids", "text")


def cached_generate(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    cfg: GenConfig,
    cache_dir: Path,
    desc: str = "generate",
) -> list[Sample]:
    """Unsteered generation, cached per prompt set; resumes after an interruption. One progress
    bar over every prompt (answers already cached count as done). The engine is no part of the
    key: engines give the same answers up to floating-point rounding."""
    from tqdm.auto import tqdm

    settings = {k: v for k, v in asdict(cfg).items() if k != "engine"}
    key = digest(model.ref, [list(p) for p in prompts], settings)
    store = JsonlStore(cache_dir / "responses" / f"{key}.jsonl", RESPONSE_FIELDS)
    todo = store.missing(len(prompts))
    bar = tqdm(
        total=len(prompts),
        initial=len(prompts) - len(todo),
        desc=desc,
        leave=False,
        disable=not todo,
    )

    def save(idx: list[int], samples: list[Sample]) -> None:  # every batch: a stop loses one
        store.add(
            {
                "i": todo[j],
                "prompt_ids": s.prompt_ids,
                "response_ids": s.response_ids,
                "text": s.text,
            }
            for j, s in zip(idx, samples, strict=True)
        )

    if todo:
        generate(model, [prompts[i] for i in todo], cfg, desc=desc, bar=bar, done=save)
    bar.close()
    return [
        Sample(r["prompt_ids"], r["response_ids"], r["text"]) for r in store.ordered(len(prompts))
    ]
