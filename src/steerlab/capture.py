"""Teacher-forced activation capture: every layer and component in one forward pass per batch.

Each hook reduces its `[B, T, d]` output on the device as soon as it exists, to per-sample means
over each requested position window (`[P, B, d]`), so no per-token activations are kept and the
host is reached once per batch. Token norms (every real token but each sequence's first, whose
norm is ~100x the rest) are kept as scalars for the layer's median activation norm, the unit of
relative steering coefficients. On CUDA batches grow to a token budget (large bf16 forwards), and
no logits are computed beyond one position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steerlab.generation import Sample, batch_tokens_for, forward_inputs, length_batches
from steerlab.positions import Position

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel


@dataclass
class Captured:
    """Window means `means[component]`: `[P, L, N, d]` float32; `valid`: `[P, N]` non-empty."""

    means: dict[str, torch.Tensor]
    norms: dict[str, list[float]]  # per layer median token norm
    valid: torch.Tensor
    positions: list[Position]


def window_weights(
    samples: Sequence[Sample], positions: Sequence[Position], width: int, device: Any = "cpu"
) -> torch.Tensor:
    """`[P, B, T]` averaging weights for left-padded sequences of length `width`, built on
    `device` from each window's bounds (no per-sample tensor writes)."""
    import torch

    bounds = torch.tensor(
        [
            [pos.bounds(len(s.prompt_ids), len(s.response_ids)) for s in samples]
            for pos in positions
        ],
        dtype=torch.long,
    ).reshape(len(positions), len(samples), 2)
    pad = torch.tensor([width - len(s.prompt_ids) - len(s.response_ids) for s in samples])
    lo, hi = (bounds[..., 0] + pad).to(device), (bounds[..., 1] + pad).to(device)
    # 1/n in float64, then float32: the same value Python's 1.0 / n stores
    scale = (1.0 / (hi - lo).clamp(min=1).double()).float()
    t = torch.arange(width, device=device)
    inside = (t >= lo[..., None]) & (t < hi[..., None])
    return inside.float() * scale[..., None]


def _nonempty(bounds: tuple[int, int]) -> bool:
    return bounds[1] > bounds[0]


class _Reducer:
    """Forward hooks that reduce each `[B, T, d]` output as soon as it exists, on the device:
    window means into `means[c, layer]` (`[P, B, d]`) and the kept tokens' norms into
    `norms[c, layer]`. Nothing per token outlives its hook, and nothing syncs with the host."""

    def __init__(self, components: Sequence[str]) -> None:
        self.components = list(components)
        self.weights: Any = None  # [P, B, T] this batch's window weights
        self.keep: Any = None  # flat indices of the tokens whose norms count
        self.means: Any = None  # [C, L, P, B, d] float32
        self.norms: Any = None  # [C, L, kept tokens] float32

    def hook(self, layer: int, comp: int) -> Any:
        def fn(_m: Any, _i: Any, output: Any) -> None:
            import torch

            h = (output[0] if isinstance(output, tuple) else output).float()
            self.means[comp, layer] = torch.einsum("pbt,btd->pbd", self.weights, h)
            self.norms[comp, layer] = h.norm(dim=-1).flatten().index_select(0, self.keep)

        return fn


@contextmanager
def _recording(model: LoadedModel, reducer: _Reducer) -> Iterator[None]:
    handles = []
    try:
        for layer in range(model.n_layers):
            for c, comp in enumerate(reducer.components):
                module = model.module(layer, comp)
                handles.append(module.register_forward_hook(reducer.hook(layer, c)))
        yield
    finally:
        for h in handles:
            h.remove()


def capture(
    model: LoadedModel,
    samples: Sequence[Sample],
    positions: Sequence[Position],
    components: Sequence[str] = ("residual",),
    batch_size: int = 16,
    batch_tokens: int | None = -1,
) -> Captured:
    """Run prompt + response through the model and average each window, all layers at once.

    Batches hold `batch_size` length-sorted rows, more while their padded size stays within
    `batch_tokens` (-1: `GPU_BATCH_TOKENS` on CUDA, none elsewhere). One host transfer per batch.
    """
    import torch
    from tqdm.auto import tqdm

    n, n_layers, d = len(samples), model.n_layers, model.hidden_size
    batch_tokens = batch_tokens_for(model, batch_tokens)
    means = {c: torch.zeros(len(positions), n_layers, n, d) for c in components}
    kept_norms: list[torch.Tensor] = []  # [C, L, kept tokens] per batch
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    red = _Reducer(components)
    bar = tqdm(total=n, desc="capture activations", leave=False, disable=n <= batch_size)
    with torch.inference_mode(), _recording(model, red):
        for idx in length_batches(lengths, batch_size, batch_tokens):
            batch = [samples[i] for i in idx]
            inputs = forward_inputs(model, [s.prompt_ids + s.response_ids for s in batch])
            mask_t = inputs["attention_mask"]
            red.weights = window_weights(batch, positions, mask_t.shape[1], model.device)
            keep = mask_t.bool().clone()
            keep[torch.arange(len(idx)), mask_t.argmax(-1)] = False  # drop first real token
            red.keep = keep.flatten().nonzero().squeeze(1)
            shape = (len(components), n_layers)
            red.means = torch.empty(*shape, len(positions), len(idx), d, device=model.device)
            red.norms = torch.empty(*shape, red.keep.numel(), device=model.device)
            model.model(**inputs, use_cache=False, logits_to_keep=1)
            host = red.means.cpu()
            for c, comp in enumerate(components):
                means[comp][:, :, idx] = host[c].transpose(0, 1)
            kept_norms.append(red.norms.cpu())
            bar.update(len(idx))
    bar.close()
    valid = torch.tensor(
        [
            [_nonempty(p.bounds(len(s.prompt_ids), len(s.response_ids))) for s in samples]
            for p in positions
        ]
    )
    all_norms = torch.cat(kept_norms, dim=2) if kept_norms else None
    norms = {
        comp: [
            float(all_norms[c, layer].median())
            if all_norms is not None and all_norms.shape[2]
            else 0.0
            for layer in range(n_layers)
        ]
        for c, comp in enumerate(components)
    }
    return Captured(means, norms, valid, list(positions))
