#!/usr/bin/env bash
# The GPU benchmark in one command: prints the machine and library versions, runs
# bench/gpu_bench.py (train-step rows a b c d e g r s, the PyTorch reference rows f f-bf16, peak
# memory per row), then the host crop pipeline (bench/bench_host_pipeline.py) at one thread and
# at all cores, and keeps the tables and the log in one folder.
#   bash bench/gpu.sh --out DIR [gpu_bench.py arguments, e.g. --rows b,f]
#   bash bench/gpu.sh --smoke --out DIR   # reduced run for a CPU: every step of the script, tiny
# DIR (default bench/out) receives gpu_bench.json and gpu_bench.log. Exit status: 0 when every
# row and the host pipeline ran, else 1. Designed to finish within 10 minutes on a GPU machine
# (gpu_bench.py's --budget-s 330 s limit, the host pipeline about a minute). Wheels found in .whl/
# (for machines without network access to PyPI, e.g. ml_collections and giotto-ph) are
# installed into /tmp/site first; a failed install only warns: the bench itself says which
# import is missing.
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

out=bench/out
host=(--images 2048 --workers 1,0 --repeat 2 --steps 0)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --out) out="${args[i + 1]:-bench/out}" ;;
    --out=*) out="${args[i]#--out=}" ;;
    --smoke | --tiny) host=(--images 64 --workers 1,0 --repeat 1 --steps 0) ;;
  esac
done
mkdir -p "$out" || exit 1

if compgen -G '.whl/*.whl' > /dev/null; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu.sh: installing .whl/*.whl failed; going on with the packages already installed"
  fi
fi

{
  nvidia-smi -L 2>/dev/null || echo 'gpu.sh: no nvidia-smi here'
  python3 - <<'PY'
import importlib
import sys
print('python', sys.version.split()[0])
for name in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'torchvision', 'ml_collections', 'gph'):
  try:
    print(f'{name:<15}', getattr(importlib.import_module(name), '__version__', 'importable'))
  except ImportError as err:
    print(f'{name:<15} MISSING ({err})')
import jax
print('jax.devices()', jax.devices())
PY
  python3 bench/gpu_bench.py "$@" --out "$out"
  status=$?
  echo "gpu.sh: host crop pipeline, $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  TF_CPP_MIN_LOG_LEVEL=3 python3 bench/bench_host_pipeline.py "${host[@]}" || status=1
  echo "gpu.sh: exit status $status"
  exit "$status"
} 2>&1 | tee "$out/gpu_bench.log"
exit "${PIPESTATUS[0]}"
