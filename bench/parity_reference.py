"""Step-for-step parity with the PyTorch reference's own training loop, in float64.

  python bench/parity_reference.py --reference-dir DIR [--methods single,sse,...]
      [--width 64 --image-size 32 --classes 0,1,2,3,4 --batch-size 128 --epochs 2]
      [--json OUT.json] [--write-golden tests/data/reference_trajectories.npz]

DIR is a checkout of ens-hse-diploma (never part of this repository). For every method the
script runs the reference's `main.main` -> `training.train` in this process and this engine's
`run_experiment`, both from the same start weights (the reference's ImageNetResNet18 drawn by
torch with seed 0, saved as a torch .pt that the engine loads as a pre-trained checkpoint with a
head of the task's size), on the same batches, with augmentation off and float64 on both sides
(torch .double(), JAX with jax_enable_x64 and config.dtype='float64'). It prints, per method,
the largest per-step differences of the cross-entropy, of each regulariser term and of the
learning rate, and the per-layer weight differences of every member at its boundary.

What the script supplies to the reference (its code is run unchanged):
  * data: the project's digits split (config.class_subset), normalised by the engine's own
    'none' transform, fed by a DataLoader whose sampler yields the engine's permutation
    batches.epoch_order(seed, member, epoch) for the reference's running epoch (last partial
    batch kept, as both loops do); `get_dataloaders` and `load_model` are replaced by these;
  * stubs for imports the loop does not need here: wandb (its log calls are recorded: the
    reference logs ce / fmap / wo / prev-CE and lr per step with wandb_log_rate=1), timm,
    torchvision (the CUDA-only build does not load on CPU torch), pandas, matplotlib;
  * ripserplusplus (GPU only): `run` answers with giotto-ph's pairs of the same matrix (birth
    edge, death edge = the longest edge of the killing triangle), so both sides read the same
    persistence pairs; only the ordering of equally persistent pairs can differ (the
    reference's np.argsort is not stable, the engine's sort is);
  * numpy 2 has no np.compat.long (used by the reference's RTD): set to np.int64.
At width != 64 the reference's ImageNetResNet is built with scaled channels from its own
BasicBlock, Builder and _make_layer (the class fixes width 64).

--augment cifar: the engine trains with its 'cifar' transform (crop and flip drawn in its
train step from (seed, 'augment', member, step)); the reference gets the same images: its
train loader (EngineAugmented) yields the engine's batches with the engine's draws of each
step applied by hand-written torch (zero padding 4 of the [0, 1] image, the crop, the flip of
the last axis, Normalize, float64: what RandomHorizontalFlip / RandomCrop(32, padding=4) /
Normalize compute for given draws). With --seed, --lr and --epochs a whole pre-training run
(`--methods single --classes 0,1,2,3,4 --batch-size 64 --lr 0.1 --epochs 20`) compares step
for step with augmentation on.

--dtype float32 runs both sides in float32 (torch .float(), JAX without x64): the same draws and
the same start weights, so the two runs differ only by float32 rounding; with --start-seed S
the start weights are drawn by torch.manual_seed(S) instead of 0. Each member's test accuracy
(both sides' weights evaluated by the reference's model in float64) is printed and written to
--json, so a sweep over seeds compares whole float32 runs given identical random numbers.

Needs torch (CPU) and giotto-ph for the RTD method. --write-golden PATH writes the reference's
per-step values (cross-entropy, learning rate, the method's regulariser term) and the start
weights to one .npz for tests/test_golden_trajectories.py (see write_golden; tests/data/README.md
has the command that made the committed file).
"""

