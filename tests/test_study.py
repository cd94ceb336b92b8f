"""The thesis's own analyses against independent computations: sub-ensembles (counts, every
ensemble and the worst / best 5 % by brute force, the SVM line against scikit-learn), the
Wasserstein distance (scipy, brute force over permutations, the closed form of a
translation) and the raw weight cosine (numpy)."""

import csv
import itertools
import os
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.spatial
import scipy.stats

from enstransfer_jax.analysis import study, subensembles, wasserstein, weights


def _fake_probs(members, n=40, classes=3, seed=0):
  """Members that agree with the labels at different rates, as trained members do."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  probs = []
  for _ in range(members):
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += rng.uniform(0.5, 2.0)
    p = np.exp(logits)
    probs.append((p / p.sum(1, keepdims=True)).astype(np.float32))
  return probs, labels


def _brute(probs, labels, combos):
  """Every ensemble's numbers written out with numpy, independently of metrics.py."""
  preds = [p.argmax(1) for p in probs]
  err = [np.mean(q != labels) for q in preds]
  out = []
  for c in combos:
    divs = [100 * np.mean(preds[i] != preds[j]) / max(err[i], err[j])
            for i, j in itertools.combinations(c, 2)]
    out.append({'members': '-'.join(str(i + 1) for i in c),
                'mean_member_acc': np.mean([1 - err[i] for i in c]),
                'diversity': np.mean(divs),
                'ensemble_acc': np.mean(np.mean([probs[i] for i in c], 0).argmax(1) == labels)})
  return out


def test_subensemble_counts_and_every_ensemble():
  """2 x C(14, 4) = 2002 StarSSE ensembles (member 1 in each), C(15, 5) = 3003 Local DE."""
  runs = [_fake_probs(15, seed=s) for s in (1, 2)]
  star = [subensembles.study(p, y, 5, fix_first=True) for p, y in runs]
  assert sum(len(r) for r in star) == 2002 == 2 * math.comb(14, 4)
  local = subensembles.study(*runs[0], 5, fix_first=False)
  assert len(local) == 3003 == math.comb(15, 5)
  assert subensembles.count(15, 5, True) == 1001 and subensembles.count(15, 5, False) == 3003
  combos = [(0,) + c for c in itertools.combinations(range(1, 15), 4)]
  for got, want in zip(star[0], _brute(*runs[0], combos)):
    assert got['members'] == want['members']
    for key in ('mean_member_acc', 'diversity', 'ensemble_acc'):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
  assert [r['members'] for r in local] == [
      '-'.join(str(i + 1) for i in c) for c in itertools.combinations(range(15), 5)]
  # Pooled per method over both StarSSE runs, as the thesis's Table 6.1.
  res = [{'name': 'starsse', 'subensembles': {'k': 5, 'rows': r}} for r in star]
  with pytest.raises(ValueError, match='one --subensembles K'):
    study.write_pooled('/nonexistent-never-written', res + [
        {'name': 'starsse', 'subensembles': {'k': 4, 'rows': star[0]}}])
  assert subensembles.summary_table(star[0] + star[1])[0]['of'] == 2002


@pytest.mark.parametrize('fraction', [0.05, 0.2])
def test_worst_and_best_table_against_brute_force(fraction):
  probs, labels = _fake_probs(7, n=30, seed=3)
  rows = subensembles.study(probs, labels, 3, fix_first=False)
  brute = _brute(probs, labels, list(itertools.combinations(range(7), 3)))
  # Sorted by ensemble accuracy, ties: the earlier combination is the worse one.
  ranked = [b for _, _, b in sorted((b['ensemble_acc'], k, b) for k, b in enumerate(brute))]
  n_sel = max(1, round(fraction * 35))
  table = subensembles.summary_table(rows, fraction)
  for row, sel in zip(table, (ranked[:n_sel], ranked[-n_sel:])):
    assert row['ensembles'] == n_sel and row['of'] == 35
    for key, scale in (('mean_member_acc', 100), ('diversity', 1), ('ensemble_acc', 100)):
      v = scale * np.array([s[key] for s in sel])
      np.testing.assert_allclose(row[f'{key}_mean'], v.mean(), rtol=1e-12, err_msg=key)
      np.testing.assert_allclose(row[f'{key}_std'], v.std(), rtol=1e-9, atol=1e-12,
                                 err_msg=key)


