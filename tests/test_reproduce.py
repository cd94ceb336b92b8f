"""python -m enstransfer_jax.reproduce end to end on a tiny digits task (2 methods, 2 seeds):
the table against the runs' summary.json by hand, the paired differences against scipy, the
one pre-training every seed fine-tunes, resuming, and the command's bad inputs."""

import csv
import json
import os

import numpy as np
import pytest
from scipy import stats

import configs
from enstransfer_jax import reproduce
from enstransfer_jax.training import experiment

TINY = ['width=4', 'image_size=16', 'transform_name=none', 'batch_size=300',
        'eval_batch_size=400', 'epochs=1', 'fge_epochs=1', 'num_fge=2', 'pretrain.epochs=1',
        "compilation_cache_dir=''", 'checkpoint_every_steps=1000']
METHODS = ('sse', 'starsse')
SEEDS = (0, 1)


def _summary(out, method, seed):
  with open(os.path.join(out, method, f'seed={seed}', 'summary.json')) as f:
    return json.load(f)


def _csv(path):
  with open(path) as f:
    return {r['method']: r for r in csv.DictReader(f)}


@pytest.fixture(scope='module')
def table(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('reproduce'))
  reproduce.main(['--task', 'digits', '--seeds', '2', '--methods', *METHODS, '--out', out,
                  '--no-progress', '--set', *TINY])
  return out


def test_table_against_summaries_by_hand(table):
  rows = _csv(os.path.join(table, 'table.csv'))
  assert sorted(rows) == sorted(METHODS)
  for method in METHODS:
    runs = [_summary(table, method, s) for s in SEEDS]
    row = rows[method]
    assert int(row['seeds']) == 2 and int(row['members']) == 2
    member = [100 * np.mean([m['test_acc'] for m in r['members']]) for r in runs]
    ens = [100 * r['ensembles'][-1]['acc'] for r in runs]
    first = [100 * r['ensembles'][0]['acc'] for r in runs]
    nll = [r['ensembles'][-1]['nll'] for r in runs]
    div = [r['diversity'] for r in runs]
    for key, values in (('member_acc', member), ('ensemble_acc', ens), ('acc_k1', first),
                        ('ensemble_nll', nll), ('diversity', div)):
      np.testing.assert_allclose(float(row[f'{key}_mean']), np.mean(values), rtol=1e-9)
      np.testing.assert_allclose(float(row[f'{key}_std']), np.std(values, ddof=1), rtol=1e-9,
                                 atol=1e-12)
    walls = [json.load(open(os.path.join(table, method, f'seed={s}', 'wall_time.json')))
             ['wall_seconds'] for s in SEEDS]
    np.testing.assert_allclose(float(row['wall_seconds_mean']), np.mean(walls), rtol=1e-9)
  md = open(os.path.join(table, 'table.md')).read()
  assert f"{float(rows['sse']['ensemble_acc_mean']):.2f}" in md


def test_paired_difference_against_scipy(table):
  row = _csv(os.path.join(table, 'table.csv'))['sse']
  for key, get in (('ensemble_acc', lambda r: 100 * r['ensembles'][-1]['acc']),
                   ('diversity', lambda r: r['diversity'])):
    x = [get(_summary(table, 'sse', s)) for s in SEEDS]
    y = [get(_summary(table, 'starsse', s)) for s in SEEDS]
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    np.testing.assert_allclose(float(row[f'{key}_diff']), np.mean(np.subtract(x, y)), rtol=1e-9)
    np.testing.assert_allclose(float(row[f'{key}_diff_lo']), ci.low, rtol=1e-9)
    np.testing.assert_allclose(float(row[f'{key}_diff_hi']), ci.high, rtol=1e-9)
  assert int(row['paired_seeds']) == 2


def test_one_pretraining_shared_by_every_seed(table):
  """One pre-training (<out>/pretrain, seed digits_task.PRETRAIN_SEED); every method and every
  fine-tuning seed starts from its checkpoint."""
  from configs import digits_task  # pylint: disable=g-import-not-at-top
  pre = os.path.join(table, 'pretrain')
  assert os.path.exists(os.path.join(pre, 'summary.json'))
  assert json.load(open(os.path.join(pre, 'config.json')))['seed'] == digits_task.PRETRAIN_SEED
  assert sorted(os.listdir(table)) == sorted(['logs', 'pretrain', 'table.csv', 'table.md',
                                              *METHODS])
  for s in SEEDS:
    for method in METHODS:
      config = json.load(open(os.path.join(table, method, f'seed={s}', 'config.json')))
      assert config['ckpt'] == os.path.join(pre, 'members', '1', 'checkpoint')
      assert config['seed'] == s and not config['pretrain']['enabled']
      assert not os.path.isdir(os.path.join(table, method, f'seed={s}', 'pretrain'))


