"""Weight-space statistics: per-stage distances from the pre-trained model, update cosines.

Stages of a ResNet's params: stem (conv1, bn1), layer1..layer4, fc; of a Swin's (SWIN_STAGES):
patch_embed, layers.0..layers.3 (each with its patch merging), norm, head.
For a member w and the pre-trained w0, over the parameters of a stage (BN scale and bias
included, running statistics not):
  l2         ||w - w0||_2
  log10_mse  log10(mean((w - w0)^2))   (-inf for identical stages)
The update of member i is u_i = w_i - w0_i (w0_i its pre-trained model); the cosine
similarity of updates <u_i, u_j> / (|u_i| |u_j|) is taken over the parameters that are
comparable (the backbone, plus the head when the pre-trained head has the members' shape).
The thesis's weight cosine (its Section 6, Figures 6.2 / 6.4) is another quantity: the cosine
of the raw weight vectors, w_i . w_j / (|w_i| |w_j|), over every parameter of the members
(weight_cosines); member-to-member distances per stage (Figure 4.3) are stage_distances
with member 1 in place of the pre-trained model.
"""

import math

import jax
import numpy as np

STAGES = {'stem': ('conv1', 'bn1'), 'layer1': ('layer1',), 'layer2': ('layer2',),
          'layer3': ('layer3',), 'layer4': ('layer4',), 'fc': ('fc',)}
SWIN_STAGES = {name: (name,) for name in ('patch_embed', 'layers.0', 'layers.1', 'layers.2',
                                          'layers.3', 'norm', 'head')}


def stages(params):
  """SWIN_STAGES for Swin params (a 'patch_embed' module), else STAGES (ResNet)."""
  return SWIN_STAGES if 'patch_embed' in params else STAGES


def stage_vector(params, modules):
  """float64 concatenation of the parameters under the given top-level modules."""
  missing = [m for m in modules if m not in params]
  if missing:
    raise ValueError(f'params have no module {missing[0]!r} (top-level modules: '
                     f'{sorted(params)}); expected ResNet or Swin params')
  leaves = [np.ravel(np.asarray(x, np.float64)) for m in modules
            for x in jax.tree_util.tree_leaves(params[m])]
  return np.concatenate(leaves) if leaves else np.zeros(0)


def same_shapes(a, b):
  """Whether two param trees have the same structure and leaf shapes."""
  sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
  return sa == sb and all(np.shape(x) == np.shape(y) for x, y in
                          zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def comparable_modules(params, pre_params):
  """Top-level modules whose parameters have equal shapes in both trees (sorted by stage)."""
  order = [m for mods in stages(params).values() for m in mods]
  return [m for m in order if m in params and m in pre_params
          and same_shapes(params[m], pre_params[m])]


def stage_distances(params, pre_params):
  """[{'stage', 'l2', 'log10_mse', 'num_params'}] for every comparable stage."""
  comparable = set(comparable_modules(params, pre_params))
  rows = []
  for stage, modules in stages(params).items():
    if not all(m in comparable for m in modules):
      continue
    diff = stage_vector(params, modules) - stage_vector(pre_params, modules)
    mse = float(np.mean(diff ** 2)) if diff.size else 0.0
    rows.append({'stage': stage, 'l2': float(np.linalg.norm(diff)),
                 'log10_mse': math.log10(mse) if mse > 0 else float('-inf'),
                 'num_params': int(diff.size)})
  return rows


def update_vector(params, pre_params, modules):
  return stage_vector(params, modules) - stage_vector(pre_params, modules)


def cosine_matrix(vectors):
  """[K, K] cosine similarities of the rows (0 where a vector is zero; diagonal 1)."""
  v = np.stack([np.asarray(x, np.float64) for x in vectors])
  norms = np.linalg.norm(v, axis=1)
  safe = np.where(norms > 0, norms, 1.0)
  out = (v @ v.T) / np.outer(safe, safe)
  out[(norms == 0)[:, None] | (norms == 0)[None, :]] = 0.0
  np.fill_diagonal(out, 1.0)
  return out


def update_cosines(member_params, pre_params_list):
  """(cosine matrix of the members' updates, the modules it is taken over)."""
  modules = None
  for p, p0 in zip(member_params, pre_params_list):
    mods = comparable_modules(p, p0)
    modules = mods if modules is None else [m for m in modules if m in mods]
  if not modules:
    raise ValueError('no parameters of the members are comparable with the pre-trained model')
  updates = [update_vector(p, p0, modules) for p, p0 in zip(member_params, pre_params_list)]
  return cosine_matrix(updates), modules


def weight_cosines(member_params):
  """(cosine matrix of the members' raw weight vectors w_i, the modules it is taken over):
  every parameter of every stage (BN scale and bias, not its statistics)."""
  first = member_params[0]
  order = [m for mods in stages(first).values() for m in mods if m in first]
  modules = order + sorted(m for m in first if m not in order)
  for p in member_params[1:]:
    if not same_shapes(p, member_params[0]):
      raise ValueError('members of different architectures: their raw weights are not '
                       'comparable')
  return cosine_matrix([stage_vector(p, modules) for p in member_params]), modules
