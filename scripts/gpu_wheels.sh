#!/usr/bin/env bash
# The wheels steerlab needs on a GPU machine that has PyTorch, transformers, numpy, scikit-learn,
# pandas, matplotlib and sentence-transformers but no package index (steerlab's own
# dependencies: Hydra, Optuna, MLflow and what they import). Pinned to pyproject.toml's versions,
# no dependencies resolved (the machine's own packages serve the rest), ~25 MB.
#   scripts/gpu_wheels.sh [DIR] [PYTHON]     default: .whl 3.12
# There:  python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#         export PYTHONPATH=/tmp/site:src      (bench/gpu_run.sh does both)
set -euo pipefail
dir=${1:-.whl}
py=${2:-3.12}
pkgs=(
  hydra-core==1.3.8 omegaconf==2.3.1
  optuna==5.0.0 alembic==1.20.1 mako==1.4.3 sqlalchemy==2.1.9 colorlog==6.12.0
  cmaes==0.13.1 cma==4.5.0
  mlflow==3.17.2 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2
  cachetools==7.3.3 importlib-metadata==9.1.0 sqlparse==0.6.1 python-dotenv==1.2.4
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  fastapi==0.165.0 starlette==1.10.0 databricks-sdk==0.167.0 google-auth==2.63.0
  cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
)
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64 manylinux_2_34_x86_64; do plat+=(--platform "$p"); done
mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${plat[@]}" -d "$dir" "${pkgs[@]}"
# published as a source archive only: built here into a pure-Python wheel
python3 -m pip wheel -q --no-deps -w "$dir" antlr4-python3-runtime==4.9.3
du -sh "$dir"
