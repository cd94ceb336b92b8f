"""One network instead of the ensemble: greedy soup, selective prediction, distillation.

Each against an independent computation: AURC by hand, the greedy soup against a brute-force
table of every subset's soup (averaged and scored in numpy), the distillation loss against its
numpy formula, and the distilled student's first logged step against PyTorch twins of the
student and of the teacher's members.
"""

import itertools
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from enstransfer_jax.analysis import selective, soup
from enstransfer_jax import losses


def test_aurc_hand_computation():
  # confidences 0.9, 0.8, 0.7, 0.6 (already in order); correct, wrong, correct, wrong
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
  labels = np.array([0, 0, 0, 0])
  coverage, risk = selective.risk_coverage(probs, labels)
  np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(risk, [0 / 1, 1 / 2, 1 / 3, 2 / 4])
  assert selective.aurc(probs, labels) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
  # best order (errors last): risks 0, 0, 1/3, 2/4
  assert selective.optimal_aurc(probs, labels) == pytest.approx((1 / 3 + 1 / 2) / 4)
  s = selective.summary(probs, labels)
  assert s['e_aurc'] == pytest.approx((1 / 2) / 4)
  assert s['risk_at_80'] == pytest.approx(2 / 4)  # ceil(0.8 * 4) = 4 answered
  # shuffled rows give the same curve
  perm = [2, 0, 3, 1]
  assert selective.aurc(probs[perm], labels[perm]) == pytest.approx(selective.aurc(probs, labels))


