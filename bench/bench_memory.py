"""Memory of the ResNet-50 train step without a GPU: the compiled program's own figures.

  python bench/bench_memory.py [--batch 256 --image-size 224 --members 1,2,5
                                --dtypes float32,bfloat16 --out bench/out/memory.json]

For each dtype x K (members in one vmapped step, as the engine trains them) x remat (off, on),
the engine's train step of configs/starsse.py (ResNet-50, 100 classes, SGD with momentum,
CIFAR-100's uint8 32 x 32 images augmented to image_size inside the step) is lowered on
abstract arguments (jax.ShapeDtypeStruct: nothing of that size is allocated or run) and
compiled for this machine's backend; `compiled.memory_analysis()` gives the bytes of the
arguments (state + batch), outputs, temporaries (activations kept for the backward pass,
gradients, workspaces) and of outputs aliased to donated arguments. The program's footprint is
arguments + outputs + temporaries - aliased (the state is donated: new state reuses it).

The convolutions and max-pool are XLA's own (ENSTRANSFER_CONV=xla, set for the children
unless given), as on a GPU, not the CPU lowerings of models/cpu_ops.py that the CPU backend
uses by default. Each configuration compiles in its own subprocess, one at a time (XLA's compile uses host
memory), and the JSON file is rewritten after each row. Only compiles: on a CPU this takes
about a minute per row (more for K=5), nothing is executed.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 100
CIFAR_PX = 32
GiB = 2**30


def measure(dtype, k, remat, batch, image_size):
  """memory_analysis() figures (bytes) of the compiled K-member train step."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import starsse  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import models, optim  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  config = starsse.get_config()
  config.image_size, config.batch_size, config.dtype, config.remat = image_size, batch, dtype, remat
  model = models.create_model(config.model, NUM_CLASSES, width=config.width, dtype=dtype,
                              remat=remat)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  stacked = jax.tree.map(lambda s: jax.ShapeDtypeStruct((k,) + s.shape, s.dtype), variables)
  tx = optim.create_optimizer(config)
  terms = step_lib.Terms()
  steps = 1 << 16
  schedule = {'lr': jax.ShapeDtypeStruct((steps,), jnp.float32),
              'momentum': jax.ShapeDtypeStruct((steps,), jnp.float32)}
  ids = jax.ShapeDtypeStruct((k,), jnp.int32)
  state = jax.eval_shape(step_lib.make_init_state(tx, terms), stacked, ids, ids, schedule)
  batch_shapes = {
      'images': jax.ShapeDtypeStruct((k, batch, CIFAR_PX, CIFAR_PX, 3), np.uint8),
      'labels': jax.ShapeDtypeStruct((k, batch), jnp.int32),
      'mask': jax.ShapeDtypeStruct((k, batch), jnp.float32),
      'new_epoch': jax.ShapeDtypeStruct((k,), jnp.bool_)}
  fn = step_lib.make_train_step(step_lib.StepSpec.from_config(config, model, terms), tx)
  start = time.perf_counter()
  compiled = fn.lower(state, batch_shapes, {}).compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(variables['params']))
  out = dict(dtype=dtype, members=k, remat=remat, batch=batch, image_size=image_size,
             params=params, compile_s=round(seconds, 1),
             argument_bytes=int(m.argument_size_in_bytes),
             output_bytes=int(m.output_size_in_bytes),
             temp_bytes=int(m.temp_size_in_bytes),
             alias_bytes=int(m.alias_size_in_bytes),
             code_bytes=int(m.generated_code_size_in_bytes),
             backend=jax.devices()[0].platform, jax=jax.__version__,
             conv=os.environ.get('ENSTRANSFER_CONV', 'auto'))
  out['total_bytes'] = (out['argument_bytes'] + out['output_bytes'] + out['temp_bytes']
                        - out['alias_bytes'])
  return out


def table(rows):
  lines = ['| dtype | K | remat | arguments GiB | outputs GiB | aliased GiB | temporaries GiB '
           '| total GiB | per member GiB |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    g = lambda key: f'{r[key] / GiB:.2f}'
    lines.append(f'| {r["dtype"]} | {r["members"]} | {"on" if r["remat"] else "off"} | '
                 f'{g("argument_bytes")} | {g("output_bytes")} | {g("alias_bytes")} | '
                 f'{g("temp_bytes")} | {g("total_bytes")} | '
                 f'{r["total_bytes"] / r["members"] / GiB:.2f} |')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--batch', type=int, default=256, help='images per member per step')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--members', default='1,2,5', help='K values, comma-separated')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--remat', default='off,on', help='off, on or both (off,on)')
  p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out', 'memory.json'))
  p.add_argument('--one', help=argparse.SUPPRESS)  # child: dtype,K,remat
  args = p.parse_args()
  if args.one:
    dtype, k, remat = args.one.split(',')
    print(json.dumps(measure(dtype, int(k), remat == 'on', args.batch, args.image_size)))
    return
  members = [int(v) for v in args.members.split(',')]
  dtypes = args.dtypes.split(',')
  remats = args.remat.split(',')
  if (min(members) < 1 or args.batch < 1 or args.image_size < 32
      or not set(dtypes) <= {'float32', 'bfloat16'} or not set(remats) <= {'off', 'on'}):
    p.error('--members and --batch must be >= 1, --image-size >= 32, --dtypes of float32, '
            'bfloat16, --remat of off, on')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  rows = []
  for k in members:
    for dtype in dtypes:
      for remat in remats:
        cmd = [sys.executable, os.path.abspath(__file__), '--one', f'{dtype},{k},{remat}',
               '--batch', str(args.batch), '--image-size', str(args.image_size)]
        env = dict(os.environ)
        env.setdefault('ENSTRANSFER_CONV', 'xla')  # the GPU's lowering (models/cpu_ops.py)
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, env=env)
        if run.returncode:
          tail = (run.stderr.strip().splitlines() or ['?'])[-1]
          print(f'{dtype} K={k} remat {remat}: failed ({tail[:200]})', flush=True)
          continue
        row = json.loads(run.stdout.strip().splitlines()[-1])
        row['load'] = os.getloadavg()[0]
        rows.append(row)
        print(f'{dtype} K={k} remat {remat}: {row["total_bytes"] / GiB:.2f} GiB '
              f'(temporaries {row["temp_bytes"] / GiB:.2f}), compiled in {row["compile_s"]} s, '
              f'load {row["load"]:.1f}', flush=True)
        with open(args.out, 'w') as f:
          json.dump(rows, f, indent=1)
  print(table(rows))


if __name__ == '__main__':
  main()
