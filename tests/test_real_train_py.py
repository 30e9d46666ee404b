"""gradreg-launch drives timm's own train.py, unmodified (tests/fixtures/timm_train), and the patch applies to it.

The file that goes with the installed timm is used: train-v1.0.27.py (tags v1.0.27 and v1.0.28) with timm
1.0.27-1.0.28, train-main-aa4b5850.py with timm 1.0.29 and later.
"""
import os
import shutil
import subprocess
import sys

import pytest

from timm_gradreg.recipes import PATCH

from helpers import STOCK_TRAIN_PY_FILES, stock_train_py, write_image_folder

TRAIN_PY = stock_train_py()

#: one member of each method family, with the options a seconds-long epoch needs
# --workers 1: timm 1.0.27's loader keeps persistent workers, which torch refuses with --workers 0
FAMILIES = {
    'natural': [],
    'gradnorm': ['--gn-warmup-epochs', '0'],
    'pgd': ['--attack-warmup-epochs', '0'],
    'edge': [],
    'trades': ['--trades-steps', '2'],
}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('data'), classes=3, train_per_class=4, val_per_class=2)


@pytest.mark.parametrize('method', sorted(FAMILIES))
def test_timms_train_py_trains_each_method_family(method, folder, tmp_path):
    out = tmp_path / 'out'
    run = subprocess.run(
        [sys.executable, '-m', 'timm_gradreg.cli.launch', TRAIN_PY, '--data-dir', folder, '--model', 'test_resnet',
         '--model-kwargs', 'act_layer=gelu', '--num-classes', '3', '--input-size', '3', '32', '32', '--crop-pct', '1.0',
         '--no-aug', '-b', '4', '--epochs', '1', '--warmup-epochs', '0', '--opt', 'adamw', '--lr', '1e-3',
         '--workers', '1', '--device', 'cpu', '--smoothing', '0', '--output', str(out), '--experiment', method,
         '--gradreg', method, '--bn-eval', '--adv-val-steps', '2', '--adv-val-eps', '8/255',
         '--adv-val-step-size', '4/255', '--eval-metric', 'advtop1', *FAMILIES[method]],
        capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    header, row = (out / method / 'summary.csv').read_text().splitlines()
    values = dict(zip(header.split(','), row.split(',')))
    assert 0.0 <= float(values['eval_advtop1']) <= float(values['eval_top1']) <= 100.0
    assert float(values['eval_top1']) * 6 / 100 == pytest.approx(round(float(values['eval_top1']) * 6 / 100))  # 6 images
    args = (out / method / 'args.yaml').read_text()
    assert f'gradreg: {method}' in args  # the gradreg options are saved with train.py's own


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
@pytest.mark.parametrize('revision', sorted(STOCK_TRAIN_PY_FILES))
def test_the_patch_applies_to_each_train_py(revision, tmp_path):
    """The packaged patch applies to the real file, adds every line it carries, and leaves valid Python."""
    shutil.copy(STOCK_TRAIN_PY_FILES[revision], tmp_path / 'train.py')
    run = subprocess.run(['git', 'apply', '--verbose', PATCH], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    patched = (tmp_path / 'train.py').read_text()
    with open(PATCH) as f:
        added = [line[1:].rstrip('\n') for line in f if line.startswith('+') and not line.startswith('+++')]
    assert added and all(line in patched for line in added)
    assert patched != open(STOCK_TRAIN_PY_FILES[revision]).read() and 'timm_gradreg.create_task(' in patched
    compile(patched, 'train.py', 'exec')


def test_a_demo_recipe_needs_no_data_dir_and_no_cuda(tmp_path):
    run = subprocess.run(
        [sys.executable, '-m', 'timm_gradreg.cli.launch', TRAIN_PY, '-c', 'demo/digits_natural', '--epochs', '1', '--warmup-epochs', '0',
         '--workers', '1', '--output', str(tmp_path), '--adv-val-steps', '1'],
        capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    if not __import__('torch').cuda.is_available():
        assert 'no CUDA device here; train.py runs with --device cpu' in run.stderr
    header, row = (tmp_path / 'digits_natural' / 'summary.csv').read_text().splitlines()
    top1 = float(dict(zip(header.split(','), row.split(',')))['eval_top1'])
    assert top1 * 359 / 100 == pytest.approx(round(top1 * 359 / 100))  # the demo's 359 validation digits
