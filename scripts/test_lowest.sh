#!/usr/bin/env bash
# The low end of pyproject.toml's ranges: a fresh venv with every dependency at its lower bound
# (torch excepted: this machine's CPU build, 2.13.0, the only one without CUDA's packages), then
# the fast tests. `make test-lowest`; the venv is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LOWEST_VENV:-/tmp/steerlab-lowest}
python=${PYTHON:-python3}
rm -rf "$venv"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# "name>=low,<high" -> "name==low" for every [project] dependency
"$venv/bin/python" - > "$venv/lowest.txt" <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for d in deps:
    name = re.split(r"[<>=!\[; ]", d, maxsplit=1)[0]
    if name == "torch":
        continue
    low = re.search(r">=\s*([^,;\s]+)", d) or re.search(r"==\s*([^,;\s]+)", d)
    print(f"{name}=={low.group(1)}")
PY
cat "$venv/lowest.txt"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -c "$venv/lowest.txt" -e ".[dev]"
"$venv/bin/python" scripts/embedded_model.py
"$venv/bin/pip" check
"$venv/bin/pip" list 2>/dev/null | grep -iE "^($(sed 's/==.*//' "$venv/lowest.txt" | paste -sd'|')) "
"$venv/bin/python" -m pytest -q -m "not slow and not server" -p no:cacheprovider "$@"
