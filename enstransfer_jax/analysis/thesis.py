"""The thesis's Table 4.1 and the comparison of finished runs with it.

Table 4.1 of the thesis (ens-hse-diploma, diploma.pdf): BYOL ResNet-50 fine-tuned on
CIFAR-100, ensembles of 5; accuracies in %, diversity = 100 x mean pairwise disagreement / max
error; every column is mean +- std. The thesis runs every method 6 times (2 pre-trained
checkpoints x 3 seeds) except Local and Global DE, which it takes from the paper (Sadrtdinov
et al., 2023): means over 5 runs. The StarSSE-WO row is the alpha = -31.6 column of the thesis's
Table 6.3 (same accuracies and diversity; Table 6.3 gives a member-accuracy std of 0.12 where
Table 4.1 gives 0.24); configs/starsse_wo.py uses wo_beta 10, which changes nothing in
training since the reference's WO term has no gradient. Rows are keyed by the config name
(configs/*.py `c.name`) of the method that reproduces them.

thesis_columns(name, runs, member_acc, ensemble_acc) gives, for a method of the table whose
runs are all in the thesis's setting (setting_problem), the thesis's values and the
difference of the runs' mean from the thesis's mean in units of the thesis's std:
    z = (mean over runs - thesis mean) / thesis std.
"""

import json
import os

# name: (row label, (member acc mean, std), (diversity mean, std), (ensemble acc mean, std),
#        runs), as printed in the thesis's Table 4.1.
TABLE_4_1 = {
    'local_de': ('Local DE (the paper\'s)', (86.02, 0.09), (66.25, 3.56), (87.33, 0.21), 5),
    'global_de': ('Global DE (the paper\'s)', (86.02, 0.09), (80.21, 1.6), (88.10, 0.11), 5),
    'sse': ('SSE', (85.52, 0.34), (71.57, 5.94), (87.11, 0.06), 6),
    'starsse': ('StarSSE', (85.88, 0.25), (68.12, 1.15), (87.41, 0.12), 6),
    'sse_rtd': ('SSE-RTD (beta 0.0316, pooled map)', (85.71, 0.07), (68.04, 5.78),
                (87.36, 0.09), 6),
    'sse_mse': ('SSE-MSE (beta 20, pooled map)', (86.46, 0.221), (56.62, 5.95), (87.37, 0.02),
                6),
    'freeze_starsse': ('StarSSE (1) frozen before layer3, x0.74 time', (85.57, 0.356),
                       (71.37, 2.02), (87.26, 0.06), 6),
    'freeze_starsse_layer4': ('StarSSE (2) frozen before layer4, x0.6 time', (85.94, 0.225),
                              (60.94, 1.25), (87.1, 0.14), 6),
    'freeze_starsse_through_layer4': ('StarSSE (3) frozen through layer4, x0.55 time',
                                      (86.01, 0.195), (17.38, 1.02), (86.09, 0.22), 6),
    'starsse_wo': ('StarSSE-WO (Table 6.3, alpha -31.6)', (85.83, 0.24), (67.31, 1.77),
                   (87.4, 0.16), 6),
    'starsse_ce': ('StarSSE-CE (2) (only wrong, beta -0.1)', (85.4, 0.49), (75.21, 3.79),
                   (87.44, 0.2), 6),
}
ENSEMBLE_SIZE = 5
COLUMNS = ('thesis_member_acc_mean', 'thesis_member_acc_std', 'member_acc_vs_thesis',
           'thesis_diversity', 'thesis_diversity_std', 'thesis_ensemble_acc_mean',
           'thesis_ensemble_acc_std', 'ensemble_acc_vs_thesis', 'thesis_runs', 'thesis_note')


def _is_resnet50(model):
  return str(model).lower().replace('imagenet', '').replace('_', '').replace('-', '') == \
      'resnet50'


def _is_byol(path, workdir):
  """The checkpoint's file name, or the torch file a converted dir came from, says BYOL."""
  names = [os.path.basename(os.path.normpath(path))]
  for d in (path, os.path.join(workdir, path)):
    meta = os.path.join(d, 'metadata.json')
    if os.path.isfile(meta):
      with open(meta) as f:
        names.append(str(json.load(f).get('source', '')))
      break
  return any('byol' in n.lower() for n in names)


