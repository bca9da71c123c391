"""Untrusted names and files stay inside their folder.

A config value that becomes part of a path (`trait.name`, `model.name`, an ensemble name) is a
plain name: letters, digits, `.`, `_` and `-`, starting with a letter or digit, so it can
neither climb (`..`) nor jump (`/abs`) out of `paths.root`. Every folder a run writes resolves
under `paths.root` unless the user named it explicitly (`hydra.sweep.dir=...`). A trait's data
file is a regular file inside its trait folder once symbolic links are resolved.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from steerlab.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit (at most 128)"


def name(field: str, value: object) -> str:
    """`value` if it is a plain name usable as one path part, else a one-line ConfigError."""
    text = str(value)
    if not NAME.fullmatch(text):
        raise ConfigError(f"{field}={text!r} is not a plain name: use {NAME_RULE}")
    return text


def inside(path: Path, root: Path, what: str) -> Path:
    """`path` resolved, if it lies under `root` (resolved); else a one-line ConfigError."""
    p, r = path.expanduser().resolve(), root.expanduser().resolve()
    if not p.is_relative_to(r):
        raise ConfigError(f"{what} {p} is outside {r}; steerlab writes only under paths.root")
    return p


def sweep_dir(cfg: DictConfig) -> Path:
    """The study's folder, resolved: under `paths.root` unless `hydra.sweep.dir` was given."""
    from steerlab.config import root_of

    path = Path(str(cfg.hydra.sweep.dir))
    if any(o.startswith("hydra.sweep.dir=") for o in cfg.hydra.overrides.hydra):
        return path.expanduser().resolve()
    return inside(path, root_of(cfg), "the sweep folder")
