#!/usr/bin/env bash
# One command for the GPU box: installs the wheels carried in .whl/ (ml_collections, giotto-ph:
# the box lacks them), prints the machine and library versions, then runs bench/gpu_bench.py.
#   bash bench/gpu.sh [gpu_bench.py arguments, e.g. --tiny or --rows b,f]
# A failed wheel install only warns: the bench itself says which import is missing.
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if compgen -G '.whl/*.whl' > /dev/null; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu.sh: installing .whl/*.whl failed; going on with the packages already installed"
  fi
fi

nvidia-smi -L 2>/dev/null || echo 'gpu.sh: no nvidia-smi here'
python3 - <<'EOF'
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
EOF

timeout 270 python3 bench/gpu_bench.py "$@"
