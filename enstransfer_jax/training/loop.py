"""train.run(config, workdir): the whole experiment, from data to summary.json.

Where a member starts: resume from the work dir is handled by `resume.py`; otherwise member 1
(and every Local/Global DE member) starts from the pre-trained checkpoint `ckpt` with a new
`num_classes` head drawn from (seed, member), or from scratch when `ckpt` is empty; SSE
member k starts from member k-1, StarSSE member k from member 1.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from enstransfer_jax import checkpoints, losses, metrics, models, optim, schedules
from enstransfer_jax.data import batches
from enstransfer_jax.training import config_check, mesh, plan as plan_lib, resume
from enstransfer_jax.training import step as step_lib
from enstransfer_jax.training import workdir as wd

_BN_MODULES = ('bn1', 'layer1', 'layer2', 'layer3', 'layer4')


def stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


class Experiment:
  """Holds what the members of one run share: data, model, schedule, finished members."""

  def __init__(self, config, workdir, data, log):
    self.config, self.workdir, self.data, self.log = config, workdir, data, log
    dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
    self.model = models.create_model(config.model, data.num_classes, width=config.width,
                                     dtype=dtype)
    self.steps_per_epoch = len(batches.batch_slices(len(data.train_labels), config.batch_size))
    # The schedules are pure functions of the global step; tabulate them once for the host loop.
    steps = np.arange(schedules.total_epochs(config) * self.steps_per_epoch)
    self.lrs = np.asarray(schedules.create_learning_rate_fn(config, self.steps_per_epoch)(steps))
    self.moms = np.asarray(schedules.create_momentum_fn(config, self.steps_per_epoch)(steps))
    self.finished = {}  # member index -> variables (host pytrees)
    self.pretrained = {}  # ckpt path -> variables
    self.placement, self._placed = None, {}  # devices of the stage in training
    self._last_opt_state = None  # carried between members when reset_optim_state=False
    self.progress = resume.Progress(workdir)
    self.eval_step = step_lib.make_eval_step(self.model, config)

  # Where members start.
  def pretrained_variables(self, ckpt):
    if ckpt not in self.pretrained:
      if ckpt:
        arch, variables = checkpoints.load_pretrained(ckpt)
        if models.canonical_name(arch) != models.canonical_name(self.config.model):
          raise ValueError(f'checkpoint {ckpt} holds a {arch} but config.model is '
                           f'{self.config.model}; set --config.model={arch}')
      else:
        variables = models.init_variables(self.model, jax.random.PRNGKey(self.config.seed),
                                          self.config.image_size)
      self.pretrained[ckpt] = jax.device_get(dict(variables))
    return self.pretrained[ckpt]

  def initial_variables(self, member):
    if member.init == 'previous':
      return self.finished[member.index - 1]
    if member.init == 'first':
      return self.finished[1]
    variables = self.pretrained_variables(member.ckpt or '')
    head = variables['params']['fc']['kernel'].shape[-1]
    if member.ckpt and head != self.data.num_classes:
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), member.index)
      variables = models.replace_head(variables, self.data.num_classes, key)
    return variables

  # What each stage trains with.
  def terms(self, member):
    c = self.config
    cycle = plan_lib.is_cycle(member)
    fmap_on = any(c.fmap_betas) and (c.which_model_is_regularizer == 'pretrain' or cycle)
    earlier = self._earlier(member)
    frozen = tuple(c.freeze_layers) if cycle else ()
    return step_lib.Terms(
        fmap_betas=tuple(float(b) for b in c.fmap_betas) if fmap_on else (),
        fmap_loss_type=c.fmap_loss_type, rtd_dim=c.rtd_dim, rtd_card=c.rtd_card,
        rtd_lp=c.rtd_lp,
        wo_beta=float(c.wo_beta) if earlier else 0.0,
        prev_ce_beta=float(c.prev_ce_beta) if earlier else 0.0,
        only_negative=bool(c.only_negative),
        stop_gradient_after=config_check.frozen_prefix(frozen),
        frozen_bn=tuple(m for m in frozen if m in _BN_MODULES) if c.freeze_bn_stats else ())

  def trainable_mask(self, params, terms_frozen):
    return {k: jax.tree_util.tree_map(lambda _: k not in terms_frozen, v)
            for k, v in params.items()}

  def aux_for_step(self, terms, member, rng):
    """Regulariser inputs; the earlier member for WO / prev-CE is drawn per step."""
    aux = {}
    if terms.fmap_betas:
      pretrain = self.config.which_model_is_regularizer == 'pretrain'
      aux['reg'] = self._place(('reg',), lambda: (
          self.pretrained_variables(member.ckpt or self.config.ckpt or '') if pretrain
          else self.finished[1]))
    if terms.wo_beta or terms.prev_ce_beta:
      earlier = self._earlier(member)
      chosen = earlier[rng.integers(len(earlier))]
      if terms.wo_beta:
        aux['wo'] = self._place(('wo', chosen), lambda: losses.flatten_params(
            self.finished[chosen]['params']))
      if terms.prev_ce_beta:
        aux['prev'] = self._place(('prev', chosen), lambda: self.finished[chosen])
    return aux

  def _earlier(self, member):
    """Saved members WO / prev-CE may draw from: before `member`, other than member 1."""
    return sorted(i for i in self.finished if i != 1 and i < member.index)

  def _place(self, key, make):
    """Regulariser inputs, replicated on every device once per stage."""
    if key not in self._placed:
      self._placed[key] = self.placement.replicated(make())
    return self._placed[key]

  # Training.
  def start_state(self, inits, tx):
    params = stack([v['params'] for v in inits])
    opt_state = jax.vmap(tx.init)(params)
    if not self.config.reset_optim_state and self._last_opt_state is not None:
      opt_state = self._last_opt_state
    return step_lib.TrainState(params, stack([v['batch_stats'] for v in inits]), opt_state)

  def train_stage(self, s, stage, position=None):
    """Trains stage number s; `position` (from resume.Progress) continues an interrupted one."""
    c, k = self.config, len(stage)
    names = ', '.join(str(m.index) for m in stage)
    terms = self.terms(stage[0])
    frozen = set(c.freeze_layers) if plan_lib.is_cycle(stage[0]) else set()
    inits = [self.initial_variables(m) for m in stage]
    tx = optim.create_optimizer(c, self.trainable_mask(inits[0]['params'], frozen))
    state = self.start_state(inits, tx)
    done_epochs, done_batches, running = 0, 0, None
    if position is not None and (position['epoch'] or position['batch']):
      state = self.progress.restore(state, position)
      done_epochs, done_batches = position['epoch'], position['batch']
      running = {key: np.asarray(v, np.float32) for key, v in position['running'].items()} or None
    elif position is not None and not c.reset_optim_state:  # the previous member's momentum
      state = state.replace(opt_state=self.progress.restore(state, position).opt_state)
    start = {'previous': f'member {stage[0].index - 1}', 'first': 'member 1'}.get(
        stage[0].init, stage[0].ckpt or 'scratch')
    print(f'== member{"s" if k > 1 else ""} {names}: {stage[0].epochs} epochs from '
          f'{start}{" (in parallel)" if k > 1 else ""}'
          + (f', resumed at epoch {done_epochs + 1} batch {done_batches}' if position else ''),
          flush=True)
    self.placement = mesh.Placement(c, k)
    self._placed = {}
    state = self.placement.members(state)
    train_step = step_lib.make_train_step(self.model, tx, c, terms)
    member_ids = self.placement.members(np.asarray([m.index for m in stage], np.int32))
    n = len(self.data.train_labels)
    slices = batches.batch_slices(n, c.batch_size)
    for epoch in range(done_epochs + 1, stage[0].epochs + 1):
      orders = [batches.epoch_order(c.seed, m.index, epoch, n) for m in stage]
      first = done_batches if epoch == done_epochs + 1 else 0
      running = running if first else None
      bar = tqdm(slices, desc=f'member {names} epoch {epoch}/{stage[0].epochs}', initial=first,
                 disable=not (c.progress and mesh.is_writer()), leave=False,
                 dynamic_ncols=True)
      for b in range(first, len(slices)):
        lo, hi = slices[b]
        idx = np.stack([o[lo:hi] for o in orders])
        local_step = (epoch - 1) * self.steps_per_epoch + b
        gsteps = [(m.epoch_offset * self.steps_per_epoch) + local_step for m in stage]
        lrs, moms = self.lrs[gsteps].astype(np.float32), self.moms[gsteps].astype(np.float32)
        images, labels = self.placement.batch(
            (self.data.train_images[idx], self.data.train_labels[idx].astype(np.int32)))
        state, step_metrics = train_step(
            state, images, labels, member_ids,
            *self.placement.members((np.full((k,), local_step, np.int32), lrs, moms)),
            self.aux_for_step(terms, stage[0], np.random.default_rng([c.seed, stage[0].index,
                                                                        local_step])))
        scaled = jax.tree_util.tree_map(lambda v, w=hi - lo: v * w, step_metrics)
        running = scaled if running is None else jax.tree_util.tree_map(jnp.add, running, scaled)
        bar.update(1)
        save_now = c.checkpoint_every_steps and (local_step + 1) % c.checkpoint_every_steps == 0
        stop = self.progress.stop_requested
        if b % c.log_every_steps == 0 or b == len(slices) - 1 or save_now or stop:
          host = mesh.to_host(step_metrics)
          self._check_finite(host, stage, epoch, gsteps[0])
          for j, m in enumerate(stage):
            self.log.write('train', member=m.index, epoch=m.epoch_offset + epoch, step=gsteps[j],
                           lr=float(lrs[j]), **{key: v[j] for key, v in host.items()})
          bar.set_postfix(loss=f"{np.mean(host['loss']):.3f}", acc=f"{np.mean(host['acc']):.3f}",
                          lr=f'{float(lrs[0]):.4g}')
        if b < len(slices) - 1 and (save_now or stop):
          self.save_progress(state, s, epoch - 1, b + 1, running)
          if self.progress.stop_requested:
            raise resume.Interrupted(f'member {names}, epoch {epoch}, batch {b + 1}')
      bar.close()
      probs = self.end_epoch(stage, epoch, state, mesh.to_host(running))
      if epoch < stage[0].epochs:
        self.save_progress(state, s, epoch, 0, None)
        if self.progress.stop_requested:
          raise resume.Interrupted(f'member {names}, end of epoch {epoch}')
    self.finish_stage(s, stage, state, probs)

  def end_epoch(self, stage, epoch, state, totals):
    """Epoch metrics, and the test-set evaluation every valid_freq epochs and at the end."""
    c, n = self.config, len(self.data.train_labels)
    for j, m in enumerate(stage):
      self.log.write('epoch', member=m.index, epoch=m.epoch_offset + epoch,
                     **{key: v[j] / n for key, v in totals.items()})
    if not (epoch == stage[0].epochs or (c.valid_freq and epoch % c.valid_freq == 0)):
      return None
    probs = self.predict(state)
    score = metrics.METRICS[self.data.metric]
    for j, m in enumerate(stage):
      self.log.write('eval', member=m.index, epoch=m.epoch_offset + epoch,
                     test_acc=score(probs[j], self.data.test_labels),
                     test_nll=metrics.nll(probs[j], self.data.test_labels))
    print(f'  epoch {epoch}: train loss {np.mean(totals["loss"]) / n:.4f}, test acc '
          + ', '.join(f'{100 * score(p, self.data.test_labels):.2f}%' for p in probs), flush=True)
    return probs

  def finish_stage(self, s, stage, state, probs):
    c = self.config
    self._last_opt_state = state.opt_state
    for j, m in enumerate(stage):
      self.finished[m.index] = mesh.to_host(unstack(state.variables(), j))
      wd.save_member(self.workdir, m.index, self.finished[m.index], probs[j],
                     {'arch': models.canonical_name(c.model), 'num_classes': self.data.num_classes,
                      'member': m.index, 'source': self.workdir})
      self.log.write('member', member=m.index, test_acc=metrics.METRICS[self.data.metric](
          probs[j], self.data.test_labels))
    # The next stage starts here (the state keeps the optimizer state for reset_optim_state=False).
    self.save_progress(state, s + 1, 0, 0, None)

  def save_progress(self, state, s, epoch, batch, running):
    running = {key: np.asarray(v).tolist() for key, v in mesh.to_host(running).items()} \
        if running is not None else None
    self.progress.save(state, stage=s, epoch=epoch, batch=batch, running=running,
                       lines=resume.count_lines(self.log.path))

  def load_finished(self, stage):
    for m in stage:
      _, variables = checkpoints.load_pretrained(
          os.path.join(wd.member_dir(self.workdir, m.index), 'checkpoint'))
      self.finished[m.index] = variables

  def predict(self, state):
    variables = state.variables()
    out = []
    for lo, hi in batches.batch_slices(len(self.data.test_labels), self.config.eval_batch_size):
      images = self.placement.eval_batch(self.data.test_images[lo:hi])
      out.append(mesh.to_host(self.eval_step(variables, images)))
    return np.concatenate(out, axis=1)

  def _check_finite(self, host, stage, epoch, gstep):
    bad = [k for k, v in host.items() if not np.all(np.isfinite(v))]
    if bad:
      raise FloatingPointError(
          f'{bad[0]} became {np.ravel(host[bad[0]])[0]} at member '
          f'{",".join(str(m.index) for m in stage)}, epoch {epoch}, step {gstep}; lower lr or '
          'check the data; the members saved so far are kept')


def train_members(config, workdir, data, log):
  """Trains every stage of the plan, resuming from <workdir>/progress when it exists."""
  exp = Experiment(config, workdir, data, log)
  stages = plan_lib.make_plan(config)
  position = exp.progress.position()
  if position is not None:
    resume.truncate_lines(log.path, position['lines'])
    for stage in stages[:position['stage']]:
      exp.load_finished(stage)
  previous = exp.progress.install_signal_handlers()
  try:
    for s, stage in enumerate(stages):
      if position is not None and s < position['stage']:
        continue
      exp.train_stage(s, stage, position if position and s == position['stage'] else None)
  finally:
    exp.progress.restore_signal_handlers(previous)
  exp.progress.clear()
  return exp