import argparse
import glob
import json
import os
import random
import shutil
import sys
import tempfile
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name -> (engine config overrides, shared by the reference's config under the same names)
METHODS = {
    'single': dict(num_fge=1, scheduler='cosine'),
    'sse': dict(num_fge=3),
    'starsse': dict(num_fge=3, star_fge=True),
    'sse_mse': dict(num_fge=3, fmap_betas=(0.0, 0.0, 0.0, 0.0, 1.0), fmap_loss_type='MSELoss'),
    'sse_rtd': dict(num_fge=3, fmap_betas=(0.0, 0.0, 0.0, 0.0, 0.0316),
                    fmap_loss_type='RTDLoss'),
    'starsse_wo': dict(num_fge=3, star_fge=True, wo_beta=1.0),
    'starsse_ce': dict(num_fge=3, star_fge=True, prev_ce_beta=1.0, only_negative=True),
    'freeze_starsse': dict(num_fge=3, star_fge=True,
                           freeze_layers=('conv1', 'bn1', 'relu', 'maxpool', 'layer1')),
}
# reference wandb key -> engine metric name
TERMS = {'batch_loss': 'ce', 'batch_fmap_loss': 'fmap4', 'batch_wo_loss': 'wo',
         'batch_prev_ce_loss': 'prev_ce', 'lr': 'lr'}
# --write-golden keeps only the steps of the first members of these methods (all for others),
# and records a config of that many members for the engine's run: SSE-RTD's term is the one
# whose engine / reference difference grows fastest along the run (from 2e-14 at its first step
# to about 1e-9 at the last step of member 3, width 4), so its golden values stop after the
# first cycle.
GOLDEN_MEMBERS = {'sse_rtd': 2}
GOLDEN_FORMAT = 1


def base_settings(args):
  return dict(seed=args.seed, lr=args.lr, fge_lr=0.1, wd=1e-4, momentum=0.9, epochs=args.epochs,
              fge_epochs=args.epochs, fge_warmup_epochs=0, scheduler='cosine+warmup_cosine',
              batch_size=args.batch_size)


# ---------------------------------------------------------------- the reference, in-process
def _stub(name, **attrs):
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  sys.modules[name] = mod
  return mod


class _Anything:
  """A placeholder class / callable for names imported but not used here."""

  def __init__(self, *a, **k):
    pass

  def __call__(self, *a, **k):
    return self


def _stub_getattr(name):
  if name.startswith('__'):
    raise AttributeError(name)
  return _Anything


class _StubFinder:
  """Imports of these packages (any submodule) give empty modules whose names are _Anything."""

  def __init__(self, prefixes):
    self.prefixes = prefixes

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname.split('.')[0] not in self.prefixes:
      return None
    import importlib.machinery  # pylint: disable=g-import-not-at-top
    return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

  def create_module(self, spec):
    mod = types.ModuleType(spec.name)
    mod.__path__ = []
    mod.__getattr__ = _stub_getattr
    return mod

  def exec_module(self, module):
    pass


def _ripserpp_run(_, dm):
  """ripserplusplus.run's answer in dimension 1 from giotto-ph (see module docstring)."""
  import gph  # pylint: disable=g-import-not-at-top
  dm = np.asarray(dm, np.float64)
  rc = gph.ripser_parallel(dm, maxdim=1, metric='precomputed', collapse_edges=False,
                           n_threads=1, return_generators=True)
  g = np.asarray(rc['gens'][1][0], np.int64).reshape(-1, 4)
  dgm = np.stack([dm[g[:, 0], g[:, 1]], dm[g[:, 2], g[:, 3]]], 1) if len(g) else np.zeros((0, 2))
  pairs = [((int(a), int(b)), (int(c), int(d))) for a, b, c, d in g]
  return {'dgms': {1: dgm}, 'pairs': {1: pairs}}


def import_reference(refdir, log):
  """Imports the reference's main / training / utils with the stubs; returns `main`."""
  if not os.path.isfile(os.path.join(refdir, 'main.py')):
    raise FileNotFoundError(f'{refdir} has no main.py; pass the ens-hse-diploma checkout '
                            'as --reference-dir')
  _stub('wandb', log=log, watch=lambda *a, **k: None, init=lambda *a, **k: None,
        finish=lambda *a, **k: None, run=types.SimpleNamespace(summary={}),
        Settings=_Anything)
  sys.meta_path.insert(0, _StubFinder(('timm', 'torchvision')))
  import importlib.util  # pylint: disable=g-import-not-at-top
  for name in ('pandas', 'matplotlib'):  # imported by unused utils; stubbed only when missing
    if importlib.util.find_spec(name) is None:
      sys.meta_path.insert(0, _StubFinder((name,)))
  _stub('ripserplusplus', run=_ripserpp_run)
  if not hasattr(np, 'compat'):
    np.compat = types.SimpleNamespace(long=np.int64)
  sys.path.insert(0, refdir)
  import main as ref_main  # pylint: disable=g-import-not-at-top
  return ref_main


def reference_resnet18(num_classes, width):
  """The reference's ImageNetResNet18 (width 64), or the same layout with scaled channels."""
  import torch.nn as tnn  # pylint: disable=g-import-not-at-top
  from models.cnn import imagenet_resnet as ir  # pylint: disable=g-import-not-at-top
  from models.cnn.builder import Builder  # pylint: disable=g-import-not-at-top
  if width == 64:
    return ir.ImageNetResNet18.base(num_classes=num_classes, **ir.ImageNetResNet18.kwargs)

  class Scaled(ir.ImageNetResNet):
    def __init__(self):  # pylint: disable=super-init-not-called
      tnn.Module.__init__(self)
      b = Builder()
      self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
      self.conv1 = b.conv(3, width, kernel_size=7, stride=2, padding=3, bias=False)
      self.bn1 = b.batchnorm(width)
      self.relu = tnn.ReLU(inplace=True)
      self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
      for i in range(4):
        setattr(self, f'layer{i + 1}', self._make_layer(b, ir.BasicBlock, width * 2**i, 2,
                                                        stride=1 if i == 0 else 2))
      self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
      self.fc = b.linear(8 * width, num_classes)
  return Scaled()


class EngineOrder:
  """Sampler: the engine's permutation for the reference's running epoch."""

  def __init__(self, n, seed, epochs, fge_epochs):
    self.n, self.seed, self.epochs, self.fge_epochs, self.calls = n, seed, epochs, fge_epochs, 0

  def __len__(self):
    return self.n

  def __iter__(self):
    from enstransfer_jax.data import batches  # pylint: disable=g-import-not-at-top
    self.calls += 1
    g = self.calls
    if g <= self.epochs:
      member, epoch = 1, g
    else:
      member, epoch = (g - self.epochs - 1) // self.fge_epochs + 2, (g - self.epochs - 1) % self.fge_epochs + 1
    return iter(batches.epoch_order(self.seed, member, epoch, self.n).tolist())


class EngineAugmented:
  """The reference's train loader with the engine's order and the engine's crop / flip draws.

  Each running epoch g of the reference is (member, epoch) as in EngineOrder; its batches are
  the engine's batches of that epoch (last partial batch kept), and every image gets the
  'cifar' parameters the engine's train step draws for that row and step
  (augment.sample_train_params with the step's key), applied here by hand-written torch: zero
  padding 4 of the [0, 1] image, the crop (top, left), the horizontal flip, then Normalize,
  in float64, as torchvision's RandomHorizontalFlip / RandomCrop(32, padding=4) / Normalize
  compute them for given draws.
  """

  def __init__(self, images, labels, settings, image_size):
    import jax  # pylint: disable=g-import-not-at-top
    from enstransfer_jax import streams  # pylint: disable=g-import-not-at-top
    from enstransfer_jax.data import augment  # pylint: disable=g-import-not-at-top
    self.images, self.labels, self.settings = images, labels, settings
    self.n, self.size, self.calls = len(labels), settings['batch_size'], 0
    self.dataset = range(self.n)  # the loop reads len(train_loader.dataset)
    _, h, w, _ = images.shape
    key = streams.key(settings['seed'], 'augment')
    self._draw = jax.jit(lambda member, step: augment.sample_train_params(
        jax.random.fold_in(jax.random.fold_in(key, member), step), self.size, h, w,
        transform='cifar', image_size=image_size))
    self.image_size = image_size

  def __len__(self):
    from enstransfer_jax.data import batches  # pylint: disable=g-import-not-at-top
    return batches.num_batches(self.n, self.size)

  def __iter__(self):
    import torch  # pylint: disable=g-import-not-at-top
    from enstransfer_jax.data import augment, batches  # pylint: disable=g-import-not-at-top
    self.calls += 1
    g, e, fe = self.calls, self.settings['epochs'], self.settings['fge_epochs']
    member, epoch = (1, g) if g <= e else ((g - e - 1) // fe + 2, (g - e - 1) % fe + 1)
    order = batches.epoch_order(self.settings['seed'], member, epoch, self.n)
    dtype = torch.get_default_dtype()
    mean = torch.tensor(augment.MEAN, dtype=dtype)[:, None, None]
    std = torch.tensor(augment.STD, dtype=dtype)[:, None, None]
    p, s = augment.CIFAR_PADDING, self.image_size
    for b, (lo, hi) in enumerate(batches.batch_slices(self.n, self.size)):
      step = (g - 1) * len(self) + b  # the member's global step: batches since the run began
      params = self._draw(member, step)
      box, flip = np.asarray(params['box']), np.asarray(params['flip'])
      idx = order[lo:hi]
      x = torch.from_numpy(self.images[idx].transpose(0, 3, 1, 2).copy()).to(dtype) / 255.0
      x = torch.nn.functional.pad(x, (p, p, p, p))
      out = []
      for j in range(hi - lo):
        crop = x[j, :, box[j, 0]:box[j, 0] + s, box[j, 1]:box[j, 1] + s]
        out.append(torch.flip(crop, [-1]) if flip[j] else crop)
      yield (torch.stack(out) - mean) / std, torch.from_numpy(self.labels[idx]).long()


def run_reference(ref_main, name, settings, data, start_pt, args, records):
  import torch  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  # The reference's configs/ package shares its name with this project's: load by path.
  spec = importlib.util.spec_from_file_location(
      'ref_byol_base', os.path.join(args.reference_dir, 'configs', 'byol', 'byol_base.py'))
  byol_base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(byol_base)
  BYOLBaseConfig = byol_base.BYOLBaseConfig  # pylint: disable=invalid-name
  import data.get_datasets as ref_ds  # pylint: disable=g-import-not-at-top
  import utils as ref_utils  # pylint: disable=g-import-not-at-top
  torch.set_default_dtype(getattr(torch, args.dtype))
  work = tempfile.mkdtemp(prefix=f'ref_{name}_')
  over = dict(METHODS[name])
  over.setdefault('fmap_betas', (0.0,) * 5)
  fields = {k: v for k, v in dict(settings, **over).items()
            if k in BYOLBaseConfig.__dataclass_fields__}
  fields['fmap_betas'] = list(fields['fmap_betas'])
  fields['freeze_layers'] = list(over.get('freeze_layers', ()))
  cfg = BYOLBaseConfig(work_dir=work, dataset='digits', model='ImageNetResNet18', ckpt='',
                       use_wandb=True, wandb_log_rate=1, save_logits=False, valid_freq=1000,
                       verbose=False, **fields)
  if cfg.num_fge == 1:
    cfg.fge_epochs, cfg.fge_lr = None, None
  ref_ds.DS_TO_METRIC_AND_N_CLASSES['digits'] = ('top1_acc', data.num_classes)
  train_x, train_y, test_x, test_y = data.ref_tensors
  sampler = EngineOrder(len(train_y), settings['seed'], settings['epochs'],
                        settings['fge_epochs'])
  ds = torch.utils.data.TensorDataset
  loaders = {'train': torch.utils.data.DataLoader(ds(train_x, train_y), settings['batch_size'],
                                                  sampler=sampler)
                      if args.augment == 'none' else
                      EngineAugmented(data.train_images, data.train_labels, settings,
                                      args.image_size),
             'test': torch.utils.data.DataLoader(ds(test_x, test_y), 256)}
  ref_main.get_dataloaders = lambda *a, **k: loaders

  def load_model(config, builder_kwargs=None):
    del builder_kwargs
    model = reference_resnet18(config.num_classes, args.width)
    model.load_state_dict(torch.load(start_pt)['model_state'])
    return model.to(getattr(torch, args.dtype))

  ref_main.load_model = load_model
  ref_utils.init_wandb = lambda *a, **k: None
  ref_main.utils.init_wandb = ref_utils.init_wandb
  records.clear()
  random.seed(0)
  real_load = torch.load
  # The reference reloads its own member files (StarSSE); they hold its config: not weights only.
  torch.load = lambda *a, **k: real_load(*a, **dict(k, weights_only=False))
  try:
    ref_main.main(cfg)
  finally:
    torch.load = real_load
  steps = [{TERMS[k]: float(v) for k, v in r.items() if k in TERMS}
           for r in records if 'batch_loss' in r]
  files = sorted(glob.glob(os.path.join(cfg.work_dir, '*.pt')),
                 key=lambda p: int(p.rsplit('_ep=', 1)[1].split('.')[0]))
  members = [{k: v.double().numpy()
              for k, v in torch.load(p, weights_only=False)['model_state'].items()}
             for p in files]
  shutil.rmtree(work, ignore_errors=True)
  return steps, members


# ---------------------------------------------------------------- the engine
def torch_names(variables):
  """{'params', 'batch_stats'} of a ResNet -> torch state-dict names, float64 numpy, torch
  layout (no precision lost, unlike checkpoints.flax_to_torch's float32)."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    keys = [p.key for p in path]
    col, mods, last = keys[0], keys[1:-1], keys[-1]
    a = np.asarray(leaf, np.float64)
    if col == 'batch_stats':
      last = {'mean': 'running_mean', 'var': 'running_var'}[last]
    elif last == 'kernel':
      last, a = 'weight', (a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T)
    elif last == 'scale':
      last = 'weight'
    out['.'.join(mods + [last])] = a
  return out


def engine_fields(name, settings, args):
  """The fields this script sets on configs/base.py's config for `name` (all but ckpt)."""
  fields = dict(settings, **METHODS[name])
  fields.update(dict(name=name, dataset='digits', class_subset=tuple(args.classes),
                     model='ResNet18', width=args.width, image_size=args.image_size,
                     transform_name=args.augment, dtype=args.dtype, valid_freq=0, progress=False,
                     compilation_cache_dir='', wandb_mode='disabled', log_every_steps=1,
                     eval_batch_size=256, rtd_workers=0))
  return fields


def run_engine(name, settings, args, start_pt, workroot):
  import jax  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import run_experiment  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.training import workdir as wd  # pylint: disable=g-import-not-at-top
  from enstransfer_jax import rundir  # pylint: disable=g-import-not-at-top
  assert jax.config.jax_enable_x64 == (args.dtype == 'float64')
  c = base.get_config()
  c.update(dict(engine_fields(name, settings, args), ckpt=start_pt))
  saved = {}
  real_save = wd.save_member

  def save_member(workdir, index, variables, probs, metadata):
    saved[index] = torch_names(variables)
    return real_save(workdir, index, variables, probs, metadata)

  wd.save_member = save_member
  workdir = os.path.join(workroot, name)
  try:
    run_experiment(c, workdir)
  finally:
    wd.save_member = real_save
  steps = sorted(rundir.RunDir(workdir).events('train'), key=lambda r: r['step'])
  return steps, [saved[i] for i in sorted(saved)]


# ---------------------------------------------------------------- comparison
def compare(ref_steps, eng_steps, ref_members, eng_members):
  """Largest differences per term over all steps, and per member the worst layer."""
  out = {'steps': len(ref_steps), 'engine_steps': len(eng_steps), 'terms': {}, 'members': []}
  for term in ('ce', 'fmap4', 'wo', 'prev_ce', 'lr'):
    diffs = []
    for r, e in zip(ref_steps, eng_steps):
      if term in r:
        diffs.append(abs(r[term] - float(e.get(term, 0.0))))
    if diffs and (max(diffs) > 0 or any(r.get(term) for r in ref_steps)):
      worst = int(np.argmax(diffs))
      out['terms'][term] = {'max_abs': max(diffs), 'at_step': worst,
                            'first_above_1e-9': next((i for i, d in enumerate(diffs)
                                                      if d > 1e-9), None),
                            'per_step': diffs,
                            'reference': [r[term] for r in ref_steps if term in r]}
  for j, (r, e) in enumerate(zip(ref_members, eng_members)):
    layer_diff = {k: float(np.max(np.abs(r[k] - e[k]))) for k in r if k in e}
    layer_rel = {k: d / max(float(np.max(np.abs(r[k]))), 1e-300) for k, d in layer_diff.items()}
    worst = max(layer_diff, key=layer_diff.get)
    worst_rel = max(layer_rel, key=layer_rel.get)
    out['members'].append({'member': j + 1, 'max_abs': layer_diff[worst], 'layer': worst,
                           'max_rel': layer_rel[worst_rel], 'layer_rel': worst_rel,
                           'missing': sorted((set(r) ^ set(e)) - {
                               k for k in r if k.endswith('num_batches_tracked')})})
  return out


def prepare_data(args):
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from enstransfer_jax.data import augment, datasets  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.dataset, c.class_subset = 'digits', tuple(args.classes)
  data = datasets.load_dataset(c)
  norm = jax.jit(lambda x: augment.train_transform(jax.random.PRNGKey(0), x, transform='none',
                                                   image_size=args.image_size))

  def tensors(images):
    x = np.asarray(norm(images), np.dtype(args.dtype)).transpose(0, 3, 1, 2)  # float64 under x64
    return torch.from_numpy(np.ascontiguousarray(x))

  ref_tensors = (tensors(data.train_images), torch.from_numpy(data.train_labels).long(),
                 tensors(data.test_images), torch.from_numpy(data.test_labels).long())
  test_x = np.asarray(norm(data.test_images), np.float64).transpose(0, 3, 1, 2)
  return types.SimpleNamespace(num_classes=data.num_classes, train_labels=data.train_labels,
                               train_images=data.train_images,
                               ref_tensors=ref_tensors, test_x=np.ascontiguousarray(test_x),
                               test_y=data.test_labels)


def test_accuracy(members, data, width):
  """Test accuracy of each member's weights (torch names, numpy), evaluated by the reference's
  model in float64 (eval mode), whichever side trained them."""
  import torch  # pylint: disable=g-import-not-at-top
  out = []
  x = torch.from_numpy(data.test_x)
  for weights in members:
    model = reference_resnet18(data.num_classes, width).double().eval()
    state = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.asarray(weights[k], np.float64))
                           if k in weights else state[k] for k in state})
    with torch.no_grad():
      pred = model(x).argmax(-1).numpy()
    out.append(float(np.mean(pred == data.test_y)))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--reference-dir', required=True)
  p.add_argument('--methods', default=','.join(METHODS))
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--image-size', type=int, default=32)
  p.add_argument('--classes', default='0,1,2,3,4')
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--epochs', type=int, default=2, help='epochs per member')
  p.add_argument('--seed', type=int, default=0, help="the runs' seed (data order, draws)")
  p.add_argument('--lr', type=float, default=0.05, help='lr of member 1')
  p.add_argument('--augment', default='none', choices=('none', 'cifar'),
                 help="cifar: the engine's 'cifar' train transform, its crop / flip draws "
                      'applied to the reference\'s batches too (EngineAugmented)')
  p.add_argument('--dtype', default='float64', choices=('float64', 'float32'),
                 help='float32: both sides in float32 (the same draws; only rounding differs)')
  p.add_argument('--start-seed', type=int, default=0,
                 help="torch's seed for the start weights (the reference's default init)")
  p.add_argument('--json', default='', help='write the comparison here')
  p.add_argument('--write-golden', default='', metavar='PATH',
                 help='write the reference per-step values and the start weights here '
                      '(tests/data/reference_trajectories.npz)')
  p.add_argument('--reference-commit', default='',
                 help='recorded in the golden file (default: git rev-parse HEAD in DIR)')
  args = p.parse_args(argv)
  args.classes = [int(x) for x in args.classes.split(',')]
  methods = [m.strip() for m in args.methods.split(',') if m.strip()]
  bad = [m for m in methods if m not in METHODS]
  if bad:
    p.error(f'unknown method(s) {bad}; use {",".join(METHODS)}')
  if args.image_size != 32:
    p.error('--image-size: the digits are 32 px; the none transform keeps them')

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_x64', args.dtype == 'float64')
  if args.write_golden and (args.dtype != 'float64' or args.start_seed):
    p.error('--write-golden: the golden file is float64 from start seed 0')
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  records = []
  ref_main = import_reference(os.path.abspath(args.reference_dir),
                              lambda d, *a, **k: records.append(dict(d)))
  data = prepare_data(args)
  settings = base_settings(args)
  scratch = tempfile.mkdtemp(prefix='parity_')
  torch.manual_seed(args.start_seed)
  start = reference_resnet18(data.num_classes, args.width)  # torch's default init, float32
  start_pt = os.path.join(scratch, 'start.pt')
  torch.save({'model_state': start.state_dict()}, start_pt)

  results, golden = {}, {}
  for name in methods:
    t0 = time.time()
    ref_steps, ref_members = run_reference(ref_main, name, settings, data, start_pt, args,
                                           records)
    t1 = time.time()
    eng_steps, eng_members = run_engine(name, settings, args, start_pt, scratch)
    t2 = time.time()
    res = compare(ref_steps, eng_steps, ref_members, eng_members)
    res['seconds'] = {'reference': round(t1 - t0, 1), 'engine': round(t2 - t1, 1)}
    res['test_acc'] = {'reference': test_accuracy(ref_members, data, args.width),
                       'engine': test_accuracy(eng_members, data, args.width)}
    results[name] = res
    golden[name] = {'config': engine_fields(name, settings, args), 'steps': ref_steps}
    terms = ', '.join(f'{t} {v["max_abs"]:.1e}' for t, v in res['terms'].items())
    mem = ', '.join(f'm{m["member"]} {m["max_abs"]:.1e} ({m["layer"]})' for m in res['members'])
    print(f'{name:15s} steps {res["steps"]}/{res["engine_steps"]} | max |diff| per step: '
          f'{terms} | weights at member ends: {mem} | test acc {res["test_acc"]} | '
          f'{res["seconds"]}', flush=True)
  meta = {'settings': settings, 'dtype': args.dtype, 'start_seed': args.start_seed,
          'width': args.width, 'image_size': args.image_size,
          'classes': args.classes, 'command': 'python bench/parity_reference.py ' +
          ' '.join(sys.argv[1:] if argv is None else argv)}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'meta': meta, 'results': results}, f, indent=1)
  if args.write_golden:
    write_golden(args.write_golden, dict(meta, reference=reference_source(args)), golden,
                 start.state_dict(), results)
  shutil.rmtree(scratch, ignore_errors=True)


