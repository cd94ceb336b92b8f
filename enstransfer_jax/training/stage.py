"""One stage's loop: the epochs and batches of the members that train together.

`train_stage(run, s, stage, position)` builds the stage's start state in one jitted program,
then feeds fixed-shape batches to the compiled step (built from the stage's step_lib.StepSpec,
once per distinct spec, and reused by later stages), logs every `log_every_steps` steps,
checks for NaN there and at every epoch's end, evaluates on the test set every
`valid_freq` epochs and at the end, and saves progress checkpoints (and, with
`save_all_models`, the members at every epoch that ends none of them). Between two steps the
host only gathers images (or takes the next batch of crops from data/host_pipeline.py) and
copies them to the devices: no eager device work.
"""

import os

import jax
import numpy as np
from tqdm import tqdm

from enstransfer_jax import checkpoints, evaluator, metrics, models, optim, rundir, streams
from enstransfer_jax.data import batches, host_pipeline
from enstransfer_jax.models import resnet
from enstransfer_jax.training import config_check, mesh, plan as plan_lib, resume
from enstransfer_jax.training import step as step_lib
from enstransfer_jax.training import workdir as wd
from enstransfer_jax.errors import UserError


def terms_for(config, member, starts):
  """The static loss terms and frozen modules of the stage `member` belongs to."""
  c = config
  cycle = plan_lib.is_cycle(member)
  fmap_on = any(c.fmap_betas) and (c.which_model_is_regularizer == 'pretrain' or cycle)
  earlier = bool(starts.earlier(member))
  frozen = tuple(c.freeze_layers) if cycle else ()
  distill = c.get('distill') or {}  # a student (enstransfer_jax/distill.py)
  return step_lib.Terms(
      distill_temperature=float(distill.get('temperature', 0.0)),
      distill_alpha=float(distill.get('alpha', 1.0)),
      fmap_betas=tuple(float(b) for b in c.fmap_betas) if fmap_on else (),
      fmap_loss_type=c.fmap_loss_type, rtd_dim=c.rtd_dim, rtd_card=c.rtd_card,
      rtd_lp=c.rtd_lp,
      wo_beta=float(c.wo_beta) if earlier else 0.0, wo_gradient=bool(c.wo_gradient),
      prev_ce_beta=float(c.prev_ce_beta) if earlier else 0.0,
      only_negative=bool(c.only_negative),
      reg_per_member=bool(fmap_on and c.which_model_is_regularizer == 'pretrain'
                          and c.ensemble == 'global_de' and c.parallel_members),
      stop_gradient_after=config_check.frozen_prefix(frozen, models.module_names(starts.model)),
      frozen_bn=tuple(m for m in frozen if m in resnet.BN_MODULES)
      if c.freeze_bn_stats and isinstance(starts.model, resnet.ResNet) else ())


def teacher(config):
  """A student's teacher (config.distill: a run's work dir and member ids; distill.py): the
  members' variables stacked on a leading axis, on the host."""
  d = config.distill
  variables = []
  for m in d.members:
    _, v = rundir.RunDir(d.teacher).member_variables(m)
    variables.append({'params': v['params'], 'batch_stats': v['batch_stats']})
  stacked = evaluator.stack(variables)
  size = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(stacked))
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit') if hasattr(
      jax.devices()[0], 'memory_stats') else None
  if limit and size > limit / 2:
    raise UserError(f'the teacher ({len(variables)} members, {size / 2**30:.2f} GiB) takes '
                    f'more than half of the device memory ({limit / 2**30:.2f} GiB); distil '
                    'from fewer members (a sub-ensemble run) or on a larger device')
  return stacked


