"""LLM judge on a local transformers chat model, with the same prompts and logprob method.

Per batch of chat-templated prompts (left padded, length-sorted, on CUDA as many rows as fit a
token budget): one prefill gives the first token's top-k, then up to `max_tokens - 1` greedy
decode steps (KV cache, no sampling) give the next positions' top-k along the greedy path. Top-k
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
        self._fingerprint = _fingerprint(model)
        self._pieces: dict[int, str] = {}

    def _where(self) -> str:
        return f"{self.lm.ref}:{self._fingerprint}:top{self.top_logprobs}"

    def _piece(self, token_id: int) -> str:
        """A token's text as an API would show it (" 8", "8", "<|im_end|>")."""
        if token_id not in self._pieces:
            self._pieces[token_id] = self.lm.tokenizer.decode([token_id])
        return self._pieces[token_id]

    def read(self, texts: Sequence[str]) -> list[Reading]:
        ids = [prompt_ids(self.lm, t) for t in texts]
        out: list[Reading | None] = [None] * len(ids)
        lengths = [len(i) for i in ids]  # length-sorted batches: less padding
        for chunk in length_batches(lengths, self.batch_size, self.batch_tokens):
            for i, r in zip(chunk, self._read_batch([ids[i] for i in chunk]), strict=True):
                out[i] = r
        return [r for r in out if r is not None]

    def _read_batch(self, seqs: Sequence[Sequence[int]]) -> list[Reading]:
        import torch

        tok = self.lm.tokenizer
        ids, mask = left_pad(seqs, tok.pad_token_id)
        dev = self.lm.device
        with torch.inference_mode():
            gen = self.lm.model.generate(
                input_ids=torch.tensor(ids, device=dev),
                attention_mask=torch.tensor(mask, device=dev),
                max_new_tokens=self.max_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
            logits = torch.stack(gen.logits, dim=1).float()  # [B, steps, vocab]
            top = torch.log_softmax(logits, dim=-1).topk(self.top_logprobs, dim=-1)
            indices, values = top.indices.tolist(), top.values.tolist()
            chosen = gen.sequences[:, len(ids[0]) :].tolist()
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


def _fingerprint(lm: LoadedModel) -> str:
    """Cheap output-layer fingerprint, so two models loaded under one name never share a cache.

    Rounded to 4 digits so the same weights on CPU and GPU (different summation order) agree.
    """
    import torch

    w = lm.model.get_output_embeddings().weight
    rows = torch.linspace(0, w.shape[0] - 1, 16).long().to(w.device)
    sums = [w.sum(dtype=torch.float32).item()] + w[rows].float().sum(-1).tolist()
    return digest(str(w.dtype), list(w.shape), [f"{x:.4g}" for x in sums], n=8)
