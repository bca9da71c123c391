"""Steering throughput: what steering costs, what per-row batching of configs buys, and (with
--report, on a GPU) the compiled engine against today's eager path and the HBM roofline.

    python bench/steering_bench.py                                 # embedded model, CPU
    python bench/steering_bench.py --model random:llama-3.1-8b   # random weights, real shape
    python bench/steering_bench.py --model random:llama-3.1-8b --dtype bfloat16 --report

Default mode measures, in one run and at the same batch and length (EOS ignored, so every row
makes exactly --tokens tokens) through `--engine`: unsteered vs one steered layer; and K
configurations x Q questions in one batch vs the same K configurations one after another. It
prints a table and ends with `steering_overhead=<steered/unsteered> batched_speedup=<sequential/
batched>`.

--report (CUDA) measures the engines against each other in one process, each part printed as a
JSON line as it finishes (--parts picks them):
  b1      batch-1 steered decode ms/step: eager from (T(8+N) - T(8)) / N, compiled from the
          engine's own CUDA-event timing of its decode loop; % of the HBM roofline (weight bytes
          / --hbm-tbs);
  logits  first compiled decode step's logits vs eager HF generate under `steer()` (relative L2
          difference): steered vs steered must be under --tol, and a deliberately unsteered
          compiled run against eager steered must be over it;
  big     --batch rows (K configs x questions, steered) tok/s, eager vs compiled;
  sweep   a 40-trial sweep's batches (the evil trait's 20 steering questions: baseline + 40 x 20
          rows, batches of 32, 128 new tokens, EOS on): graphs compiled, and tok/s after them;
  plain   the same big batch through an engine without steering sites (overhead denominator);
  capture teacher-forced capture tokens/s (all layers), by rows vs by token budget.
It ends with one line `decode_ms_b1=... roofline_pct=... b<batch>_tok_s=... speedup_vs_eager=...
steering_overhead=... compiles=...` (parts not run print nan).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from steerlab.generation import GenConfig, Sample, generate, prompt_ids
from steerlab.models import LoadedModel, load_model, random_model
from steerlab.steering import SteerTerm, steer

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
STEERING_JSONL = Path(__file__).resolve().parents[1] / "traits" / "evil" / "steering.jsonl"


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


def emit(**kw: object) -> None:
    print(json.dumps(kw, default=str), flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def table(m: LoadedModel, a: argparse.Namespace) -> None:
    qs = (QUESTIONS * (a.batch // len(QUESTIONS) + 1))[: a.batch]
    prompts = [prompt_ids(m, q) for q in qs]
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(a.configs, m.hidden_size, generator=g)
    vecs /= vecs.norm(dim=1, keepdim=True)
    mid = m.n_layers // 2
    one = (SteerTerm(mid, "residual", vecs[0], 1.0),)

    gen = GenConfig(max_new_tokens=a.tokens, batch_size=a.batch, ignore_eos=True, engine=a.engine)
    t_plain = timed(lambda: generate(m, prompts, gen), a.repeats)
    t_steer = timed(lambda: generate(m, prompts, gen, [one] * len(prompts)), a.repeats)

    configs = [(SteerTerm(mid - 2 + k % 5, "residual", vecs[k], 1.0),) for k in range(a.configs)]
    q_prompts = prompts[: a.questions]
    all_rows = [c for c in configs for _ in q_prompts]
    all_prompts = [p for _ in configs for p in q_prompts]
    big = GenConfig(a.tokens, batch_size=len(all_prompts), ignore_eos=True, engine=a.engine)
    small = GenConfig(a.tokens, batch_size=len(q_prompts), ignore_eos=True, engine=a.engine)
    t_batched = timed(lambda: generate(m, all_prompts, big, all_rows), a.repeats)
    t_seq = timed(
        lambda: [generate(m, q_prompts, small, [c] * len(q_prompts)) for c in configs], a.repeats
    )

    dev = f"{m.device}" + (f" ({torch.cuda.get_device_name()})" if m.device.type == "cuda" else "")
    print(
        f"model {a.model} ({m.n_layers} layers, d={m.hidden_size}) on {dev}, engine {a.engine}, "
        f"{a.tokens} new tokens per row, median of {a.repeats}"
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


def report(m: LoadedModel, a: argparse.Namespace) -> None:  # noqa: C901 (one part per block)
    import transformers

    from steerlab.engine import Engine, engine_for
    from steerlab.generation import _eos_ids

    parts = set(a.parts.split(","))
    cuda = m.device.type == "cuda"
    kind = "compiled" if cuda else "static"  # on CPU: a dry run of the same code, uncompiled
    wbytes = sum(p.numel() * p.element_size() for p in m.model.parameters())
    roof_ms = wbytes / (a.hbm_tbs * 1e12) * 1e3
    emit(
        what="setup",
        model=a.model,
        gpu=torch.cuda.get_device_name() if cuda else "cpu (dry run: engine=static)",
        torch=torch.__version__,
        transformers=transformers.__version__,
        dtype=str(next(m.model.parameters()).dtype),
        weight_GB=wbytes / 1e9,
        roofline_ms=roof_ms,
    )
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(max(a.configs, 2), m.hidden_size, generator=g)
    vecs /= vecs.norm(dim=1, keepdim=True)
    mid, n, eos = m.n_layers // 2, a.tokens, _eos_ids(m)
    one = (SteerTerm(mid, "residual", vecs[0], 1.0),)
    configs = [(SteerTerm(mid - 2 + k % 5, "residual", vecs[k], 1.0),) for k in range(a.configs)]
    big_prompts = [prompt_ids(m, QUESTIONS[i % len(QUESTIONS)]) for i in range(a.batch)]
    big_rows = [configs[(i // len(QUESTIONS)) % a.configs] for i in range(a.batch)]
    p1 = [prompt_ids(m, QUESTIONS[0])]
    res: dict[str, float] = {}

    def run(engine: str, prompts: list, rows: list | None, tokens: int) -> list[Sample]:
        cfg = GenConfig(tokens, batch_size=len(prompts), ignore_eos=True, engine=engine)
        return generate(m, prompts, cfg, rows)

    if "b1" in parts:
        t8 = timed(lambda: run("eager", p1, [one], 8), a.repeats)
        tn = timed(lambda: run("eager", p1, [one], 8 + n), a.repeats)
        res["eager_b1_ms"] = (tn - t8) / n * 1e3
        emit(what="b1", engine="eager", ms_step=res["eager_b1_ms"], t8=t8, t_8n=tn)
    if "big" in parts:
        res["eager_big_s"] = timed(lambda: run("eager", big_prompts, big_rows, n), a.repeats)
        emit(
            what="big",
            engine="eager",
            rows=a.batch,
            s=res["eager_big_s"],
            tok_s=a.batch * n / res["eager_big_s"],
        )

    eng = engine_for(m, cuda, max(a.batch, 32))  # also the sweep's engine (batches of 32)
    kw = dict(max_new_tokens=8 + n, suppress=eos, keep_logits=True)
    if "b1" in parts or "logits" in parts:
        t = time.perf_counter()
        eng.generate(p1, [one], **kw)  # compiles, warms up, captures
        first = time.perf_counter() - t
        per_step = []
        for _ in range(max(a.repeats, 3)):
            eng.generate(p1, [one], **kw)
            per_step.append(eng.timing["decode_ms"] / eng.timing["decode_steps"])
        res["b1_ms"] = statistics.median(per_step)
        res["roofline_pct"] = roof_ms / res["b1_ms"] * 100
        emit(
            what="b1",
            engine="compiled",
            first_call_s=first,
            ms_step=res["b1_ms"],
            runs=per_step,
            roofline_pct=res["roofline_pct"],
            compiles=eng.compiles,
            timing=eng.timing,
        )
    if "logits" in parts:
        strong = (SteerTerm(mid, "residual", vecs[1], a.check_coef),)

        def eager_step1(rows: list) -> tuple[torch.Tensor, list[int]]:
            ids = torch.tensor(p1, device=m.device)
            with torch.inference_mode(), steer(m, rows):
                o = m.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=2,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=m.tokenizer.pad_token_id,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            return o.logits[1][0].float().cpu(), o.sequences[0, ids.shape[1] :].tolist()

        def compiled_step1(rows: list) -> tuple[torch.Tensor, list[int]]:
            toks = eng.generate(p1, rows, **kw)
            return eng.logits[0].cpu(), toks[0][:2]

        before = eng.compiles
        e_s, e_s_tok = eager_step1([strong])
        e_u, e_u_tok = eager_step1([()])
        c_s, c_s_tok = compiled_step1([strong])
        c_u, c_u_tok = compiled_step1([()])
        c_s2, _ = compiled_step1([strong])
        res["logit_rel_steered"] = rel(c_s, e_s)
        res["logit_rel_unsteered_vs_steered"] = rel(c_u, e_s)
        emit(
            what="logits",
            coef=a.check_coef,
            tol=a.tol,
            compiled_steered_vs_eager_steered=res["logit_rel_steered"],
            compiled_unsteered_vs_eager_steered=res["logit_rel_unsteered_vs_steered"],
            noise_floor_compiled_vs_eager_unsteered=rel(c_u, e_u),
            steering_effect_eager=rel(e_s, e_u),
            compiled_rerun_identical=bool(torch.equal(c_s, c_s2)),
            tokens=dict(
                eager_steered=e_s_tok,
                compiled_steered=c_s_tok,
                eager_plain=e_u_tok,
                compiled_plain=c_u_tok,
            ),
            passed=res["logit_rel_steered"] < a.tol < res["logit_rel_unsteered_vs_steered"],
            new_compiles=eng.compiles - before,
        )
    if "big" in parts:
        t = time.perf_counter()
        run(kind, big_prompts, big_rows, n)
        first = time.perf_counter() - t
        res["big_s"] = timed(lambda: run(kind, big_prompts, big_rows, n), a.repeats)
        res["big_tok_s"] = a.batch * n / res["big_s"]
        res["big_step_ms"] = eng.timing["decode_ms"] / eng.timing["decode_steps"]
        res["speedup"] = res["eager_big_s"] / res["big_s"]
        emit(
            what="big",
            engine="compiled",
            rows=a.batch,
            first_call_s=first,
            s=res["big_s"],
            tok_s=res["big_tok_s"],
            speedup_vs_eager=res["speedup"],
            timing=eng.timing,
        )
    if "sweep" in parts:
        from torch._dynamo.utils import counters

        questions = [json.loads(x)["question"] for x in STEERING_JSONL.read_text().splitlines()]
        qp = [prompt_ids(m, q) for q in questions]
        rng = torch.Generator().manual_seed(1)
        trials = [
            (
                SteerTerm(
                    int(torch.randint(4, m.n_layers - 4, (1,), generator=rng)),
                    "residual",
                    vecs[k % len(vecs)],
                    float(torch.rand(1, generator=rng)) * 4,
                ),
            )
            for k in range(40)
        ]
        before, graphs0 = eng.compiles, counters["stats"]["unique_graphs"]
        cfg = GenConfig(128, batch_size=32, engine=kind)
        t = time.perf_counter()
        base = generate(m, qp, cfg)  # the baseline: the bucket's first batch, so it compiles
        t_base = time.perf_counter() - t
        t = time.perf_counter()
        sweep = generate(m, [p for _ in trials for p in qp], cfg, [c for c in trials for _ in qp])
        dt = time.perf_counter() - t
        toks = sum(len(s.response_ids) for s in sweep)
        res["compiles"] = eng.compiles - before
        emit(
            what="sweep",
            rows=len(base) + len(sweep),
            batches=math.ceil(len(qp) / 32) + math.ceil(len(sweep) / 32),
            baseline_s_with_compile=t_base,
            trials_s=dt,
            trials_tok_s=toks / dt,
            compiles=res["compiles"],
            dynamo_graphs=counters["stats"]["unique_graphs"] - graphs0,
            widths=[min(map(len, qp)), max(map(len, qp))],
        )
    eng.close()
    if "plain" in parts:
        plain = Engine(m, compile=cuda, sites=(), max_batch=a.batch)
        kwp = dict(max_new_tokens=n, suppress=eos)
        t = time.perf_counter()
        plain.generate(big_prompts, None, **kwp)
        first = time.perf_counter() - t
        res["plain_s"] = timed(lambda: plain.generate(big_prompts, None, **kwp), a.repeats)
        out = dict(
            what="plain",
            rows=a.batch,
            first_call_s=first,
            s=res["plain_s"],
            tok_s=a.batch * n / res["plain_s"],
        )
        out["decode_ms_step"] = plain.timing["decode_ms"] / plain.timing["decode_steps"]
        out["prefill_ms"] = plain.timing["prefill_ms"]
        if "big_s" in res:
            res["overhead"] = res["big_s"] / res["plain_s"]
            out["steering_overhead"] = res["overhead"]
            out["steered_decode_ms_step"] = res["big_step_ms"]
            out["decode_step_overhead"] = res["big_step_ms"] / out["decode_ms_step"]
        plain.close()
        emit(**out)
    if "capture" in parts:
        from steerlab.capture import capture
        from steerlab.positions import parse_position

        g2 = torch.Generator().manual_seed(2)
        samples = [
            Sample(
                prompt_ids(m, QUESTIONS[i % 8]),
                torch.randint(3, 250, (64,), generator=g2).tolist(),
                "",
            )
            for i in range(a.capture_samples)
        ]
        ntok = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        pos = [parse_position("response[:]")]
        for comps in (("residual",), ("residual", "attn_contribution", "mlp_contribution")):
            for label, kwc in (("rows16", dict(batch_tokens=None)), ("budget", {})):
                dt = timed(lambda: capture(m, samples, pos, comps, 16, **kwc), 1)  # noqa: B023
                emit(
                    what="capture",
                    components=len(comps),
                    batching=label,
                    tokens=ntok,
                    s=dt,
                    tok_s=ntok / dt,
                )

    def f(key: str, fmt: str = ".2f") -> str:
        return format(res[key], fmt) if key in res else "nan"

    print(
        f"decode_ms_b1={f('b1_ms')} roofline_pct={f('roofline_pct', '.1f')} "
        f"b{a.batch}_tok_s={f('big_tok_s', '.0f')} speedup_vs_eager={f('speedup')} "
        f"steering_overhead={f('overhead', '.3f')} compiles={f('compiles', '.0f')}",
        flush=True,
    )


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
    ap.add_argument("--engine", default="auto", help="auto | eager | compiled | static")
    ap.add_argument("--report", action="store_true", help="engine report (CUDA), see above")
    ap.add_argument("--parts", default="b1,logits,big,sweep,plain,capture")
    ap.add_argument("--hbm-tbs", type=float, default=4.8, help="HBM TB/s for the roofline")
    ap.add_argument("--check-coef", type=float, default=200.0, help="coef of the logits check")
    ap.add_argument("--tol", type=float, default=0.1, help="logits check: relative L2 bound")
    ap.add_argument("--capture-samples", type=int, default=256)
    a = ap.parse_args()

    m: LoadedModel = (
        random_model(a.model.split(":", 1)[1], a.dtype, a.device)
        if a.model.startswith("random:")
        else load_model(a.model, a.dtype, a.device)
    )
    report(m, a) if a.report else table(m, a)


if __name__ == "__main__":
    main()
