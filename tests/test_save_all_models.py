"""save_all_models=True: as the reference's training/train.py, every epoch that ends no member
also saves the model (<workdir>/all_models/<member>/epoch_<global epoch>/, beside members/<i>).

Reference: each saved model, read back with load_pretrained and evaluated on the test split,
has the test NLL the run logged for that member and epoch (valid_freq=1), so the file holds
the weights of that epoch (not the member's final ones, which members/<i> holds).
"""

import json
import os

import numpy as np
import pytest

from enstransfer_jax import checkpoints, evaluator, metrics, models, rundir
from enstransfer_jax.data import datasets
from enstransfer_jax.training import run_experiment
from tests import engine_util

# StarSSE: member 1 for 2 epochs, members 2 and 3 in parallel for 2 epochs each.
OVERRIDES = dict(star_fge=True, num_fge=3, epochs=2, fge_epochs=2, valid_freq=1)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('all_models'))
  config = engine_util.tiny_config(save_all_models=True, **OVERRIDES)
  run_experiment(config, workdir)
  return workdir, config


def test_a_model_per_epoch_that_ends_no_member(run):
  workdir, _ = run
  found = sorted((int(m), e) for m in os.listdir(os.path.join(workdir, 'all_models'))
                 for e in os.listdir(os.path.join(workdir, 'all_models', m)))
  # Global epochs (the schedule's, as the reference's _N=<i>_ep=<epoch>): member 1 ends at 2,
  # member 2 runs epochs 3-4 and member 3 epochs 5-6.
  assert found == [(1, 'epoch_1'), (2, 'epoch_3'), (3, 'epoch_5')]
  assert rundir.RunDir(workdir).all_models(2, 3) == os.path.join(workdir, 'all_models', '2',
                                                                 'epoch_3')


def test_saved_models_hold_the_weights_of_their_epoch(run):
  workdir, config = run
  data = datasets.load_dataset(config)
  model = models.create_model(config.model, data.num_classes, width=config.width)
  ev = evaluator.Evaluator(model, transform=config.transform_name, image_size=config.image_size,
                           batch_size=config.eval_batch_size)
  logged = {(e['member'], e['epoch']): e['test_nll'] for e in map(
      json.loads, open(os.path.join(workdir, 'metrics.jsonl'))) if e['event'] == 'eval'}
  for member, epoch in ((1, 1), (2, 3), (3, 5)):
    path = rundir.RunDir(workdir).all_models(member, epoch)
    assert checkpoints.read_metadata(path)['epoch'] == epoch
    _, variables = checkpoints.load_pretrained(path)
    probs = ev.member_probs(evaluator.stack([variables]), data.test_images)[0]
    nll = metrics.nll(probs, data.test_labels)
    assert nll == pytest.approx(logged[(member, epoch)], rel=1e-5)
    assert abs(nll - logged[(member, epoch + 1)]) > 1e-5 * nll  # not the member's final one


def test_off_by_default(tmp_path):
  workdir = str(tmp_path)
  run_experiment(engine_util.tiny_config(num_fge=1, epochs=2, scheduler='cosine'), workdir)
  assert not os.path.exists(os.path.join(workdir, 'all_models'))