class _Aux:
  """Regulariser inputs of one stage, copied to every device once."""

  def __init__(self, run, terms, stage, placement):
    self.run, self.terms, self.stage, self.placement = run, terms, stage, placement
    self.member = stage[0]
    self._placed = {}
    self._earlier = run.starts.earlier(self.member)

  def _place(self, key, make):
    if key not in self._placed:
      self._placed[key] = self.placement.replicated(make())
    return self._placed[key]

  def for_step(self, local_step):
    """The earlier member for WO / prev-CE is drawn per step (streams.numpy_rng(seed, 'earlier',
    member, step))."""
    aux, starts = {}, self.run.starts
    if self.terms.reg_per_member:  # each member's own pre-trained model
      if 'reg' not in self._placed:
        self._placed['reg'] = self.placement.members(
            evaluator.stack([starts.regularizer(m) for m in self.stage]))
      aux['reg'] = self._placed['reg']
    elif self.terms.fmap_betas:
      aux['reg'] = self._place('reg', lambda: starts.regularizer(self.member))
    if self.terms.distill_temperature:
      aux['teacher'] = self._place('teacher', lambda: teacher(self.run.config))
    if self.terms.wo_beta or self.terms.prev_ce_beta:
      rng = streams.numpy_rng(self.run.config.seed, 'earlier', self.member.index, local_step)
      chosen = self._earlier[rng.integers(len(self._earlier))]
      if self.terms.wo_beta:
        aux['wo'] = self._place(('wo', chosen), lambda: starts.flat_params(chosen))
      if self.terms.prev_ce_beta:
        aux['prev'] = self._place(('prev', chosen), lambda: starts.finished[chosen])
    return aux


def _start_state(run, stage, spec, tx, placement):
  """The stacked start state of the stage, built on the devices by one jitted program."""
  inits = [run.starts.initial(m) for m in stage]
  stacked = evaluator.stack(inits)
  if np.dtype(getattr(run.model, 'dtype', np.float32)) == np.float64:  # a float64 run (x64)
    stacked = jax.tree_util.tree_map(lambda x: x.astype(np.float64), stacked)
  steps = np.asarray([m.epoch_offset * run.steps_per_epoch for m in stage], np.int32)
  ids = np.asarray([m.index for m in stage], np.int32)
  key = ('init', spec)
  if key not in run.programs:
    run.programs[key] = step_lib.make_init_state(tx, spec.terms)
  return run.programs[key](placement.members(stacked), placement.members(steps),
                           placement.members(ids), placement.replicated(run.schedule),
                           run.config.seed)


def _train_step(run, spec, tx):
  key = ('train', spec)
  if key not in run.programs:
    run.programs[key] = step_lib.make_train_step(spec, tx)
  return run.programs[key]


def _spec(run, stage):
  """The program key of the stage: its terms, members, frozen modules and host crops."""
  member = stage[0]
  return step_lib.StepSpec.from_config(
      run.config, run.model, terms_for(run.config, member, run.starts), members=len(stage),
      frozen=run.config.freeze_layers if plan_lib.is_cycle(member) else (),
      host_crops=run.data.train_encoded is not None)


def _new_state(run, stage):
  spec = _spec(run, stage)
  params = run.starts.initial(stage[0])['params']
  tx = optim.create_optimizer(spec.optimizer_config(),
                              {k: k not in spec.frozen for k in params})
  placement = mesh.Placement(run.config, len(stage))
  return spec, tx, placement, _start_state(run, stage, spec, tx, placement)


