"""Generation engine for GPUs: static KV cache, one CUDA graph per shape bucket, and steering
sites that exist before anything is compiled.

Why: on a GPU, Hugging Face `generate` spends longer in Python per decode step than the GPU
needs to read the weights (an 8B model at batch 1: ~26 ms a step against a 3.35 ms HBM
roofline). Here a decode step (forward, greedy or sampled pick, stop bookkeeping, all in place on
static buffers) is compiled once per shape bucket and captured as a CUDA graph, so the CPU only
enqueues replays and the GPU runs them back to back.

Steering and the compile trap: a forward hook added after a model is compiled is silently
skipped by the compiled code (dynamo skips hook guards by default; a CUDA graph never runs
Python), so the output would look plausible but be unsteered. Steering here therefore never adds
hooks. `SteeringSites` registers one hook per (layer, component) site when the engine is built,
before any compile; each adds its row of a persistent `[max_batch, d]` buffer (a zero row is
unsteered), and a batch's steering is copied into those buffers in place, so a new vector needs
no recompile. Before every batch the engine checks that the model's hooks and parameters are
exactly those it compiled against, and that no `steer()` context is open, and refuses to run
otherwise. Outside the engine's own calls its hooks add nothing, so eager forwards on the same
model (capture, judges, `steer()`) are unaffected.

Buckets: a batch is padded to a power-of-two row count (compiled on a GPU, to 64 rows or
`max_batch`: fewer buckets, fewer compiles) and its cache length rounded up to a multiple of
`length_step`; each (rows, length) bucket keeps its cache, buffers and graph, so a
sweep compiles a handful of graphs once and replays them. Prefill stays eager (one forward per
batch; its width changes with every batch). Rows that reach a stop token emit padding while the
others continue; the batch ends once every row has stopped, checked every few steps through an
event so the GPU never waits for the CPU. With `compile=False` the same code runs eagerly: the
CPU reference that the tests compare with today's `generate` path.
"""

from __future__ import annotations

import os
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import timing
from steerlab.attention import folded_attention
from steerlab.steering import Site, SteeringSites, all_sites, is_steered

if TYPE_CHECKING:
    import torch

    from steerlab.models import LoadedModel
    from steerlab.steering import Terms

CHECK_EVERY = 8  # decode steps between "has every row stopped?" checks
WARMUPS = 2  # compiled calls of a new bucket before its CUDA graph is captured
SMALL_BUCKET = 64  # rows of the smaller of the two buckets a compiled GPU engine uses


def persistent_compile_cache() -> Path:
    """Inductor's compiled graphs and kernels (Triton's inside) kept in ~/.cache/steerlab/compile
    unless `TORCHINDUCTOR_CACHE_DIR` says otherwise, FX-graph and AOTAutograd caches on: the next
    process on this machine (a resumed study, a second worker, the next study of an experiment)
    loads them instead of compiling again; only dynamo's tracing is repeated."""
    import torch._functorch.config as aot
    import torch._inductor.config as inductor

    from steerlab.models import CACHE_HOME

    inductor.fx_graph_cache = True
    aot.enable_autograd_cache = True
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_HOME / "compile")))


