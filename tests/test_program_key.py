"""The compiled train step's key: step.StepSpec, the one value the step is built from.

The engine memoises its programs by the spec (training/stage.py), so a config field the step
or its optimizer reads but the spec misses would silently reuse a stale program. Checked
without compiling anything: every config field that StepSpec.from_config reads (recorded
while it builds the spec of a ResNet config and of a Swin config with RandAugment), changed
alone, gives another spec; so does each argument; equal configs give equal specs (and
hashes); and optim.create_optimizer reads no config field outside step.OPTIMIZER_FIELDS,
the part of the config the spec hands it.
"""

import dataclasses

import ml_collections
import numpy as np
import pytest

from enstransfer_jax import models, optim
from enstransfer_jax.training import step as step_lib
from tests import engine_util


class _Recorder:
  """A read-only view of a ConfigDict that records the dotted names of the fields read."""

  def __init__(self, config, seen, prefix=''):
    self.__dict__.update(_config=config, _seen=seen, _prefix=prefix)

  def _read(self, name, value):
    self._seen.add(self._prefix + name)
    if isinstance(value, ml_collections.ConfigDict):
      return _Recorder(value, self._seen, f'{self._prefix}{name}.')
    return value

  def __getattr__(self, name):
    return self._read(name, getattr(self._config, name))

  def __getitem__(self, name):
    return self._read(name, self._config[name])

  def __contains__(self, name):
    return name in self._config

  def get(self, name, default=None):
    return self._read(name, self._config[name]) if name in self._config else default


def _fields_read(fn, config):
  seen = set()
  fn(_Recorder(config, seen))
  return {name for name in seen if not isinstance(_value(config, name),
                                                  ml_collections.ConfigDict)}


def _value(config, name):
  for part in name.split('.'):
    config = config[part]
  return config


def _changed(config, name):
  """A copy of config with the field `name` set to another value of its type."""
  c = config.copy_and_resolve_references()
  *path, last = name.split('.')
  node = c
  for part in path:
    node = node[part]
  old = node[last]
  if isinstance(old, bool):
    new = not old
  elif isinstance(old, (int, float)):
    new = type(old)(old + 1)
  elif isinstance(old, str):
    new = old + '_other'
  else:
    raise AssertionError(f'no other value for {name}={old!r}')
  with c.unlocked():
    node[last] = new
  return c


def _configs():
  resnet = engine_util.tiny_config(grad_accum_steps=2, label_smoothing=0.1, clip_grad=1.0,
                                   **{'aug.mixup': 0.8, 'aug.cutmix': 1.0})
  swin = engine_util.tiny_config(model='SwinNano', width=16, transform_name='swin_imagenet',
                                 optimizer='adamw', simmim=True)
  return resnet, swin


MODEL = models.create_model('ResNet18', 10, width=4)

# What the step and its optimizer read (the test of the recording itself).
EXPECTED = {'transform_name', 'image_size', 'interpolation', 'label_smoothing',
            'grad_accum_steps', 'aug.mixup', 'aug.cutmix', 'aug.mixup_prob',
            'aug.mixup_switch_prob', 'aug.auto_augment', 'aug.reprob', 'aug.remode',
            'aug.recount', *step_lib.OPTIMIZER_FIELDS}


def test_every_field_the_spec_reads_changes_it():
  read = set()
  for config in _configs():
    spec_of = lambda c: step_lib.StepSpec.from_config(c, MODEL)
    fields = _fields_read(spec_of, config)
    read |= fields
    base = spec_of(config)
    for name in sorted(fields):
      assert spec_of(_changed(config, name)) != base, name
  assert read == EXPECTED


def test_each_argument_changes_the_spec():
  config = _configs()[0]
  base = step_lib.StepSpec.from_config(config, MODEL)
  others = [dict(model=models.create_model('ResNet18', 10, width=8)),
            dict(model=models.create_model('ResNet18', 10, width=4, remat=True)),
            dict(model=models.create_model('ResNet18', 10, width=4, dtype='bfloat16')),
            dict(model=models.create_model('ResNet18', 9, width=4)),
            dict(terms=step_lib.Terms(wo_beta=0.5)), dict(members=2),
            dict(frozen=('conv1',)), dict(host_crops=True)]
  for kw in others:
    kw = {'model': MODEL, **kw}
    model = kw.pop('model')
    assert step_lib.StepSpec.from_config(config, model, **kw) != base, kw
  assert {f.name for f in dataclasses.fields(step_lib.StepSpec)} == {
      'model', 'terms', 'members', 'frozen', 'host_crops', 'transform', 'image_size',
      'interpolation', 'randaugment', 'smoothing', 'mixup', 'cutmix', 'mixup_prob',
      'mixup_switch_prob', 'micro_batches', 'optimizer'}


def test_equal_configs_give_the_same_key():
  for a, b in zip(_configs(), _configs()):
    model_a = models.create_model(a.model, 10, width=a.width, image_size=a.image_size)
    model_b = models.create_model(b.model, 10, width=b.width, image_size=b.image_size)
    spec_a = step_lib.StepSpec.from_config(a, model_a, step_lib.Terms(fmap_betas=(0.0, 1.0)),
                                           frozen=('layer1', 'conv1'))
    spec_b = step_lib.StepSpec.from_config(b, model_b, step_lib.Terms(fmap_betas=(0.0, 1.0)),
                                           frozen=('conv1', 'layer1'))
    assert spec_a == spec_b and hash(spec_a) == hash(spec_b)
    assert {spec_a: 'program'}[spec_b] == 'program'
  # Fields the step does not read leave the key alone (the quickstart's two stages share it).
  config = _configs()[0]
  other = engine_util.tiny_config(**{**dict(grad_accum_steps=2, label_smoothing=0.1,
                                              clip_grad=1.0, seed=7, lr=0.3, epochs=9,
                                              dataset='animals', batch_size=17),
                                     'aug.mixup': 0.8, 'aug.cutmix': 1.0})
  assert (step_lib.StepSpec.from_config(config, MODEL)
          == step_lib.StepSpec.from_config(other, MODEL))


@pytest.mark.parametrize('which', [0, 1])
def test_the_optimizer_reads_only_the_fields_of_the_spec(which):
  config = _configs()[which]
  read = _fields_read(optim.create_optimizer, config)
  assert read <= set(step_lib.OPTIMIZER_FIELDS), read - set(step_lib.OPTIMIZER_FIELDS)


def test_the_spec_optimizer_is_the_configs():
  """The optimizer built from the spec's fields takes torch SGD's first step,
  p - lr (g + wd p) (the momentum buffer starts at the gradient)."""
  config = engine_util.tiny_config(wd=1e-2, momentum=0.9)
  tx = optim.create_optimizer(step_lib.StepSpec.from_config(config, MODEL).optimizer_config())
  p, g = {'w': np.array([1.0, -2.0], np.float32)}, {'w': np.array([0.5, 0.25], np.float32)}
  new, _ = optim.step(tx, tx.init(p), g, p, learning_rate=0.1, momentum=0.9)
  np.testing.assert_allclose(new['w'], p['w'] - 0.1 * (g['w'] + 1e-2 * p['w']), rtol=1e-6)