def train_stage(run, s, stage, position=None, previous_stage=None):
  """Trains stage number s; `position` (from resume.Progress) continues an interrupted one;
  `previous_stage` gives the structure of a saved optimizer state to continue."""
  c, k = run.config, len(stage)
  names = ', '.join(str(m.index) for m in stage)
  spec, tx, placement, state = _new_state(run, stage)
  done_epochs, done_batches = 0, 0
  if position is not None and (position['epoch'] or position['batch']):
    state = run.progress.restore(state, position)
    done_epochs, done_batches = position['epoch'], position['batch']
  elif not c.reset_optim_state and previous_stage is not None:
    if run.last_opt_state is None:  # resumed at this stage's start: read the saved state
      target = _new_state(run, previous_stage)[-1]
      run.last_opt_state = run.progress.restore(target, position).opt_state
    state = state.replace(opt_state=optim.carry_state(run.last_opt_state, state.opt_state))
  start = {'previous': f'member {stage[0].index - 1}', 'first': 'member 1'}.get(
      stage[0].init, stage[0].ckpt or 'scratch')
  print(f'== member{"s" if k > 1 else ""} {names}: {stage[0].epochs} epochs from '
        f'{start}{" (in parallel)" if k > 1 else ""}'
        + (f', resumed at epoch {done_epochs + 1} batch {done_batches}' if position else ''),
        flush=True)
  train_step = _train_step(run, spec, tx)
  aux = _Aux(run, spec.terms, stage, placement)
  n, size = len(run.data.train_labels), c.batch_size
  slices = batches.batch_slices(n, size, c.get('drop_last', False))
  pos, real = batches.device_layout(size, int(c.grad_accum_steps), placement.data_size)
  pos = None if len(pos) == size else pos
  feed = None if run.data.train_encoded is None else host_pipeline.HostCrops(
      run.data.train_encoded, c.image_size, c.interpolation, workers=c.data_workers)
  probs = None
  for epoch in range(done_epochs + 1, stage[0].epochs + 1):
    orders = [batches.epoch_order(c.seed, m.index, epoch, n) for m in stage]
    first = done_batches if epoch == done_epochs + 1 else 0
    crops = feed and feed.epoch(c.seed, [m.index for m in stage], epoch, orders, size, first)
    bar = tqdm(total=len(slices), desc=f'member {names} epoch {epoch}/{stage[0].epochs}',
               initial=first, disable=not (c.progress and mesh.is_writer()), leave=False,
               dynamic_ncols=True)
    for b in range(first, len(slices)):
      lo, hi = slices[b]
      idx, mask = batches.padded_indices(orders, lo, hi, size)
      images = next(crops) if feed else run.data.train_images[idx]
      if pos is not None:  # micro-batches padded to split over the 'data' axis
        idx, mask, images = idx[:, pos], mask[:, pos] * real, images[:, pos]
      batch = placement.batch({'images': images,
                               'labels': run.data.train_labels[idx].astype(np.int32),
                               'mask': mask, 'new_epoch': np.full((k,), b == 0)})
      local_step = (epoch - 1) * run.steps_per_epoch + b
      state, step_metrics = train_step(state, batch, aux.for_step(local_step))
      bar.update(1)
      save_now = ((c.checkpoint_every_steps and (local_step + 1) % c.checkpoint_every_steps == 0)
                  or run.progress.due(end_of_epoch=False))
      stop = run.progress.stop_requested
      if b % c.log_every_steps == 0 or b == len(slices) - 1:
        _log_step(run, stage, epoch, local_step, mesh.to_host(step_metrics), bar)
      elif save_now or stop:  # no record (an uninterrupted run has none here): the NaN check
        _check_finite(mesh.to_host(step_metrics), stage, epoch,
                      stage[0].epoch_offset * run.steps_per_epoch + local_step)
      if b < len(slices) - 1 and (save_now or stop):
        run.save_progress(state, s, epoch - 1, b + 1)
        if run.progress.stop_requested:
          raise resume.Interrupted(f'member {names}, epoch {epoch}, batch {b + 1}')
    bar.close()
    probs = _end_epoch(run, stage, epoch, state)
    if c.save_all_models and epoch < stage[0].epochs:
      _save_all_models(run, stage, epoch, state)
    if epoch < stage[0].epochs and (run.progress.due(end_of_epoch=True)
                                    or run.progress.stop_requested):
      run.save_progress(state, s, epoch, 0)
      if run.progress.stop_requested:
        raise resume.Interrupted(f'member {names}, end of epoch {epoch}')
  _finish_stage(run, s, stage, state, probs)


def _log_step(run, stage, epoch, local_step, host, bar):
  steps = [m.epoch_offset * run.steps_per_epoch + local_step for m in stage]
  _check_finite(host, stage, epoch, steps[0])
  for j, m in enumerate(stage):
    run.log.write('train', member=m.index, epoch=m.epoch_offset + epoch, step=steps[j],
                  **{key: v[j] for key, v in host.items()})
  bar.set_postfix(loss=f"{np.mean(host['loss']):.3f}", acc=f"{np.mean(host['acc']):.3f}",
                  lr=f"{float(host['lr'][0]):.4g}")


