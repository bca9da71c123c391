"""Tokenizers for random-weight models: SmolLM2's byte-level BPE (shipped, 0.5 MB) for a shape
with a real vocabulary, so that prompts take a real model's tokens, and a byte-level tokenizer
grown to the size of a small test shape."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _filler_merges(n: int) -> list[tuple[str, str]]:
    """`n` BPE merges building letter strings ("ab", "abc", "abcd"; "Ġ" is a space), shortest
    first: a byte tokenizer's vocabulary grown to a model's size, so that every id a random
    model picks decodes to text and prompts take about as many tokens as a real tokenizer's."""
    import itertools

    letters = list("Ġetaoinshrdlcumwfgypbvkjxqz")  # by English frequency: common strings first
    pairs = [a + b for a, b in itertools.product(letters, letters)]
    levels = (
        ((a, b) for a, b in itertools.product(letters, letters)),
        ((p, c) for p, c in itertools.product(pairs, letters)),
        ((p, q) for p, q in itertools.product(pairs, pairs)),
    )
    return list(itertools.islice(itertools.chain(*levels), max(0, n)))


def byte_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """A byte-level tokenizer built in memory (no files): for random-weight models. With
    `vocab_size`, filler merges grow its vocabulary to that size (`_filler_merges`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<end>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = _filler_merges((vocab_size or 0) - len(vocab))
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<end>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


BPE_ASSET = Path(__file__).parent / "assets" / "bpe-smollm2.json.gz"  # scripts/bpe_asset.py
BPE_SIZE = 49152
CHATML = (  # SmolLM2's own chat format, so a chat prompt takes the tokens a real one does
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bpe_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's byte-level BPE (49,152 ids, shipped with steerlab; `scripts/bpe_asset.py`), for
    random models of a real shape: their prompts then take as many tokens as a real model's
    (the byte tokenizer's filler merges made them ~1.8x longer, `bench/token_ratio.py`)."""
    import gzip

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(gzip.decompress(BPE_ASSET.read_bytes()).decode())
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    return fast


def random_tokenizer(vocab_size: int | None) -> PreTrainedTokenizerBase:
    """A random model's tokenizer: the real BPE for a shape with at least its 49,152 ids (a real
    model's), the byte tokenizer grown to the size of a smaller (test) shape."""
    return bpe_tokenizer() if (vocab_size or 0) >= BPE_SIZE else byte_tokenizer(vocab_size)
