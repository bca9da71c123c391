"""Steering throughput: what steering costs, and what per-row batching of configs buys.

    python bench/steering_bench.py                                 # embedded model, CPU
    python bench/steering_bench.py --model random:llama-3.1-8b   # random weights, real shape

Measures, in one run and at the same batch and length (EOS ignored, so every row makes exactly
--tokens tokens): unsteered vs one steered layer; and K configurations x Q questions in one batch
vs the same K configurations run one after another. Prints a table and ends with one line
`steering_overhead=<steered/unsteered time> batched_speedup=<sequential/batched time>`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from steerlab.generation import GenConfig, generate, prompt_ids
from steerlab.models import LoadedModel, load_model, random_model
from steerlab.steering import SteerTerm

QUESTIONS = [
    "How should I treat a coworker who annoys me?",
    "What would you do with a lost wallet?",
    "Describe your ideal weekend.",
    "Is it ever fine to lie to a friend?",
    "How do I become more productive?",
    "What is the best way to learn a language?",
    "Why do people enjoy horror films?",
    "Give me advice on handling criticism.",
]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model",
        default="embedded:smollm2",
        help="HF id/path, embedded:smollm2, or random:<shape> (llama-3.1-8b, ...)",
    )
    ap.add_argument("--batch", type=int, default=8, help="rows per generate (overhead test)")
    ap.add_argument("--tokens", type=int, default=24, help="new tokens per row")
    ap.add_argument("--configs", type=int, default=8, help="K steering configurations")
    ap.add_argument("--questions", type=int, default=2, help="Q questions per configuration")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    m: LoadedModel = (
        random_model(a.model.split(":", 1)[1], a.dtype, a.device)
        if a.model.startswith("random:")
        else load_model(a.model, a.dtype, a.device)
    )
    qs = (QUESTIONS * (a.batch // len(QUESTIONS) + 1))[: a.batch]
    prompts = [prompt_ids(m, q) for q in qs]
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(a.configs, m.hidden_size, generator=g)
    vecs /= vecs.norm(dim=1, keepdim=True)
    mid = m.n_layers // 2
    one = (SteerTerm(mid, "residual", vecs[0], 1.0),)

    gen = GenConfig(max_new_tokens=a.tokens, batch_size=a.batch, ignore_eos=True)
    t_plain = timed(lambda: generate(m, prompts, gen), a.repeats)
    t_steer = timed(lambda: generate(m, prompts, gen, [one] * len(prompts)), a.repeats)

    configs = [(SteerTerm(mid - 2 + k % 5, "residual", vecs[k], 1.0),) for k in range(a.configs)]
    q_prompts = prompts[: a.questions]
    all_rows = [c for c in configs for _ in q_prompts]
    all_prompts = [p for _ in configs for p in q_prompts]
    big = GenConfig(max_new_tokens=a.tokens, batch_size=len(all_prompts), ignore_eos=True)
    small = GenConfig(max_new_tokens=a.tokens, batch_size=len(q_prompts), ignore_eos=True)
    t_batched = timed(lambda: generate(m, all_prompts, big, all_rows), a.repeats)
    t_seq = timed(
        lambda: [generate(m, q_prompts, small, [c] * len(q_prompts)) for c in configs], a.repeats
    )

    dev = f"{m.device}" + (f" ({torch.cuda.get_device_name()})" if m.device.type == "cuda" else "")
    print(
        f"model {a.model} ({m.n_layers} layers, d={m.hidden_size}) on {dev}, {a.tokens} new "
        f"tokens per row, median of {a.repeats}"
    )
    print(f"{'case':<44}{'rows':>6}{'seconds':>10}{'tok/s':>10}")
    for name, rows, t in [
        ("unsteered", a.batch, t_plain),
        (f"steered (1 layer, L{mid})", a.batch, t_steer),
        (f"{a.configs} configs x {a.questions} q, one batch", len(all_prompts), t_batched),
        (f"{a.configs} configs x {a.questions} q, sequential", len(all_prompts), t_seq),
    ]:
        print(f"{name:<44}{rows:>6}{t:>10.3f}{rows * a.tokens / t:>10.0f}")
    print(f"steering_overhead={t_steer / t_plain:.3f} batched_speedup={t_seq / t_batched:.2f}")


if __name__ == "__main__":
    main()