def _end_epoch(run, stage, epoch, state):
  """Epoch metrics, and the test-set evaluation every valid_freq epochs and at the end."""
  c = run.config
  sums = mesh.to_host(state.sums)
  count = sums.pop('count')
  means = {key: v / count for key, v in sums.items()}
  _check_finite(means, stage, epoch, None)
  for j, m in enumerate(stage):
    run.log.write('epoch', member=m.index, epoch=m.epoch_offset + epoch,
                  **{key: v[j] for key, v in means.items()})
  if not (epoch == stage[0].epochs or (c.valid_freq and epoch % c.valid_freq == 0)):
    return None
  probs = run.evaluator.member_probs(state.variables(), run.data.test_images)
  score = metrics.METRICS[run.data.metric]
  for j, m in enumerate(stage):
    run.log.write('eval', member=m.index, epoch=m.epoch_offset + epoch,
                  test_acc=score(probs[j], run.data.test_labels),
                  test_nll=metrics.nll(probs[j], run.data.test_labels))
  print(f'  epoch {epoch}: train loss {np.mean(means["loss"]):.4f}, test acc '
        + ', '.join(f'{100 * score(p, run.data.test_labels):.2f}%' for p in probs), flush=True)
  return probs


def _save_all_models(run, stage, epoch, state):
  """Each member of the stage after an epoch that does not end it (readable by
  enstransfer_jax.load_pretrained; the members' final epochs are in members/<i>)."""
  host = mesh.to_host(state.variables())
  if not mesh.is_writer():
    return
  for j, m in enumerate(stage):
    path = rundir.RunDir(run.workdir).all_models(m.index, m.epoch_offset + epoch)
    wd.ensure_space(os.path.dirname(path), wd.tree_bytes(host) // len(stage))
    with wd.disk_errors(path):
      checkpoints.save_converted(
          path, jax.tree_util.tree_map(lambda x, j=j: x[j], host),
          {'arch': run.arch, 'num_classes': run.data.num_classes, 'member': m.index,
           'epoch': m.epoch_offset + epoch, 'source': run.workdir}, force=True)


def _finish_stage(run, s, stage, state, probs):
  run.last_opt_state = state.opt_state
  host = mesh.to_host(state.variables())
  for j, m in enumerate(stage):
    run.starts.finished[m.index] = jax.tree_util.tree_map(lambda x, j=j: x[j], host)
    wd.save_member(run.workdir, m.index, run.starts.finished[m.index], probs[j],
                   {'arch': run.arch, 'num_classes': run.data.num_classes,
                    'member': m.index, 'source': run.workdir,
                    **({'image_size': int(run.config.image_size)}
                       if models.is_swin(run.arch) else {})})
    run.log.write('member', member=m.index, test_acc=metrics.METRICS[run.data.metric](
        probs[j], run.data.test_labels))
  # The next stage starts here (the state keeps the optimizer state for reset_optim_state=False).
  run.save_progress(state, s + 1, 0, 0)


def _check_finite(host, stage, epoch, gstep):
  bad = [k for k, v in host.items() if not np.all(np.isfinite(v))]
  if bad:
    where = f', step {gstep}' if gstep is not None else ' (epoch mean)'
    values = np.ravel(host[bad[0]])
    j = int(np.flatnonzero(~np.isfinite(values))[0])  # the member whose value is not finite
    which = f' (member {stage[j].index})' if len(values) == len(stage) > 1 else ''
    cycle = plan_lib.is_cycle(stage[0])  # SSE / StarSSE members 2..K train with fge_lr
    raise FloatingPointError(
        f'{bad[0]} became {values[j]} at member '
        f'{",".join(str(m.index) for m in stage)}{which}, epoch {epoch}{where}; lower '
        f'{"fge_lr" if cycle else "lr"} or check the data; the members saved so far are kept'
        + (' (a rerun with another fge_lr needs a new --workdir, where member 1 is retrained '
           'bit-identically)' if cycle else ''))