def setting_problem(summary):
  """None when the run is BYOL ResNet-50 on CIFAR-100 as in the thesis, else what differs.

  Reads the summary's 'config' (config.json) and 'run_info' (run_info.json) entries;
  relative checkpoint paths are also looked up in its 'run_dir'.
  """
  config, info = summary.get('config'), summary.get('run_info')
  if not config or not info:
    return 'config.json / run_info.json missing'
  model = info.get('model', config.get('model'))
  if not _is_resnet50(model) or int(info.get('width', config.get('width', 64))) != 64:
    return f'model {model} (width {info.get("width")}), not ResNet-50'
  dataset = info.get('dataset', config.get('dataset'))
  if dataset != 'cifar100' or int(info.get('num_classes', 100)) != 100:
    return f'dataset {dataset} with {info.get("num_classes")} classes, not CIFAR-100'
  if int(config.get('image_size', 224)) != 224 or not config.get('use_test', True):
    return 'not 224 px images evaluated on the test split'
  pretrained = info.get('pretrained', config.get('ckpt', ''))
  paths = pretrained if isinstance(pretrained, (list, tuple)) else [pretrained]
  run_dir = summary.get('run_dir', summary.get('workdir', ''))
  if not all(paths):
    return 'trained from scratch, not from BYOL checkpoints'
  if not all(_is_byol(p, run_dir) for p in paths):
    return f'pre-trained checkpoint {pretrained!r} is not a BYOL one'
  size = summary['ensembles'][-1]['size']
  if size != ENSEMBLE_SIZE:
    return f'ensemble of {size}, the thesis reports {ENSEMBLE_SIZE}'
  return None


def thesis_columns(name, runs, member_acc, ensemble_acc):
  """The thesis's columns of one method (empty with a note when not comparable).

  Args:
    name: the method's config name.
    runs: the runs' summary dicts (with 'config', 'run_info', 'ensembles').
    member_acc, ensemble_acc: the runs' mean member and ensemble accuracies in %.
  """
  out = dict.fromkeys(COLUMNS)
  if name not in TABLE_4_1:
    out['thesis_note'] = 'not in Table 4.1'
    return out
  problems = [p for p in (setting_problem(r) for r in runs) if p]
  if problems:
    out['thesis_note'] = problems[0]
    return out
  _, (m_mean, m_std), (div, div_std), (e_mean, e_std), runs_n = TABLE_4_1[name]
  mean = lambda v: sum(v) / len(v)
  out.update(thesis_member_acc_mean=m_mean, thesis_member_acc_std=m_std,
             member_acc_vs_thesis=(mean(member_acc) - m_mean) / m_std, thesis_diversity=div,
             thesis_diversity_std=div_std, thesis_runs=runs_n,
             thesis_ensemble_acc_mean=e_mean, thesis_ensemble_acc_std=e_std,
             ensemble_acc_vs_thesis=(mean(ensemble_acc) - e_mean) / e_std, thesis_note='')
  return out


def formatted(row):
  """Markdown cells of a comparison row's thesis columns: '86.02 +- 0.09', '+1.23'
  (means and stds to 2 decimals, as the thesis prints most of them)."""
  if row.get('thesis_ensemble_acc_mean') is None:
    return {'thesis_member_acc': '', 'member_acc_z': '', 'thesis_diversity_cell': '',
            'thesis_ensemble_acc': f"n/a: {row.get('thesis_note') or 'not comparable'}",
            'ensemble_acc_z': ''}
  return {
      'thesis_member_acc': f"{row['thesis_member_acc_mean']:.2f} +- "
                           f"{row['thesis_member_acc_std']:.2f}",
      'member_acc_z': f"{row['member_acc_vs_thesis']:+.2f}",
      'thesis_diversity_cell': f"{row['thesis_diversity']:.2f} +- "
                               f"{row['thesis_diversity_std']:.2f}",
      'thesis_ensemble_acc': f"{row['thesis_ensemble_acc_mean']:.2f} +- "
                             f"{row['thesis_ensemble_acc_std']:.2f}",
      'ensemble_acc_z': f"{row['ensemble_acc_vs_thesis']:+.2f}",
  }
