"""A finished run's members as torch files: python convert_byol.py --to-torch --all-members.

OUT_DIR/member_<i>.pt per member (torchvision layout, as checkpoints.export_torch), the run's
config.json and a README.md saying what each file is and how to load it.
"""

from pathlib import Path
import shutil
from typing import Any, Dict

from enstransfer_jax import atomic, checkpoints, rundir


def export_members(workdir, out_dir, *, force: bool = False,
                   allow_partial: bool = False) -> Dict[str, Any]:
  """Every member of a run -> OUT_DIR/member_<i>.pt (as export_torch) plus a README.md.

  Written into a temporary dir and renamed, so OUT_DIR is complete or absent. A run without
  summary.json or missing one of its members is refused unless `allow_partial` (then 'note'
  and the README say which members are there). Returns {'files': [file names],
  'architecture', 'num_classes', 'width', 'note'}.
  """
  import torch  # pylint: disable=g-import-not-at-top
  work, out = Path(workdir), Path(out_dir).absolute()
  checkpoints.check_absent(out, force)
  run = rundir.RunDir(work).existing()
  ids = run.member_ids(required=True)
  note = run.check_members(ids, allow_partial)
  read = lambda name: run.read_json(name) if (work / name).is_file() else {}
  info, config, summary = (read(n) for n in (rundir.RUN_INFO, rundir.CONFIG, rundir.SUMMARY))
  accs = {m['member']: m.get('test_acc') for m in summary.get('members', [])}
  out.parent.mkdir(parents=True, exist_ok=True)
  desc = {}

  def write(tmp):
    tmp.mkdir()
    rows = []
    for k, i in enumerate(ids):
      _, variables = run.member_variables(i)
      desc.update(checkpoints.describe(variables))
      name = f'member_{i}.pt'
      torch.save({'model_state': checkpoints.flax_to_torch(variables)}, tmp / name)
      acc = accs.get(k + 1) if len(accs) == len(ids) else None
      rows.append(f"| `{name}` | {i} | {'n/a' if acc is None else f'{100 * acc:.2f}'} | "
                  f'`{checkpoints.sha256(tmp / name)[:16]}` |')
    subset = list(config.get('class_subset') or [])
    classes = (f"output k is label class_subset[k] of {config.get('dataset', '?')}: "
               f"{subset}" if subset else f"output k is label k of {config.get('dataset', '?')}")
    size = config.get('image_size', '?')
    readme = [
        f"# Members of {info.get('name') or config.get('name') or work.name}", '',
        f'Exported from the work dir `{work.absolute()}` by `python convert_byol.py --to-torch '
        '--all-members`. Each file is a torch checkpoint `{\'model_state\': state dict}` of a '
        f"torchvision-layout {desc['architecture']} (width {desc['width']}, "
        f"{desc['num_classes']} classes; {classes}).", '',
        '| file | member | test acc (%) | sha256 (first 16) |', '|---|---|---|---|', *rows, '',
        'The ensemble predicts the mean of the members\' softmax probabilities. Inputs: RGB '
        f"images through the run's eval transform ({config.get('transform_name', '?')}, "
        f'{size} x {size} px), scaled to [0, 1] and normalised with the ImageNet mean '
        '(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Load one member with',
        '', '    import torch, torchvision',
        f"    model = torchvision.models.{desc['architecture'].lower()}"
        f"(num_classes={desc['num_classes']})",
        "    model.load_state_dict(torch.load('member_1.pt')['model_state'])", '',
        '(torchvision builds width 64 only; another width needs a ResNet with that base width). '
        f"`config.json` is the run's config.", '']
    if note:
      readme[2:2] = [f'Note: {note}; the ensemble of the run is incomplete.', '']
    (tmp / 'README.md').write_text('\n'.join(readme))
    if (work / 'config.json').is_file():
      shutil.copyfile(work / 'config.json', tmp / 'config.json')
  atomic.write(out, write)
  extra = ['config.json'] if (work / 'config.json').is_file() else []
  return {'files': [f'member_{i}.pt' for i in ids] + extra + ['README.md'], **desc,
          'note': note}
