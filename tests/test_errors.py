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
    # the first hour of a new user: each case as it was tried
    'eps above 1': (lambda f, t: _train(f, t, '--gradreg', 'gradnorm', '--gn-eps', '300/255'),
                    '--gn-eps: 300/255 = 1.17647 is outside [0, 1]'),
    'attack step above 1': (lambda f, t: _train(f, t, '--gradreg', 'pgd', '--attack-step-size', '3'),
                            '--attack-step-size: 3 is outside [0, 1]'),
    'validation eps above 1': (lambda f, t: _train(f, t, '--adv-val-eps', '8'), '--adv-val-eps: 8 is outside [0, 1]'),
    'eval aa-eps above 1': (lambda f, t: eval_main(['--model', 'test_resnet', '--aa-eps', '2', '--output',
                                                   str(t / 'out')]), '--aa-eps: 2 is outside [0, 1]'),
    'eval eps above 1': (lambda f, t: eval_main(['--model', 'test_resnet', '--eps', '0', '255', '--output',
                                                str(t / 'out')]), '--eps: 255 is outside [0, 1]'),
    'data dir is a file': (lambda f, t: train_main(tiny_train_argv(_file(t), t / 'out', 'run')), 'is a file'),
    'demo built into a folder of other images': (lambda f, t: train_main(['-c', 'demo/digits_gradnorm', '--data-dir', f,
                                                                        '--output', str(t / 'out')]),
                                                  'holds other files, not the digits demo'),
    'one class': (lambda f, t: train_main(tiny_train_argv(_one_class(t), t / 'out', 'run', classes=1)),
                  'the training data has 1 class(es)'),
    'head smaller than the data': (lambda f, t: _train(f, t, '--num-classes', '3'),
                                   'the model has 3 outputs (--num-classes) but the training data has 4 classes'),
    'resume another model': (lambda f, t: _train(f, t, '--model', 'resnet18', '--model-kwargs', 'act_layer=gelu',
                                                 '--resume', _checkpoint(t)),
                             "was saved from model 'test_resnet'"),
    'output is a file': (lambda f, t: train_main(tiny_train_argv(f, _file(t, 'out'), 'run')),
                         "is a file, not a folder"),
    'eval output is a file': (lambda f, t: eval_main(['--model', 'test_resnet', '--data-dir', f, '--output',
                                                     _file(t, 'out')]), 'is a file, not a folder'),
    'negative lr': (lambda f, t: _train(f, t, '--lr', '-1'), '--lr: must be > 0, got -1'),
    'empty config': (lambda f, t: train_main(['-c', _file(t, 'empty.yaml')]), "is empty"),
    'truncated checkpoint': (lambda f, t: _train(f, t, '--resume', _truncated(t)), 'truncated.pth.tar'),
}


def _file(tmp, name='a_file.txt', text=''):
    path = tmp / name
    path.write_text(text)
    return str(path)


def _one_class(tmp):
    from helpers import write_image_folder
    return write_image_folder(tmp / 'one', classes=1, train_per_class=4, val_per_class=2)


def _checkpoint(tmp):
    import timm
    import torch
    model = timm.create_model('test_resnet', num_classes=4, act_layer='gelu')
    path = tmp / 'test_resnet.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'arch': 'test_resnet', 'epoch': 0}, path)
    return str(path)


def _truncated(tmp):
    path = tmp / 'truncated.pth.tar'
    path.write_bytes(open(_checkpoint(tmp), 'rb').read()[:5000])
    return str(path)


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
    assert not (tmp_path / 'out').is_dir(), f'left an output folder: {os.listdir(tmp_path / "out")}'
