"""Experiment configs (one file each, `get_config()`), and the one rule for changing their
fields from the outside: `apply_overrides(config, {'pretrain.epochs': '2', ...})`.

main.py (`--config.FIELD=VALUE`), reproduce (`--set FIELD=VALUE`) and the tests all change
fields through it. A value given as text is parsed by the type of the field it replaces, as
ml_collections' config flags parse `--config.FIELD=VALUE`: int, float and bool fields by
absl's parsers, tuple fields as a Python literal (`'(5, 6)'`; a bare word is a 1-tuple; a
field given several times joins its values, as repeated flags do), str fields as they are
(a quoted Python string unquoted: `compilation_cache_dir=''` is the empty string),
other fields (None) as a Python literal or else the text. Other values are set as they are.
A field the config does not have, or a value of the wrong type, is one UserError line.
"""

import ast

from absl import flags
from ml_collections.config_flags import tuple_parser

from enstransfer_jax.errors import UserError

_PARSERS = {int: flags.IntegerParser(), float: flags.FloatParser(),
            bool: flags.BooleanParser(), tuple: tuple_parser.TupleParser()}


def parse_assignments(items, flag='--set'):
  """['width=4', 'pretrain.epochs=1'] -> [('width', '4'), ('pretrain.epochs', '1')]."""
  out = []
  for item in items:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise UserError(f'{flag} {item!r} must be FIELD=VALUE, e.g. {flag} epochs=10')
    out.append((key, text))
  return out


def _literal(text):
  try:
    return ast.literal_eval({'true': 'True', 'false': 'False'}.get(text, text))
  except (ValueError, SyntaxError):
    return text


def parse_value(kind, text):
  """`text` as a value of a field of type `kind` (the rule of the module docstring)."""
  if kind is str:
    value = _literal(text) if len(text) >= 2 and text[0] == text[-1] in '\'"' else text
    return value if isinstance(value, str) else text
  if kind in _PARSERS:
    return _PARSERS[kind].parse(text)
  return _literal(text)


def apply_overrides(config, overrides, flag='--config.'):
  """Sets the dotted fields of `config` in place and returns it. `overrides`: a mapping or
  (key, value) pairs; `flag` names the option in error lines ('--config.', '--set ')."""
  joined = {}  # tuple fields given several times: their values joined
  for key, value in (overrides.items() if hasattr(overrides, 'items') else overrides):
    *path, last = key.split('.')
    node = config
    for i, part in enumerate(path + [last]):
      if not hasattr(node, 'keys') or part not in node.keys():
        group = '.'.join(path[:i]) or 'the config'
        fields = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'none'
        raise UserError(f'unknown config key {key!r}: {group} has no field {part!r}; its '
                        f'fields: {fields} (see configs/base.py)')
      if i < len(path):
        node = node[part]
    kind = node.get_type(last)
    text = isinstance(value, str)
    try:
      parsed = parse_value(kind, value) if text else value
      if kind is tuple and text and key in joined:
        parsed = joined[key] + tuple(parsed)
      node[last] = parsed
    except (TypeError, ValueError, flags.Error) as e:
      raise UserError(f'{flag}{key}={value if text else repr(value)}: '
                      f'{str(e).splitlines()[0]}; give a value of the field\'s type (now '
                      f'{node[last]!r})') from None
    if kind is tuple and text:
      joined[key] = tuple(node[last])
  return config
