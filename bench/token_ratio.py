"""How many characters a token the random models' tokenizers make on the bench's own prompts
(the judge's trait, coherence and relevance prompts over the shipped evil calibration answers,
and the evil questions as chat prompts), against the real SmolLM2 BPE: a random model of a real
shape must take as many tokens per prompt as a real model, or every GPU figure is off.

    python bench/token_ratio.py          # a table; the last line: `token_ratio: ...`
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from steerlab.data import CONF_DIR, load_trait
from steerlab.judges.llm import KINDS, Prompts
from steerlab.models import SHAPES, embedded_path
from steerlab.vocab import byte_tokenizer, random_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHAPE_NAMES = ("llama-3.1-8b", "qwen2.5-7b", "smollm2-135m")


def texts() -> tuple[list[str], list[list[dict[str, str]]]]:
    """The judge's prompts over the calibration answers, and the questions as chats."""
    trait = load_trait(REPO / "traits" / "evil")
    conf = yaml.safe_load((CONF_DIR / "judge" / "hf.yaml").read_text())
    prompts = Prompts.from_mapping(conf["prompts"])
    rows = [
        json.loads(x) for x in (REPO / "traits/evil/calibration.jsonl").read_text().splitlines()
    ]
    judged = [prompts.render(k, trait, r["question"], r["answer"]) for r in rows for k in KINDS]
    chats = [[{"role": "user", "content": q}] for q in trait.questions]
    return judged, chats


def chars_per_token(tok, judged: list[str], chats: list[list[dict[str, str]]]) -> float:
    as_text = [
        tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
    ]
    everything = judged + as_text
    return sum(map(len, everything)) / sum(len(tok(t)["input_ids"]) for t in everything)


def main() -> None:
    from transformers import AutoTokenizer

    judged, chats = texts()
    real = chars_per_token(AutoTokenizer.from_pretrained(embedded_path("smollm2")), judged, chats)
    print(f"{len(judged)} judge prompts, {len(chats)} chat questions; real SmolLM2 BPE: "
          f"{real:.2f} characters a token")  # fmt: skip
    print(f"{'shape':>14} {'vocab':>7} {'byte+filler':>12} {'now':>6} {'tokens vs real':>15}")
    ratios = []
    for name in SHAPE_NAMES:
        vocab = SHAPES[name]["vocab_size"]
        old = chars_per_token(byte_tokenizer(vocab), judged, chats)
        new = chars_per_token(random_tokenizer(vocab), judged, chats)
        ratios.append((name, old, new))
        print(f"{name:>14} {vocab:>7} {old:>12.2f} {new:>6.2f} {real / new:>14.2f}x "
              f"(was {real / old:.2f}x)")  # fmt: skip
    worst = max(real / new for _, _, new in ratios)
    was = max(real / old for _, old, _ in ratios)
    print(f"token_ratio: real_chars_per_token={real:.2f} worst_tokens_vs_real={worst:.2f} "
          f"was={was:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
