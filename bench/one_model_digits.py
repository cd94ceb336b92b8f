"""One network instead of the ensemble, over seeds: the table of RESULTS.md's one-model section.

  python -m enstransfer_jax.reproduce --task digits --seeds 3 --methods starsse sse local_de \
      --out DIR
  python bench/one_model_digits.py DIR [--epochs N] [--temperature T] [--alpha A]

For every finished run DIR/<method>/seed=S: the distilled student (enstransfer_jax/distill.py,
in the run's distill/, made once), then the one-model analysis (analysis/one_model.py: the
ensemble, both soups, the student and member 1 on the evaluation split; OOD against digits 0-4,
the classes of the task's pre-training; no basin, no RTD). Per method and model: the mean over
seeds and its 95% t-interval (mean +- t_{0.975, n-1} sd / sqrt(n)), also of the paired
difference from the same run's ensemble (accuracy, NLL); the per-run rows go to
DIR/one_model_runs.csv and the table to DIR/one_model.md.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from enstransfer_jax import distill, rundir  # pylint: disable=wrong-import-position
from enstransfer_jax.analysis import compare, pipeline, tables  # pylint: disable=wrong-import-position

VALUES = (('acc', 100.0, '.2f'), ('nll', 1.0, '.3f'), ('ece', 1.0, '.3f'),
          ('ece_tempered', 1.0, '.3f'), ('aurc', 1.0, '.4f'), ('ood_auroc', 1.0, '.3f'))


def interval(values, scale, spec):
  mean, _, hi = compare.mean_interval(np.asarray(values, float) * scale)
  if not np.isfinite(hi):
    return format(mean, spec)
  return f"{format(mean, spec)} +- {format(hi - mean, spec.lstrip('+'))}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('out')
  p.add_argument('--epochs', type=int, default=None)
  p.add_argument('--temperature', type=float, default=1.0)
  p.add_argument('--alpha', type=float, default=1.0)
  p.add_argument('--ood', default='digits:0,1,2,3,4')
  p.add_argument('--reuse', action='store_true',
                 help='read the one-model rows of an analysis already in <run>/analysis')
  args = p.parse_args(argv)
  runs = []
  for method in sorted(os.listdir(args.out)):
    mdir = os.path.join(args.out, method)
    if not os.path.isdir(mdir) or method in ('pretrain', 'logs'):
      continue
    for seed_dir in sorted(os.listdir(mdir)):
      w = os.path.join(mdir, seed_dir)
      if os.path.isfile(os.path.join(w, 'summary.json')):
        runs.append((method, seed_dir, w))
  rows = []
  for method, seed, w in runs:
    t0 = time.time()
    distill.distill(w, epochs=args.epochs, temperature=args.temperature, alpha=args.alpha)
    t1 = time.time()
    done = os.path.join(w, 'analysis', 'analysis.json')
    if args.reuse and os.path.isfile(done):
      res = rundir.RunDir(w).read_json(os.path.join('analysis', 'analysis.json'))
    else:
      opts = pipeline.Options(basin=False, rtd_points=0, rtd_batch=0, grid=0, ood=args.ood,
                              progress=False)
      res = pipeline.analyze_run(w, os.path.join(w, 'analysis'), opts)
    print(f'{method} {seed}: distilled in {t1 - t0:.0f} s, analysed in '
          f'{time.time() - t1:.0f} s; greedy soup of members '
          f"{res['one_model']['greedy_members']}", flush=True)
    rows += [{'method': method, 'seed': seed, 'greedy_members': ' '.join(
        map(str, res['one_model']['greedy_members'])), **r} for r in res['one_model']['rows']]
  tables.write_csv(os.path.join(args.out, 'one_model_runs.csv'), rows)
  table = []
  for method in dict.fromkeys(r['method'] for r in rows):
    for model in dict.fromkeys(r['model'] for r in rows):
      sel = [r for r in rows if r['method'] == method and r['model'] == model]
      if not sel:
        continue
      ens = {r['seed']: r for r in rows if r['method'] == method and r['model'] == 'ensemble'}
      paired = [r['acc'] - ens[r['seed']]['acc'] for r in sel]
      table.append({'method': method, 'model': model, 'runs': len(sel),
                    'networks': sel[0]['networks'],
                    'acc_vs_ensemble': interval(paired, 100.0, '+.2f'),
                    'nll_vs_ensemble': interval(
                        [r['nll'] - ens[r['seed']]['nll'] for r in sel], 1.0, '+.3f'),
                    **{k: interval([r.get(k, np.nan) for r in sel], s, f)
                       for k, s, f in VALUES}})
  cols = [('method', 'method'), ('model', 'model'), ('networks', 'networks / image'),
          ('runs', 'seeds'), ('acc', 'acc (%)'), ('acc_vs_ensemble', 'acc - ensemble (pts)'),
          ('nll', 'NLL'), ('nll_vs_ensemble', 'NLL - ensemble'), ('ece', 'ECE'),
          ('ece_tempered', 'ECE, T-scaled'), ('aurc', 'AURC'),
          ('ood_auroc', 'OOD AUROC (entropy)')]
  text = tables.markdown_table(table, cols, {c: str for c, _ in cols})
  with open(os.path.join(args.out, 'one_model.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
