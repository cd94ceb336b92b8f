"""Predicts with a finished run's ensemble on image files or a dataset split.

  python -m enstransfer_jax.predict WORK_DIR --images FILE_OR_DIR [...] [options]
  python -m enstransfer_jax.predict WORK_DIR --dataset NAME --split SPLIT
                                    [--class-subset 5,6,7,8,9] [options]
  options: [--out preds.npz] [--top-k 5] [--members 1,2] [--allow-partial] [--temperature T]
           [--batch-size B] [--show 20] [--no-labels]

--images: PNG / JPEG (anything Pillow reads) files, or folders of them (their image files,
sorted by name, not recursive); converted to RGB by bit depth (16-bit grey scaled to 8 bits,
not clipped) and evaluated as Ensemble.predict does (the
run's eval transform resizes any size). --dataset: a split of a dataset the project loads
(enstransfer_jax/data/datasets.py): 'test' (the official test split), 'valid' (the validation
split carved from train, as use_test=False) or 'train' (the run's training split). The class
subset defaults to the run's for the run's dataset, else every class.

Prints one row per input (the first --show; 0 = all): the top-k classes (the dataset's labels,
so class_subset is mapped back) with their probability, the entropy of the ensemble, the
mutual information (members' disagreement) and how many members agree with the ensemble's
class. With labels of the run's classes (--dataset on the run's dataset), also the accuracy
(the run's metric), NLL, ECE and Brier of the ensemble and of each member. --out writes an
.npz with probs, member_probs, predicted, entropy, expected_entropy, mutual_information,
agreement, names, class_labels, members, and labels (-1 where not scored) with --dataset.
Bad inputs give one line (error: ...) and exit status 2.
"""

import argparse
import os
import sys

import numpy as np
from enstransfer_jax.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
SPLITS = ('test', 'valid', 'train')


def _ints(text, what):
  try:
    return tuple(int(c) for c in str(text).split(',') if c.strip())
  except ValueError:
    raise UserError(f'{what} {text!r}: give integers separated by commas, e.g. 5,6,7') from None


