"""Vector files: safetensors tensors + a JSON sidecar of metadata. Never pickle.

One file holds one direction per layer for one (source, position, component, method). The
metadata records which model made it, the layer convention, each layer's activation norm (the
unit of relative coefficients) and separation statistics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import LAYER_CONVENTION, __version__

if TYPE_CHECKING:
    import torch

    from steerlab.steering import SteerTerm

UNITS = ("relative", "absolute")


class VectorFileError(ValueError):
    """A vector file that is missing, malformed or made for another model."""


@dataclass
class TraitVectors:
    vectors: torch.Tensor  # [L, d] unit rows
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_norms(self) -> bool:
        """Whether relative coefficients work: a file imported without a model has no norms."""
        return bool(self.meta.get("norms"))

    @property
    def norms(self) -> list[float]:
        if not self.has_norms:
            raise VectorFileError(no_norms_message(self.meta))
        return list(self.meta["norms"])

    @property
    def layers(self) -> list[int]:
        """The layers with a direction: every row, unless the file lists fewer (an import)."""
        return list(self.meta.get("layers") or range(len(self.vectors)))

    def absolute(self, layer: int, coef: float, units: str = "relative") -> float:
        """A coefficient in residual-norm units: relative ones scale by the layer's norm."""
        if units not in UNITS:
            raise ValueError(f"unknown coef units {units!r}; valid: {', '.join(UNITS)}")
        return coef * self.norms[layer] if units == "relative" else coef

    def term(self, layer: int, coef: float, units: str = "relative") -> SteerTerm:
        from steerlab.steering import SteerTerm

        if not 0 <= layer < len(self.vectors):
            raise ValueError(f"layer {layer} outside 0..{len(self.vectors) - 1}")
        if layer not in self.layers:
            raise ValueError(f"layer {layer} has no direction in this file; it has {self.layers}")
        return SteerTerm(
            layer, self.meta["component"], self.vectors[layer], self.absolute(layer, coef, units)
        )

    def save(self, path: Path) -> Path:
        from safetensors.torch import save_file

        if why := self.problem():
            raise VectorFileError(f"{path}: not saved, {why}")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"layer_convention": LAYER_CONVENTION, "steerlab_version": __version__} | self.meta
        tmp = path.with_suffix(".tmp")
        save_file(
            {"vectors": self.vectors.contiguous().float()},
            str(tmp),
            metadata={"steerlab": json.dumps(meta)},
        )
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        self.meta = meta
        return path

    def problem(self) -> str | None:
        """Why these vectors cannot steer (non-finite values or norms), or None."""
        import torch

        bad = (~torch.isfinite(self.vectors).all(dim=-1)).nonzero().flatten().tolist()
        if bad:
            return f"vector values are not finite at layer(s) {_layers(bad)}"
        norms = self.meta.get("norms")
        if norms is not None:
            bad = [i for i, x in enumerate(norms) if not math.isfinite(float(x))]
            if bad:
                return f"activation norms are not finite at layer(s) {_layers(bad)}"
        return None


def _layers(bad: list[int]) -> str:
    return ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")


def load_vectors(path: Path, expect: dict[str, Any] | None = None) -> TraitVectors:
    """Load a vector file; `expect` (e.g. hidden_size, n_layers, model) must match its metadata."""
    from safetensors import safe_open

    if not path.is_file():
        raise VectorFileError(f"{path}: vector file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["steerlab"])
            vectors = f.get_tensor("vectors")
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise VectorFileError(f"{path}: not a steerlab vector file ({e})") from None
    for key, want in (expect or {}).items():
        if key in meta and meta[key] != want:
            raise VectorFileError(
                f"{path}: made for {key}={meta[key]!r}, but this run has {key}={want!r}"
            )
    expect = expect or {}
    shape = tuple(vectors.shape)
    if len(shape) != 2:
        raise VectorFileError(f"{path}: vectors have shape {shape}; expected [layers, hidden]")
    if "hidden_size" in expect and shape[1] != expect["hidden_size"]:
        raise VectorFileError(
            f"{path}: vectors have hidden size {shape[1]}, but this model has "
            f"{expect['hidden_size']}"
        )
    if "n_layers" in expect and shape[0] != expect["n_layers"]:
        raise VectorFileError(
            f"{path}: vectors have {shape[0]} layers, but this model has {expect['n_layers']}"
        )
    out = TraitVectors(vectors, meta)
    if why := out.problem():
        raise VectorFileError(f"{path}: {why}")
    return out


def no_norms_message(meta: dict[str, Any]) -> str:
    where = meta.get("imported_from") or meta.get("model") or "this vector file"
    return (
        f"{where}: relative coefficients need each layer's activation norm, which this file "
        "does not have (it was imported without a model); steer with absolute units "
        "(steering.coef_units=absolute, or units='absolute' in the API), or import it again with "
        "--model to compute the norms"
    )


def check_units(path: Path, units: str) -> None:
    """Fail before any model loads when relative units meet a file without norms (reads only
    the file's metadata)."""
    from safetensors import safe_open

    if units != "relative" or not path.is_file():
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["steerlab"])
    except Exception:  # noqa: BLE001 - load_vectors reports malformed files in full
        return
    if not meta.get("norms"):
        raise VectorFileError(f"{path}: {no_norms_message(meta)}")
