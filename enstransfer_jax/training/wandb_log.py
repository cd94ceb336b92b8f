"""Optional wandb logging with the reference's project / group / run naming.

wandb_mode: 'disabled' (nothing), 'offline' (files under the work dir, sync later),
'online', or 'auto' (online when an API key is configured, offline otherwise; one line says
which). metrics.jsonl in the work dir is always the primary record.
"""

import os

MODES = ('auto', 'online', 'offline', 'disabled')


def _logged_in():
  """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
  if os.environ.get('WANDB_API_KEY'):
    return True
  netrc = os.path.expanduser(os.environ.get('NETRC', '~/.netrc'))
  try:
    with open(netrc) as f:
      return 'api.wandb.ai' in f.read()
  except OSError:
    return False


def run_name(config):
  """As the reference: model, dataset, scheduler, lr, wd, epochs, seed."""
  return config.exp_name or (f'{config.model}_{config.dataset}_{config.scheduler}_lr={config.lr}'
                             f'_wd={config.wd}_ep={config.epochs}_seed={config.seed}')


def resolve_mode(mode):
  """wandb's mode for config.wandb_mode: 'auto' is 'online' when logged in, else 'offline'
  (training and the analysis both ask here)."""
  if mode != 'auto':
    return mode
  return 'online' if _logged_in() else 'offline'


def start(config, workdir):
  mode = resolve_mode(config.wandb_mode)
  if mode == 'disabled':
    return None
  if config.wandb_mode == 'auto':
    print(f'wandb: logging {mode}' + ('' if mode == 'online' else
                                      ' (not logged in; `wandb sync` the run later)'), flush=True)
  import wandb  # pylint: disable=g-import-not-at-top
  return wandb.init(project=config.wandb_project, group=config.wandb_group, name=run_name(config),
                    config=config.to_dict(), dir=workdir, mode=mode, reinit='finish_previous')


def finish(run, summary):
  if run is None:
    return
  last = summary['ensembles'][-1]
  run.summary.update({'mean_member_acc': summary['mean_member_acc'],
                      'ensemble_acc': last['acc'], 'diversity': summary['diversity']})
  run.finish()