class EngineError(RuntimeError):
    """The engine cannot run a batch as asked; the message says why and what to do instead."""


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def bucket(
    rows: int, width: int, new_tokens: int, max_batch: int, length_step: int, small: int = 0
) -> tuple[int, int]:
    """(padded rows, cache length) for a batch: a power of two of rows (at most `max_batch`),
    or with `small` only two row counts, `small` or `max_batch` (each bucket is a compile, and
    a small batch costs about as much as a larger one on a GPU); and prompt width + new tokens
    rounded up to whole `length_step`s."""
    if not 0 < rows <= max_batch:
        raise EngineError(f"a batch of {rows} rows does not fit this engine (max {max_batch})")
    length = -(-(width + new_tokens) // length_step) * length_step
    if small:
        return (min(small, max_batch) if rows <= small else max_batch), length
    return min(next_pow2(rows), max_batch), length


# transformers' output recorders: installed for good the first time a caller asks a model for
# hidden states or attentions, and inert unless that call collects them (the engine never does).
INERT_HOOKS = ("output_capturing_hook",)


def _model_state(module: torch.nn.Module) -> tuple:
    """Every hook on the model (and global module hooks) and every parameter's address: what a
    compiled step was traced and captured against."""
    import torch.nn.modules.module as mm

    def live(hooks: dict) -> tuple:
        return tuple(k for k, fn in hooks.items() if getattr(fn, "__name__", "") not in INERT_HOOKS)

    found = []
    for name, m in module.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks"):
            keys = live(getattr(m, kind, {}))
            if keys:
                found.append((name or "<model>", kind, keys))
    glob = tuple(
        live(getattr(mm, g, {})) for g in ("_global_forward_hooks", "_global_forward_pre_hooks")
    )
    return tuple(found), glob, tuple(p.data_ptr() for p in module.parameters())


@dataclass
class _Slot:
    """One shape bucket: its KV cache, the decode step's static inputs and outputs, and the
    CUDA graphs captured over them (one per (sampling, keep_logits) variant)."""

    rows: int
    length: int
    cache: Any
    tok: torch.Tensor  # [rows, 1] token fed to the next step
    pos: torch.Tensor  # [rows, 1] its position
    mask: torch.Tensor  # [rows, length] 1 = real token (left padding is 0)
    done: torch.Tensor  # [rows] stopped (or bucket padding)
    out: torch.Tensor  # [rows, length] generated tokens
    step: torch.Tensor  # [1] tokens generated so far
    bias: torch.Tensor  # [vocab] added to logits (-inf on suppressed tokens)
    is_stop: torch.Tensor  # [vocab] stop tokens
    temp: torch.Tensor  # [1] sampling temperature
    logits: torch.Tensor | None = None  # [rows, vocab] first decode step's logits, on request
    warmups: dict[tuple[bool, bool], int] = field(default_factory=dict)
    graphs: dict[tuple[bool, bool], Any] = field(default_factory=dict)


class _Clock:
    """A host-clock stand-in for `torch.cuda.Event` (timing off the GPU)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _Clock) -> float:
        return (end.t - self.t) * 1e3


class Engine:
    """Batched generation on static buffers, steered through `SteeringSites`.

    `compile`: True compiles the decode step with inductor and, on CUDA, captures a CUDA graph
    per bucket; a string names another dynamo backend ("eager", "aot_eager": tracing without
    code generation, for CPU tests of the compiled path); False runs the step eagerly.
    `sites`: the steerable (layer, component) sites, every one by default; all of them exist
    before compiling, and steering a site outside them is an error, never a silent no-op.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        compile: bool | str = True,
        sites: Sequence[Site] | None = None,
        max_batch: int = 64,
        length_step: int = 128,
        small: int | None = None,
    ) -> None:
        import torch

        self.lm = model
        self.compile = compile
        self.max_batch = max_batch
        self.length_step = length_step
        self.device = model.device
        self.pad_id = int(model.tokenizer.pad_token_id)
        self.vocab = int(model.model.get_output_embeddings().weight.shape[0])
        self.sites = SteeringSites(model, all_sites(model) if sites is None else sites, max_batch)
        self.use_graphs = compile is True and self.device.type == "cuda"
        # compiled on a GPU: two row buckets (64 or max_batch), since every bucket compiles
        self.small = (SMALL_BUCKET if self.use_graphs else 0) if small is None else small
        self.compiles = 0  # (bucket, variant) pairs compiled, i.e. graphs built
        self.timing: dict[str, float] = {}  # last generate: prefill_ms, decode_ms, decode_steps
        self.logits: torch.Tensor | None = None  # last generate's first decode step, on request
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._side = torch.cuda.Stream(self.device) if self.use_graphs else None
        self._closed = False
        self.notes: list[str] = []  # fallbacks taken (e.g. graph breaks), for reports
        self._run = self._step if compile is False else self._compiled(fullgraph=True)
        self._state = _model_state(model.model)

    def _compiled(self, fullgraph: bool) -> Any:
        import torch

        persistent_compile_cache()
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 64))
        # A private copy of the step's code object: dynamo caches compiled code per code object,
        # so another engine (other hooks, same shapes) can never reuse these entries.
        fn = Engine._step
        code = fn.__code__.replace(co_name=f"steerlab_decode_{id(self):x}")
        step = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__)
        backend = "inductor" if self.compile is True else self.compile
        return torch.compile(
            types.MethodType(step, self), backend=backend, fullgraph=fullgraph, dynamic=False
        )

    # -- the compiled part -------------------------------------------------------------------

    def _pick(self, s: _Slot, logits: torch.Tensor, sampling: bool, keep: bool) -> None:
        """Choose each row's next token and record it; stopped rows emit padding."""
        import torch

        scores = logits.float()
        if keep:
            s.logits.copy_(torch.where(s.step == 1, scores, s.logits))
        scores = scores + s.bias
        if sampling:  # Gumbel-max: the same distribution as softmax(scores / T) sampling
            u = torch.rand_like(scores).clamp_(min=1e-20)
            scores = scores / s.temp - torch.log(-torch.log(u))
        nxt = torch.where(s.done, self.pad_id, scores.argmax(-1))
        s.out.index_copy_(1, s.step, nxt[:, None])
        s.done |= s.is_stop[nxt]
        s.tok.copy_(nxt[:, None])
        s.step.add_(1)

    def _step(self, s: _Slot, sampling: bool, keep: bool) -> None:
        """One decode step for every row of a bucket, in place on its static buffers."""
        out = self.lm.model(
            input_ids=s.tok,
            attention_mask=s.mask,
            position_ids=s.pos,
            past_key_values=s.cache,
            use_cache=True,
        )
        self._pick(s, out.logits[:, -1, :], sampling, keep)
        s.pos.add_(1)

    # -- the driver -------------------------------------------------------------------------

    def _slot(self, rows: int, length: int) -> _Slot:
        import torch
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        key = (rows, length)
        if key not in self._slots:
            cache = StaticCache(config=self.lm.model.config, max_cache_len=length)
            if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
                # Full-length layers everywhere: the sliding-window *mask* still limits what each
                # layer sees, and nothing in the step depends on a Python int (no recompiles).
                cache.layers = [StaticLayer(max_cache_len=length) for _ in cache.layers]
            dev, long = self.device, torch.long
            self._slots[key] = _Slot(
                rows,
                length,
                cache,
                tok=torch.zeros(rows, 1, dtype=long, device=dev),
                pos=torch.zeros(rows, 1, dtype=long, device=dev),
                mask=torch.ones(rows, length, dtype=long, device=dev),
                done=torch.zeros(rows, dtype=torch.bool, device=dev),
                out=torch.full((rows, length), self.pad_id, dtype=long, device=dev),
                step=torch.zeros(1, dtype=long, device=dev),
                bias=torch.zeros(self.vocab, device=dev),
                is_stop=torch.zeros(self.vocab, dtype=torch.bool, device=dev),
                temp=torch.ones(1, device=dev),
            )
        return self._slots[key]

    def check(self) -> None:
        """Refuse to run if the model changed since the engine was built: a hook added or removed
        (compiled steps would ignore it), moved parameters, or an open `steer()` context."""
        if self._closed:
            raise EngineError("this engine was closed; build a new one")
        if is_steered(self.lm):
            raise EngineError(
                "a steer() context is open on this model: its hooks would be ignored by the "
                "compiled steps; pass steering rows to generate(..., steering=rows) instead"
            )
        now = _model_state(self.lm.model)
        if now != self._state:
            changed = sorted({h[0] for h in set(now[0]) ^ set(self._state[0])})
            where = f" (on {', '.join(changed[:3])})" if changed else ""
            raise EngineError(
                f"the model's hooks or parameters changed after the engine was built{where}; "
                "compiled steps would silently ignore a new hook. Steer through "
                "generate(..., steering=rows), or close this engine and build a new one"
            )

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        rows: Sequence[Terms] | None = None,
        *,
        max_new_tokens: int,
        stop: Sequence[int] = (),
        suppress: Sequence[int] = (),
        temperature: float = 0.0,
        keep_logits: bool = False,
    ) -> list[list[int]]:
        """Generated tokens of each prompt (steered by `rows[i]`): `max_new_tokens` each, or
        fewer when every row has stopped; a row that stopped is padded after its stop token.
        `suppress` tokens are never chosen (fixed-length runs); `keep_logits` keeps the first
        decode step's float logits in `self.logits`."""
        import torch

        if rows is not None and len(rows) != len(prompts):
            raise ValueError(f"{len(rows)} steering rows for {len(prompts)} prompts")
        if max_new_tokens < 1 or not prompts or not all(prompts):
            raise ValueError("need max_new_tokens >= 1 and non-empty prompts")
        self.check()
        n, width = len(prompts), max(len(p) for p in prompts)
        rows_b, length = bucket(
            n, width, max_new_tokens, self.max_batch, self.length_step, self.small
        )
        sampling, key = temperature > 0, (temperature > 0, keep_logits)
        seqs = [list(p) for p in prompts] + [[self.pad_id]] * (rows_b - n)
        ids = [[self.pad_id] * (width - len(q)) + q for q in seqs]
        mask = [[0] * (width - len(q)) + [1] * len(q) for q in seqs]
        cuda = self.device.type == "cuda"
        events = [torch.cuda.Event(enable_timing=True) if cuda else _Clock() for _ in range(3)]
        with torch.inference_mode():
            s = self._slot(rows_b, length)
            if keep_logits and s.logits is None:
                s.logits = torch.zeros(rows_b, self.vocab, device=self.device)
            self.sites.load(list(rows) if rows is not None else [()] * n)
            s.bias.zero_()
            s.bias[list(suppress)] = float("-inf")
            s.is_stop.zero_()
            s.is_stop[list(stop)] = True
            s.temp.fill_(temperature if sampling else 1.0)
            with self._running():
                events[0].record()
                self._prefill(s, ids, mask, n, sampling, keep_logits)
                events[1].record()
                steps = self._decode(s, n, max_new_tokens, key)
                events[2].record()
                tokens = s.out[:n, :steps].tolist()
            if keep_logits:
                self.logits = s.logits[:n].clone()
        self.timing = {
            "prefill_ms": events[0].elapsed_time(events[1]),
            "decode_ms": events[1].elapsed_time(events[2]),
            "decode_steps": steps - 1,
        }
        return tokens

    @contextmanager
    def _running(self) -> Iterator[None]:
        """While the engine runs: its hooks add their buffers, attention reads the cache once."""
        self.sites.active = True
        try:
            with folded_attention(self.lm.model):
                yield
        finally:
            self.sites.active = False

    def _prefill(
        self,
        s: _Slot,
        ids: list[list[int]],
        mask: list[list[int]],
        n: int,
        sampling: bool,
        keep: bool,
    ) -> None:
        import torch

        ids_t = torch.tensor(ids, device=self.device)
        mask_t = torch.tensor(mask, device=self.device)
        s.cache.reset()
        s.mask.fill_(1)
        s.mask[:, : ids_t.shape[1]] = mask_t
        out = self.lm.model(
            input_ids=ids_t,
            attention_mask=s.mask,
            position_ids=(mask_t.cumsum(-1) - 1).masked_fill(mask_t == 0, 1),
            past_key_values=s.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        s.pos.copy_(mask_t.sum(-1, keepdim=True))
        s.done.fill_(False)
        s.done[n:] = True
        s.step.zero_()
        self._pick(s, out.logits[:, -1, :], sampling, keep)

    def _decode(self, s: _Slot, n: int, max_new_tokens: int, key: tuple[bool, bool]) -> int:
        """Run decode steps until `max_new_tokens` tokens or every row stopped; returns the
        number of tokens generated per row."""
        import torch

        pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        steps = 1
        while steps < max_new_tokens:
            self._one_step(s, key)
            steps += 1
            if self.device.type != "cuda":
                if bool(s.done[:n].all()):
                    break
                continue
            if pending is not None and pending[1].query():
                if bool(pending[0]):
                    break
                pending = None
            if pending is None and steps % CHECK_EVERY == 0:
                flag = torch.empty((), dtype=torch.bool, pin_memory=True)
                flag.copy_(s.done[:n].all(), non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending = (flag, event)
        return steps

    def _one_step(self, s: _Slot, key: tuple[bool, bool]) -> None:

        graph = s.graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        done = s.warmups.get(key, 0)
        self.compiles += done == 0
        # a bucket's first call compiles and its last uncaptured one captures the graph
        first = done == 0 or (self.use_graphs and not key[0] and done >= WARMUPS)
        t0 = time.perf_counter()
        self._build_step(s, key, done)
        if first:
            timing.count("compile_s", time.perf_counter() - t0)
            timing.count("compiles", done == 0)

    def _build_step(self, s: _Slot, key: tuple[bool, bool], done: int) -> None:
        """A step of a bucket that has no graph yet: compiled call, or its graph's capture."""
        import torch

        if not (self.use_graphs and not key[0] and done >= WARMUPS):  # graphs: greedy steps
            s.warmups[key] = done + 1
            try:
                self._run_once(s, key)
            except torch._dynamo.exc.Unsupported as e:  # a first compile that needs a break
                if self.compile is False or done:
                    raise
                self._note(f"fullgraph failed, compiled with graph breaks: {e}")
                self._run = self._compiled(fullgraph=False)
                self._run_once(s, key)
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._side):
                self._run(s, *key)  # recorded, not run
        except RuntimeError as e:
            self._note(f"CUDA graph capture failed, running compiled steps without: {e}")
            self.use_graphs = False
            self._run_once(s, key)
            return
        s.graphs[key] = graph
        graph.replay()

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        warnings.warn(msg, stacklevel=3)

    def _run_once(self, s: _Slot, key: tuple[bool, bool]) -> None:
        """One step without a graph; on CUDA on the side stream that graphs are captured on."""
        import torch

        if self._side is None:
            self._run(s, *key)
            return
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            self._run(s, *key)
        torch.cuda.current_stream(self.device).wait_stream(self._side)

    def close(self) -> None:
        """Remove the steering hooks and free every bucket; the engine refuses later calls."""
        self.sites.remove()
        self._slots.clear()
        self._closed = True


def engine_for(model: LoadedModel, compile: bool | str, max_batch: int) -> Engine:
    """The model's engine, built on first use (kept on the model, so a sweep compiles once)."""
    eng: Engine | None = getattr(model.model, "_steerlab_engine", None)
    want = next_pow2(max(max_batch, 64))  # >= 64 rows: smaller batches never rebuild it
    if eng is not None and (eng._closed or eng.compile != compile or eng.max_batch < want):
        eng.close()
        eng = None
    if eng is None:
        eng = Engine(model, compile=compile, max_batch=want)
        model.model._steerlab_engine = eng
    return eng
