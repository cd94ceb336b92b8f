"""Converts a PyTorch ResNet (BYOL / torchvision) or Swin checkpoint to a Flax one, or back.

  python convert_byol.py INPUT.pt OUTPUT_DIR [--arch ResNet50] [--num-classes N]
                         [--seed S] [--force] [--trust-pickle]
  python convert_byol.py --arch SwinTiny INPUT.pt OUTPUT_DIR [--image-size 224] [--simmim]
                         [--num-classes N] [--seed S] [--force]
  python convert_byol.py --to-torch FLAX_DIR OUT.pt [--force]
  python convert_byol.py --to-torch --all-members WORK_DIR OUT_DIR [--force] [--allow-partial]

The architecture is inferred from the keys unless --arch is given. --num-classes
replaces a head of another size by a fresh one (torch nn.Linear init, --seed);
by default the checkpoint's head is kept and training replaces it. --to-torch
writes {'model_state': state dict}, the format the PyTorch reference loads;
with --all-members, every member of a finished run as OUT_DIR/member_<i>.pt, the
run's config.json and a README.md saying what each file is.
Swin (Microsoft layout): the state dict under 'model' (supervised) or SimMIM's
'encoder.'-prefixed one (--simmim is then implied); relative-position tables of
another window size are resized (bicubic; SimMIM: the SimMIM code's geometric cubic
spline) to the windows of --image-size (default 224); a SimMIM encoder without a head
gets a fresh one (--num-classes, default 1000).
Exit status: 0 ok; 2 a usage error, a bad input or an existing output (one line saying what
to do; nothing written); 1 a missing or unreadable file or a full disk (one line), or a bug
(with its traceback).
"""

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('input', help='torch .pt file (or, with --to-torch, a converted dir)')
  parser.add_argument('output', help='output dir (or, with --to-torch, a .pt file)')
  parser.add_argument('--to-torch', action='store_true', help='convert Flax -> torch')
  parser.add_argument('--all-members', action='store_true',
                      help='with --to-torch: every member of the run in work dir INPUT')
  parser.add_argument('--arch', default=None,
                      help='ResNet18 | ResNet34 | ResNet50 | SwinTiny | SwinNano')
  parser.add_argument('--image-size', type=int, default=None,
                      help='Swin only: the input size the model will run at')
  parser.add_argument('--simmim', action='store_true', default=None,
                      help='Swin only: a SimMIM checkpoint (implied by encoder. keys)')
  parser.add_argument('--num-classes', type=int, default=None)
  parser.add_argument('--seed', type=int, default=0, help='seed of a replaced head')
  parser.add_argument('--force', action='store_true', help='replace an existing output')
  parser.add_argument('--allow-partial', action='store_true',
                      help='with --all-members: export the members there of an unfinished run '
                      'or one that lost a member')
  parser.add_argument('--trust-pickle', action='store_true',
                      help='allow Python objects in the torch file (trusted files only)')
  args = parser.parse_args(argv)

  if args.all_members and not args.to_torch:
    print('error: --all-members exports a run to torch files; add --to-torch', file=sys.stderr)
    return 2
  from enstransfer_jax import checkpoints, errors, export  # pylint: disable=g-import-not-at-top
  try:
    if args.all_members:
      info = export.export_members(args.input, args.output, force=args.force,
                                   allow_partial=args.allow_partial)
      if info['note']:
        print(f"note: {info['note']}")
      print(f'wrote {args.output}: {", ".join(info["files"])} ({info["architecture"]}, '
            f'width {info["width"]}, {info["num_classes"]} classes)')
    elif args.to_torch:
      info = checkpoints.export_torch(args.input, args.output, force=args.force)
      print(f'wrote {args.output}: {info["architecture"]} (width {info["width"]}), '
            f'{info["num_params"]:,} params, {info["num_classes"]} classes, '
            f'sha256 {info["sha256"]}')
    else:
      meta = checkpoints.convert_file(
          args.input, args.output, arch=args.arch, num_classes=args.num_classes,
          seed=args.seed, force=args.force, trust_pickle=args.trust_pickle,
          image_size=args.image_size, simmim=args.simmim)
      head = ' (new head)' if meta.get('head_replaced') else ''
      print(f'wrote {args.output}: {meta["architecture"]} (width {meta["width"]}), '
            f'{meta["num_params"]:,} params, {meta["num_classes"]} classes{head}, '
            f'source sha256 {meta["source_sha256"]}')
  except (errors.UserError, FileExistsError) as e:
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return 2
  except errors.USER_ERRORS as e:  # a missing or unreadable input file, a full disk
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
