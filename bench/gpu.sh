#!/usr/bin/env bash
# The GPU benchmark in one command: prints the machine and library versions, then runs
# bench/gpu_bench.py and keeps its table and log in one folder.
#   bash bench/gpu.sh --out DIR [gpu_bench.py arguments, e.g. --rows b,f or --tiny]
# DIR (default bench/out) receives gpu_bench.json and gpu_bench.log. Wheels found in .whl/
# (for machines without network access to PyPI, e.g. ml_collections and giotto-ph) are
# installed into /tmp/site first; a failed install only warns: the bench itself says which
# import is missing.
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

out=bench/out
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --out) out="${args[i + 1]:-bench/out}" ;;
    --out=*) out="${args[i]#--out=}" ;;
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
} 2>&1 | tee "$out/gpu_bench.log"
exit "${PIPESTATUS[0]}"
