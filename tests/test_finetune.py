"""Fine-tuning from converted PyTorch checkpoints whose head has another size (7 classes for
the 10 of digits): Global DE (one member per checkpoint) and Local DE (members of one
checkpoint), with the feature-map regulariser read from the pre-trained model
(which_model_is_regularizer='pretrain'), checked against the torch state dicts and the
PyTorch twin of tests/torch_resnet.py."""

import json
import os

import jax
import numpy as np
import pytest
import torch

from enstransfer_jax import checkpoints
from enstransfer_jax.data import augment, datasets
from enstransfer_jax.training import run_experiment
from tests import engine_util
from tests import torch_resnet

BETA = 0.5
# Both runs share one compiled train step: 2 members, the same terms and program fields.
COMMON = dict(scheduler='cosine', num_fge=1, which_model_is_regularizer='pretrain',
              fmap_loss_type='MSELoss', fmap_betas=(0.0, 0.0, 0.0, 0.0, BETA))


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """Two torch ResNet-18s (width 4, 7-class heads), saved as .pt and converted."""
  root = tmp_path_factory.mktemp('converted')
  out = []
  for seed in (1, 2):
    torch.manual_seed(seed)
    net = torch_resnet.TorchResNet('ResNet18', 7, width=4)
    calib = torch.rand(16, 3, 16, 16) * 2 - 1
    torch_resnet.randomize_(net, calib, seed=seed)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({'state_dict': state}, root / f'byol{seed}.pt')
    path = str(root / f'byol{seed}')
    checkpoints.convert_file(str(root / f'byol{seed}.pt'), path)
    out.append((path, state))
  return out


def _run(tmp_path_factory, name, **overrides):
  workdir = str(tmp_path_factory.mktemp(name))
  records = []
  with engine_util.spy_on_stages(records):
    summary = run_experiment(engine_util.tiny_config(**COMMON, **overrides), workdir)
  return workdir, summary, records


@pytest.fixture(scope='module')
def global_de(tmp_path_factory, converted):
  return _run(tmp_path_factory, 'global_de', ensemble='global_de',
              ckpts=tuple(p for p, _ in converted))


@pytest.fixture(scope='module')
def local_de(tmp_path_factory, converted):
  return _run(tmp_path_factory, 'local_de', ensemble='local_de', num_members=2,
              ckpt=converted[0][0])


def _member(state, j):
  return jax.tree_util.tree_map(lambda x: np.asarray(x[j]), state)


def _check_start(start, torch_state):
  """The backbone is the torch checkpoint's; the head is new: 10 classes, torch's Linear init
  (|w| <= 1/sqrt(fan_in))."""
  conv = torch_state['conv1.weight'].numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(start.params['conv1']['kernel'], conv)
  np.testing.assert_array_equal(start.params['layer3']['1']['bn2']['scale'],
                                torch_state['layer3.1.bn2.weight'].numpy())
  np.testing.assert_array_equal(start.batch_stats['layer4']['0']['bn1']['var'],
                                torch_state['layer4.0.bn1.running_var'].numpy())
  kernel, bias = start.params['fc']['kernel'], start.params['fc']['bias']
  assert kernel.shape == (32, 10) and bias.shape == (10,)
  bound = 1 / np.sqrt(32)
  assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
  assert np.abs(kernel).max() > 0.8 * bound  # uniform over the whole range, not zeros


def _first_fmap(workdir, member):
  train = [e for e in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
           if e['event'] == 'train' and e['member'] == member]
  return min(train, key=lambda e: e['step'])


def _check_regulariser(workdir, start, torch_state, member):
  """fmap4 at the member's first step: beta x the mean squared difference of the pooled
  features of the member (train-mode BatchNorm) and of the pre-trained model (7-class head,
  eval mode), both computed by the PyTorch twin on the member's first batch."""
  config = engine_util.tiny_config(**COMMON)
  data = datasets.load_dataset(config)
  images, _ = engine_util.first_batch(config, data, member)
  x = augment.eval_transform(images, transform='none', image_size=16)  # 'none' = deterministic
  net = engine_util.torch_twin(start.variables(), 10, train=True)
  cur = engine_util.torch_forward(net, x)[1][4]
  pre = torch_resnet.TorchResNet('ResNet18', 7, width=4).double()
  pre.load_state_dict({k: v.double() if v.is_floating_point() else v
                       for k, v in torch_state.items()})
  pre.eval()
  with torch.no_grad():
    reg = engine_util.torch_forward(pre, x)[1][4]
  torch.set_grad_enabled(True)
  want = BETA * np.mean((cur - reg) ** 2)
  assert _first_fmap(workdir, member)['fmap4'] == pytest.approx(want, rel=1e-4)


def test_global_de_members_start_from_their_checkpoints(global_de, converted):
  workdir, summary, records = global_de
  assert [r['member_ids'] for r in records] == [[1, 2]]
  starts = [_member(records[0]['state'], j) for j in (0, 1)]
  for start, (_, state) in zip(starts, converted):
    _check_start(start, state)
  assert not np.allclose(starts[0].params['fc']['kernel'], starts[1].params['fc']['kernel'])
  _check_regulariser(workdir, starts[0], converted[0][1], 1)
  info = json.load(open(os.path.join(workdir, 'run_info.json')))
  assert info['pretrained'] == [p for p, _ in converted]
  _check_summary(workdir, summary)


def test_global_de_member_2_is_regularised_towards_its_own_checkpoint(global_de, converted):
  workdir, _, records = global_de
  _check_regulariser(workdir, _member(records[0]['state'], 1), converted[1][1], 2)


def test_local_de_members_share_the_backbone_with_distinct_heads(local_de, converted):
  workdir, summary, records = local_de
  assert [r['member_ids'] for r in records] == [[1, 2]]
  starts = [_member(records[0]['state'], j) for j in (0, 1)]
  for start in starts:
    _check_start(start, converted[0][1])
  assert not np.allclose(starts[0].params['fc']['kernel'], starts[1].params['fc']['kernel'])
  _check_regulariser(workdir, starts[1], converted[0][1], 2)
  _, m1 = checkpoints.load_pretrained(os.path.join(workdir, 'members', '1', 'checkpoint'))
  _, m2 = checkpoints.load_pretrained(os.path.join(workdir, 'members', '2', 'checkpoint'))
  assert not np.allclose(m1['params']['layer4']['1']['conv2']['kernel'],
                         m2['params']['layer4']['1']['conv2']['kernel'])
  _check_summary(workdir, summary)


def _check_summary(workdir, summary):
  labels = np.load(os.path.join(workdir, 'test_labels.npy'))
  probs = [np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy')) for i in (1, 2)]
  assert [m['member'] for m in summary['members']] == [1, 2]
  for m, p in zip(summary['members'], probs):
    assert m['test_acc'] == pytest.approx(np.mean(p.argmax(-1) == labels))
  avg = (probs[0] + probs[1]) / 2
  assert summary['ensembles'][1]['acc'] == pytest.approx(np.mean(avg.argmax(-1) == labels))
