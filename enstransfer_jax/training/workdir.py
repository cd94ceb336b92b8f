"""What a run writes into its work dir, and nothing else.

  config.json              the resolved config
  run_info.json            name, model, width, num_classes, metric, dataset and the pre-trained
                           checkpoint(s) actually used (the quickstart's own pre-trained model)
  metrics.jsonl            one JSON object per logged event (train / eval / member / summary)
  test_labels.npy          int32 [N_test]
  members/<i>/checkpoint/  orbax checkpoint of member i (params, batch_stats; readable by
                           enstransfer_jax.load_pretrained, so a member can seed a new run)
  members/<i>/test_probs.npy  float32 softmax probabilities [N_test, C]
  summary.json             per member and per ensemble size metrics, diversity
Every file is written to a temporary name and renamed, so an interruption leaves either the
old file or the new one, never half of one.
"""

import contextlib
import errno
import json
import os
import time

import numpy as np

from enstransfer_jax import atomic
from enstransfer_jax.training import mesh


def default_workdir(config):
  """experiments/<dataset>/<group>/<model>_seed=<seed>/ as in the reference."""
  return os.path.join(config.work_dir, config.dataset, config.wandb_group,
                      f'{config.model.lower()}_seed={config.seed}')


@contextlib.contextmanager
def disk_errors(path):
  """A full disk (or quota) becomes one line that names the file and says what to do."""
  try:
    yield
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise OSError(e.errno, f'no space left on the device while writing {path}; free some '
                    'space and run the same command again (the run resumes from its last '
                    'checkpoint)') from None
    raise


def _atomic_write(path, write):
  if not mesh.is_writer():
    return
  with disk_errors(path):
    atomic.write(path, write)


def write_json(path, obj):
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write('\n')
  _atomic_write(path, write)


def read_json(path):
  with open(path) as f:
    return json.load(f)


def save_npy(path, array):
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.save(f, array)
  _atomic_write(path, write)


def member_dir(workdir, index):
  return os.path.join(workdir, 'members', str(index))


def member_checkpoint(workdir, index):
  return os.path.join(member_dir(workdir, index), 'checkpoint')


def save_member(workdir, index, variables, probs, metadata):
  if not mesh.is_writer():
    return
  from enstransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  path = member_dir(workdir, index)
  os.makedirs(path, exist_ok=True)
  with disk_errors(path):
    checkpoints.save_converted(os.path.join(path, 'checkpoint'), variables, metadata, force=True)
  save_npy(os.path.join(path, 'test_probs.npy'), np.asarray(probs, np.float32))


def load_member_probs(workdir, index):
  return np.load(os.path.join(member_dir(workdir, index), 'test_probs.npy'))


def read_events(workdir, event=None):
  """The records of <workdir>/metrics.jsonl (those of one `event`, e.g. 'train', if given),
  in file order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if event is None or r.get('event') == event]


class MetricsLog:
  """Appends one JSON object per line to metrics.jsonl (and mirrors it to wandb)."""

  def __init__(self, workdir, wandb_run=None):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.wandb_run = wandb_run

  def write(self, event, **fields):
    if not mesh.is_writer():
      return
    record = {'event': event, 'time': round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in fields.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self.wandb_run is not None:
      prefix = f"member{record.get('member', '')}/" if 'member' in record else ''
      self.wandb_run.log({f'{prefix}{event}/{k}': v for k, v in record.items()
                          if isinstance(v, (int, float)) and k not in ('time',)})


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, 'dtype'):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()
  return value
