"""Schedules vs the real torch schedulers driven as the reference's training loop does."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from enstransfer_jax import schedules

SPE = 3  # batches per epoch


def make_config(name, warmup_epochs=2, fge_warmup_epochs=0, **kw):
  c = ml_collections.ConfigDict(dict(
      scheduler=name, optimizer='sgd', lr=0.05, momentum=0.7, epochs=4, num_fge=3,
      fge_epochs=3, fge_lr=0.03, warmup_lr=0.01, warmup_epochs=warmup_epochs,
      fge_warmup_epochs=fge_warmup_epochs, eta_min=0.002))
  c.update(kw)
  return c


def torch_scheduler(opt, c, spe):
  """The reference's scheduler for c.scheduler, built from torch's classes."""
  name, lr, E, W = c.scheduler, c.lr, c.epochs, c.warmup_epochs
  F, w, r = c.fge_epochs, c.fge_warmup_epochs, c.fge_lr / c.lr
  sched = torch.optim.lr_scheduler
  lam = lambda f: sched.LambdaLR(opt, f)

  def standard(k, last):
    a = k / last
    return 1.0 if a <= 0.5 else (1.0 - (a - 0.5) / 0.4 * 0.99 if a <= 0.9 else 0.01)

  def cos01(x):
    return 0.5 * (1 + math.cos(math.pi * x))

  def warm(k):  # the three first-model warm-up variants
    if k < W:
      if name == 'warmup_cosine':
        return (k + 1) / W * (c.warmup_lr / lr)
      if name == 'constant_cosine':
        return c.warmup_lr / lr
      return (1 - k / W) * (c.warmup_lr / lr) + k / W
    return cos01((k - W) / (E - W))

  def cyclic():
    total = spe * F
    return sched.CyclicLR(opt, base_lr=0.01 * c.fge_lr, max_lr=c.fge_lr,
                          step_size_up=total // 2, step_size_down=total - total // 2)

  def after_first(k, first):
    if k < E:
      return first(k)
    cyc = (k - E) % F
    if name.startswith('linear'):
      return cos01(cyc / F) * r
    if cyc < w:
      return ((cyc + 1) / w if name == 'cosine+warmup_cosine' else 1.0) * r
    return cos01((cyc - w) / (F - w)) * r

  if name == 'constant':
    return None
  if name == 'standard':
    return lam(lambda k: standard(k, E))
  if name == 'cosine':
    return sched.CosineAnnealingWarmRestarts(opt, T_0=E, eta_min=c.eta_min)
  if name == 'continious+cosine':
    return sched.CosineAnnealingWarmRestarts(opt, T_0=E * spe, eta_min=c.eta_min)
  if name == 'warmup_standard':
    return sched.SequentialLR(opt, [lam(lambda k: (k + 1) / W),
                                    lam(lambda k: standard(k, E - W))], milestones=[W])
  if name in ('warmup_cosine', 'constant_cosine', 'linear_warmup_cosine'):
    return lam(warm)
  if name == 'cosine+fge':
    return sched.SequentialLR(opt, [sched.CosineAnnealingLR(opt, E), cyclic()],
                              milestones=[E])
  if name == 'linear_warmup_cosine+fge':
    return sched.SequentialLR(opt, [lam(warm), cyclic()], milestones=[E])
  if name == 'continious+cosine+sse':
    def per_batch(k):
      if k < E * spe:
        return cos01(k / (E * spe))
      return cos01(((k - E * spe) % (F * spe)) / (F * spe)) * r
    return lam(per_batch)
  if name == 'linear_warmup_cosine+cosine':
    return lam(lambda k: after_first(k, warm))
  return lam(lambda k: after_first(k, lambda k: cos01(k / E)))  # cosine+(warmup|constant)_cosine


def torch_run(c, spe):
  """lr and momentum of every batch, stepping as training/train.py does."""
  p = torch.nn.Parameter(torch.zeros(2))
  opt = torch.optim.SGD([p], lr=c.lr, momentum=c.momentum, weight_decay=1e-4)
  sch = torch_scheduler(opt, c, spe)
  lrs, moms = [], []
  for epoch in range(1, schedules.total_epochs(c) + 1):
    per_batch = (sch is not None and 'fge' in c.scheduler and epoch > c.epochs) or (
        'continious+' in c.scheduler)
    for _ in range(spe):
      lrs.append(opt.param_groups[0]['lr'])
      moms.append(opt.param_groups[0]['momentum'])
      p.grad = torch.ones(2)
      opt.step()
      if per_batch:
        sch.step()
    if sch is not None and not per_batch:
      sch.step()
  return np.array(lrs), np.array(moms)


@pytest.mark.parametrize('warmup_epochs', [0, 2])
@pytest.mark.parametrize('fge_warmup_epochs', [0, 1])
@pytest.mark.parametrize('name', schedules.SCHEDULERS)
def test_matches_torch_scheduler(name, fge_warmup_epochs, warmup_epochs):
  c = make_config(name, warmup_epochs, fge_warmup_epochs)
  if name == 'warmup_standard' and warmup_epochs == 0:
    with pytest.raises(ZeroDivisionError):  # the reference cannot build it either
      torch_run(c, SPE)
    with pytest.raises(ValueError, match='warmup_epochs must be an integer >= 1'):
      schedules.lr_table(c, SPE)
    return
  want_lr, want_mom = torch_run(c, SPE)
  got = schedules.lr_table(c, SPE)
  assert got.shape == want_lr.shape == (SPE * (4 + 2 * 3),)
  np.testing.assert_allclose(got, want_lr, rtol=1e-6, atol=0)
  mom = schedules.create_momentum_fn(c, SPE)(np.arange(len(want_mom)))
  np.testing.assert_allclose(mom, want_mom, rtol=1e-6, atol=0)


@pytest.mark.parametrize('name', ['cosine+fge', 'cosine+warmup_cosine', 'warmup_standard',
                                  'continious+cosine'])
def test_jit_traced_step_and_odd_periods(name):
  """Traced int32 steps under jit; 15 batches per cycle: CyclicLR goes 7 up, 8 down."""
  c = make_config(name, fge_warmup_epochs=1, fge_epochs=3, epochs=5)
  want, _ = torch_run(c, 5)
  fn = jax.jit(schedules.create_learning_rate_fn(c, 5))
  got = np.array([fn(jnp.int32(s)) for s in range(len(want))])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  assert float(schedules.create_learning_rate_fn(c, 5)(7)) == pytest.approx(want[7], 1e-6)


@pytest.mark.parametrize('variant', ['cosine+warmup_cosine', 'cosine+constant_cosine'])
def test_spec_closed_form(variant):
  """The reference's per-epoch schedulers: epoch E (1-based) uses lr * f(E - 1), constant
  within the epoch."""
  c = make_config(variant, epochs=5, num_fge=4, fge_epochs=4, fge_warmup_epochs=2,
                  lr=0.05, fge_lr=0.02)
  spe = 7
  table = schedules.lr_table(c, spe)
  r = c.fge_lr / c.lr
  for e in range(schedules.total_epochs(c)):
    if e < c.epochs:
      f = 0.5 * (1 + math.cos(math.pi * e / c.epochs))
    else:
      cyc, w = (e - c.epochs) % c.fge_epochs, c.fge_warmup_epochs
      if cyc < w:
        f = ((cyc + 1) / w if variant == 'cosine+warmup_cosine' else 1.0) * r
      else:
        f = 0.5 * (1 + math.cos(math.pi * (cyc - w) / (c.fge_epochs - w))) * r
    np.testing.assert_allclose(table[e * spe:(e + 1) * spe], c.lr * f, rtol=1e-6)


def test_thesis_setting_length_and_endpoints():
  c = make_config('cosine+warmup_cosine', epochs=25, num_fge=5, fge_epochs=12,
                  fge_lr=0.05, warmup_epochs=0)
  assert schedules.total_epochs(c) == 25 + 4 * 12
  table = schedules.lr_table(c, 196)
  assert table.shape == (73 * 196,)
  assert table[0] == pytest.approx(0.05) and table[25 * 196] == pytest.approx(0.05)
  np.testing.assert_allclose(table[-1], 0.025 * (1 + math.cos(math.pi * 11 / 12)), rtol=1e-6)


@pytest.mark.parametrize('kw, match', [
    (dict(scheduler='cosin'), 'unknown scheduler .* valid names: standard, cosine'),
    (dict(scheduler='cosine+fge', num_fge=1), 'num_fge >= 2'),
    (dict(scheduler='cosine+warmup_cosine', num_fge=2, fge_epochs=0), 'fge_epochs'),
    (dict(scheduler='cosine+warmup_cosine', fge_warmup_epochs=3), 'fge_warmup_epochs'),
    (dict(scheduler='warmup_cosine', warmup_epochs=4), 'warmup_epochs'),
    (dict(scheduler='linear_warmup_cosine', warmup_epochs=None), 'warmup_epochs'),
    (dict(scheduler='cosine', epochs=0), 'epochs'),
])
def test_bad_configs(kw, match):
  c = make_config('cosine')
  c.update(kw)
  with pytest.raises(ValueError, match=match):
    schedules.create_learning_rate_fn(c, SPE)


def test_bad_arguments():
  c = make_config('cosine+fge', fge_epochs=1)
  with pytest.raises(ValueError, match='CyclicLR'):
    schedules.create_learning_rate_fn(c, 1)
  with pytest.raises(ValueError, match='steps_per_epoch'):
    schedules.create_learning_rate_fn(make_config('cosine'), 0)
  with pytest.raises(ValueError, match='must be an integer'):
    schedules.create_learning_rate_fn(make_config('cosine'), SPE)(1.5)
  c = make_config('warmup_cosine')
  del c['warmup_lr']
  with pytest.raises(ValueError, match="no field 'warmup_lr'"):
    schedules.create_learning_rate_fn(c, SPE)
