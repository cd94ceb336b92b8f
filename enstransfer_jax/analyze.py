"""The thesis's tables and figures from finished runs.

  python -m enstransfer_jax.analyze WORK_DIR [WORK_DIR ...] [--out DIR] [options]

For each work dir: tables, similarities, weight distances, soup, basin, plots and report.md
(enstransfer_jax/analysis/pipeline.py) in WORK_DIR/analysis/, or in DIR (several work dirs:
DIR/<index>_<work dir name>/). Given several work dirs, also comparison.md / comparison.csv:
methods (summary 'name') x mean member accuracy, diversity, ensemble accuracy as mean +- std
over runs, in DIR or ./analysis/. --compare-only skips the per-run analysis.
The basin analysis recomputes BN statistics on the whole train split at every point (about
200 points for 5 members); --bn-examples / --eval-examples / --no-basin make it cheaper.
Runs whose config enables wandb also log their tables and figures to a wandb run.
Calibration (reliability diagrams, temperature scaling: analysis/calibration.py) is part of
every analysis (--no-calibration skips it); --ood DATASET[:CLASSES] adds out-of-distribution
detection against that dataset's test split (analysis/ood.py), e.g. --ood digits:0,1,2,3,4.
The thesis's own analyses (analysis/study.py) are part of every analysis: distances to member
1 against accuracy (its Figures 4.2 / 4.3), raw weight cosine against diversity (6.2 / 6.4),
and every sub-ensemble of K members (--subensembles K, default 5, 0 skips it: Figure 6.1,
Table 6.1); given several work dirs, DIR/study.md pools them (one method's runs together).
"""

import argparse
import dataclasses
import os
import sys

from enstransfer_jax import rundir
from enstransfer_jax.analysis import compare, pipeline
from enstransfer_jax.errors import UserError
from enstransfer_jax.training import wandb_log


def _out_dirs(workdirs, out):
  if out is None:
    return [os.path.join(w, 'analysis') for w in workdirs]
  if len(workdirs) == 1:
    return [out]
  return [os.path.join(out, f'{k + 1}_{os.path.basename(os.path.normpath(w))}')
          for k, w in enumerate(workdirs)]


def _read_summary(workdir):
  run = rundir.RunDir(workdir)
  summary = run.summary()
  summary.setdefault('workdir', workdir)
  summary['run_dir'] = workdir  # where relative checkpoint paths are looked up
  for name in ('config', 'run_info'):  # the thesis columns check the run's setting
    file = f'{name}.json'
    summary[name] = run.read_json(file) if os.path.isfile(run.file(file)) else None
  return summary


def log_wandb(config, out, files, progress=True):
  """Tables (CSV) and figures (PNG) of one analysis to a wandb run; never required."""
  mode = wandb_log.resolve_mode(config.get('wandb_mode', 'disabled'))
  if mode == 'disabled':
    return None
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('wandb is not installed: analysis not logged to wandb', file=sys.stderr)
    return None
  try:
    import csv  # pylint: disable=g-import-not-at-top
    run = wandb.init(project=config.get('wandb_project', 'EnsForTransfer'),
                     group=config.get('wandb_group', None), job_type='analysis',
                     name=f"{config.get('exp_name') or config.get('name', 'run')}-analysis",
                     dir=out, mode=mode, config=config.to_dict(), reinit='finish_previous')
    payload = {}
    for name, path in sorted(files.items()):
      key = os.path.splitext(name)[0]
      if name.endswith('.png'):
        payload[f'analysis/{key}'] = wandb.Image(path)
      elif name.endswith('.csv'):
        with open(path) as f:
          rows = list(csv.reader(f))
        payload[f'analysis/{key}'] = wandb.Table(columns=rows[0], data=rows[1:])
    run.log(payload)
    run.finish()
    if progress:
      print(f'wandb: analysis logged ({mode})', flush=True)
    return run
  except Exception as e:  # pylint: disable=broad-except
    print(f'wandb logging of the analysis failed ({type(e).__name__}: {e}); the files in '
          f'{out} are complete', file=sys.stderr)
    return None


def _check_runs(workdirs, allow_partial, compare_only):
  """One line for a work dir given twice, a damaged file, or an unfinished run or one that
  lost a member (unless allow_partial); returns the notes of the partial runs used."""
  seen = {}
  for w in workdirs:
    key = os.path.realpath(w)
    if key in seen:
      raise UserError(f'work dir {w} is given twice ({seen[key]} and {w}); give each run once')
    seen[key] = w
  notes = []
  for w in workdirs:
    run = rundir.RunDir(w)
    for name in (rundir.CONFIG, rundir.RUN_INFO, rundir.SUMMARY):
      if os.path.isfile(run.file(name)):
        run.read_json(name)  # a damaged file is one line
    if compare_only:
      continue
    found = run.member_ids(rundir.PROBS)
    for i in found:
      run.member_probs(i)
    note = run.check_members(found, allow_partial)
    if note:
      notes.append(note)
  return notes


def _setting(summary):
  """What a run trained: (dataset, class subset, model), from its config.json."""
  c = summary.get('config') or {}
  subset = ','.join(map(str, c.get('class_subset') or ())) or 'all'
  return (str(c.get('dataset', '?')), subset, str(c.get('model', '?')))


def group_by_setting(summaries):
  """Rows of the comparison are per method; runs of one method on several datasets, class
  subsets or models are several rows (their method name gets the setting added)."""
  settings = {}
  for s in summaries:
    settings.setdefault(s.get('name'), set()).add(_setting(s))
  return [dict(s, name=f"{s['name']} ({_setting(s)[0]}, classes {_setting(s)[1]}, "
                       f'{_setting(s)[2]})') if len(settings[s.get('name')]) > 1 else s
          for s in summaries]


