#!/usr/bin/env bash
# Run steerlab on a GPU machine that has PyTorch and transformers but no package index: install
# the wheels `scripts/gpu_wheels.sh` downloaded into .whl/ (carried there with the checkout), then
# run the command given (default: the whole-study benchmark, bench/sweep_bench.py).
#   bench/gpu_run.sh                                   # bench/sweep_bench.py
#   bench/gpu_run.sh python3 -m steerlab -m model=random_llama31_8b judge=hf ...
set -euo pipefail
cd "$(dirname "$0")/.."
site=${STEERLAB_SITE:-/tmp/steerlab-site}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch",
  torch.__version__, "transformers", transformers.__version__, "GPU",
  torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
if [ $# -eq 0 ]; then set -- python3 bench/sweep_bench.py; fi
exec "$@"