def test_separating_line_is_scikit_learns_svm():
  from sklearn.svm import LinearSVC  # pylint: disable=g-import-not-at-top
  probs, labels = _fake_probs(9, n=60, seed=4)
  rows = subensembles.study(probs, labels, 4, fix_first=True)  # C(8, 3) = 56
  line = subensembles.separating_line(rows, bootstrap=20)
  order = sorted(range(56), key=lambda k: (rows[k]['ensemble_acc'], k))
  sel = order[:28] + order[-28:]
  x = np.array([[100 * rows[k]['mean_member_acc'], rows[k]['diversity']] for k in sel])
  lab = np.r_[np.zeros(28), np.ones(28)]
  z = (x - x.mean(0)) / x.std(0)
  svm = LinearSVC(C=1.0, dual=False).fit(z, lab)
  # The line in the original units gives the same decision values as the SVM on z.
  np.testing.assert_allclose(line['coef_acc'] * x[:, 0] + line['coef_div'] * x[:, 1]
                             + line['intercept'], svm.decision_function(z), rtol=1e-6,
                             atol=1e-9)
  assert line['train_accuracy'] == pytest.approx(svm.score(z, lab))
  assert np.all(line['y_low'] <= line['y_high'] + 1e-12)


def test_wasserstein_against_scipy_brute_force_and_translation():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=50), rng.normal(1.0, 2.0, size=50)
  np.testing.assert_allclose(wasserstein.wasserstein(a[:, None], b[:, None]),
                             scipy.stats.wasserstein_distance(a, b), rtol=1e-9)
  x, y = rng.normal(size=(6, 2, 3)), rng.normal(size=(6, 2, 3))  # maps flattened per example
  xf, yf = x.reshape(6, -1), y.reshape(6, -1)
  brute = min(np.mean(np.linalg.norm(xf - yf[list(s)], axis=1))
              for s in itertools.permutations(range(6)))
  np.testing.assert_allclose(wasserstein.wasserstein(x, y), brute, rtol=1e-9)
  # W1 of a cloud and its translate by t is |t| (the mean difference bounds it from below).
  cloud, t = rng.normal(size=(200, 64)), rng.normal(size=64)
  np.testing.assert_allclose(wasserstein.wasserstein(cloud, cloud + t), np.linalg.norm(t),
                             rtol=1e-7)
  with pytest.raises(ValueError, match='equal width'):
    wasserstein.wasserstein(x, y[:, :1])


def test_raw_weight_cosine_and_correlation_against_numpy():
  rng = np.random.default_rng(1)
  tree = lambda: {'conv1': {'kernel': rng.normal(size=(3, 3, 2, 4))},
                  'bn1': {'scale': rng.normal(size=4), 'bias': rng.normal(size=4)},
                  'layer1': {'0': {'conv1': {'kernel': rng.normal(size=(3, 3, 4, 4))}}},
                  'fc': {'kernel': rng.normal(size=(4, 5)), 'bias': rng.normal(size=5)}}
  base = tree()
  params = [base] + [{m: {k: (v + 0.5 * rng.normal(size=np.shape(v)) if isinstance(v, np.ndarray)
                              else v) for k, v in sub.items()} for m, sub in base.items()}
                     for _ in range(3)]
  flat = lambda p: np.concatenate([p['conv1']['kernel'].ravel(), p['bn1']['bias'],
                                   p['bn1']['scale'], p['layer1']['0']['conv1']['kernel'].ravel(),
                                   p['fc']['bias'], p['fc']['kernel'].ravel()])
  div = rng.uniform(50, 80, size=(4, 4))
  div = (div + div.T) / 2
  pairs = study.cosine_pairs(params, div)
  assert len(pairs) == 6
  for q in pairs:
    w1, w2 = flat(params[q['member_i'] - 1]), flat(params[q['member_j'] - 1])
    np.testing.assert_allclose(q['cosine'], w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2),
                               rtol=1e-12)
    assert q['diversity'] == div[q['member_i'] - 1, q['member_j'] - 1]
  np.testing.assert_allclose(study.correlation(pairs), scipy.stats.pearsonr(
      [q['cosine'] for q in pairs], [q['diversity'] for q in pairs])[0], rtol=1e-10)
  # The update cosine is a different quantity and stays.
  cos, _ = weights.weight_cosines(params)
  assert not np.allclose(cos, weights.cosine_matrix([flat(p) - flat(base) for p in params]))



