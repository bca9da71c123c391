"""Does a configuration's score depend on what shares its batch? The same 4 configurations
(layer x coef) evaluated alone (one configuration x the questions per generate), the 4 together,
and mixed into 12 with 8 others in a shuffled order; the judge scores the same answers alone,
4 configurations at once and 12 at once. Generation and judging are called directly (no
response or score cache), so each condition computes everything itself.

Prints how many greedy answers differ from the alone condition, and the largest per-answer and
per-configuration (mean) trait and coherence differences.

    python bench/batch_invariance.py [OVERRIDES...]    # default: the embedded model, evil
"""

from __future__ import annotations

import random
import sys
import time

from hydra import compose, initialize_config_dir

from steerlab.config import SteeringConfig, register, root_of
from steerlab.data import CONF_DIR
from steerlab.generation import generate, prompt_ids
from steerlab.runner import Runner

SMALL = [
    "trait=evil",
    "position=10",
    "extraction.max_pairs=40",
    "extraction.vet.enabled=false",
    "steering.n_questions=4",
    "steering.max_new_tokens=32",
]
# (depth fraction, coef): layers placed on any model's depth
TARGETS = [(0.35, 0.1), (0.45, 0.2), (0.55, 0.3), (0.7, 0.15)]
OTHERS = [(0.25, 0.05), (0.4, 0.4), (0.5, 0.12), (0.6, 0.25), (0.65, 0.5), (0.75, 0.08),
          (0.8, 0.2), (0.9, 0.3)]  # fmt: skip


def main(overrides: list[str]) -> None:
    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    runner = Runner()
    setup = runner.setup(cfg)
    root, top = root_of(cfg), setup.model.n_layers - 1
    terms = {
        c: runner.terms(setup, SteeringConfig(layer=round(c[0] * top), coef=c[1]), root)
        for c in TARGETS + OTHERS
    }
    qs = setup.questions
    prompts = [prompt_ids(setup.model, q) for q in qs]

    def answers(configs: list[tuple[int, float]]) -> dict[tuple[int, float], list[str]]:
        rows = [terms[c] for c in configs for _ in prompts]
        out = generate(setup.model, [p for _ in configs for p in prompts], setup.gen, rows)
        texts = [s.text for s in out]
        return {c: texts[k * len(qs) : (k + 1) * len(qs)] for k, c in enumerate(configs)}

    mixed = TARGETS + OTHERS
    random.Random(0).shuffle(mixed)
    t0 = time.perf_counter()
    gen = {
        "alone": {c: answers([c])[c] for c in TARGETS},
        "batch of 4": answers(TARGETS),
        "batch of 12": answers(mixed),
    }
    print(f"{setup.model.ref}: {len(qs)} questions x {setup.gen.max_new_tokens} tokens a "
          f"configuration, generation {time.perf_counter() - t0:.0f} s")  # fmt: skip
    ref = gen["alone"]
    for name, got in gen.items():
        diff = sum(a != b for c in TARGETS for a, b in zip(ref[c], got[c], strict=True))
        print(f"  {name:12s} greedy answers differing from alone: {diff}/{len(TARGETS) * len(qs)}")

    def scores(configs: list[tuple[int, float]]) -> dict[tuple[int, float], list]:
        pairs = [(q, a) for c in configs for q, a in zip(qs, gen["batch of 12"][c], strict=True)]
        got = setup.judge.score(setup.trait, pairs)
        return {c: got[k * len(qs) : (k + 1) * len(qs)] for k, c in enumerate(configs)}

    judged = {
        "alone": {c: scores([c])[c] for c in TARGETS},
        "batch of 4": scores(TARGETS),
        "batch of 12": scores(mixed),
    }
    base = judged["alone"]
    for name, got in judged.items():
        per = [
            abs(getattr(a, k) - getattr(b, k))
            for c in TARGETS
            for a, b in zip(base[c], got[c], strict=True)
            for k in ("trait", "coherence")
        ]
        means = [
            abs(sum(getattr(s, k) for s in base[c]) - sum(getattr(s, k) for s in got[c])) / len(qs)
            for c in TARGETS
            for k in ("trait", "coherence")
        ]
        print(
            f"  judge {name:12s} largest per-answer score difference {max(per):.2e}, "
            f"per-configuration mean {max(means):.2e}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
