"""Tests of enstransfer_jax.data.datasets and batches: digits, TFDS (mocked, no download), splits,
class subsets, the offline error, metrics and batch order.

References: scikit-learn's raw digits, the raw mocked TFDS examples (tfds.load in the same mock),
PIL resizing, the reference's class counts (DS_TO_METRIC_AND_N_CLASSES), hand-computed metrics
and torch's DataLoader batch sizes.
"""

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
import torch

from enstransfer_jax import metrics
from enstransfer_jax.data import batches
from enstransfer_jax.data import datasets


def _config(dataset, use_test=True, class_subset=(), data_dir=''):
  return ml_collections.ConfigDict(dict(dataset=dataset, data_dir=data_dir, use_test=use_test,
                                        class_subset=class_subset))


def _check_types(splits, num_classes):
  for images, labels in ((splits.train_images, splits.train_labels),
                         (splits.test_images, splits.test_labels)):
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3
    assert labels.dtype == np.int32 and labels.shape == (len(images),)
    assert labels.min() >= 0 and labels.max() < num_classes
  assert splits.num_classes == num_classes


def test_digits_pixels_split_and_stratification():
  raw = datasets.sk_datasets.load_digits()
  splits = datasets.load_dataset(_config('digits'))
  _check_types(splits, 10)
  assert splits.train_images.shape[1:] == (32, 32, 3) and splits.metric == 'top1'
  assert len(splits.train_labels) + len(splits.test_labels) == len(raw.target) == 1797
  assert len(splits.test_labels) == 599  # 1/3 held out
  # Each image is a 4x4-nearest upscale of round(raw * 255 / 16), grey in all channels.
  small = splits.test_images[:, ::4, ::4, 0].reshape(len(splits.test_labels), -1)
  expected = {bytes(row) for row in np.round(raw.data * 255 / 16).astype(np.uint8)}
  assert all(bytes(row) in expected for row in small)
  np.testing.assert_array_equal(splits.test_images[..., 0], splits.test_images[..., 2])
  np.testing.assert_array_equal(splits.test_images[:, 0::4], splits.test_images[:, 3::4])
  # Stratified: every class keeps 1/3 of its examples in the test split (up to rounding).
  per_class = np.bincount(raw.target)
  assert np.all(np.abs(np.bincount(splits.test_labels) - per_class / 3) <= 1)
  val = datasets.load_dataset(_config('digits', use_test=False))
  assert len(val.train_labels) + len(val.test_labels) == len(splits.train_labels)
  assert len(val.test_labels) == 120  # 10% of the 1198 training examples


def test_class_subset_keeps_and_remaps_labels_in_given_order():
  full = datasets.load_dataset(_config('digits'))
  sub = datasets.load_dataset(_config('digits', class_subset=(7, 2)))
  _check_types(sub, 2)
  for new, old in enumerate((7, 2)):
    np.testing.assert_array_equal(sub.train_images[sub.train_labels == new],
                                  full.train_images[full.train_labels == old])
    np.testing.assert_array_equal(sub.test_images[sub.test_labels == new],
                                  full.test_images[full.test_labels == old])
  with pytest.raises(ValueError, match='class_subset'):
    datasets.load_dataset(_config('digits', class_subset=(3, 10)))
  with pytest.raises(ValueError, match='class_subset'):
    datasets.load_dataset(_config('digits', class_subset=(3, 3)))


def _raw_tfds(name, split):
  examples = list(tfds.as_numpy(tfds.load(name, split=split)))
  return [e['image'] for e in examples], np.array([e['label'] for e in examples])


def test_mock_cifar10_validation_split_is_stratified():
  with tfds.testing.mock_data(num_examples=400):
    images, labels = _raw_tfds('cifar10', 'train')
    splits = datasets.load_dataset(_config('cifar10', use_test=False))
  _check_types(splits, 10)
  assert splits.train_images.shape == (360, 32, 32, 3) and splits.test_images.shape[0] == 40
  # Train and validation partition the raw training examples, in class proportions (+-1).
  key = lambda x: x.tobytes()
  raw = {key(x): int(y) for x, y in zip(images, labels)}
  got = list(zip(splits.train_images, splits.train_labels)) + list(
      zip(splits.test_images, splits.test_labels))
  assert sorted(key(x) for x, _ in got) == sorted(raw) and all(raw[key(x)] == y for x, y in got)
  expected = np.bincount(labels, minlength=10) * 0.1
  assert np.all(np.abs(np.bincount(splits.test_labels, minlength=10) - expected) <= 1)


