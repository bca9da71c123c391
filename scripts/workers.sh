#!/usr/bin/env bash
# N workers on the same studies, one per GPU (CUDA_VISIBLE_DEVICES) or, without GPUs, with the CPU
# cores split between them (OMP_NUM_THREADS); one log each. Used by `make workers`.
#   scripts/workers.sh N LOGDIR COMMAND...     e.g. scripts/workers.sh 2 logs python -m steerlab -m ...
# Exits non-zero if any worker did; a worker that dies leaves its trials to the others.
set -uo pipefail
n=${1:?usage: workers.sh N LOGDIR COMMAND...}
logs=${2:?usage: workers.sh N LOGDIR COMMAND...}
shift 2
mkdir -p "$logs"
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' )
threads=$(( $(nproc) / n )); [ "$threads" -ge 1 ] || threads=1
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
for i in $(seq 0 $((n - 1))); do
  if [ "$gpus" -gt 0 ]; then
    env CUDA_VISIBLE_DEVICES=$((i % gpus)) "$@" >"$logs/worker-$i.log" 2>&1 &
  else
    env OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
      "$@" >"$logs/worker-$i.log" 2>&1 &
  fi
  pids+=($!)
  echo "worker $i: pid $! log $logs/worker-$i.log"
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