def reference_source(args):
  """{'repository', 'commit'} of the reference checkout (--reference-commit, or git's HEAD)."""
  commit = args.reference_commit
  if not commit:
    import subprocess  # pylint: disable=g-import-not-at-top
    try:
      commit = subprocess.run(['git', '-C', args.reference_dir, 'rev-parse', 'HEAD'],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      commit = 'unknown'
  return {'repository': 'https://github.com/tgritsaev/ens-hse-diploma', 'commit': commit}


def write_golden(path, meta, golden, start_state, results):
  """The reference's per-step values and the start weights, for tests/test_golden_trajectories.py.

  One .npz: 'meta' (a JSON string: how it was made, and per method the engine config fields,
  the number of golden steps and the engine's difference when it was written),
  'start/<torch name>' (the start weights, float32, torch layout) and '<method>/<term>' (float64
  per-step values of the reference: ce, lr and the method's regulariser term).
  """
  arrays = {f'start/{k}': v.numpy() for k, v in start_state.items()}
  methods = {}
  for name, g in golden.items():
    steps = g['steps']
    members = METHODS[name].get('num_fge', 1)
    keep = len(steps) * min(GOLDEN_MEMBERS.get(name, members), members) // members
    terms = [t for t in ('ce', 'lr', 'fmap4', 'wo', 'prev_ce')
             if t in ('ce', 'lr') or any(r.get(t) for r in steps)]
    for t in terms:
      arrays[f'{name}/{t}'] = np.asarray([r[t] for r in steps[:keep]], np.float64)
    res = results[name]['terms']
    config = dict(g['config'])
    if keep < len(steps):  # the engine's run of the kept members only: the same first steps
      config['num_fge'] = min(GOLDEN_MEMBERS[name], members)
    methods[name] = {
        'config': {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        'terms': terms, 'steps': keep, 'reference_steps': len(steps),
        'engine_max_abs_diff': {t: max(res[t]['per_step'][:keep]) for t in terms if t in res}}
  meta = dict(meta, format=GOLDEN_FORMAT, methods=methods,
              written=time.strftime('%Y-%m-%d', time.gmtime()))
  arrays['meta'] = np.asarray(json.dumps(meta, sort_keys=True))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez_compressed(path, **arrays)
  print(f'wrote {path} ({os.path.getsize(path)} bytes): ' +
        ', '.join(f'{n} {m["steps"]} steps' for n, m in methods.items()), flush=True)


if __name__ == '__main__':
  main()
