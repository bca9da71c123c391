"""`python -m steerlab.reproduce RUN_ID`: the command that repeats a study, and one warning line
for each recorded fact (`steerlab.provenance`) that differs on this machine.

RUN_ID is a study's MLflow parent run or one of its trials' child runs, in the store under
`--root` (default: the current folder) or at `--store` (a tracking server's URL).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from steerlab import __version__, prog, provenance


def recorded(store: Any, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """The study's provenance and params, from its parent run (a trial's run leads to it)."""
    from steerlab import tracking

    c = tracking.client(store)
    run = c.get_run(run_id)
    if parent := run.data.tags.get("mlflow.parentRunId"):
        run = c.get_run(parent)
    facts = provenance.of_tags(run.data.tags)
    if not facts:
        raise ValueError(f"run {run.info.run_id} records no provenance (made before steerlab "
                         f"{__version__} recorded it, or not a study's run)")  # fmt: skip
    return facts, run.data.params


def command(facts: dict[str, str], into: Path | None = None) -> list[str]:
    """The study's own overrides as one `-m` command (a sweep of several studies records each
    study's): it repeats this study alone, under `paths.root=into` when given."""
    args = json.loads(facts["overrides"])
    if into is not None:
        args = [a for a in args if not a.startswith("paths.root=")] + [f"paths.root={into}"]
    return ["python", "-m", "steerlab", "-m", *args]


def here(facts: dict[str, str], params: dict[str, str]) -> dict[str, str]:
    """This machine's values of the recorded facts that can be known without running."""
    import torch

    from steerlab.data import data_path, load_trait

    now: dict[str, Any] = provenance.software()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    now["device"] = provenance.device_name(device)
    for role in ("steering", "extraction"):
        if ref := params.get(f"model.{role}"):
            try:
                now[f"model.{role}"] = provenance.model_identity(ref)
            except OSError as e:
                now[f"model.{role}"] = f"not found ({e.strerror})"
    if folder := params.get("trait.dir"):
        try:
            files = provenance.trait_files(load_trait(data_path(folder)))
            now |= {f"trait.{name}": h for name, h in files.items()}
        except (OSError, ValueError) as e:
            now["trait"] = f"unreadable ({str(e).splitlines()[0]})"
    return {k: str(v) for k, v in now.items()}


def differences(facts: dict[str, str], now: dict[str, str]) -> list[str]:
    """One line per recorded fact that differs here (the device's thread count aside)."""
    out = []
    for key, was in facts.items():
        if key in ("command", "overrides", "seed", "judge") or key not in now:
            continue
        if key == "device" and was.split(" (")[0] == now[key].split(" (")[0]:
            continue
        if now[key] != was:
            out.append(f"warning: {key} was {was}, here {now[key]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("steerlab.reproduce"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("run_id", help="a study's MLflow parent run id, or one of its trials'")
    p.add_argument("--root", type=Path, default=Path("."), help="where mlruns/ is (default: .)")
    p.add_argument("--store", help="an MLflow tracking server's URL instead of --root")
    p.add_argument("--into", type=Path, help="the repeat's paths.root (default: the study's own)")
    p.add_argument("--run", action="store_true", help="run the command too (its exit code)")
    a = p.parse_args(argv)
    store: Any = a.store or a.root.expanduser().resolve()
    try:
        facts, params = recorded(store, a.run_id)
    except Exception as e:  # noqa: BLE001 - an unknown run, an unreadable store: one line
        print(f"steerlab.reproduce: error: {str(e).splitlines()[0][:300]}", file=sys.stderr)
        return 2
    print(f"# recorded: steerlab {facts.get('steerlab')} at {facts.get('commit')}"
          f"{' (dirty)' if facts.get('dirty') == 'True' else ''}, {facts.get('device')}, "
          f"judge {facts.get('judge')}, seed {facts.get('seed')}")  # fmt: skip
    print(f"# it ran: {facts['command']}")
    print("# this repeats the study" + ("" if a.into else " (--into DIR: in another root)"))
    cmd = command(facts, a.into.expanduser().resolve() if a.into else None)
    print(shlex.join(cmd))
    for line in differences(facts, here(facts, params)):
        print(line)
    if not a.run:
        return 0
    import subprocess

    sys.stdout.flush()
    return subprocess.run([sys.executable, *cmd[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
