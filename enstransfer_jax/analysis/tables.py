"""Tables as files and as Markdown: every CSV, JSON and Markdown table the analysis and the
reproduce command write goes through here.

Files are written atomically (atomic.py): complete under their name, or not at all. numpy
values are written as plain numbers and lists, non-finite floats as empty CSV cells and JSON
nulls.
"""

import csv
import json
import math

import numpy as np

from enstransfer_jax import atomic


def plain(v):
  """`v` with numpy values as Python ones and non-finite floats as None."""
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, dict):
    return {str(k): plain(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [plain(x) for x in v]
  return v


def write_json(path, obj):
  """JSON with numpy values as lists and non-finite floats as null."""
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(plain(obj), f, indent=2, sort_keys=True, allow_nan=False)
      f.write('\n')
  atomic.write(path, write)
  return path


def write_csv(path, rows, columns=None):
  """One row per dict; `columns` default to every key, in first-seen order."""
  columns = columns or list(dict.fromkeys(k for r in rows for k in r))

  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
      w.writeheader()
      for r in rows:
        w.writerow({k: plain(r.get(k)) for k in columns})
  atomic.write(path, write)
  return path


def write_text(path, text):
  """A Markdown (or any text) file."""
  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
  atomic.write(path, write)
  return path


def matrix_rows(matrix, prefix='member'):
  """[K, K] matrix -> rows {'member': i, 'member1': ..., 'memberK': ...} for write_csv."""
  m = np.asarray(matrix)
  return [{prefix: i + 1, **{f'{prefix}{j + 1}': float(m[i, j]) for j in range(m.shape[1])}}
          for i in range(m.shape[0])]


def fmt(value, spec='.4f'):
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if isinstance(value, float) and math.isinf(value):
    return '-inf' if value < 0 else 'inf'
  return format(value, spec) if isinstance(value, (float, np.floating)) else str(value)


def pct(v):
  return fmt(None if v is None else 100.0 * v, '.2f')


def markdown_table(rows, columns, formats=None):
  """columns: [(key, header)]; formats: {key: format spec or callable}."""
  formats = formats or {}
  lines = ['| ' + ' | '.join(h for _, h in columns) + ' |',
           '|' + '---|' * len(columns)]
  for r in rows:
    cells = []
    for key, _ in columns:
      f = formats.get(key, '.4f')
      v = r.get(key)
      cells.append(f(v) if callable(f) else fmt(v, f))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