def _linear_members(k=5, d=6, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return [{'params': {'fc': {'kernel': rng.normal(size=(d, c)).astype(np.float32),
                             'bias': rng.normal(size=(c,)).astype(np.float32)}},
           'batch_stats': {}} for _ in range(k)]


def test_greedy_soup_matches_brute_force():
  """Every subset's soup averaged and scored in numpy, then model-soups' rule by hand."""
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
  checked = 0
  for seed in range(6):
    members = _linear_members(seed=seed)
    acc = lambda w, b: float(np.mean(np.argmax(x @ w + b, -1) == y))
    table = {}
    for r in range(1, len(members) + 1):
      for subset in itertools.combinations(range(len(members)), r):
        w = sum(members[i]['params']['fc']['kernel'].astype(np.float64) for i in subset) / r
        b = sum(members[i]['params']['fc']['bias'].astype(np.float64) for i in subset) / r
        table[frozenset(subset)] = acc(w, b)
    alone = [table[frozenset([i])] for i in range(len(members))]
    order = sorted(range(len(members)), key=lambda i: (-alone[i], i))
    expected, best = [order[0]], alone[order[0]]
    for i in order[1:]:
      if table[frozenset(expected + [i])] >= best:
        expected, best = expected + [i], table[frozenset(expected + [i])]
    score = lambda v: acc(np.asarray(v['params']['fc']['kernel'], np.float64),
                          np.asarray(v['params']['fc']['bias'], np.float64))
    chosen, steps = soup.greedy_soup(members, score)
    assert chosen == expected
    assert [s['member'] for s in steps] == order
    assert steps[-1]['score'] == pytest.approx(table[frozenset(
        expected if steps[-1]['added'] else expected + [order[-1]])])
    checked += 0 < len(expected) < len(members)
  assert checked  # some seed leaves a member out


def test_distillation_loss_matches_numpy():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(7, 4)) * 3, rng.normal(size=(3, 7, 4)) * 3
  weights = np.array([1, 1, 0, 1, 1, 0, 1], np.float64)

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  for t in (1.0, 2.5):
    q = softmax(teacher / t).mean(0)
    s = softmax(student / t)
    kl = np.sum(q * (np.log(q) - np.log(s)), -1)
    expected = t ** 2 * np.sum(kl * weights) / weights.sum()
    got = losses.distillation_loss(jnp.asarray(student, jnp.float32),
                                   jnp.asarray(teacher, jnp.float32), t,
                                   weights=jnp.asarray(weights, jnp.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)
  # a student equal to the teacher's single member has zero loss
  assert float(losses.distillation_loss(teacher[0], teacher[:1], 2.0)) == pytest.approx(
      0.0, abs=1e-6)


def test_distill_end_to_end(starsse_run, tmp_path):
  """A student of the shared tiny StarSSE run: its first step's distillation and CE terms
  equal PyTorch twins' (student in train mode, the 4 members in eval mode, on the first
  batch), Ensemble.load reads it like a run, a second call reads it back."""
  from enstransfer_jax import distill
  from enstransfer_jax.analysis import one_model
  from enstransfer_jax.data import augment, datasets
  from enstransfer_jax.ensemble import Ensemble
  from enstransfer_jax import checkpoints
  from tests import engine_util
  workdir, _, _, config = starsse_run
  out = str(tmp_path / 'student')
  t, alpha = 2.0, 0.25
  summary = distill.distill(workdir, out, epochs=1, temperature=t, alpha=alpha)
  records = [json.loads(l) for l in open(os.path.join(out, 'metrics.jsonl'))]
  first = next(r for r in records if r['event'] == 'train' and r['step'] == 0)

  data = datasets.load_dataset(config)
  images, labels = engine_util.first_batch(config, data, member=1)
  x = np.asarray(augment.eval_transform(images, transform='none', image_size=16))
  load = lambda m: checkpoints.load_pretrained(os.path.join(workdir, 'members', str(m),
                                                            'checkpoint'))[1]
  student0 = load(1)  # the tiny run is from scratch: the student starts from member 1
  s_logits, _ = engine_util.torch_forward(engine_util.torch_twin(student0, 10, train=True), x)
  q = np.mean([engine_util.softmax(engine_util.torch_forward(
      engine_util.torch_twin(load(m), 10), x)[0] / t) for m in (1, 2, 3, 4)], axis=0)
  log_s = np.log(engine_util.softmax(s_logits / t))
  kl = np.mean(np.sum(q * (np.log(q) - log_s), -1))
  ce = np.mean(-np.log(engine_util.softmax(s_logits)[np.arange(len(labels)), labels]))
  assert first['distill'] == pytest.approx(alpha * t ** 2 * kl, rel=2e-4)
  assert first['ce'] == pytest.approx((1 - alpha) * ce, rel=2e-4)
  assert first['loss'] == pytest.approx(first['ce'] + first['distill'], rel=1e-5)

  ens = Ensemble.load(out, progress=False)
  assert ens.members == (1,)
  saved = np.load(os.path.join(out, 'members', '1', 'test_probs.npy'))
  np.testing.assert_allclose(ens.predict(data.test_images).probs, saved, atol=1e-5)
  cfg = json.load(open(os.path.join(out, 'config.json')))
  assert cfg['distill']['members'] == [1, 2, 3, 4] and cfg['distill']['start'] == 'member 1'
  again = distill.distill(workdir, out, epochs=1, temperature=t, alpha=alpha)
  assert again["ensembles"] == json.loads(json.dumps(summary["ensembles"]))
  os.symlink(out, os.path.join(workdir, one_model.DISTILL_DIR))
  try:
    _check_one_model_section(workdir, config, data, saved, str(tmp_path / 'analysis'))
  finally:
    os.remove(os.path.join(workdir, one_model.DISTILL_DIR))


def _check_one_model_section(workdir, config, data, student_probs, out):
  """The analysis's one-model rows: the student's from its saved probabilities, the greedy
  soup saved as a run whose parameters are the numpy mean of the chosen members'."""
  from enstransfer_jax import checkpoints, evaluator, metrics, models
  from enstransfer_jax.analysis import one_model
  from enstransfer_jax.ensemble import Ensemble
  ids = [1, 2, 3, 4]
  members = [checkpoints.load_pretrained(os.path.join(workdir, 'members', str(m),
                                                      'checkpoint'))[1] for m in ids]
  probs = [np.load(os.path.join(workdir, 'members', str(m), 'test_probs.npy')) for m in ids]
  model = models.create_model('ResNet18', 10, width=4, image_size=16)
  ev = evaluator.Evaluator(model, transform='none', image_size=16, batch_size=600)
  res = {'metric': 'top1'}
  os.makedirs(out)
  one_model.run(res, config, workdir, ev, members, probs, data.test_labels, data,
                data.train_images[:200], metrics.accuracy, '', out)
  rows = {r['model']: r for r in res['one_model']['rows']}
  assert rows['distilled']['acc'] == pytest.approx(
      np.mean(student_probs.argmax(-1) == data.test_labels))
  assert rows['ensemble']['networks'] == 4 and rows['greedy soup']['networks'] == 1
  chosen = res['one_model']['greedy_members']
  soup_dir = os.path.join(out, 'greedy_soup')
  saved = checkpoints.load_pretrained(os.path.join(soup_dir, 'members', '1', 'checkpoint'))[1]
  kernel = lambda v: np.asarray(v['params']['fc']['kernel'], np.float64)
  np.testing.assert_allclose(kernel(saved), np.mean([kernel(members[m - 1]) for m in chosen],
                                                    axis=0), atol=1e-6)
  p = Ensemble.load(soup_dir, progress=False).predict(data.test_images).probs
  assert rows['greedy soup']['acc'] == pytest.approx(np.mean(p.argmax(-1) == data.test_labels))


def test_distill_bad_inputs(tmp_path, capsys):
  """One line, exit status 2, nothing written."""
  from enstransfer_jax import distill
  run = tmp_path / 'run'
  os.makedirs(run / 'members' / '1' / 'checkpoint')
  for name in ('config.json', 'run_info.json'):
    (run / name).write_text('{}')
  cases = [([str(tmp_path / 'nowhere')], 'does not exist'),
           ([str(run)], 'summary.json is missing'),
           ([str(run), '--alpha', '2'], '--alpha 2.0: it must lie in [0, 1]'),
           ([str(run), '--temperature', '0'], '--temperature 0.0: it must be > 0'),
           ([str(run), '--init', 'pretrained'], 'has no single pre-trained checkpoint')]
  for argv, message in cases:
    if argv == [str(run), '--alpha', '2']:
      (run / 'summary.json').write_text('{}')
    with pytest.raises(SystemExit) as e:
      distill.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
  assert sorted(os.listdir(run)) == ['config.json', 'members', 'run_info.json', 'summary.json']


def test_greedy_soup_held_out_split():
  """use_test=False: the run's validation split itself; use_test=True: a stratified 10% of
  the training split (class counts proportional, sklearn's stratified draw, seed 42)."""
  import dataclasses
  import ml_collections
  from sklearn import model_selection
  from enstransfer_jax.analysis import one_model

  @dataclasses.dataclass
  class Data:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
  labels = np.repeat(np.arange(4), [40, 30, 20, 10])
  data = Data(np.arange(100)[:, None], labels, np.arange(7)[:, None], np.arange(7) % 2)
  x, y, what = one_model.held_out(ml_collections.ConfigDict({'use_test': False}), data)
  assert x is data.test_images and y is data.test_labels and 'validation split' in what
  x, y, what = one_model.held_out(ml_collections.ConfigDict({'use_test': True}), data)
  _, expected = model_selection.train_test_split(np.arange(100), test_size=10, stratify=labels,
                                                 random_state=42)
  np.testing.assert_array_equal(np.sort(x[:, 0]), np.sort(expected))
  np.testing.assert_array_equal(np.bincount(y), [4, 3, 2, 1])
  assert 'training split' in what and '10 images' in what
