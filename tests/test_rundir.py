"""The run directory's readers (enstransfer_jax/rundir.py) on hand-written work dirs: the
config-difference rule on nested configs, config.json over configs/base.py's defaults, the
member-id scan, the events of metrics.jsonl and one-line errors for missing or damaged files."""

import json
import os

import numpy as np
import pytest

from enstransfer_jax import rundir
from enstransfer_jax.errors import UserError


def test_differences_nested_volatile_and_unrecorded():
  old = {'lr': 0.05, 'overwrite': False, 'work_dir': 'a', 'fge_lr': 0.1,
         'pretrain': {'enabled': True, 'epochs': 3, 'overwrite': 1}, 'aug': {'flip': True},
         'removed_field': 7, 'model': 'ResNet18'}
  new = {'lr': 0.05, 'overwrite': True, 'work_dir': 'b', 'fge_lr': 0.2,
         'pretrain': {'enabled': True, 'epochs': 5, 'overwrite': 2, 'added': 1},
         'aug': 'none', 'model': 'ResNet18', 'added_field': 1}
  # Volatile only at the top; sections field by field; a section turned into a value is one
  # difference; fields only one side has are not compared.
  assert rundir.differences(old, new) == [
      ('aug', {'flip': True}, 'none'), ('fge_lr', 0.1, 0.2), ('pretrain.epochs', 3, 5),
      ('pretrain.overwrite', 1, 2)]
  assert rundir.describe(('pretrain.epochs', 3, 5)) == 'pretrain.epochs: 3 there, 5 here'
  assert rundir.differences(old, old) == []


def test_config_over_defaults_and_member_scan(tmp_path):
  run = rundir.RunDir(tmp_path)
  base = rundir.base_config()
  saved = {'lr': 0.123, 'pretrain': {'epochs': 77}}  # an older config.json: two fields only
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = run.config(defaults=True)
  assert config.lr == 0.123 and config.pretrain.epochs == 77
  assert config.pretrain.enabled == base.pretrain.enabled and config.seed == base.seed
  assert config.to_dict().keys() == base.to_dict().keys()
  assert run.config().to_dict() == saved
  for d, name in (('1', 'checkpoint'), ('3', 'checkpoint'), ('10', 'checkpoint'),
                  ('2', 'checkpoint.tmp-1f2e'), ('.tmp-4', 'checkpoint'), ('x5', 'checkpoint')):
    os.makedirs(tmp_path / 'members' / d / name)
  np.save(tmp_path / 'members' / '3' / 'test_probs.npy', np.zeros((2, 2), np.float32))
  assert run.member_ids() == [1, 3, 10]
  assert run.member_ids(rundir.PROBS) == [3]
  assert run.member(3, 'checkpoint') == os.path.join(str(tmp_path), 'members', '3', 'checkpoint')


def test_missing_and_damaged_files(tmp_path):
  run = rundir.RunDir(tmp_path / 'run')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run.existing()
  os.makedirs(run.path)
  with pytest.raises(UserError, match=r'holds no finished member \(members/<i>/checkpoint\)'):
    run.member_ids(required=True)
  with pytest.raises(FileNotFoundError, match=r'summary.json is missing: .* is not a finished'):
    run.summary()
  with open(run.file('run_info.json'), 'w') as f:
    f.write('{"name": ')
  with pytest.raises(UserError, match=r'run_info.json is damaged \(not JSON: .*line 1\)'):
    run.run_info()
  assert run.events() == [] and not run.finished


def test_cycle_epoch_seconds_by_hand(tmp_path):
  """Member 1 ignored; gaps between a member's consecutive epochs; parallel members at once."""
  events = [('epoch', 1, 0.0), ('epoch', 1, 5.0), ('epoch', 1, 10.0), ('epoch', 1, 15.0),
            ('train', 2, 6.0),
            ('epoch', 2, 10.0), ('epoch', 3, 10.0), ('epoch', 2, 12.0), ('epoch', 3, 12.0),
            ('epoch', 2, 15.0), ('epoch', 3, 15.0), ('epoch', 4, 40.0), ('epoch', 4, 44.0)]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    for event, member, t in events:
      f.write(json.dumps({'event': event, 'member': member, 'time': t}) + '\n')
  gaps = [2.0, 3.0, 2.0, 3.0, 4.0]  # members 2 and 3: 12-10, 15-12; member 4: 44-40
  assert rundir.RunDir(tmp_path).cycle_epoch_seconds() == np.median(gaps)
  assert np.isnan(rundir.RunDir(tmp_path / 'none').cycle_epoch_seconds())
  assert [e['member'] for e in rundir.RunDir(tmp_path).events('train')] == [2]
