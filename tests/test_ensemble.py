"""Ensemble.load / predict, the predict command, the OOD and calibration analysis and the
export of every member, on one tiny finished run (ResNet-18 width 4, 16 px digits 5-9,
StarSSE with 2 members of 1 epoch)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as sk
import torch

import convert_byol
import enstransfer_jax
from enstransfer_jax import analyze, checkpoints, metrics, models, predict
from enstransfer_jax.training import run_experiment
from enstransfer_jax.data import augment, datasets
from tests import engine_util
import torch_resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = (5, 6, 7, 8, 9)


def _config():
  return engine_util.tiny_config(num_fge=2, star_fge=True, class_subset=CLASSES)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ensemble_run'))
  run_experiment(_config(), workdir)
  data = datasets.load_dataset(_config())
  probs = [np.load(os.path.join(workdir, 'members', str(i), 'test_probs.npy')) for i in (1, 2)]
  return {'workdir': workdir, 'data': data, 'probs': probs}


@pytest.fixture(scope='module')
def ensemble(run):
  return enstransfer_jax.Ensemble.load(run['workdir'], progress=False)


_MODEL = models.create_model('ResNet18', len(CLASSES), width=4)


@jax.jit
def _direct(variables, images):
  x = augment.eval_transform(images, transform='none', image_size=16)
  return jax.nn.softmax(_MODEL.apply(variables, x, train=False)[0], -1)


def _direct_probs(workdir, member, images):
  """One member by hand: eval transform, then the Flax model (no vmap, no batching)."""
  _, v = checkpoints.load_pretrained(os.path.join(workdir, 'members', str(member), 'checkpoint'))
  return np.asarray(_direct(v, images))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_predict_reproduces_the_saved_test_probabilities(run, ensemble):
  pred = ensemble.predict(run['data'].test_images, batch_size=128)  # 3 full batches + 1 padded
  assert pred.member_probs.shape == (2, len(run['data'].test_labels), 5)
  for k in range(2):
    np.testing.assert_allclose(pred.member_probs[k], run['probs'][k], atol=1e-5)
  np.testing.assert_allclose(pred.probs, np.mean(run['probs'], 0), atol=1e-5)
  np.testing.assert_array_equal(pred.predicted, pred.probs.argmax(-1))
  summary = json.load(open(os.path.join(run['workdir'], 'summary.json')))
  assert np.mean(pred.predicted == run['data'].test_labels) == pytest.approx(
      summary['ensembles'][-1]['acc'])
  assert ensemble.class_labels == CLASSES and ensemble.members == (1, 2)
  only2 = enstransfer_jax.Ensemble.load(run['workdir'], members=[2], progress=False)
  np.testing.assert_allclose(only2.predict(run['data'].test_images[:50]).probs,
                             run['probs'][1][:50], atol=1e-5)


def test_uncertainty_against_numpy(run, ensemble):
  pred = ensemble.predict(run['data'].test_images[:64])
  p = pred.member_probs.astype(np.float64)
  h = lambda q: -np.sum(q * np.log(q), -1)
  np.testing.assert_allclose(pred.entropy, h(p.mean(0)), rtol=1e-5)
  np.testing.assert_allclose(pred.expected_entropy, h(p).mean(0), rtol=1e-5)
  np.testing.assert_allclose(pred.mutual_information, h(p.mean(0)) - h(p).mean(0), atol=1e-6)
  np.testing.assert_allclose(pred.agreement, np.mean(p.argmax(-1) == pred.predicted, 0))
  classes, top = pred.top_k(3)
  np.testing.assert_array_equal(classes[:, 0], pred.predicted)
  np.testing.assert_allclose(top, -np.sort(-pred.probs, -1)[:, :3])


def test_any_size_float_images_and_temperature(run, ensemble):
  images = run['data'].test_images[:6]
  odd = np.asarray(Image.fromarray(images[0]).resize((27, 21), Image.NEAREST))  # W 27, H 21
  pred = ensemble.predict([images[1], odd, images[2]])
  for k in (1, 2):  # against the member evaluated by hand at each size
    np.testing.assert_allclose(pred.member_probs[k - 1, [0, 2]],
                               _direct_probs(run['workdir'], k, images[1:3]), atol=1e-5)
    np.testing.assert_allclose(pred.member_probs[k - 1, 1],
                               _direct_probs(run['workdir'], k, odd[None])[0], atol=1e-5)
  # Float images are [0, 1]: x / 255 gives exactly the uint8 result.
  as_float = ensemble.predict(images.astype(np.float32) / 255.0)
  np.testing.assert_array_equal(as_float.member_probs, ensemble.predict(images).member_probs)
  with pytest.raises(ValueError, match=r'float images must hold values in \[0, 1\]'):
    ensemble.predict(images.astype(np.float32))
  with pytest.raises(ValueError, match=r'\[N, H, W, 3\]'):
    ensemble.predict(images[0])
  hot = enstransfer_jax.Ensemble.load(run['workdir'], temperature=2.0, progress=False)
  warm = hot.predict(images)
  plain = ensemble.predict(images)
  mean = plain.member_probs.astype(np.float64).mean(0)
  np.testing.assert_allclose(warm.probs, _softmax(np.log(mean) / 2.0), atol=1e-6)
  np.testing.assert_array_equal(warm.predicted, plain.predicted)
  np.testing.assert_allclose(warm.entropy, -np.sum(warm.probs * np.log(warm.probs), -1),
                             rtol=1e-5)
  np.testing.assert_allclose(warm.mutual_information, plain.mutual_information)


def test_load_bad_inputs(run, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    enstransfer_jax.Ensemble.load(tmp_path / 'nope')
  half = tmp_path / 'half'
  half.mkdir()
  for name in ('config.json', 'run_info.json'):
    shutil.copy(os.path.join(run['workdir'], name), half / name)
  with pytest.raises(ValueError, match='unfinished run'):
    enstransfer_jax.Ensemble.load(half)
  with pytest.raises(ValueError, match=r'choose distinct ids among .*: 1,2'):
    enstransfer_jax.Ensemble.load(run['workdir'], members=[3])


def _write_pngs(folder, images):
  os.makedirs(folder, exist_ok=True)
  names = []
  for i, im in enumerate(images):
    names.append(os.path.join(folder, f'img_{i}.png'))
    Image.fromarray(im).save(names[-1])
  return names


def test_cli_on_png_files(run, ensemble, tmp_path):
  images = list(run['data'].test_images[:3])
  images.append(np.asarray(Image.fromarray(images[0]).resize((40, 24), Image.BILINEAR)))
  names = _write_pngs(str(tmp_path / 'pngs'), images)
  (tmp_path / 'pngs' / 'notes.txt').write_text('not an image: skipped in a folder')
  out = tmp_path / 'preds.npz'
  proc = subprocess.run([sys.executable, '-m', 'enstransfer_jax.predict', run['workdir'],
                         '--images', str(tmp_path / 'pngs'), '--out', str(out), '--top-k', '2'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  saved = np.load(out)
  assert list(saved['names']) == names
  read_back = [np.asarray(Image.open(n).convert('RGB')) for n in names]
  pred = ensemble.predict(read_back)
  np.testing.assert_allclose(saved['probs'], pred.probs, atol=1e-6)
  np.testing.assert_allclose(saved['mutual_information'], pred.mutual_information, atol=1e-6)
  np.testing.assert_array_equal(saved['class_labels'], CLASSES)
  lines = proc.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith('input'))
  assert 'top-2 class:prob' in lines[header] and 'agree' in lines[header]
  for name, row, p in zip(names, lines[header + 1:], pred.probs):
    assert row.startswith(name)
    assert f'{CLASSES[p.argmax()]}:{p.max():.3f}' in row  # top class as a dataset label


def test_cli_dataset_split_prints_metrics(run, capsys):
  predict.main([run['workdir'], '--dataset', 'digits', '--split', 'test', '--show', '3'])
  out = capsys.readouterr().out
  labels = run['data'].test_labels
  mean = np.mean(run['probs'], 0)
  lines = out.splitlines()
  table = lines[next(i for i, line in enumerate(lines) if line.startswith('model')):]
  row = next(line for line in table if line.startswith('ensemble '))
  assert row.split()[1:] == [f'{100 * metrics.accuracy(mean, labels):.2f}',
                             f'{metrics.nll(mean, labels):.4f}',
                             f'{metrics.ece(mean, labels):.4f}',
                             f'{metrics.brier(mean, labels):.4f}']
  row = next(line for line in table if line.startswith('member 2'))
  assert row.split()[2] == f'{100 * metrics.accuracy(run["probs"][1], labels):.2f}'
  assert '... 296 more rows' in out


@pytest.mark.parametrize('args,message', [
    (['--images', 'NOWHERE.png'], 'image NOWHERE.png does not exist'),
    (['--images', 'BROKEN'], 'cannot read image'),
    (['--dataset', 'digits', '--class-subset', '0,5'], "not all among the ensemble's 5 classes"),
])
def test_cli_bad_inputs(run, tmp_path, capsys, args, message):
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not a png')
  args = [str(broken) if a == 'BROKEN' else a for a in args]
  with pytest.raises(SystemExit) as e:
    predict.main([run['workdir']] + args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err


def test_cli_missing_workdir(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    predict.main([str(tmp_path / 'nope'), '--dataset', 'digits'])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == f'error: work dir {tmp_path / "nope"} does not exist'


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_analyze_ood_and_calibration(run, ensemble, tmp_path):
  out = tmp_path / 'analysis'
  analyze.analyze_runs([run['workdir']], str(out), subset=16, rtd_points=0, soup=False,
                       basin=False, progress=False, ood='digits:0,1,2,3,4')
  # OOD: the saved test probabilities against digits 0-4, scored independently here.
  ood_data = datasets.load_dataset(engine_util.tiny_config(class_subset=(0, 1, 2, 3, 4)))
  p_out = ensemble.predict(ood_data.test_images)
  h = lambda q: -np.sum(q * np.log(q), -1)
  member_in = np.asarray(run['probs'], np.float64)
  member_out = p_out.member_probs.astype(np.float64)
  mean_in = member_in.mean(0)
  h_in, h_out = h(mean_in), h(member_out.mean(0))
  y = np.r_[np.zeros(len(h_in)), np.ones(len(h_out))]
  rows = {r['score']: r for r in _read_csv(out / 'ood.csv')}
  assert float(rows['entropy']['auroc']) == pytest.approx(
      sk.roc_auc_score(y, np.r_[h_in, h_out]), abs=1e-9)
  assert float(rows['entropy']['aupr']) == pytest.approx(
      sk.average_precision_score(y, np.r_[h_in, h_out]), abs=1e-9)
  mi_in, mi_out = h_in - h(member_in).mean(0), h_out - h(member_out).mean(0)
  assert float(rows['mutual_information']['auroc']) == pytest.approx(
      sk.roc_auc_score(y, np.r_[mi_in, mi_out]), abs=1e-9)
  # Calibration: use_test=True, so T is fitted on the test split; before = the saved ensemble.
  cal = json.loads((out / 'calibration.json').read_text())
  labels = run['data'].test_labels
  assert cal['before']['nll'] == pytest.approx(metrics.nll(mean_in, labels))
  grid = np.exp(np.linspace(np.log(0.05), np.log(20), 3001))
  nlls = [metrics.nll(_softmax(np.log(mean_in) / t), labels) for t in grid]
  assert cal['temperature'] == pytest.approx(grid[np.argmin(nlls)], rel=5e-3)
  assert cal['after']['acc'] == cal['before']['acc']
  report_md = (out / 'report.md').read_text()
  for text in ('## Calibration', '## Out-of-distribution detection', '(reliability.png)',
               '(ood_hist.png)'):
    assert text in report_md
  assert os.path.getsize(out / 'reliability.png') > 0
  assert len(_read_csv(out / 'reliability.csv')) == 3 * 15


def test_export_every_member_to_torch(run, tmp_path, capsys):
  out = tmp_path / 'torch_members'
  assert convert_byol.main(['--to-torch', '--all-members', run['workdir'], str(out)]) == 0
  assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'member_1.pt', 'member_2.pt']
  readme = (out / 'README.md').read_text()
  assert '`member_2.pt`' in readme and '[5, 6, 7, 8, 9]' in readme
  # Each member in the torch twin, on the eval transform done in torch, gives its saved probs.
  images = torch.from_numpy(run['data'].test_images[:64]).permute(0, 3, 1, 2).float() / 255
  x = torch.nn.functional.interpolate(images, size=(16, 16), mode='bilinear',
                                      align_corners=False, antialias=True)
  x = (x - torch.tensor(augment.MEAN)[:, None, None]) / torch.tensor(augment.STD)[:, None, None]
  for i in (1, 2):
    net = torch_resnet.TorchResNet('ResNet18', 5, width=4)
    net.load_state_dict(torch.load(out / f'member_{i}.pt')['model_state'])
    with torch.no_grad():
      probs = torch.softmax(net.eval()(x)[0], -1).numpy()
    np.testing.assert_allclose(probs, run['probs'][i - 1][:64], atol=1e-4)
  assert convert_byol.main(['--to-torch', '--all-members', run['workdir'], str(out)]) == 2
  assert 'already exists' in capsys.readouterr().err
  assert convert_byol.main(['--all-members', run['workdir'], str(tmp_path / 'x')]) == 2
  assert 'add --to-torch' in capsys.readouterr().err
