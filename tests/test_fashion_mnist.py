"""Fashion-MNIST from its standard idx files: found wherever they are, one input channel, every front end."""
import json
import os

import pytest

from timm_gradreg.data import FASHION_MNIST_FILES, prepare_fashion_mnist, resolve_dataset

from helpers import stock_train_py, write_fashion_mnist_subset

#: trainings on Fashion-MNIST
pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_GRADREG_DATA', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


@pytest.mark.parametrize('gz', [True, False], ids=['gzipped', 'plain'])
def test_the_idx_files_are_found_and_laid_out_for_timm(tmp_path, cache, gz):
    folder = write_fashion_mnist_subset(tmp_path / 'idx', 20, 10, gz=gz)
    name, root = resolve_dataset('fashion_mnist', folder)
    assert name == 'torch/fashion_mnist' and resolve_dataset('torch/fashion_mnist', folder)[0] == name
    from timm.data import create_dataset
    train = create_dataset(name, root=root, split='train', is_training=True)
    test = create_dataset(name, root=root, split='validation', is_training=False)
    assert (len(train), len(test)) == (20, 10)
    image, label = train[0]
    assert image.mode == 'L' and image.size == (28, 28) and label == 9  # the first training image is an ankle boot
    assert prepare_fashion_mnist(root) == root  # torchvision's layout is used as it is


def test_missing_files_give_one_line_naming_the_ways_to_get_them(tmp_path, cache):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ValueError) as error:
        prepare_fashion_mnist(str(empty))
    message = str(error.value)
    assert '\n' not in message and str(empty) in message and 'apt-get install dataset-fashion-mnist' in message
    assert '--dataset-download' in message and all(name in message for name in FASHION_MNIST_FILES)
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(ValueError, match="is a file"):
        prepare_fashion_mnist(str(tmp_path / 'a_file'))


def test_timm_train_and_gradreg_eval_on_one_channel(tmp_path, cache, capsys):
    from timm_gradreg.cli.evaluate import main as eval_main
    from timm_gradreg.cli.train import main as train_main
    folder = write_fashion_mnist_subset(tmp_path / 'idx', 64, 32)
    argv = ['-c', 'fmnist/gradnorm', '--data-dir', folder, '--epochs', '1', '--warmup-epochs', '0', '-b', '16',
            '--adv-val-steps', '2', '--output', str(tmp_path / 'out'), '--device', 'cpu']
    assert train_main(argv) == 0
    row = open(tmp_path / 'out' / 'gradnorm' / 'summary.csv').read().splitlines()
    assert len(row) == 2 and 'eval_advtop1' in row[0]
    checkpoint = str(tmp_path / 'out' / 'gradnorm' / 'last.pth.tar')
    out = tmp_path / 'eval'
    assert eval_main(['--checkpoint', checkpoint, '--dataset', 'fashion_mnist', '--data-dir', folder,
                      '--eps', '0', '0.1', '--steps', '3', '--output', str(out), '--no-progress',
                      '--device', 'cpu']) == 0
    model = json.load(open(out / 'results.json'))['models'][0]
    assert model['num_samples'] == 32 and model['data_config']['input_size'] == [1, 28, 28]
    assert 0 <= model['sweep']['accuracy'][1] <= model['clean_accuracy'] <= 100


def test_gradreg_analyze_on_one_channel(tmp_path, cache):
    from timm_gradreg.cli.analyze import main as analyze_main
    from timm_gradreg.cli.train import main as train_main
    folder = write_fashion_mnist_subset(tmp_path / 'idx', 32, 16)
    assert train_main(['-c', 'fmnist/natural', '--data-dir', folder, '--epochs', '1', '--warmup-epochs', '0',
                       '-b', '16', '--adv-val-steps', '0', '--eval-metric', 'top1', '--output', str(tmp_path / 'out'),
                       '--device', 'cpu']) == 0
    out = tmp_path / 'analysis'
    assert analyze_main(['--checkpoint', str(tmp_path / 'out' / 'natural' / 'last.pth.tar'), '--dataset',
                         'fashion_mnist', '--data-dir', folder, '--num-samples', '8', '--output', str(out),
                         '--no-progress', '--device', 'cpu']) == 0
    assert os.path.exists(out / 'analysis.json') or any(out.iterdir())


def test_two_sources_never_share_an_unpacked_copy(tmp_path, cache):
    from timm.data import create_dataset
    small = write_fashion_mnist_subset(tmp_path / 'small', 8, 4)
    larger = write_fashion_mnist_subset(tmp_path / 'larger', 12, 6)
    roots = [resolve_dataset('fashion_mnist', folder)[1] for folder in (small, larger)]
    assert roots[0] != roots[1]
    sizes = [len(create_dataset('torch/fashion_mnist', root=r, split='train', is_training=True)) for r in roots]
    assert sizes == [8, 12]


def test_gradreg_launch_drives_timms_train_py_on_fashion_mnist(tmp_path, cache):
    import subprocess
    import sys
    folder = write_fashion_mnist_subset(tmp_path / 'idx', 32, 16)
    run = subprocess.run([sys.executable, '-m', 'timm_gradreg.cli.launch', stock_train_py(), '-c', 'fmnist/gradnorm',
                          '--data-dir', folder, '--epochs', '1', '--warmup-epochs', '0', '-b', '16', '--device', 'cpu',
                          '--adv-val-steps', '2', '--output', str(tmp_path / 'out')],
                         capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert run.returncode == 0, run.stderr[-2000:]
    (summary,) = list((tmp_path / 'out').glob('*/summary.csv'))
    header, row = summary.read_text().splitlines()
    values = dict(zip(header.split(','), row.split(',')))
    assert float(values['eval_top1']) * 16 / 100 == pytest.approx(round(float(values['eval_top1']) * 16 / 100))  # 16 images
    assert 0 <= float(values['eval_advtop1']) <= float(values['eval_top1'])


def test_the_holdout_validates_on_training_images_kept_out_of_its_training_split(cache):
    import numpy as np
    from timm.data import create_dataset
    from timm_gradreg.data import DEBIAN_FASHION_MNIST, HOLDOUT_PER_CLASS, holdout_indices
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        pytest.skip('Debian dataset-fashion-mnist is not installed')
    name, root = resolve_dataset('fashion_mnist_holdout', None)
    _, full = resolve_dataset('fashion_mnist', None)
    train = create_dataset(name, root=root, split='train', is_training=True)
    held = create_dataset(name, root=root, split='validation', is_training=False)
    source = create_dataset(name, root=full, split='train', is_training=True)
    source_test = create_dataset(name, root=full, split='validation', is_training=False)
    assert (len(train), len(held)) == (50_000, 10_000)
    pixels = lambda ds: ds.data.numpy().reshape(len(ds), -1)  # noqa: E731
    labels = lambda ds: ds.targets.numpy()  # noqa: E731
    index = holdout_indices(labels(source))
    assert np.array_equal(pixels(held), pixels(source)[index]) and np.array_equal(labels(held), labels(source)[index])
    rest = np.setdiff1d(np.arange(len(source)), index)
    assert np.array_equal(pixels(train), pixels(source)[rest])
    assert np.bincount(labels(held)).tolist() == [HOLDOUT_PER_CLASS] * 10
    assert not np.array_equal(pixels(held)[:100], pixels(source_test)[:100])  # not the test split
    assert resolve_dataset('fashion_mnist_holdout', None)[1] == root  # written once
