"""The documentation against the repository: README's size and set-up commands, links, paths.

Pure text checks (milliseconds): the README stays a front page (at most 200 lines); every
relative link of README.md, docs/*.md and the other top-level pages points to a file that
exists, and a link's #anchor to one of that file's headings (GitHub's heading ids); every
`enstransfer_jax/...py`, `tests/...py` and `bench/...` path and `python -m` module they name
exists; the README's set-up commands are the ones .ci/run runs; no page cites an issue number;
the README's Layout names every module of enstransfer_jax/, bench/ and examples/, and the README
every config.
"""

import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / 'README.md', ROOT / 'RESULTS.md', ROOT / 'FIDELITY.md',
                ROOT / 'BENCHMARKS.md', ROOT / 'bench' / 'README.md']
               + list((ROOT / 'docs').glob('*.md')))
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
PATH = re.compile(r'(?<![\w./-])((?:enstransfer_jax|tests|bench)/[\w./-]*\w\.(?:py|sh|md|npz))')


def _text(page):
  return page.read_text(encoding='utf-8')


def github_anchor(heading):
  """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
  text = heading.strip().lower()
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(page):
  out = set()
  in_code = False
  for line in _text(page).splitlines():
    if line.startswith('```'):
      in_code = not in_code
    elif not in_code and re.match(r'#{1,6} ', line):
      out.add(github_anchor(line.lstrip('#')))
  return out


def test_github_anchor():
  # GitHub's ids of headings of this repository's pages, as its renderer writes them.
  assert github_anchor(" The digits task (`--task digits`)") == 'the-digits-task---task-digits'
  heading = "GPU memory without a GPU: the compiled ResNet-50 step's own figures, CPU"
  assert github_anchor(heading) == ('gpu-memory-without-a-gpu-the-compiled-resnet-50-'
                                    'steps-own-figures-cpu')


def test_readme_is_a_front_page():
  lines = _text(ROOT / 'README.md').splitlines()
  assert len(lines) <= 200, f'README.md has {len(lines)} lines; move reference text to docs/'
  first_screen = '\n'.join(lines[:50])
  for needed in ('python main.py --config configs/quickstart.py', 'pytest',
                 '| reference script'):
    assert needed in first_screen, needed


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  broken = []
  for target in LINK.findall(_text(page)):
    if re.match(r'[a-z]+:', target):
      continue
    path, _, anchor = target.partition('#')
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
      broken.append(target)
    elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest):
      broken.append(target)
  assert not broken, f'{page.relative_to(ROOT)}: broken links {broken}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(page):
  text = _text(page)
  named = set(PATH.findall(text))
  modules = re.findall(r'python -m (enstransfer_jax[\w.]*)', text)
  named |= {m.replace('.', '/') + '.py' for m in modules}
  missing = sorted(p for p in named if not (ROOT / p).exists())
  assert not missing, f'{page.relative_to(ROOT)} names paths that do not exist: {missing}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers(page):
  found = re.findall(r'\bissues? #?\d+', _text(page), flags=re.IGNORECASE)
  assert not found, f'{page.relative_to(ROOT)} cites {found}: say what is meant instead'


def _normalise(command):
  """One shell command as words, without `python -m` and the quiet flag."""
  words = shlex.split(command)
  if words[:2] == ['python', '-m']:
    words = words[2:]
  return [w for w in words if w != '-q']


def test_readme_setup_commands_are_what_ci_runs():
  readme = _text(ROOT / 'README.md').splitlines()
  test_lines = [l.strip() for l in readme if l.startswith('    ') and 'pytest' in l]
  assert len(test_lines) == 1, test_lines
  readme_cmds = [_normalise(c) for c in test_lines[0].split('&&')]
  ci = (ROOT / '.ci' / 'run').read_text().splitlines()
  ci_cmds = [_normalise(l) for l in ci if l.startswith('python')]
  assert readme_cmds == ci_cmds
  main_lines = [l.strip() for l in readme
                if l.startswith('    ') and 'main.py --config configs/quickstart.py' in l]
  assert main_lines == ['pip install -r requirements.txt && '
                        'python main.py --config configs/quickstart.py']


def test_layout_names_every_module():
  readme = _text(ROOT / 'README.md')
  layout = readme[readme.index('## Layout'):]
  files = [p for p in (ROOT / 'enstransfer_jax').rglob('*.py') if p.name != '__init__.py']
  files += [p for p in (ROOT / 'bench').iterdir() if p.suffix in ('.py', '.sh')]
  files += list((ROOT / 'examples').iterdir())
  unnamed = sorted(str(p.relative_to(ROOT)) for p in files
                   if f'`{p.name}`' not in layout and f'`{p.stem}`' not in layout
                   and f'`{p.relative_to(ROOT)}`' not in layout)
  configs = sorted(p.name for p in (ROOT / 'configs').glob('*.py')
                   if p.name != '__init__.py' and p.name not in readme)
  assert not unnamed + configs, f"README's Layout (or its config table) omits {unnamed + configs}"