def test_mock_cifar100_official_test_and_class_subset():
  with tfds.testing.mock_data(num_examples=300):
    images, labels = _raw_tfds('cifar100', 'test')
    full = datasets.load_dataset(_config('cifar100'))
    sub = datasets.load_dataset(_config('cifar100', class_subset=(labels[5], labels[0])))
  _check_types(full, 100)
  assert full.metric == 'top1' and full.name == 'cifar100'
  np.testing.assert_array_equal(full.test_images, np.stack(images))
  np.testing.assert_array_equal(full.test_labels, labels)
  _check_types(sub, 2)
  for new, old in enumerate((labels[5], labels[0])):
    np.testing.assert_array_equal(sub.test_images[sub.test_labels == new],
                                  np.stack(images)[labels == old])


def test_variable_size_images_resized_shorter_side_then_center_cropped():
  with tfds.testing.mock_data(num_examples=3):
    images, labels = _raw_tfds('dtd', 'test')
    splits = datasets.load_dataset(_config('dtd'), load_size=64)
  _check_types(splits, 47)
  np.testing.assert_array_equal(splits.test_labels, labels)
  for raw, got in zip(images, splits.test_images):
    h, w = raw.shape[:2]
    new_h, new_w = (64, int(64 * w / h)) if h <= w else (int(64 * h / w), 64)
    ref = np.stack([np.asarray(Image.fromarray(raw[..., c].astype(np.float32), mode='F').resize(
        (new_w, new_h), Image.BILINEAR)) for c in range(3)], -1)
    top, left = round((new_h - 64) / 2), round((new_w - 64) / 2)
    ref = np.clip(np.round(ref[top:top + 64, left:left + 64]), 0, 255)
    assert np.abs(got.astype(float) - ref).max() <= 1  # TF vs PIL, both antialiased bilinear


def test_caltech101_drops_background_class():
  with tfds.testing.mock_data(num_examples=40):
    _, labels = _raw_tfds('caltech101', 'test')
    splits = datasets.load_dataset(_config('caltech101'), load_size=8)
  background = 4  # 'background_google' in TFDS's sorted label list
  _check_types(splits, 101)
  assert splits.metric == 'mean_per_class'
  np.testing.assert_array_equal(splits.test_labels,
                                [y - (y > background) for y in labels if y != background])


def test_offline_missing_data_raises_one_clear_line(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError('Could not resolve host: www.cs.toronto.edu')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
  with pytest.raises(datasets.DataNotFoundError) as info:
    datasets.load_dataset(_config('cifar100', data_dir=str(tmp_path)))
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError) and '\n' not in message
  assert "'cifar100'" in message and str(tmp_path) in message and 'ConnectionError' in message
  assert "tfds.builder('cifar100'" in message and 'download_and_prepare()' in message


def test_unknown_and_missing_datasets_raise_value_error():
  with pytest.raises(ValueError, match='unknown dataset.*digits.*cifar100'):
    datasets.load_dataset(_config('imagenet21k'))
  with pytest.raises(ValueError, match='not in TFDS'):
    datasets.load_dataset(_config('aircraft'))


# The reference's DS_TO_METRIC_AND_N_CLASSES (data/get_datasets.py), for the datasets TFDS has.
REFERENCE = {'caltech101': ('mean_per_class', 101), 'cars': ('top1', 196),
             'cifar10': ('top1', 10), 'cifar100': ('top1', 100), 'clipart': ('top1', 345),
             'dtd': ('top1', 47), 'eurosat': ('top1', 10), 'flowers': ('mean_per_class', 102),
             'food': ('top1', 101), 'pets': ('mean_per_class', 37), 'sun': ('top1', 397)}


def test_tfds_table_matches_reference_classes_and_metrics():
  assert set(datasets.TFDS_SOURCES) == set(REFERENCE)
  for name, (metric, num_classes) in REFERENCE.items():
    src = datasets.TFDS_SOURCES[name]
    label = tfds.builder(src.tfds_name, data_dir='/nonexistent').info.features['label']
    assert label.num_classes - len(src.drop_labels) == num_classes, name
    assert all(label.str2int(n) >= 0 for n in src.drop_labels)
    assert datasets.dataset_metric(name) == metric
  assert datasets.dataset_metric('aircraft') == 'mean_per_class'