def test_run_study_files_and_report_against_numpy(tmp_path, monkeypatch):
  """study.run_study / write_files / report_lines, as analyze calls them, on 5 members."""
  monkeypatch.setattr(subensembles, 'BOOTSTRAP', 10)  # the band's refits: not checked here
  from enstransfer_jax.analysis import similarity  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  probs, labels = _fake_probs(5, n=50, seed=7)
  params = [{'conv1': {'kernel': rng.normal(size=(3, 3, 1, 2))},
             'layer1': {'w': rng.normal(size=6)}, 'fc': {'kernel': rng.normal(size=(2, 3))}}
            for _ in range(5)]
  feats = [rng.normal(size=(12, 2, 2, 3)) + 0.3 * i for i in range(5)]
  sim = [{'member': i, 'reference': 'member1', 'layer': 'layer1',
          **similarity.compare(feats[0], feats[i - 1], with_rtd=False, rtd_batch=0)}
         for i in range(2, 6)]
  sim += [{'member': i, 'reference': 'pretrained', 'layer': 'layer1',  # not Figure 4.2's
           **similarity.compare(feats[4], feats[i - 1], with_rtd=False, rtd_batch=0)}
          for i in range(1, 5)]
  acc = [np.mean(p.argmax(1) == labels) for p in probs]
  from enstransfer_jax import metrics  # pylint: disable=g-import-not-at-top
  res = {'name': 'starsse', 'metric': 'top1', 'notes': [], 'similarity': sim,
         'members': [{'member': i + 1, 'acc': a} for i, a in enumerate(acc)],
         'diversity_matrix': metrics.pairwise_diversity(probs, labels)}
  config = ml_collections.ConfigDict({'ensemble': 'sse'})
  study.run_study(res, config, probs, labels, params, 3)
  files = study.write_files(res, str(tmp_path))
  read = lambda name: list(csv.DictReader(open(files[name])))
  # Figures 4.2 / 4.3: the Wasserstein distance of member 4's map to member 1's by scipy.
  a, b = feats[0].reshape(12, -1), feats[3].reshape(12, -1)
  cost = scipy.spatial.distance.cdist(a, b)
  rows = read('distances_to_member1.csv')
  assert [r['member'] for r in rows] == ['2', '3', '4', '5']
  row = rows[2]
  np.testing.assert_allclose(float(row['wasserstein']),
                             cost[scipy.optimize.linear_sum_assignment(cost)].mean(), rtol=1e-9)
  np.testing.assert_allclose(float(row['mse']), np.mean((a - b) ** 2), rtol=1e-9)
  np.testing.assert_allclose(float(row['acc']), acc[3])
  w = next(r for r in read('weight_distances_to_member1.csv')
           if r['member'] == '3' and r['stage'] == 'layer1')
  np.testing.assert_allclose(float(w['log10_mse']), np.log10(np.mean(
      (params[2]['layer1']['w'] - params[0]['layer1']['w']) ** 2)), rtol=1e-12)
  # Figures 6.2 / 6.4: every pair's raw cosine.
  flat = lambda p: np.concatenate([p['conv1']['kernel'].ravel(), p['layer1']['w'],
                                   p['fc']['kernel'].ravel()])
  pairs = read('raw_weight_cosine.csv')
  assert len(pairs) == 10
  for q in pairs:
    u, v = flat(params[int(q['member_i']) - 1]), flat(params[int(q['member_j']) - 1])
    np.testing.assert_allclose(float(q['cosine']), u @ v / np.linalg.norm(u) / np.linalg.norm(v),
                               rtol=1e-12)
  first = [q for q in pairs if q['member_i'] == '1']
  np.testing.assert_allclose(res['raw_weight_cosine']['correlation_with_first'],
                             scipy.stats.pearsonr([float(q['cosine']) for q in first],
                                                  [float(q['diversity']) for q in first])[0],
                             rtol=1e-9)
  # Figure 6.1 / Table 6.1: the C(4, 2) = 6 ensembles of 3 with member 1.
  subs = read('subensembles.csv')
  combos = [(0,) + c for c in itertools.combinations(range(1, 5), 2)]
  for got, want in zip(subs, _brute(probs, labels, combos), strict=True):
    assert got['members'] == want['members']
    for key in ('mean_member_acc', 'diversity', 'ensemble_acc'):
      np.testing.assert_allclose(float(got[key]), want[key], rtol=1e-9)
  table = read('subensembles_table.csv')
  ranked = sorted(range(6), key=lambda k: (float(subs[k]['ensemble_acc']), k))
  np.testing.assert_allclose(float(table[1]['ensemble_acc_mean']),
                             100 * float(subs[ranked[-1]]['ensemble_acc']))
  text = '\n'.join(study.report_lines(res, files))
  for needle in ('Figures 4.2 / 4.3', 'Figures 6.2 / 6.4', 'Figure 6.1 / Table 6.1',
                 'Table 6.2', '(distances_to_member1.png)', '(subensembles.png)',
                 '(raw_weight_cosine.png)'):
    assert needle in text, needle
  for name in ('distances_to_member1.png', 'raw_weight_cosine.png', 'subensembles.png'):
    assert os.path.getsize(files[name]) > 0
  # Fewer members than K: said in the notes, no study.
  res2 = dict(res, notes=[])
  del res2['subensembles']
  study.run_study(res2, config, probs[:2], labels, params[:2], 3)
  assert 'subensembles' not in res2 and 'fewer than K = 3' in res2['notes'][0]

