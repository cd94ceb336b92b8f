"""End-to-end engine tests on a tiny run: outputs, where members start, optimizer resets,
summary.json recomputed by hand from the saved probabilities, config errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from enstransfer_jax import checkpoints
from enstransfer_jax.training import run_experiment
from tests import engine_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


def _member(workdir, i):
  _, variables = checkpoints.load_pretrained(os.path.join(workdir, 'members', str(i), 'checkpoint'))
  return variables


def test_every_output_is_written(starsse_run):
  workdir, summary, _, _ = starsse_run
  for name in ('config.json', 'run_info.json', 'metrics.jsonl', 'test_labels.npy', 'summary.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  for i in range(1, 5):
    probs = np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy'))
    assert probs.dtype == np.float32 and probs.shape == (len(labels), 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  events = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_events = [e for e in events if e['event'] == 'train']
  assert {e['member'] for e in train_events} == {1, 2, 3, 4}
  for key in ('epoch', 'step', 'lr', 'loss', 'ce', 'acc'):
    assert key in train_events[0]
  assert json.load(open(os.path.join(workdir, 'summary.json'))) == summary


def test_summary_recomputed_by_hand(starsse_run):
  workdir, summary, _, _ = starsse_run
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  probs = [np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy')) for i in range(1, 5)]
  preds = [p.argmax(-1) for p in probs]
  for i, m in enumerate(summary['members']):
    assert m['test_acc'] == pytest.approx(np.mean(preds[i] == labels))
  for k, e in enumerate(summary['ensembles'], start=1):
    avg = np.mean(probs[:k], axis=0)
    assert e['acc'] == pytest.approx(np.mean(avg.argmax(-1) == labels))
    assert e['nll'] == pytest.approx(-np.mean(np.log(avg[np.arange(len(labels)), labels])), rel=1e-5)
  errs = [np.mean(p != labels) for p in preds]
  pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
  div = np.mean([np.mean(preds[i] != preds[j]) / max(errs[i], errs[j]) for i, j in pairs]) * 100
  assert summary['diversity'] == pytest.approx(div)
  assert summary['mean_member_acc'] == pytest.approx(np.mean([np.mean(p == labels) for p in preds]))


def test_starsse_members_start_from_member_1(starsse_run):
  workdir, _, records, _ = starsse_run
  first = _member(workdir, 1)
  # Stage 1 is member 1 alone; stage 2 stacks members 2..4 (parallel by default).
  assert list(records[1]['member_ids']) == [2, 3, 4]
  start = records[1]['state']
  for j in range(3):
    assert _leaves_equal(jax.tree_util.tree_map(lambda x: x[j], start.params), first['params'])
    assert _leaves_equal(jax.tree_util.tree_map(lambda x: x[j], start.batch_stats),
                         first['batch_stats'])
  # Trained members differ from member 1 and from each other.
  assert not _leaves_equal(_member(workdir, 2)['params'], first['params'])
  assert not _leaves_equal(_member(workdir, 2)['params'], _member(workdir, 3)['params'])


def test_sse_member_k_starts_from_member_k_minus_1_and_optimizer_resets(tmp_path):
  records = []
  with engine_util.spy_on_stages(records):
    run_experiment(engine_util.tiny_config(star_fge=False), str(tmp_path))
  assert [list(r['member_ids']) for r in records] == [[1], [2], [3]]
  for k in (2, 3):
    prev = _member(str(tmp_path), k - 1)
    start = jax.tree_util.tree_map(lambda x: x[0], records[k - 1]['state'])
    assert _leaves_equal(start.params, prev['params'])
    assert _leaves_equal(start.batch_stats, prev['batch_stats'])
    # reset_optim_state=True: the momentum buffers are empty at every member boundary.
    assert all(np.all(x == 0) for x in jax.tree_util.tree_leaves(start.opt_state.inner_state))


def test_without_reset_the_momentum_carries_over(tmp_path):
  """Member 2 starts with exactly the optimizer state member 1 ended with."""
  calls = []
  real = engine_util.step_lib.make_train_step

  def make(*args):
    step = real(*args)

    def wrapped(state, *rest):
      before = jax.device_get(state)
      after, metrics = step(state, *rest)
      calls.append((before, jax.device_get(after)))
      return after, metrics
    return wrapped

  engine_util.step_lib.make_train_step = make
  try:
    run_experiment(engine_util.tiny_config(star_fge=False, num_fge=2, reset_optim_state=False),
                   str(tmp_path))
  finally:
    engine_util.step_lib.make_train_step = real
  members = [int(before.member[0]) for before, _ in calls]
  assert members == [1, 1, 2, 2]
  end_of_1, start_of_2 = calls[1][1].opt_state, calls[2][0].opt_state
  assert _leaves_equal(start_of_2.inner_state, end_of_1.inner_state)
  assert any(np.any(x != 0) for x in jax.tree_util.tree_leaves(start_of_2.inner_state))


def test_finished_run_is_not_retrained(starsse_run, capsys):
  workdir, summary, _, config = starsse_run
  again = run_experiment(config, workdir)
  assert again == summary
  assert 'already holds a finished run' in capsys.readouterr().out


def test_workdir_with_a_different_config_is_refused(starsse_run):
  workdir, _, _, config = starsse_run
  before = open(os.path.join(workdir, 'config.json')).read()
  config = config.copy_and_resolve_references()
  config.lr = 0.5
  with pytest.raises(ValueError, match='different config'):
    run_experiment(config, workdir)
  assert open(os.path.join(workdir, 'config.json')).read() == before


@pytest.mark.parametrize('overrides, message', [
    ({'fmap_betas': (0.0, 1.0)}, 'fmap_betas has 2 values'),
    ({'fge_epochs': 1, 'fge_warmup_epochs': 1}, 'must be greater than fge_warmup_epochs'),
    ({'freeze_layers': ('layer9',)}, "unknown module 'layer9'"),
    ({'fmap_loss_type': 'L1'}, 'fmap_loss_type'),
    ({'ensemble': 'bagging'}, "ensemble='bagging' is unknown"),
    ({'dataset': 'mnist-3d'}, 'mnist-3d'),
    ({'scheduler': 'exponential'}, 'exponential'),
])
def test_config_errors_are_one_line(tmp_path, overrides, message):
  with pytest.raises(ValueError) as info:
    run_experiment(engine_util.tiny_config(**overrides), str(tmp_path / 'run'))
  assert message in str(info.value) and '\n' not in str(info.value)


def test_main_rejects_unknown_key_in_one_line():
  out = subprocess.run([sys.executable, 'main.py', '--config', 'configs/starsse.py',
                        '--config.no_such_field=1'], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2
  assert out.stderr.strip().startswith("error: unknown config key 'no_such_field'")
  assert len(out.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_is_one_line(tmp_path):
  out = subprocess.run([sys.executable, 'main.py', '--config', 'configs/starsse.py',
                        '--config.dataset=digits', f'--config.ckpt={tmp_path}/byol.pt',
                        f'--workdir={tmp_path}/run'], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and 'byol.pt' in lines[0] and 'convert_byol.py' in lines[0]


def _lowerings(fn):
  """Runs fn() and returns how many programs JAX lowered meanwhile (each jit cache miss,
  whether XLA then compiles it or reads it from the persistent cache)."""
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  events = []
  listener = lambda name, secs, **kw: events.append(name) if name.endswith(
      'jaxpr_to_mlir_module_duration') else None
  monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    from jax._src import monitoring as monitoring_src  # pylint: disable=g-import-not-at-top
    monitoring_src.unregister_event_duration_listener(listener)
  return len(events)


def test_one_program_per_phase(tmp_path):
  """Pre-training, member 1 and members 2..4 (partial last batches everywhere): each stage's
  train step compiles once, stages with the same terms and member count share it, and
  nothing between steps launches device work of its own."""
  made = []
  real = engine_util.step_lib.make_train_step

  def make(*args):
    made.append(args[0].terms)
    return real(*args)

  config = engine_util.tiny_config(
      star_fge=True, num_fge=4, batch_size=500, epochs=2, fge_epochs=2, **{
          'pretrain.enabled': True, 'pretrain.class_subset': (0, 1, 2, 3, 4),
          'pretrain.epochs': 2, 'class_subset': (5, 6, 7, 8, 9)})
  engine_util.step_lib.make_train_step = make
  try:
    count = _lowerings(lambda: run_experiment(config, str(tmp_path / 'run')))
  finally:
    engine_util.step_lib.make_train_step = real
  # 2 train programs: the pre-training and member 1 share one (the schedules are tables in
  # the state, of one length for both); members 2..4 have their own member count.
  assert len(made) == 2
  # Per stage: start state, train step, evaluation; plus model init, head and a few
  # one-off programs at the start. Eager work between steps would add one per step.
  assert count <= 20, count


def test_runs_with_other_seeds_share_the_train_program():
  """The seed's random keys are data in the state, not constants of the program: the train
  step lowers to the same program for seeds 0 and 1 (so the persistent cache serves every
  seed), while the augmentation it draws does follow the seed."""
  from enstransfer_jax import models, optim  # pylint: disable=g-import-not-at-top
  model = models.create_model('ResNet18', 10, width=4)
  variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(0), 16))
  rng = np.random.default_rng(0)
  batch = engine_util.full_batch(rng.integers(0, 256, (1, 8, 16, 16, 3), dtype=np.uint8),
                                 rng.integers(0, 10, (1, 8)).astype(np.int32))
  texts, losses = [], []
  for seed in (0, 1):
    config = engine_util.tiny_config(seed=seed, batch_size=8, transform_name='cifar',
                                     scheduler='constant', num_fge=1)
    tx = optim.create_optimizer(config)
    terms = engine_util.step_lib.Terms()
    state = engine_util.stacked_state([variables], tx, terms, [0], [1], config)
    spec = engine_util.step_lib.StepSpec.from_config(config, model, terms)
    step = engine_util.step_lib.make_train_step(spec, tx)
    texts.append(step.lower(state, batch, {}).as_text())
    losses.append(float(step(state, batch, {})[1]['loss'][0]))
  assert texts[0] == texts[1]
  assert losses[0] != losses[1], losses


def test_inputs_are_checked_before_the_work_dir_is_created(tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('not a checkpoint')
  for overrides, message in [({'ckpt': str(text)}, 'notes.txt'), ({'lr': -1.0}, 'lr=-1.0'),
                             ({'momentum': 1.0}, 'momentum=1.0'), ({'wd': -0.1}, 'wd=-0.1'),
                             ({'class_subset': (3, 42)}, 'class_subset'),
                             ({'fmap_betas': (0.0, 0.0, 0.0, 0.0, float('nan'))}, 'fmap_betas')]:
    workdir = tmp_path / 'run'
    with pytest.raises((ValueError, FileNotFoundError)) as info:
      run_experiment(engine_util.tiny_config(**overrides), str(workdir))
    assert message in str(info.value) and '\n' not in str(info.value), str(info.value)
    assert not workdir.exists(), overrides


def test_a_corrected_command_takes_over_an_untrained_work_dir(tmp_path):
  workdir = str(tmp_path / 'run')
  from enstransfer_jax.training import experiment  # pylint: disable=g-import-not-at-top
  one = dict(num_fge=1, scheduler='cosine')
  experiment.prepare_workdir(engine_util.tiny_config(lr=0.5, **one), workdir)  # not trained
  summary = run_experiment(engine_util.tiny_config(**one), workdir)
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['lr'] == 0.05 and summary['members']


def test_from_scratch_de_members_start_from_their_own_init(tmp_path):
  records = []
  with engine_util.spy_on_stages(records):
    run_experiment(engine_util.tiny_config(ensemble='local_de', num_members=2), str(tmp_path))
  start = records[0]['state']
  assert records[0]['member_ids'] == [1, 2]
  conv = np.asarray(start.params['conv1']['kernel'])
  assert not np.allclose(conv[0], conv[1])
  # Each is torch's default init drawn by torch: member 1 after torch.manual_seed(seed) (the
  # reference's start for that seed), member 2 after a seed drawn from (seed, 'init', 2).
  import torch  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import streams  # pylint: disable=g-import-not-at-top
  for j, torch_seed in enumerate((0, int(streams.numpy_rng(0, 'init', 2).integers(2**62)))):
    torch.manual_seed(torch_seed)
    want = torch.nn.Conv2d(3, 4, 7, bias=False).weight.detach().numpy()  # the first layer drawn
    np.testing.assert_array_equal(conv[j], want.transpose(2, 3, 1, 0))


def _events(workdir, kind):
  return [e for e in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
          if e['event'] == kind]


def test_lr_and_momentum_at_each_global_step(starsse_run):
  """Every logged step's rate is the reference's per-batch cosine with warm restarts
  (period epochs x steps_per_epoch = 4) at the member's global step: member 1 takes steps
  0-3, member k >= 2 steps 4 + 2 (k - 2) + b, though members 2..4 train side by side."""
  workdir, _, records, config = starsse_run
  train = _events(workdir, 'train')
  steps = {m: [e['step'] for e in train if e['member'] == m] for m in (1, 2, 3, 4)}
  assert steps == {1: [0, 1, 2, 3], 2: [4, 5], 3: [6, 7], 4: [8, 9]}
  for e in train:
    want = config.lr * (1 + np.cos(np.pi * (e['step'] % 4) / 4)) / 2
    assert e['lr'] == pytest.approx(want, rel=1e-6, abs=1e-9), e
    assert e['epoch'] == (e['step'] // 2) + 1
  assert len({round(e['lr'], 6) for e in train if e['member'] > 1}) == 4
  # The momentum the step reads at the same index (SGD: config.momentum, no cyclic schedule).
  table = records[1]['state'].schedule['momentum'][0]
  np.testing.assert_allclose(table[:10], np.full(10, config.momentum), rtol=1e-7)


def test_saved_test_probs_equal_a_fresh_evaluation(starsse_run):
  """members/<i>/test_probs.npy equals the member checkpoint evaluated by the PyTorch twin."""
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  workdir, _, _, config = starsse_run
  data = datasets.load_dataset(config)
  from enstransfer_jax.data import augment  # pylint: disable=g-import-not-at-top
  x = augment.eval_transform(data.test_images, transform='none', image_size=16)
  for i in (1, 3):
    net = engine_util.torch_twin(_member(workdir, i), 10)
    want = engine_util.softmax(engine_util.torch_forward(net, x)[0])
    got = np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy'))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_evaluation_every_valid_freq_epochs(starsse_run):
  """valid_freq=1: member 1 (2 epochs) is evaluated after epochs 1 and 2, each later member
  after its one epoch; the last evaluation is what the member saved."""
  workdir, _, _, _ = starsse_run
  evals = [(e['member'], e['epoch']) for e in _events(workdir, 'eval')]
  assert evals == [(1, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  last = {e['member']: e for e in _events(workdir, 'eval')}
  for i in (1, 2, 3, 4):
    probs = np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy'))
    assert last[i]['test_acc'] == pytest.approx(np.mean(probs.argmax(-1) == labels))
    assert last[i]['test_nll'] == pytest.approx(
        -np.mean(np.log(probs[np.arange(len(labels)), labels])), rel=1e-4)


def test_overwrite_retrains_and_use_test_false_evaluates_on_the_validation_split(tmp_path):
  """A finished run, then the same work dir with overwrite=True and use_test=False: the old
  outputs are gone, and the run is evaluated on digits' validation split (sklearn's stratified
  train_test_split, random_state 42: 1/3 of all held out as test, then 1/10 of the rest)."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  one = dict(num_fge=1, scheduler='cosine')
  first = run_experiment(engine_util.tiny_config(**one), workdir)
  os.makedirs(os.path.join(workdir, 'analysis'))
  labels = sk_datasets.load_digits().target
  train, test = model_selection.train_test_split(np.arange(len(labels)), test_size=599,
                                                 stratify=labels, random_state=42)
  np.testing.assert_array_equal(np.load(os.path.join(workdir, 'test_labels.npy')),
                                labels[np.sort(test)])
  train = np.sort(train)
  _, valid = model_selection.train_test_split(np.arange(len(train)), test_size=120,
                                              stratify=labels[train], random_state=42)
  second = run_experiment(engine_util.tiny_config(overwrite=True, use_test=False, **one),
                          workdir)
  want = labels[train][np.sort(valid)]
  np.testing.assert_array_equal(np.load(os.path.join(workdir, 'test_labels.npy')), want)
  assert np.load(os.path.join(workdir, 'members', '1', 'test_probs.npy')).shape == (120, 10)
  assert json.load(open(os.path.join(workdir, 'config.json')))['use_test'] is False
  assert not os.path.exists(os.path.join(workdir, 'analysis'))
  # metrics.jsonl holds the second run only: 1078 training examples = 2 batches of 599.
  assert [e['step'] for e in _events(workdir, 'train')] == [0, 1]
  assert len(_events(workdir, 'summary')) == 1
  assert second['members'][0]['test_acc'] != first['members'][0]['test_acc'] or (
      second != first)


def test_a_finished_run_stays_finished_when_new_config_fields_appear(starsse_run):
  """A config.json written before a field existed: the run is still this config's."""
  workdir, summary, _, config = starsse_run
  path = os.path.join(workdir, 'config.json')
  saved = json.load(open(path))
  older = {k: v for k, v in saved.items() if k != 'init_scheme'}
  with open(path, 'w') as f:
    json.dump(older, f)
  try:
    assert run_experiment(config, workdir) == summary
    with open(path, 'w') as f:  # a field the run did record still counts
      json.dump(dict(older, lr=older['lr'] * 2), f)
    with pytest.raises(ValueError, match='different config'):
      run_experiment(config, workdir)
  finally:
    with open(path, 'w') as f:
      json.dump(saved, f)
