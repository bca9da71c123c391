#!/usr/bin/env bash
# Install steerlab into this GPU machine's own Python as a user would, with dependency resolution
# on (no --no-deps, no PYTHONPATH), from the wheels `python scripts/gpu_wheels.py` gathered into
# .whl/ (carried with the checkout; the machine has no package index), then run the command given
# through the installed package (default: the whole-study benchmark, bench/sweep_bench.py
# --installed). The image's torch and transformers must stay as they were: `pip list` before and
# after, and their diff, go to $OUT (or /tmp/steerlab-gpu), and the run stops if either changed.
#   bench/gpu_run.sh --stash .whl-1      # a call that carries only part of a split wheel: keep it
#   bench/gpu_run.sh                     # install, then bench/sweep_bench.py --installed
#   bench/gpu_run.sh steerlab -m model=random_llama31_8b judge=hf ...
set -euo pipefail
cd "$(dirname "$0")/.."
stash=${STEERLAB_WHEELS:-/tmp/steerlab-wheels}
mkdir -p "$stash"
if [ "${1:-}" = --stash ]; then
  cp "$2"/* "$stash"/ && ls -l "$stash" | tail -n +2 | wc -l | xargs echo "wheels and parts kept:"
  exit 0
fi
cp .whl/* "$stash"/
for first in "$stash"/*.part-01; do  # wheels carried in parts over several calls
  [ -e "$first" ] || continue
  wheel=${first%.part-01}
  cat "$wheel".part-* > "$wheel" && rm "$wheel".part-*
done
out=${OUT:-/tmp/steerlab-gpu}
mkdir -p "$out"
python3 -m pip list --format=freeze > "$out/pip-before.txt"
python3 -m pip install -q --no-index --find-links "$stash" "$stash"/steerlab-*.whl
python3 -m pip list --format=freeze > "$out/pip-after.txt"
diff "$out/pip-before.txt" "$out/pip-after.txt" > "$out/pip-diff.txt" || true
echo "pip list diff (< before, > after):" && cat "$out/pip-diff.txt"
python3 -m pip check | tee "$out/pip-check.txt"
for pkg in torch transformers; do
  if ! cmp -s <(grep -i "^$pkg==" "$out/pip-before.txt") <(grep -i "^$pkg==" "$out/pip-after.txt"); then
    echo "the install changed the image's $pkg" >&2 && exit 1
  fi
done
python3 -c 'import sys, torch, transformers, steerlab; print(f"python {sys.version.split()[0]}, torch",
  torch.__version__, "transformers", transformers.__version__, "steerlab from", steerlab.__file__,
  "GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
if [ $# -eq 0 ]; then set -- python3 bench/sweep_bench.py --installed; fi
exec "$@"