def test_pooled_over_runs_against_numpy(tmp_path, monkeypatch):
  """Figure 6.2 over every pair of every run, Table 6.1 of a method's runs pooled."""
  monkeypatch.setattr(subensembles, 'BOOTSTRAP', 10)
  rng = np.random.default_rng(5)
  runs, all_pairs, all_rows = [], [], []
  for k, name in enumerate(('starsse', 'starsse', 'local_de')):
    pairs = [{'member_i': i + 1, 'member_j': j + 1, 'cosine': rng.uniform(0.9, 1.0),
              'diversity': rng.uniform(50, 80), 'with_first': i == 0}
             for i, j in itertools.combinations(range(4), 2)]
    probs, labels = _fake_probs(6, seed=10 + k)
    rows = subensembles.study(probs, labels, 3, fix_first=name == 'starsse')
    runs.append({'name': name, 'raw_weight_cosine': {'pairs': pairs},
                 'subensembles': {'k': 3, 'rows': rows}})
    all_pairs += pairs
    if name == 'starsse':
      all_rows += rows
  files = study.write_pooled(str(tmp_path), runs)
  pooled = [dict(r) for r in csv.DictReader(open(files['weight_cosine_pairs.csv']))]
  assert len(pooled) == 18
  want = scipy.stats.pearsonr([p['cosine'] for p in all_pairs],
                              [p['diversity'] for p in all_pairs])[0]
  within = np.mean([scipy.stats.pearsonr([p['cosine'] for p in all_pairs[6 * k:6 * k + 6]],
                                         [p['diversity'] for p in all_pairs[6 * k:6 * k + 6]])[0]
                    for k in range(3)])
  text = open(files['study.md']).read()
  assert f'over all pairs {want:.3f}' in text and f'within-run correlations {within:.3f}' in text
  table = list(csv.DictReader(open(files['subensembles_table.csv'])))
  assert [(r['method'], r['of']) for r in table] == ([('starsse', '20')] * 2
                                                     + [('local_de', '20')] * 2)
  ranked = sorted(range(20), key=lambda k: (all_rows[k]['ensemble_acc'], k))
  np.testing.assert_allclose(float(table[1]['ensemble_acc_mean']),
                             100 * all_rows[ranked[-1]]['ensemble_acc'])
  np.testing.assert_allclose(float(table[0]['diversity_mean']), all_rows[ranked[0]]['diversity'])
  assert os.path.getsize(files['subensembles.png']) > 0


def test_subensemble_option_and_bad_values():
  from enstransfer_jax import analyze  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.analysis import pipeline  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  assert pipeline.Options().subensembles == 5
  assert analyze.parse_args(['w', '--subensembles', '3']).subensembles == 3
  pipeline.Options(subensembles=0).check()  # 0: no study
  for bad in (1, -2):
    with pytest.raises(UserError, match='subensembles must be 0'):
      pipeline.Options(subensembles=bad).check()
  with pytest.raises(UserError, match='need at least 6 members'):
    subensembles.study(*_fake_probs(5), 6)