def image_files(paths):
  """The image files named by `paths` (files, or folders: their image files sorted)."""
  files = []
  for p in paths:
    if os.path.isdir(p):
      found = sorted(os.path.join(p, f) for f in os.listdir(p)
                     if f.lower().endswith(IMAGE_EXTENSIONS)
                     and os.path.isfile(os.path.join(p, f)))
      if not found:
        raise FileNotFoundError(f"folder {p} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
      files += found
    elif os.path.isfile(p):
      files.append(p)
    else:
      raise FileNotFoundError(f'image {p} does not exist')
  return files


def decode(im):
  """[H, W, 3] uint8 RGB of a Pillow image, by bit depth: 16-bit grey (PNG 'I;16', or 'I'
  holding 0..65535) is scaled as round(v / 257), the 8-bit value of the same brightness;
  Pillow's convert('RGB') would clip it at 255."""
  if im.mode.startswith('I;16') or im.mode == 'I':
    v = np.asarray(im).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 65535):
      raise UserError(f'{im.mode} image with values {v.min()}..{v.max()}: only 8- and 16-bit '
                      'images are read; save it as an 8-bit PNG or JPEG')
    grey = np.round(v / 257.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if im.mode == 'F':
    raise UserError('floating-point (mode F) image: save it as an 8-bit PNG or JPEG')
  return np.asarray(im.convert('RGB'), np.uint8)


def read_images(files):
  """[H, W, 3] uint8 arrays (RGB) of the files, via Pillow (see decode)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for f in files:
    try:
      with Image.open(f) as im:
        out.append(decode(im))
    except UserError as e:
      raise UserError(f'image {f}: {e}') from None
    except (OSError, ValueError, SyntaxError) as e:
      raise UserError(f'cannot read image {f} ({type(e).__name__}: '
                      f'{(str(e).splitlines() or [""])[0][:120]}); give PNG or JPEG files') from None
  return out


def load_split(ens, name, split, class_subset, score_labels=True):
  """(images, labels in the ensemble's class order or None, names, notes) of a dataset split."""
  from enstransfer_jax.data import datasets  # pylint: disable=g-import-not-at-top
  if split not in SPLITS:
    raise UserError(f"--split {split!r} is unknown; use one of {', '.join(SPLITS)}")
  run = ens.config
  name = str(name).lower()
  same = name == str(run.dataset).lower()
  if class_subset is None:
    class_subset = tuple(run.get('class_subset') or ()) if same else ()
  cfg = run.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.dataset, cfg.class_subset = name, tuple(class_subset)
    cfg.use_test = {'test': True, 'valid': False, 'train': run.get('use_test', True)}[split]
  data = datasets.load_dataset(cfg)
  images, labels = ((data.train_images, data.train_labels) if split == 'train' else
                    (data.test_images, data.test_labels))
  names = np.array([f'{name}/{split}[{i}]' for i in range(len(labels))])
  dataset_labels = np.asarray(class_subset)[labels] if class_subset else labels
  if not score_labels:
    return images, None, names, []
  if not same:
    return images, None, names, [f'{name} is not the dataset of the run ({run.dataset}): its '
                                 'labels are not scored']
  ours = list(ens.class_labels)
  requested = list(class_subset) if class_subset else list(range(data.num_classes))
  if any(c not in ours for c in requested):
    raise UserError(
        f"{name} classes {','.join(map(str, requested))} are not all among the ensemble's "
        f"{len(ours)} classes ({','.join(map(str, ours))}); pass --class-subset with some of "
        'those, or --no-labels to predict without scoring')
  lookup = {c: k for k, c in enumerate(ours)}
  return images, np.array([lookup[int(c)] for c in dataset_labels], np.int64), names, []


def table(pred, names, class_labels, top_k=5, show=20, labels=None):
  """The per-input table as text (the first `show` rows; 0 = all)."""
  classes, probs = pred.top_k(top_k)
  k = len(pred.member_probs)
  agree = np.round(pred.agreement * k).astype(int)
  rows = list(range(len(names)) if not show else range(min(show, len(names))))
  tops = [' '.join(f'{class_labels[c]}:{p:.3f}' for c, p in zip(classes[i], probs[i]))
          for i in rows]
  cols = [('input', [str(names[i]) for i in rows])]
  if labels is not None:
    cols.append(('label', [str(class_labels[labels[i]]) if labels[i] >= 0 else '-'
                           for i in rows]))
  cols += [(f'top-{classes.shape[1]} class:prob', tops),
           ('entropy', [f'{pred.entropy[i]:.4f}' for i in rows]),
           ('MI', [f'{pred.mutual_information[i]:.4f}' for i in rows]),
           ('agree', [f'{agree[i]}/{k}' for i in rows])]
  widths = [max([len(h)] + [len(v) for v in vals]) for h, vals in cols]
  fmt = lambda cells: '  '.join(c.ljust(w) if j < 3 - (labels is None) else c.rjust(w)
                                for j, (c, w) in enumerate(zip(cells, widths))).rstrip()
  lines = [fmt([h for h, _ in cols])]
  lines += [fmt([vals[r] for _, vals in cols]) for r in range(len(rows))]
  if len(rows) < len(names):
    lines.append(f'... {len(names) - len(rows)} more rows (--show 0 prints all; --out saves all)')
  return '\n'.join(lines)


def metric_table(pred, labels, metric, members):
  """Accuracy (the run's metric), NLL, ECE, Brier of the ensemble and of each member."""
  from enstransfer_jax import metrics  # pylint: disable=g-import-not-at-top
  score = metrics.METRICS[metric]
  rows = [('ensemble', pred.probs)] + [(f'member {m}', p)
                                       for m, p in zip(members, pred.member_probs)]
  name = 'acc(%)' if metric == 'top1' else 'mean-per-class acc(%)'
  lines = [f"{'model':<10}  {name:>8}     NLL     ECE   Brier"]
  for what, p in rows:
    p = np.asarray(p, np.float64)
    lines.append(f'{what:<10}  {100 * score(p, labels):8.2f}  {metrics.nll(p, labels):6.4f}  '
                 f'{metrics.ece(p, labels):6.4f}  {metrics.brier(p, labels):6.4f}')
  return '\n'.join(lines)


def run(args):
  from enstransfer_jax.ensemble import Ensemble  # pylint: disable=g-import-not-at-top
  if args.top_k < 1 or args.show < 0:
    raise UserError('--top-k must be >= 1 and --show >= 0')
  if args.batch_size is not None and args.batch_size < 1:
    raise UserError(f'--batch-size must be >= 1, got {args.batch_size}')
  members = _ints(args.members, '--members') if args.members else None
  ens = Ensemble.load(args.workdir, members, args.temperature,
                      allow_partial=args.allow_partial)
  if ens.note:
    print(f'note: {ens.note}')
  labels, notes = None, []
  if args.images:
    names = image_files(args.images)
    images = read_images(names)
  else:
    subset = _ints(args.class_subset, '--class-subset') if args.class_subset else None
    images, labels, names, notes = load_split(ens, args.dataset, args.split, subset,
                                              not args.no_labels)
  pred = ens.predict(images, batch_size=args.batch_size)
  subset = ens.config.get('class_subset') or ()
  temp = f', temperature {ens.temperature:g}' if ens.temperature is not None else ''
  print(f"ensemble of members {','.join(map(str, ens.members))} of {args.workdir} "
        f"({ens.info.get('model', '')}, {ens.num_classes} classes"
        f"{' = ' + str(ens.config.dataset) + ' labels ' + ','.join(map(str, subset)) if subset else ''}"
        f'{temp}); {len(names)} inputs')
  print(table(pred, names, ens.class_labels, args.top_k, args.show, labels))
  for n in notes:
    print(n)
  if labels is not None:
    print()
    print(metric_table(pred, labels, ens.info.get('metric', 'top1'), ens.members))
  if args.out:
    extra = {'labels': labels} if labels is not None else {}
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(args.out, **pred.arrays(), names=np.asarray([str(n) for n in names]),
             class_labels=np.asarray(ens.class_labels), members=np.asarray(ens.members),
             **extra)
    print(f'wrote {args.out}')
  return pred


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m enstransfer_jax.predict', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdir', metavar='WORK_DIR', help='a finished run')
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--images', nargs='+', metavar='FILE_OR_DIR')
  src.add_argument('--dataset', metavar='NAME')
  p.add_argument('--split', default='test', choices=SPLITS)
  p.add_argument('--class-subset', default=None, metavar='C1,C2,...',
                 help="dataset labels to keep (default: the run's for its dataset)")
  p.add_argument('--no-labels', action='store_true', help='do not score the labels')
  p.add_argument('--out', default=None, help='.npz file for every array')
  p.add_argument('--top-k', type=int, default=5)
  p.add_argument('--show', type=int, default=20, help='rows printed (0 = all)')
  p.add_argument('--members', default=None, metavar='I,J,...', help='member ids (default all)')
  p.add_argument('--allow-partial', action='store_true',
                 help='use the members there of an unfinished run or one that lost a member')
  p.add_argument('--temperature', type=float, default=None,
                 help='temperature of the ensemble (analysis/calibration.json)')
  p.add_argument('--batch-size', type=int, default=None,
                 help="images per forward pass (default: the run's eval_batch_size)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from enstransfer_jax.errors import user_errors  # pylint: disable=g-import-not-at-top
  with user_errors():
    run(args)


if __name__ == '__main__':
  main()