def analyze_runs(workdirs, out=None, *, subset=512, progress=True, compare_only=False,
                 allow_partial=False, **options):
  """Analyses every work dir; with several, writes the comparison. Returns
  {'runs': [results per work dir], 'comparison': rows or None}. Runs are grouped by method,
  dataset, class subset and model; a run without all its members is refused unless
  `allow_partial` (then a note says which members were used)."""
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  workdirs = [os.fspath(w) for w in workdirs]
  if not workdirs:
    raise UserError('give at least one work dir')
  unknown = set(options) - {f.name for f in dataclasses.fields(pipeline.Options)}
  if unknown:
    raise UserError(f'unknown analysis option(s) {sorted(unknown)}; valid: '
                    f'{[f.name for f in dataclasses.fields(pipeline.Options)]}')
  opts = pipeline.Options(subset=subset, progress=progress, **options)
  opts.check()
  for w in workdirs:
    if not os.path.isdir(w):
      raise FileNotFoundError(f'work dir {w} does not exist')
  if opts.ood:  # a bad spec is one line before any file is written
    from enstransfer_jax.analysis import ood  # pylint: disable=g-import-not-at-top
    from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
    if ood.parse_spec(opts.ood)[0] not in datasets.DATASETS:
      raise UserError(f'--ood {opts.ood!r}: unknown dataset; use one of '
                      f"{', '.join(datasets.DATASETS)}")
  for note in _check_runs(workdirs, allow_partial, compare_only):
    print(f'note: {note}', flush=True)
  results = []
  if not compare_only:
    for w, o in zip(workdirs, _out_dirs(workdirs, out)):
      if progress:
        print(f'== analysing {w} -> {o}', flush=True)
      res = pipeline.analyze_run(w, o, opts)
      log_wandb(rundir.RunDir(w).config(), o, res['files'], progress)
      results.append(res)
      if progress:
        print(f"   report: {res['files']['report.md']}", flush=True)
  rows = None
  if len(workdirs) > 1 or compare_only:
    cmp_dir = out if out is not None else os.path.join(os.getcwd(), 'analysis')
    rows = compare.write_comparison(cmp_dir,
                                    group_by_setting([_read_summary(w) for w in workdirs]))
    if len(results) > 1:  # the thesis's analyses pooled over runs (analysis/study.py)
      from enstransfer_jax.analysis import study  # pylint: disable=g-import-not-at-top
      pooled = study.write_pooled(cmp_dir, results)
      if progress and pooled:
        print(f"== pooled analyses: {pooled['study.md']}", flush=True)
    if progress:
      print(f"== comparison: {os.path.join(cmp_dir, 'comparison.md')}", flush=True)
      print(compare.markdown(rows), flush=True)
  return {'runs': results, 'comparison': rows}


def parse_args(argv):
  d = pipeline.Options()
  p = argparse.ArgumentParser(prog='python -m enstransfer_jax.analyze', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdirs', nargs='+', metavar='WORK_DIR', help='finished run directories')
  p.add_argument('--out', default=None, help='output directory (default WORK_DIR/analysis)')
  p.add_argument('--subset', type=int, default=d.subset,
                 help='test examples for the representation comparisons')
  p.add_argument('--rtd-points', type=int, default=d.rtd_points,
                 help='examples of the subset used for RTD (0: no RTD)')
  p.add_argument('--rtd-batch', type=int, default=d.rtd_batch,
                 help='RTD metric: examples per random subset (0: no RTD metric)')
  p.add_argument('--rtd-trials', type=int, default=d.rtd_trials,
                 help='RTD metric: random subsets averaged over')
  p.add_argument('--line-points', type=int, default=d.line_points)
  p.add_argument('--grid', type=int, default=d.grid, help='plane grid size (0: no plane)')
  p.add_argument('--bn-examples', type=int, default=d.bn_examples,
                 help='training images for BN recomputation, a fixed random sample (0: all)')
  p.add_argument('--eval-examples', type=int, default=d.eval_examples,
                 help='test images scored in the basin analysis, a fixed random sample (0: all)')
  p.add_argument('--no-soup', dest='soup', action='store_false')
  p.add_argument('--ood', default=d.ood, metavar='DATASET[:CLASSES]',
                 help='out-of-distribution detection against the test split of DATASET '
                 '(classes CLASSES, e.g. digits:0,1,2,3,4)')
  p.add_argument('--no-calibration', dest='calibration', action='store_false',
                 help='skip the reliability diagrams and temperature scaling')
  p.add_argument('--no-basin', dest='basin', action='store_false')
  p.add_argument('--subensembles', type=int, default=d.subensembles, metavar='K',
                 help='the sub-ensemble study (thesis Figure 6.1 / Table 6.1) over ensembles '
                 'of K members (0: none)')
  p.add_argument('--compare-only', action='store_true',
                 help='only the comparison table of the runs (from their summary.json)')
  p.add_argument('--allow-partial', action='store_true',
                 help='analyse the members there of an unfinished run or one that lost a member')
  p.add_argument('--quiet', dest='progress', action='store_false')
  return p.parse_args(argv)


def main(argv=None):
  args = vars(parse_args(sys.argv[1:] if argv is None else argv))
  from enstransfer_jax.errors import user_errors  # pylint: disable=g-import-not-at-top
  with user_errors():
    analyze_runs(args.pop('workdirs'), args.pop('out'), **args)


if __name__ == '__main__':
  main()
