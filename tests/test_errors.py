"""Every plausible mistake gets one clear line: exit code 2, the bad value named, no traceback, no
duplicate message, and no empty output folder left behind."""
import os

import pytest

from timm_gradreg.cli.analyze import main as analyze_main
from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.cli.swap_activations import main as swap_main
from timm_gradreg.cli.train import main as train_main

from helpers import tiny_train_argv, write_image_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('errors') / 'data', classes=4, train_per_class=2,
                              val_per_class=1)


def _train(folder, tmp, *extra):
    return train_main(tiny_train_argv(folder, tmp / 'out', 'run', '--epochs', '1', *extra))


CASES = {
    # name: (command, expected text of the one error line)
    'epochs 0': (lambda f, t: _train(f, t, '--epochs', '0'), '--epochs 0: must be at least 1'),
    'batch 0': (lambda f, t: _train(f, t, '-b', '0'), '-b/--batch-size 0: must be at least 1'),
    'bad float': (lambda f, t: _train(f, t, '--lr', 'fast'), "argument --lr: invalid float value: 'fast'"),
    'empty data dir': (lambda f, t: train_main(tiny_train_argv(_empty(t), t / 'out', 'run')),
                       "no usable data in --data-dir '"),
    'missing data dir': (lambda f, t: train_main(tiny_train_argv(t / 'nope', t / 'out', 'run')),
                         "--data-dir '"),
    'unknown model': (lambda f, t: _train(f, t, '--model', 'resnet_nope'), "Unknown timm model 'resnet_nope'"),
    'missing resume': (lambda f, t: _train(f, t, '--resume', str(t / 'gone.pth.tar')), 'gone.pth.tar'),
    'unknown recipe': (lambda f, t: train_main(['-c', 'demo/digits_gradnrm']), "'demo/digits_gradnrm' does not exist"),
    'eval empty data dir': (lambda f, t: eval_main(['--model', 'test_resnet', '--data-dir', _empty(t), '--device', 'cpu',
                                                   '--output', str(t / 'out')]), "no usable data in --data-dir '"),
    'eval missing checkpoint': (lambda f, t: eval_main(['--checkpoint', str(t / 'none.pth.tar'), '--data-dir', f,
                                                       '--output', str(t / 'out')]), 'none.pth.tar'),
    'analyze bad eps': (lambda f, t: analyze_main(['--model', 'test_resnet', '--eps', 'big', '--output',
                                                  str(t / 'out')]), "'big'"),
    'swap unknown activation': (lambda f, t: swap_main(['resnet18', 'gleu', '--output', str(t / 'out' / 'x.pth')]),
                                "gleu"),
}


def _empty(tmp):
    path = tmp / 'empty'
    (path / 'train').mkdir(parents=True, exist_ok=True)
    (path / 'validation').mkdir(exist_ok=True)
    return str(path)


@pytest.mark.parametrize('name', list(CASES))
def test_a_mistake_gets_one_line(name, folder, tmp_path, capsys):
    command, expected = CASES[name]
    try:
        code = command(folder, tmp_path)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1, err  # said once, not 'ERROR: ...' and then 'prog: error: ...'
    assert expected in errors[0], err
    assert 'Traceback' not in err
    assert len([line for line in err.splitlines() if line.startswith('usage:')]) <= 1
    assert not (tmp_path / 'out').exists(), f'left an output folder: {os.listdir(tmp_path / "out")}'
