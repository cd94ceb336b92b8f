"""The package's import graph, read from the source with `ast` (no module is imported).

Edges: every `import` / `from ... import` of a module of enstransfer_jax, at module level or
inside a function, and the subpackage `__init__.py` that importing a module of another
subpackage runs first (the root package's `__init__` imports nothing at module level and
is left out). Checked: the training engine (enstransfer_jax/training/) and ensemble.py reach
no module of enstransfer_jax/analysis/, directly or through other modules, and the graph has
no cycle; a failure names the path.
"""

import ast
import functools
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    'enstransfer_jax')
PACKAGE = 'enstransfer_jax'


def _modules():
  """{dotted name: path} of every module of the package (a package is its __init__.py)."""
  out = {}
  for folder, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))[:-3]
        parts = rel.split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        out['.'.join(parts)] = os.path.join(folder, f)
  return out


def _imported(node, module, is_package, modules):
  """The package's modules an Import / ImportFrom node names."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.split('.')[0] == PACKAGE]
  if node.level:  # relative: from . import x, from ..y import z
    base = module.split('.')[:len(module.split('.')) - node.level + is_package]
    source = '.'.join(base + ([node.module] if node.module else []))
  else:
    source = node.module or ''
  if source.split('.')[0] != PACKAGE:
    return []
  names = [f'{source}.{a.name}' for a in node.names if f'{source}.{a.name}' in modules]
  return names or [source]


@functools.lru_cache(maxsize=None)
def import_graph():
  """{module: {imported module: line}} over the package's own modules."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    is_package = path.endswith('__init__.py')
    edges = graph.setdefault(module, {})
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      for name in _imported(node, module, is_package, modules):
        while name not in modules:  # an attribute import: `import a.b.c` of a package's name
          name = name.rpartition('.')[0]
        targets = [name]
        # Importing a.b.c runs a.b's __init__ first, unless `module` is inside a.b already.
        parts = name.split('.')
        for i in range(2, len(parts)):
          parent = '.'.join(parts[:i])
          if not (module == parent or module.startswith(parent + '.')):
            targets.append(parent)
        for target in targets:
          if target != module:
            edges.setdefault(target, node.lineno)
  return graph


def _path(graph, start, goal):
  """A shortest import chain start -> ... -> a module where goal(module), or None."""
  previous, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for node in frontier:
      for target in sorted(graph.get(node, ())):
        if goal(target):
          chain = [target, node]
          while previous[chain[-1]] is not None:
            chain.append(previous[chain[-1]])
          return chain[::-1]
        if target not in previous:
          previous[target] = node
          nxt.append(target)
    frontier = nxt
  return None


def cycles(graph):
  """Per strongly connected component of more than one module: (one cycle through its first
  module, as a list of modules with first == last; the component's modules, sorted)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):  # Tarjan's algorithm; the graph has ~100 nodes, recursion is fine
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        start = min(component)
        inside = {k: {t: n for t, n in e.items() if t in component}
                  for k, e in graph.items() if k in component}
        out.append((_path(inside, start, lambda t, s=start: t == s), sorted(component)))
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _describe(graph, chain):
  return ' -> '.join(f'{a} (line {graph[a][b]})' for a, b in zip(chain, chain[1:])) + (
      f' -> {chain[-1]}')


def test_training_and_ensemble_do_not_reach_the_analysis():
  graph = import_graph()
  analysis = lambda m: m == f'{PACKAGE}.analysis' or m.startswith(f'{PACKAGE}.analysis.')
  starts = [m for m in graph if m == f'{PACKAGE}.ensemble'
            or m == f'{PACKAGE}.training' or m.startswith(f'{PACKAGE}.training.')]
  assert len(starts) > 5, starts
  for start in sorted(starts):
    chain = _path(graph, start, analysis)
    assert chain is None, f'{start} imports the analysis: {_describe(graph, chain)}'


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  found = cycles(graph)
  assert not found, 'import cycles:\n' + '\n'.join(
      f'{_describe(graph, chain)} (modules in a circle: {", ".join(group)})'
      for chain, group in found)


def test_the_graph_sees_every_kind_of_import():
  """The reader itself, on modules whose imports are known: at module level, inside a
  function, a subpackage's __init__ (and not the importer's own package); and the cycle
  finder on a graph with two circles and a tail."""
  graph = import_graph()
  stage = graph[f'{PACKAGE}.training.stage']
  assert {f'{PACKAGE}.training.step', f'{PACKAGE}.checkpoints', f'{PACKAGE}.data',
          f'{PACKAGE}.data.batches', f'{PACKAGE}.models', f'{PACKAGE}.models.resnet'
          } <= set(stage)
  assert f'{PACKAGE}.training' not in stage  # its own package is already imported
  assert {f'{PACKAGE}.ensemble', f'{PACKAGE}.data.datasets'} <= set(
      graph[f'{PACKAGE}.predict'])  # both inside functions
  assert f'{PACKAGE}.losses.rtd' in graph[f'{PACKAGE}.losses']
  toy = {'a': {'b': 1}, 'b': {'c': 2}, 'c': {'a': 3, 'd': 4}, 'd': {'e': 5}, 'e': {'d': 6},
         'f': {'a': 7}}
  assert sorted(cycles(toy)) == [(['a', 'b', 'c', 'a'], ['a', 'b', 'c']),
                                 (['d', 'e', 'd'], ['d', 'e'])]
  assert _path(toy, 'f', lambda m: m == 'e') == ['f', 'a', 'b', 'c', 'd', 'e']
