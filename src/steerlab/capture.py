"""Teacher-forced activation capture: every layer and component in one forward pass per batch.

Each hook reduces its `[B, T, d]` output on the fly to per-sample means over each requested
position window (`[P, B, d]`), so no per-token activations are kept. Token norms (every real token
but each sequence's first, whose norm is ~100x the rest) are kept as scalars for the layer's
median activation norm, the unit of relative steering coefficients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steerlab.generation import Sample, forward_inputs
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
    samples: Sequence[Sample], positions: Sequence[Position], width: int
) -> torch.Tensor:
    """`[P, B, T]` averaging weights for left-padded sequences of length `width`."""
    import torch

    w = torch.zeros(len(positions), len(samples), width)
    for b, s in enumerate(samples):
        pad = width - len(s.prompt_ids) - len(s.response_ids)
        for p, pos in enumerate(positions):
            a, z = pos.bounds(len(s.prompt_ids), len(s.response_ids))
            if z > a:
                w[p, b, pad + a : pad + z] = 1.0 / (z - a)
    return w


def _nonempty(bounds: tuple[int, int]) -> bool:
    return bounds[1] > bounds[0]


@contextmanager
def _recording(
    model: LoadedModel, components: Sequence[str], sink: dict[tuple[int, str], Any]
) -> Iterator[None]:
    handles = []

    def make(key: tuple[int, str]) -> Any:
        def hook(_m: Any, _i: Any, output: Any) -> None:
            sink[key] = output[0] if isinstance(output, tuple) else output

        return hook

    try:
        for layer in range(model.n_layers):
            for comp in components:
                handles.append(model.module(layer, comp).register_forward_hook(make((layer, comp))))
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
) -> Captured:
    """Run prompt + response through the model and average each window, all layers at once."""
    import torch
    from tqdm.auto import tqdm

    n, n_layers, d = len(samples), model.n_layers, model.hidden_size
    means = {c: torch.zeros(len(positions), n_layers, n, d) for c in components}
    token_norms: dict[str, list[list[torch.Tensor]]] = {
        c: [[] for _ in range(n_layers)] for c in components
    }
    order = sorted(
        range(n), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids)
    )
    sink: dict[tuple[int, str], torch.Tensor] = {}
    bar = tqdm(total=n, desc="capture activations", leave=False, disable=n == 0)
    with torch.inference_mode(), _recording(model, components, sink):
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = [samples[i] for i in idx]
            inputs = forward_inputs(model, [s.prompt_ids + s.response_ids for s in batch])
            model.model(**inputs, use_cache=False)
            mask_t = inputs["attention_mask"]
            w = window_weights(batch, positions, mask_t.shape[1]).to(model.device)
            norm_mask = mask_t.bool().clone()
            norm_mask[torch.arange(len(idx)), mask_t.argmax(-1)] = False  # drop first real token
            for (layer, comp), h in sink.items():
                h = h.float()
                means[comp][:, layer, idx] = torch.einsum("pbt,btd->pbd", w, h).cpu()
                token_norms[comp][layer].append(h.norm(dim=-1)[norm_mask].cpu())
            sink.clear()
            bar.update(len(idx))
    bar.close()
    valid = torch.tensor(
        [
            [_nonempty(p.bounds(len(s.prompt_ids), len(s.response_ids))) for s in samples]
            for p in positions
        ]
    )
    norms = {
        c: [float(torch.cat(v).median()) if v else 0.0 for v in per_layer]
        for c, per_layer in token_norms.items()
    }
    return Captured(means, norms, valid, list(positions))
