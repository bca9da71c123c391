"""Adding vectors to a model's activations, per batch row, behind a context manager.

Each batch row carries its own tuple of `SteerTerm`s, so K configurations x Q questions run in one
`generate`. Hooks add a per-row delta `[B, 1, d]` at every position (prompt and generated) and are
always removed on exit, restoring the model exactly. `SteeringSites` is the same addition for
compiled code: hooks registered once, before compiling, reading persistent per-row buffers that
each batch overwrites in place (see `steerlab.engine` for why hooks may not come later).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel


@dataclass(frozen=True, eq=False)
class SteerTerm:
    """Add `coef * vector` (absolute units) to `component` at decoder block `layer`."""

    layer: int
    component: str
    vector: torch.Tensor  # [d]
    coef: float


Terms = tuple[SteerTerm, ...]  # one steering configuration: a single layer or an ensemble
Site = tuple[int, str]  # (layer, component)


class SiteError(ValueError):
    """A steering term on a site that a `SteeringSites` set does not have."""


class RowMismatchError(RuntimeError):
    """The model ran a batch whose size differs from the steered rows (rows would be mixed up)."""


def _deltas(model: LoadedModel, rows: Sequence[Terms]) -> dict[tuple[int, str], torch.Tensor]:
    import torch

    by_site: dict[tuple[int, str], torch.Tensor] = defaultdict(
        lambda: torch.zeros(len(rows), model.hidden_size, dtype=torch.float32)
    )
    for r, terms in enumerate(rows):
        for t in terms:
            by_site[(t.layer, t.component)][r] += t.coef * t.vector.detach().float().cpu()
    return dict(by_site)


def _add_hook(delta: torch.Tensor, every_row: bool = False) -> Any:
    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[0] != delta.shape[0] and not every_row:
            raise RowMismatchError(
                f"steered batch has {delta.shape[0]} rows but the model ran {hidden.shape[0]}"
            )
        hidden = hidden + delta.to(hidden.device, hidden.dtype)[:, None, :]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


_OPEN: Counter[int] = Counter()  # id(model.model) -> `steer` contexts open on it


def is_steered(model: LoadedModel) -> bool:
    """Whether a `steer` context is open on this model (its activations may be shifted)."""
    return _OPEN[id(model.model)] > 0


@contextmanager
def steer(model: LoadedModel, rows: Sequence[Terms], every_row: bool = False) -> Iterator[None]:
    """Steer batch row r with `rows[r]`; rows with an empty tuple run unsteered. `every_row`:
    `rows` is one configuration added to every row of any batch (a user's own `generate`, whose
    batch size beams or `num_return_sequences` change)."""
    if every_row and len(rows) != 1:
        raise ValueError(f"every_row takes one configuration, got {len(rows)}")
    handles = []
    _OPEN[id(model.model)] += 1
    try:
        for (layer, component), delta in _deltas(model, rows).items():
            if bool(delta.any()):
                module = model.module(layer, component)
                hook = _add_hook(delta.to(model.device), every_row)
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        _OPEN[id(model.model)] -= 1


def all_sites(model: LoadedModel) -> list[Site]:
    from steerlab.models import COMPONENTS

    return [(layer, comp) for layer in range(model.n_layers) for comp in COMPONENTS]


class SteeringSites:
    """Persistent per-row steering buffers on fixed sites, each read by one forward hook that is
    registered here, before any compile. A zero row is unsteered; while `active` is false the
    hooks return at once (eager forwards outside the engine see the plain model)."""

    def __init__(self, model: LoadedModel, sites: Sequence[Site], max_batch: int) -> None:
        import torch

        self.sites = list(dict.fromkeys(sites))
        self.index = {s: i for i, s in enumerate(self.sites)}
        self.hidden_size = model.hidden_size
        self.active = False
        dtype = next(model.model.parameters()).dtype
        with torch.inference_mode():
            self.deltas = torch.zeros(
                len(self.sites), max_batch, model.hidden_size, dtype=dtype, device=model.device
            )
        self._handles = [
            model.module(layer, comp).register_forward_hook(self._hook(i))
            for i, (layer, comp) in enumerate(self.sites)
        ]

    def _hook(self, i: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            if not self.active:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + self.deltas[i, : hidden.shape[0]].unsqueeze(1)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def load(self, rows: Sequence[Terms]) -> None:
        """Row r gets `rows[r]`; every other row and site is zero. Summed in float32 in the same
        order as `steering.steer`, then cast to the model's dtype, so the added values match."""
        import torch

        configs: dict[Terms, int] = {}
        which = [configs.setdefault(tuple(r), len(configs)) for r in rows]
        used: dict[Site, int] = {}
        for terms in configs:
            for t in terms:
                site = (t.layer, t.component)
                if site not in self.index:
                    raise SiteError(
                        f"layer {t.layer} {t.component} is not a steering site of this engine; "
                        "build it with that site (Engine(..., sites=...)) or use engine=eager"
                    )
                used.setdefault(site, len(used))
        self.deltas.zero_()
        if not used:
            return
        host = torch.zeros(len(used), len(configs), self.hidden_size)
        for k, terms in enumerate(configs):
            for t in terms:
                host[used[(t.layer, t.component)], k] += t.coef * t.vector.detach().float().cpu()
        idx = torch.tensor([self.index[s] for s in used], device=self.deltas.device)
        self.deltas[idx, : len(rows)] = host[:, which].to(self.deltas.device, self.deltas.dtype)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
