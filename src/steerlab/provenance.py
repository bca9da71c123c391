"""What it takes to repeat a study, recorded on its MLflow parent run (`provenance.*` tags and
`provenance.json`): code (version, git commit, dirty flag), packages, device, the models' weight
hashes, every trait data file's sha256, the judge, the seed and the exact command.
`python -m steerlab.reproduce RUN_ID` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from steerlab import __version__
from steerlab.data import _FILES, PROJECT_ROOT, TraitData

PACKAGES = ("torch", "transformers", "optuna", "mlflow")
TAG = "provenance."
WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")


def git_commit() -> tuple[str, bool]:
    """The checkout's commit and whether tracked files differ from it ("none": no checkout)."""
    if not (PROJECT_ROOT / ".git").exists():
        return "none", False
    run = {"cwd": PROJECT_ROOT, "capture_output": True, "text": True, "timeout": 30}
    head = subprocess.run(["git", "rev-parse", "HEAD"], **run)  # type: ignore[call-overload]
    if head.returncode:
        return "none", False
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)  # type: ignore[call-overload]
    return head.stdout.strip(), bool(dirty.stdout.strip())


def sha256(path: Path, cache: Path | None = None) -> str:
    """A file's sha256, remembered in `cache` by path, size and mtime (weights are large)."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    known = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    if key not in known:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        known[key] = h.hexdigest()
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1))
    return known[key]


def model_identity(ref: str, cache: Path | None = None) -> str:
    """A model's weights: a Hugging Face snapshot's revision, the sha256 of a local folder's
    weight files (one hash over their names and hashes), or the reference itself (random)."""
    from steerlab.models import is_random, resolve_ref

    if is_random(ref):
        return ref
    path = Path(resolve_ref(ref))
    if not path.is_dir():  # a Hub name: its snapshot in the local cache, if there is one
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(ref), local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (or not a Hub name): said below
            pass
    if "snapshots" in path.parts:  # the Hub's own identity of those files
        return f"revision:{path.parts[path.parts.index('snapshots') + 1]}"
    if path.is_dir():
        files = sorted(p for g in WEIGHTS for p in path.glob(g))
        if files:
            h = hashlib.sha256()
            for p in files:
                h.update(f"{p.name}:{sha256(p, cache)}\n".encode())
            return f"sha256:{h.hexdigest()}"
    return f"unhashed:{ref}"


def trait_files(trait: TraitData) -> dict[str, str]:
    """sha256 of every file of the trait folder that a study reads."""
    names = ["trait.yaml", *_FILES, "calibration.jsonl"]
    return {n: sha256(trait.root / n) for n in names if (trait.root / n).is_file()}


def device_name(device: Any) -> str:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{device} ({platform.machine()}, {torch.get_num_threads()} threads)"


def collect(
    cfg: DictConfig, models: dict[str, str], trait: TraitData, judge: str, device: Any
) -> dict[str, Any]:
    """The facts that decide a study's results, as a flat dict (`models`: role -> reference)."""
    from steerlab.config import cache_of, redact

    hashes = cache_of(cfg) / "hashes.json"
    overrides = [redact(o) for o in cfg.hydra.overrides.task] if "hydra" in cfg else []
    return {
        **software(),
        "device": device_name(device),
        **{f"model.{role}": model_identity(ref, hashes) for role, ref in models.items()},
        **{f"trait.{name}": h for name, h in trait_files(trait).items()},
        "judge": judge,
        "seed": int(cfg.search.seed),
        "command": redact(shlex.join(["python", "-m", "steerlab", *sys.argv[1:]])),
        "overrides": json.dumps(overrides),
    }


def software() -> dict[str, Any]:
    """The code that runs: steerlab's version, commit and dirty flag, Python and packages."""
    commit, dirty = git_commit()
    packages = {p: metadata.version(p) for p in PACKAGES}
    return {"steerlab": __version__, "commit": commit, "dirty": dirty,
            "python": platform.python_version(), **packages}  # fmt: skip


def as_tags(facts: dict[str, Any]) -> dict[str, str]:
    return {f"{TAG}{k}": str(v) for k, v in facts.items()}


def of_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k[len(TAG) :]: v for k, v in tags.items() if k.startswith(TAG)}