def test_dataset_metrics_top1_and_mean_per_class():
  """The metric each dataset reports (metrics.METRICS[dataset_metric]) against the values
  worked out by hand: 3 of 4 right overall; class 0 all right, class 1 none right."""
  logits = np.array([[2.0, 1.0], [3.0, 0.0], [0.5, 0.1], [0.9, 0.2]])  # predicts class 0
  labels = np.array([0, 0, 0, 1])
  metric = lambda name: metrics.METRICS[datasets.dataset_metric(name)](logits, labels)
  assert metric('cifar100') == pytest.approx(0.75)
  assert metric('pets') == pytest.approx((1.0 + 0.0) / 2)


def test_epoch_order_is_a_deterministic_permutation():
  order = batches.epoch_order(3, 1, 7, 50)
  np.testing.assert_array_equal(np.sort(order), np.arange(50))
  np.testing.assert_array_equal(order, batches.epoch_order(3, 1, 7, 50))
  others = [batches.epoch_order(*a, 50) for a in ((4, 1, 7), (3, 2, 7), (3, 1, 8))]
  assert all(not np.array_equal(order, o) for o in others)
  with pytest.raises(ValueError, match='seed'):
    batches.epoch_order(-1, 0, 0, 10)


@pytest.mark.parametrize('n,batch_size', [(10, 4), (12, 4), (3, 5)])
def test_batches_keep_last_partial_batch_like_torch_dataloader(n, batch_size):
  loader = torch.utils.data.DataLoader(list(range(n)), batch_size=batch_size, drop_last=False)
  slices = batches.batch_slices(n, batch_size)
  assert [stop - start for start, stop in slices] == [len(b) for b in loader]
  assert batches.num_batches(n, batch_size) == len(loader)
  orders = [batches.epoch_order(0, m, 0, n) for m in (1, 2)]
  got = [batches.padded_indices(orders, lo, hi, batch_size) for lo, hi in slices]
  for m, order in enumerate(orders):  # the real rows of the padded batches are the order
    real = np.concatenate([idx[m][mask[m] == 1] for idx, mask in got])
    np.testing.assert_array_equal(real, order)
  for idx, mask in got:
    assert idx.shape == mask.shape == (2, batch_size)
  idx, mask = got[-1]
  n_last = n - (len(slices) - 1) * batch_size
  np.testing.assert_array_equal(mask[:, n_last:], 0.0)
  np.testing.assert_array_equal(idx[:, n_last:], np.repeat(idx[:, :1], batch_size - n_last, 1))


def test_device_layout_pads_each_micro_batch_to_the_data_axis():
  pos, real = batches.device_layout(6, micro_batches=2, multiple=4)
  np.testing.assert_array_equal(pos, [0, 1, 2, 0, 3, 4, 5, 3])
  np.testing.assert_array_equal(real, [1, 1, 1, 0, 1, 1, 1, 0])
  pos, real = batches.device_layout(599, 1, 4)
  np.testing.assert_array_equal(pos, np.r_[np.arange(599), 0])
  assert real.sum() == 599 and real[-1] == 0
  pos, real = batches.device_layout(8, 2, 4)  # divisible: the identity
  np.testing.assert_array_equal(pos, np.arange(8))
  assert real.min() == 1
  with pytest.raises(ValueError, match='divide batch_size'):
    batches.device_layout(6, 4, 2)


def test_mixup_partners_are_timms_flip_over_the_real_rows_wherever_the_padding_is():
  """timm's batch mode mixes sample i with sample n-1-i; the padding of a micro-batch laid out
  for the devices may sit between real rows and must not change who pairs with whom."""
  from enstransfer_jax.data import mixup  # pylint: disable=g-import-not-at-top
  for mask in ([1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1]):
    mask = np.asarray(mask, np.float32)
    real = np.flatnonzero(mask)
    want = np.arange(len(mask))
    want[real] = real[::-1]
    np.testing.assert_array_equal(np.asarray(mixup.partners(mask)), want)
