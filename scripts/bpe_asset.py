"""Write `src/steerlab/assets/bpe-smollm2.json.gz`: the embedded model's byte-level BPE tokenizer
(SmolLM2, 49,152 ids, Apache-2.0), which random-weight models of a real shape use so that their
prompts take as many tokens as a real model's (`steerlab.vocab.bpe_tokenizer`).

    python scripts/bpe_asset.py
"""

from __future__ import annotations

import gzip
import json

from steerlab.models import embedded_path
from steerlab.vocab import BPE_ASSET


def main() -> None:
    data = json.loads((embedded_path("smollm2") / "tokenizer.json").read_text())
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    BPE_ASSET.parent.mkdir(parents=True, exist_ok=True)
    BPE_ASSET.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    print(f"{BPE_ASSET}: {BPE_ASSET.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
