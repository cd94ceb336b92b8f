"""optim vs torch.optim.SGD / AdamW: a few steps with a new lr each step, random grads."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from enstransfer_jax import optim, schedules

SHAPES = {'conv1': {'kernel': (3, 3, 2, 4)}, 'bn1': {'scale': (4,), 'bias': (4,)},
          'fc': {'kernel': (4, 5), 'bias': (5,)}}
LRS = [0.1, 0.05, 0.2, 0.01, 0.07, 0.03]
TOL = dict(rtol=1e-6, atol=1e-7)


def make_config(optimizer='sgd', nesterov=False, wd=1e-2, momentum=0.9):
  return ml_collections.ConfigDict(dict(optimizer=optimizer, wd=wd, momentum=momentum,
                                        nesterov=nesterov))


def init_params(seed=0):
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
  return treedef.unflatten([rng.standard_normal(s).astype(np.float32) for s in leaves])


def random_grads(params, rng):
  return jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)


def torch_optimizer(config, tensors):
  if config.optimizer == 'sgd':
    return torch.optim.SGD(tensors, lr=1.0, momentum=config.momentum, weight_decay=config.wd,
                           nesterov=config.nesterov)
  return torch.optim.AdamW(tensors, lr=1.0, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=config.wd)


def run_both(config, steps, frozen=lambda step: (), reset_at=(), momenta=None, lrs=LRS):
  """Runs torch and optim side by side; frozen(step) names the leaves frozen at a step.

  Returns the list of (jax params, torch params as numpy) after every step.
  """
  params = init_params()
  names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
  tensors = [torch.nn.Parameter(torch.tensor(np.array(p)))
             for p in jax.tree.leaves(params)]
  topt = torch_optimizer(config, tensors)
  state = optim.create_optimizer(config).init(params)
  rng = np.random.default_rng(1)
  history = []
  for step in range(steps):
    lr = lrs[step % len(lrs)]
    grads = random_grads(params, rng)
    frozen_now = frozen(step)
    mask = jax.tree_util.tree_map_with_path(
        lambda k, _: jax.tree_util.keystr(k) not in frozen_now, params)
    tx = optim.create_optimizer(config, trainable_mask=mask)
    state = optim.carry_state(state, tx.init(params))  # a new frozen set, as at a stage start
    if step in reset_at:
      state = tx.init(params)
      topt = torch_optimizer(config, tensors)  # fresh: the reference empties its state
    extra = {} if momenta is None else {'momentum': momenta[step]}
    params, state = optim.step(tx, state, grads, params, learning_rate=lr, **extra)
    # torch: frozen params have no gradient and are skipped by step().
    for name, t, g in zip(names, tensors, jax.tree.leaves(grads)):
      t.grad = None if name in frozen_now else torch.tensor(np.array(g))
    for group in topt.param_groups:
      group['lr'] = lr
      if momenta is not None:
        key = 'momentum' if config.optimizer == 'sgd' else 'betas'
        group[key] = momenta[step] if key == 'momentum' else (momenta[step], 0.999)
    topt.step()
    history.append((params, [t.detach().numpy().copy() for t in tensors]))
  return history, names, state


@pytest.mark.parametrize('config', [
    make_config('sgd'), make_config('sgd', nesterov=True), make_config('sgd', momentum=0.0),
    make_config('adamw', wd=0.1)], ids=['sgd', 'sgd-nesterov', 'sgd-no-momentum', 'adamw'])
def test_matches_torch(config):
  history, _, _ = run_both(config, 6)
  for params, want in history:
    for got, w in zip(jax.tree.leaves(params), want):
      np.testing.assert_allclose(got, w, **TOL)
  start = jax.tree.leaves(init_params())
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(history[-1][0]), start))


@pytest.mark.parametrize('opt_name', ['sgd', 'adamw'])
def test_frozen_leaves_from_a_later_step(opt_name):
  """Freeze conv1 and fc's bias from step 2 on (as cycles 2..K after member 1), state carried:
  the other leaves keep their buffers / moments, as torch."""
  frozen_leaves = ("['conv1']['kernel']", "['fc']['bias']")
  frozen = lambda step: frozen_leaves if step >= 2 else ()
  history, names, _ = run_both(make_config(opt_name), 6, frozen=frozen)
  for params, want in history:
    for got, w in zip(jax.tree.leaves(params), want):
      np.testing.assert_allclose(got, w, **TOL)
  before, after = history[1][0], history[3][0]
  for name, b, a in zip(names, jax.tree.leaves(before), jax.tree.leaves(after)):
    if name in frozen_leaves:
      np.testing.assert_array_equal(a, b)  # bit-identical
    else:
      assert not np.allclose(a, b)


@pytest.mark.parametrize('opt_name', ['sgd', 'adamw'])
def test_frozen_leaves_get_no_update_and_no_state(opt_name):
  params = init_params()
  mask = {'conv1': False, 'bn1': True, 'fc': {'kernel': True, 'bias': False}}  # a prefix
  tx = optim.create_optimizer(make_config(opt_name), trainable_mask=mask)
  state0 = tx.init(params)
  grads = random_grads(params, np.random.default_rng(3))
  new, state = jax.jit(functools.partial(optim.step, tx, learning_rate=0.3))(
      state0, grads, params)
  np.testing.assert_array_equal(new['conv1']['kernel'], params['conv1']['kernel'])
  np.testing.assert_array_equal(new['fc']['bias'], params['fc']['bias'])
  assert np.all(np.asarray(new['fc']['kernel']) != params['fc']['kernel'])
  kept = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(state)}
  assert not any("['conv1']" in k or "['fc']['bias']" in k for k in kept)
  assert any("['fc']['kernel']" in k for k in kept)


@pytest.mark.parametrize('opt_name', ['sgd', 'adamw'])
def test_reset_state_restarts_like_torch(opt_name):
  history, _, state = run_both(make_config(opt_name), 6, reset_at=(3,))
  for params, want in history:
    for got, w in zip(jax.tree.leaves(params), want):
      np.testing.assert_allclose(got, w, **TOL)
  if opt_name == 'adamw':  # 3 steps since the reset
    counts = [v for k, v in jax.tree_util.tree_leaves_with_path(state.inner_state)
              if k[-1] == jax.tree_util.GetAttrKey('count')]
    assert counts and all(int(c) == 3 for c in counts)
  no_reset, _, _ = run_both(make_config(opt_name), 6)
  assert not np.allclose(jax.tree.leaves(no_reset[-1][0])[0],
                         jax.tree.leaves(history[-1][0])[0])


@pytest.mark.parametrize('opt_name', ['sgd', 'adamw'])
def test_cyclic_momentum_matches_torch_cycliclr(opt_name):
  """cosine+fge: torch CyclicLR drives lr and momentum (beta1); ours gets both per step."""
  c = ml_collections.ConfigDict(dict(
      scheduler='cosine+fge', optimizer=opt_name, lr=0.05, fge_lr=0.03, epochs=2,
      num_fge=3, fge_epochs=2, wd=1e-2, momentum=0.5, nesterov=False))
  spe = 2
  n = schedules.total_epochs(c) * spe
  params = init_params()
  tensors = [torch.nn.Parameter(torch.tensor(np.array(p)))
             for p in jax.tree.leaves(params)]
  topt = torch_optimizer(c, tensors)
  topt.param_groups[0]['lr'] = c.lr  # the schedulers' base rate
  sched = torch.optim.lr_scheduler
  cos = sched.CosineAnnealingLR(topt, c.epochs)  # built first, as in the reference
  cyc = sched.CyclicLR(topt, base_lr=0.01 * c.fge_lr, max_lr=c.fge_lr,
                       step_size_up=spe * c.fge_epochs // 2,
                       step_size_down=spe * c.fge_epochs - spe * c.fge_epochs // 2)
  tsched = sched.SequentialLR(topt, [cos, cyc], milestones=[c.epochs])
  tx = optim.create_optimizer(c)
  state = tx.init(params)
  lr_fn = schedules.create_learning_rate_fn(c, spe)
  mom_fn = schedules.create_momentum_fn(c, spe)

  @jax.jit
  def train_step(params, state, grads, step):
    return optim.step(tx, state, grads, params, learning_rate=lr_fn(step),
                      momentum=mom_fn(step))

  rng = np.random.default_rng(2)
  for step in range(n):
    epoch = step // spe + 1
    grads = random_grads(params, rng)
    params, state = train_step(params, state, grads, jnp.int32(step))
    for t, g in zip(tensors, jax.tree.leaves(grads)):
      t.grad = torch.tensor(np.array(g))
    topt.step()
    if epoch > c.epochs:
      tsched.step()
    elif (step + 1) % spe == 0:
      tsched.step()
  for got, w in zip(jax.tree.leaves(params), tensors):
    np.testing.assert_allclose(got, w.detach().numpy(), **TOL)


def test_bad_inputs():
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'; valid: sgd, adamw"):
    optim.create_optimizer(make_config('lamb'))
  with pytest.raises(ValueError, match='nesterov'):
    optim.create_optimizer(make_config('sgd', nesterov=True, momentum=0.0))
  with pytest.raises(ValueError, match='wd'):
    optim.create_optimizer(make_config('sgd', wd=-1.0))
  with pytest.raises(ValueError, match=r'config.momentum=1.0 must be in \[0, 1\)'):
    optim.create_optimizer(make_config('sgd', momentum=1.0))
  params = init_params()
  with pytest.raises(ValueError, match='trainable_mask'):
    tx = optim.create_optimizer(make_config(), trainable_mask={'conv1': False})
    tx.update(params, tx.init(params), params)
