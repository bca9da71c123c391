"""LLM judge on a local transformers chat model, with the same prompts and logprob method.

Per batch of chat-templated prompts (left padded, length-sorted, on CUDA as many rows as fit a
token budget): one prefill gives the first token's top-k, then `max_tokens - 1` greedy decode
steps (KV cache, the argmax of the raw logits: no sampling, no penalties) give the next
positions' top-k along the greedy path.
Prompts of one template share their first few hundred tokens (instructions and rubric), so
they are batched together and that shared prefix is run once per batch: its KV cache is copied
to every row and only the rows' own tokens are computed (`share_prefix`; half or more of a
judge's work at 128-token answers). Top-k
runs on the device for every row and step at once and reaches the host in one transfer. That is
exactly what an OpenAI-compatible server returns, so `steerlab.judges.logprobs` reads both the
same way: exact for the greedy path (including digit splitting "1","0","0"), with its documented
approximation for non-greedy digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from steerlab.cache import digest
from steerlab.generation import batch_tokens_for, left_pad, length_batches, prompt_ids
from steerlab.judges.llm import LLMJudge, Prompts, Reading, low_mass_note
from steerlab.judges.logprobs import expected_score
from steerlab.models import is_random, load_model, numeric_head

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel


class HFJudge(LLMJudge):
    backend = "hf"

    def __init__(
        self,
        prompts: Prompts,
        model: LoadedModel | str = "embedded:smollm2",
        batch_size: int = 16,
        min_mass: float = 0.25,
        max_tokens: int = 3,
        top_logprobs: int = 20,
        dtype: str = "auto",
        device: str = "auto",
        batch_tokens: int | None = -1,
        share_prefix: bool = True,
    ) -> None:
        super().__init__(prompts, min_mass, max_tokens)
        if isinstance(model, str):
            ref, model = model, load_model(model, dtype=dtype, device=device)
            if is_random(ref):  # it cannot read a rubric; its scores are random numbers
                numeric_head(model)
        self.lm = model
        self.batch_size = max(1, int(batch_size))
        self.batch_tokens = batch_tokens_for(model, batch_tokens)  # -1: a budget on CUDA only
        self.top_logprobs = int(top_logprobs)
        self.share_prefix = bool(share_prefix)
        self._fingerprint = _fingerprint(model)
        self._pieces: dict[int, str] = {}

    def _where(self) -> str:  # "raw": greedy steps pick by the raw logits, no penalties
        return f"{self.lm.ref}:{self._fingerprint}:top{self.top_logprobs}:raw"

    def _piece(self, token_id: int) -> str:
        """A token's text as an API would show it (" 8", "8", "<|im_end|>")."""
        if token_id not in self._pieces:
            self._pieces[token_id] = self.lm.tokenizer.decode([token_id])
        return self._pieces[token_id]

    def read(self, texts: Sequence[str]) -> list[Reading]:
        ids = [prompt_ids(self.lm, t) for t in texts]
        out: list[Reading | None] = [None] * len(ids)
        for group in prefix_groups(ids) if self.share_prefix else [list(range(len(ids)))]:
            shared = common_prefix([ids[i] for i in group]) if self.share_prefix else 0
            lengths = [len(ids[i]) - shared for i in group]  # the rows' own tokens: the budget
            for chunk in length_batches(lengths, self.batch_size, self.batch_tokens):
                rows = [group[c] for c in chunk]  # length-sorted batches: less padding
                for i, r in zip(rows, self._read_batch([ids[i] for i in rows]), strict=True):
                    out[i] = r
        return [r for r in out if r is not None]

    def _read_batch(self, seqs: Sequence[Sequence[int]]) -> list[Reading]:
        import torch

        shared = common_prefix(seqs) if self.share_prefix else 0
        with torch.inference_mode():
            logits, chosen = self._decode(seqs, shared if shared >= MIN_SHARED else 0)
            top = torch.log_softmax(logits.float(), dim=-1).topk(self.top_logprobs, dim=-1)
            indices, values = top.indices.tolist(), top.values.tolist()
        return self._readings(indices, values, chosen.tolist())

    def _decode(
        self, seqs: Sequence[Sequence[int]], shared: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`max_tokens` greedy steps (argmax of the raw logits, as an API's top logprobs at
        temperature 0): logits [B, steps, vocab] and the chosen tokens [B, steps]. The rows'
        common first `shared` tokens run once: that prefix's KV cache is repeated for every
        row, and the rows' own tokens follow it left-padded (a masked gap, positions continuing
        the prefix's)."""
        import torch

        model, dev, n = self.lm.model, self.lm.device, len(seqs)
        cache = None
        if shared:
            prefix = torch.tensor([list(seqs[0][:shared])], device=dev)
            cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
            cache.batch_repeat_interleave(n)
        ids, mask = left_pad([s[shared:] for s in seqs], self.lm.tokenizer.pad_token_id)
        own = torch.tensor(mask, device=dev)
        attn = torch.cat([torch.ones(n, shared, dtype=own.dtype, device=dev), own], dim=1)
        pos = shared + (own.cumsum(-1) - 1).clamp(min=0)
        step_ids = torch.tensor(ids, device=dev)
        logits, chosen = [], []
        for _ in range(self.max_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=attn,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            logits.append(out.logits[:, -1])
            step_ids = logits[-1].argmax(-1, keepdim=True)
            chosen.append(step_ids)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
        return torch.stack(logits, dim=1), torch.cat(chosen, dim=1)

    def _readings(
        self, indices: list[list[list[int]]], values: list[list[list[float]]], chosen: list
    ) -> list[Reading]:
        readings = []
        for row_ids, row_vals, row_chosen in zip(indices, values, chosen, strict=True):
            positions = [
                [(self._piece(t), v) for t, v in zip(step_ids, step_vals, strict=True)]
                for step_ids, step_vals in zip(row_ids, row_vals, strict=True)
            ]
            picked = [self._piece(t) for t in row_chosen[: len(positions)]]
            score, mass = expected_score(positions, self.min_mass, picked)
            readings.append(Reading(score, mass, "" if score is not None else low_mass_note(mass)))
        return readings


MIN_SHARED = 16  # a batch shares at least this many first tokens, or runs whole
GROUP_KEY = 32  # prompts whose first tokens agree this far are batched together


def prefix_groups(ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of prompts grouped by their first `GROUP_KEY` tokens (one group per template),
    in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(ids):
        groups.setdefault(tuple(s[:GROUP_KEY]), []).append(i)
    return list(groups.values())


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the rows' common first tokens, leaving every row at least one of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((k for k in range(n) if s[k] != first[k]), n)
    return max(n, 0)


def _fingerprint(lm: LoadedModel) -> str:
    """Cheap output-layer fingerprint, so two models loaded under one name never share a cache.

    Rounded to 4 digits so the same weights on CPU and GPU (different summation order) agree.
    """
    import torch

    w = lm.model.get_output_embeddings().weight
    rows = torch.linspace(0, w.shape[0] - 1, 16).long().to(w.device)
    sums = [w.sum(dtype=torch.float32).item()] + w[rows].float().sum(-1).tolist()
    return digest(str(w.dtype), list(w.shape), [f"{x:.4g}" for x in sums], n=8)
