"""Validation splits with the reference's per-class rule (ens-for-transfer data/get_datasets.py,
split_targets_by_class): pets 20 and sun 10 validation images per class, caltech101 25 of each
class's 30 train images kept for training; other datasets keep the proportional split.

Reference: the rule written out below with sklearn, per class, on the examples of each class
in file-name order; the examples come from TFDS mocked with chosen labels and file names.
"""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from enstransfer_jax.data import datasets
from sklearn.model_selection import train_test_split


def _reference_rule(labels, names, count):
  """Per class (labels in increasing order): train_test_split(class indices in name order,
  train_size=count, random_state=42) -> (first part, rest), as sets of indices."""
  first, rest = set(), set()
  for label in np.unique(labels):
    ind = [i for i in np.argsort(names, kind='stable') if labels[i] == label]
    a, b = train_test_split(np.array(ind), train_size=count, random_state=42)
    first |= set(a.tolist())
    rest |= set(b.tolist())
  return first, rest


def test_split_per_class_is_the_reference_rule():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 6, 300)
  names = np.array([f'img_{v}' for v in rng.permutation(300)])
  first, second = datasets.split_per_class(labels, 20, names=names)
  want_first, want_second = _reference_rule(labels, names, 20)
  assert set(first.tolist()) == want_first and set(second.tolist()) == want_second
  assert np.all(np.bincount(labels[first]) == 20) and len(first) + len(second) == 300
  assert not set(first.tolist()) & set(second.tolist())
  unordered, _ = datasets.split_per_class(labels, 20)  # TFDS's order: other samples
  assert set(unordered.tolist()) != want_first
  with pytest.raises(ValueError, match='has 3 examples'):
    datasets.split_per_class(np.array([0, 0, 0, 1, 1, 1, 1]), 3)


def _mock(examples):
  """as_dataset of every builder: `examples` (images 8x8) whatever the split."""
  def as_dataset(self, split, shuffle_files=False, decoders=None, **kwargs):
    del self, split, shuffle_files, decoders, kwargs
    labels = np.array([e[0] for e in examples], np.int64)
    names = np.array([e[1] for e in examples])
    images = np.stack([np.full((8, 8, 3), i % 256, np.uint8) for i in range(len(examples))])
    key = 'image/file_name' if names[0].startswith('caltech') else 'file_name'
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels, key: names})
  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def _examples(prefix, classes, per_class, seed):
  rng = np.random.default_rng(seed)
  ex = [(c, f'{prefix}_{c}_{rng.integers(1e9)}.jpg') for c in classes for _ in range(per_class)]
  return [ex[i] for i in rng.permutation(len(ex))]


def _config(name):
  return ml_collections.ConfigDict(dict(dataset=name, data_dir='', use_test=False,
                                        class_subset=(), transform_name='none'))


@pytest.mark.parametrize('name,count', [('pets', 20), ('sun', 10)])
def test_pets_and_sun_validation_has_the_reference_count_per_class(name, count):
  examples = _examples(name, [0, 3, 5, 36], count + 7, seed=count)
  with _mock(examples):
    splits = datasets.load_dataset(_config(name), load_size=8)
  labels = np.array([e[0] for e in examples])
  names = np.array([e[1] for e in examples])
  valid, train = _reference_rule(labels, names, count)
  # Image i is filled with i % 256: it tells which example landed where.
  assert sorted(splits.test_images[:, 0, 0, 0].tolist()) == sorted(i % 256 for i in valid)
  assert sorted(splits.train_images[:, 0, 0, 0].tolist()) == sorted(i % 256 for i in train)
  assert np.all(np.bincount(splits.test_labels)[[0, 3, 5, 36]] == count)
  assert np.all(np.bincount(splits.train_labels)[[0, 3, 5, 36]] == 7)


def test_caltech101_keeps_25_of_30_per_class_for_training():
  examples = _examples('caltech', [0, 1, 7], 30, seed=5)  # TFDS label 4 is the background
  with _mock(examples):
    splits = datasets.load_dataset(_config('caltech101'), load_size=8)
  labels = np.array([e[0] for e in examples])
  train, valid = _reference_rule(labels, np.array([e[1] for e in examples]), 25)
  assert sorted(splits.train_images[:, 0, 0, 0].tolist()) == sorted(i % 256 for i in train)
  assert sorted(splits.test_images[:, 0, 0, 0].tolist()) == sorted(i % 256 for i in valid)
  assert np.bincount(splits.test_labels).tolist() == [5, 5, 0, 0, 0, 0, 5]  # 7 -> 6


def test_cars_keeps_the_proportional_split():
  examples = _examples('cars', [0, 1], 50, seed=6)
  with _mock(examples):
    splits = datasets.load_dataset(_config('cars'), load_size=8)
  # DS_TO_SIZES: 6494 train, 1650 validation.
  assert len(splits.test_labels) == round(100 * 1650 / (6494 + 1650))