def test_pretrain_seed_option(table, capsys):
  jobs = reproduce.digits_jobs(['sse'], [0, 1], '/o', configs.parse_assignments(TINY), 7)
  assert [(j.method, j.seed, j.config.seed, j.workdir) for j in jobs] == [
      ('pretrain', 7, 7, '/o/pretrain'), ('sse', 0, 0, '/o/sse/seed=0'),
      ('sse', 1, 1, '/o/sse/seed=1')]
  assert reproduce.parse_args(['--pretrain-seed', '3']).pretrain_seed == 3
  # Another pre-training seed in the same --out is another config: an error, nothing trained.
  with pytest.raises(SystemExit) as e:
    reproduce.main(['--task', 'digits', '--seeds', '2', '--methods', *METHODS, '--out', table,
                    '--no-progress', '--pretrain-seed', '1', '--set', *TINY])
  assert e.value.code == 2
  assert os.path.join(table, 'pretrain') in capsys.readouterr().err


def test_finished_runs_are_not_trained_again(table, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('a finished run was trained again')
  monkeypatch.setattr(experiment, 'run_experiment', fail)
  before = open(os.path.join(table, 'table.csv')).read()
  reproduce.main(['--task', 'digits', '--seeds', '2', '--methods', *METHODS, '--out', table,
                  '--no-progress', '--set', *TINY])
  assert open(os.path.join(table, 'table.csv')).read() == before
  reproduce.main(['--task', 'digits', '--seeds', '2', '--methods', *METHODS, '--out', table,
                  '--no-progress', '--table-only', '--reference', 'sse', '--set', *TINY])
  swapped, rows = _csv(os.path.join(table, 'table_vs_sse.csv')), _csv(os.path.join(table,
                                                                                   'table.csv'))
  for key in ('ensemble_acc_diff', 'diversity_diff'):
    np.testing.assert_allclose(float(swapped['starsse'][key]), -float(rows['sse'][key]))
  assert open(os.path.join(table, 'table.csv')).read() == before
  # A field added to the code after a run finished does not make it another config...
  path = os.path.join(table, 'sse', 'seed=1', 'config.json')
  original = open(path).read()
  recorded = json.loads(original)
  del recorded['lr'], recorded['pretrain']['lr']
  with open(path, 'w') as f:
    json.dump(recorded, f)
  reproduce.main(['--task', 'digits', '--seeds', '2', '--methods', *METHODS, '--out', table,
                  '--no-progress', '--set', *TINY])
  assert open(os.path.join(table, 'table.csv')).read() == before
  # ...a recorded field with another value does.
  recorded['wd'] = 0.5
  with open(path, 'w') as f:
    json.dump(recorded, f)
  with pytest.raises(SystemExit) as e:
    reproduce.main(['--task', 'digits', '--seeds', '2', '--methods', *METHODS, '--out', table,
                    '--no-progress', '--set', *TINY])
  assert e.value.code == 2
  with open(path, 'w') as f:
    f.write(original)


def test_bad_inputs(tmp_path, capsys):
  with pytest.raises(SystemExit):
    reproduce.parse_args(['--methods', 'nope'])
  assert "unknown method 'nope'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    reproduce.parse_args(['--task', 'cifar100'])
  assert 'needs --ckpts' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    reproduce.main(['--task', 'cifar100', '--ckpts', str(tmp_path / 'a'), str(tmp_path / 'b'),
                    '--out', str(tmp_path / 'o')])
  assert e.value.code == 2
  assert 'pre-trained checkpoint' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    reproduce.main(['--out', str(tmp_path / 'o'), '--set', 'no_such_field=1'])
  assert e.value.code == 2
  assert 'no field' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'o')


def test_cifar100_runs_are_the_thesis_configs(tmp_path):
  """2 checkpoints x 3 seeds as docs/reproduce.md lists them; Global DE on every checkpoint."""
  import importlib  # pylint: disable=g-import-not-at-top
  ckpts = [str(tmp_path / f'byol-{i}') for i in range(1, 4)]
  for path in ckpts:
    os.makedirs(path)
  jobs = reproduce.cifar100_jobs(['starsse', 'global_de'], ckpts, 3, str(tmp_path / 'o'))
  assert [(j.method, j.seed) for j in jobs] == [
      (m, s) for s in range(1, 7) for m in ('starsse', 'global_de')]
  for job in jobs:
    expected = importlib.import_module(f'configs.{job.method}').get_config()
    got = job.config.to_dict()
    if job.method == 'global_de':
      assert tuple(got.pop('ckpts')) == tuple(ckpts)
      expected.ckpts = ()
    else:
      assert got.pop('ckpt') == ckpts[0 if job.seed <= 3 else 1]
    assert got.pop('seed') == job.seed and got.pop('progress') is False
    want = expected.to_dict()
    for key in ('ckpt', 'ckpts', 'seed', 'progress'):
      want.pop(key, None)
      got.pop(key, None)
    assert got == want
    assert job.workdir == str(tmp_path / 'o' / job.method / f'seed={job.seed}')
