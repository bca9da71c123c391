"""SDPA attention that never copies keys and values per query head, for the generation engine.

Why: with a padding mask (any left-padded batch), transformers' SDPA path repeats every key/value
head once per query head that shares it before calling SDPA (`enable_gqa` is only used without a
mask), so each layer of each decode step writes and reads a full-head copy of the whole static
cache: for an 8B model at batch 64 with a 256-token cache, about 19 GB a step, more than the
weights. Here the query heads that share a KV head are folded into the query axis instead
(`[B, kv, rep * q, d]` against the cache as it is, the mask repeated for them): the same
attention, the cache read once. The engine switches a model to it only while it runs (prefill
and decode, so also when the decode step is traced); eager paths keep transformers' own SDPA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NAME = "steerlab_sdpa"


def folded_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; folds GQA when a mask is given, else defers
    to transformers' SDPA (which then uses SDPA's own `enable_gqa`)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rep = int(getattr(module, "num_key_value_groups", 1))
    if (
        rep == 1
        or attention_mask is None
        or attention_mask.dim() != 4
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or dropout
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    b, heads, q, d = query.shape
    kv = key.shape[1]
    folded = query.reshape(b, kv, rep * q, d)  # head h = kv_head * rep + r; row r * q + t
    mask = attention_mask.repeat(1, 1, rep, 1)  # row r * q + t sees what query t sees
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling
    )
    return out.reshape(b, heads, q, d).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `NAME` a valid attention implementation (its masks are SDPA's); idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, folded_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def folded_attention(model: Any) -> Iterator[None]:
    """Run `model` (a transformers model using SDPA) with `folded_sdpa` inside the block."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
