"""The exported steering file: what to add where, readable by any tool without steerlab.

`python -m steerlab.export` writes it (`steerlab.api.load` reads it back): a safetensors file
with one float32 tensor `direction.<L>` (unit norm, `[hidden]`) per steered layer, and one JSON
object, stored both in the file's metadata (key `steerlab_export`) and in a `.json` sidecar:

    {"format": "steerlab-steering/1", "component": "residual", "layers": [13],
     "coef_absolute": {"13": 4.87}, "coef": {"13": 0.348}, "coef_units": "relative",
     "norm": {"13": 14.0}, "apply": "...", "layer_convention": "...", "model": "smollm2",
     "model_ref": "embedded:smollm2", "hidden_size": 576, "n_layers": 30, "provenance": {...}}

To steer, add `coef_absolute[L] * direction.L` at every position to the output of decoder block
`L` (0-based; Hugging Face `hidden_states[L + 1]`). `coef` x `norm` = `coef_absolute` records the
relative coefficient it came from; a layer that several terms steer (an ensemble or a mix) is
stored as their sum, so it has only the absolute coefficient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FORMAT = "steerlab-steering/1"
KEY = "steerlab_export"
APPLY = (
    "at every listed layer L, add coef_absolute[L] * direction.L to the output of decoder block "
    "L (0-based; Hugging Face hidden_states[L+1]) at every token position"
)


@dataclass
class Exported:
    """Unit directions and absolute coefficients per layer, with the file's JSON."""

    directions: dict[int, torch.Tensor]
    coef_absolute: dict[int, float]
    meta: dict[str, Any]


def write(path: Path, directions: dict[int, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save unit `directions` with `meta` (which holds coef_absolute and the rest)."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "apply": APPLY} | meta
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"direction.{la}": v.detach().float().cpu().contiguous() for la, v in directions.items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={KEY: json.dumps(meta)})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path


def read(path: Path) -> Exported | None:
    """The exported file at `path`, or None when it is some other safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(KEY)
        if raw is None:
            return None
        meta = json.loads(raw)
        names = list(f.keys())  # a safe_open handle is not iterable
        directions = {int(k.split(".", 1)[1]): f.get_tensor(k) for k in names}
    coefs = {int(k): float(v) for k, v in meta["coef_absolute"].items()}
    return Exported(dict(sorted(directions.items())), coefs, meta)
