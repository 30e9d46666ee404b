"""Every plausible mistake gets one clear line and the documented exit code (``utils.exit_codes``: 2 refused,
1 failed, 75 preempted, 0 finished with a warning): the bad value named, no traceback, no duplicate message,
and no empty output folder left behind."""
import os
import resource
import signal
import subprocess
import sys

import pytest

from timm_gradreg.cli.analyze import main as analyze_main
from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.cli.launch import main as launch_main
from timm_gradreg.cli.swap_activations import main as swap_main
from timm_gradreg.cli.train import main as train_main

from helpers import stock_train_py, tiny_train_argv, write_image_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('errors') / 'data', classes=4, train_per_class=2,
                              val_per_class=1)


def _train(folder, tmp, *extra):
    return train_main(tiny_train_argv(folder, tmp / 'out', 'run', '--epochs', '1', *extra))


def _eval(folder, tmp, *extra):
    return eval_main(['--model', 'test_resnet', '--data-dir', folder, '--device', 'cpu', '--output', str(tmp / 'out'),
                      '--num-samples', '4', '--no-progress', *extra])


def _subprocess(argv, limit_file_size=None, stop_after=None, cwd=None):
    """A tool in a fresh process, its output echoed to this one's stderr; returns its exit code.

    ``limit_file_size``: bytes any file it writes may reach (larger writes fail as on a full disk);
    ``stop_after``: a line after which it gets SIGTERM, as a cluster's preemption sends it.
    """
    def limit():
        if limit_file_size:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))
    proc = subprocess.Popen([sys.executable, '-m', *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit, cwd=cwd)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if stop_after and line.startswith(stop_after):
            proc.send_signal(signal.SIGTERM)
            stop_after = None
    code = proc.wait(timeout=300)
    sys.stderr.write(''.join(lines))
    return code


def _eval_preempted(folder, tmp):
    return _subprocess(['timm_gradreg.cli.evaluate', '--model', 'test_resnet', '--data-dir', folder, '--device', 'cpu',
                        '--num-samples', '4', '--no-sweep', '--sanity', '--sanity-steps', '100000', '--sanity-eps',
                        '8/255'], stop_after='CPU threads')


def _with_corrupt_image(folder, tmp):
    """A copy of ``folder`` with one training image cut short: a PNG whose pixels fail to decode (PIL's message
    does not name the file), where this timm skips decode errors (later than 1.0.27); else one that fails to open."""
    import shutil

    from timm.data import ImageDataset
    copy = tmp / 'corrupt'
    shutil.copytree(folder, copy)
    path = copy / 'train' / '0' / '0.png'
    path.write_bytes(path.read_bytes()[:60])
    dataset = ImageDataset(str(copy / 'train'))
    try:
        dataset[dataset.filenames(absolute=True).index(str(path))]
    except OSError:  # this timm decodes outside its skip: an image that does not open is what it skips
        path.write_bytes(b'not an image')
    return str(copy)


CASES = {
    # name: (command, the text of the one line it prints[, its exit code if not 2])
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
    'apgd from a random start': (lambda f, t: _train(f, t, '--gradreg', 'pgd', '--attack-algorithm', 'apgd'),
                                 'pass --no-attack-random-start'),
    'apgd with a step size': (lambda f, t: _subprocess(['timm_gradreg.cli.launch', stock_train_py(), '--gradreg', 'pgd',
                                                        '--attack-algorithm', 'apgd', '--no-attack-random-start',
                                                        '--attack-step-size', '1/255', '--data-dir', f], cwd=t),
                              'step_size=0.00392'),  # a fresh process: train.py sets up logging on this stderr
    'eval aa-eps above 1': (lambda f, t: eval_main(['--model', 'test_resnet', '--aa-eps', '2', '--output',
                                                   str(t / 'out')]), '--aa-eps: 2 is outside [0, 1]'),
    'eval eps above 1': (lambda f, t: eval_main(['--model', 'test_resnet', '--eps', '0', '255', '--output',
                                                str(t / 'out')]), '--eps: 255 is outside [0, 1]'),
    'data dir is a file': (lambda f, t: train_main(tiny_train_argv(_file(t), t / 'out', 'run')), 'is a file'),
    'demo built into a folder of other images': (lambda f, t: train_main(['-c', 'demo/digits_gradnorm', '--data-dir', f,
                                                                        '--output', str(t / 'out')]),
                                                  'holds other files, not the digits demo'),
    'trades in half precision': (lambda f, t: _train(f, t, '--gradreg', 'trades', '--amp', '--amp-dtype', 'bfloat16'),
                                 '--amp cannot be used with --gradreg trades: its KL term'),
    'double backprop through SyncBatchNorm': (lambda f, t: _train(f, t, '--gradreg', 'gradnorm', '--sync-bn',
                                                                   '--no-bn-eval'),
                                               "--sync-bn cannot be used with --gradreg gradnorm: it needs double "
                                               "backprop, and torch's SyncBatchNorm backward"),
    'repeated augmentation in one process': (lambda f, t: _train(f, t, '--aug-repeats', '3'),
                                             '--aug-repeats 3 needs distributed training'),
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
    # a budget that cannot attack is refused, never reported as robustness
    'eval steps -5': (lambda f, t: _eval(f, t, '--steps', '-5'), 'argument --steps: -5 cannot attack'),
    'eval steps 0': (lambda f, t: _eval(f, t, '--steps', '0'), 'argument --steps: 0 cannot attack'),
    'eval restarts 0': (lambda f, t: _eval(f, t, '--restarts', '0'), 'argument --restarts: 0 cannot attack'),
    'eval sweep of zeros': (lambda f, t: _eval(f, t, '--eps', '0', '0/255'), 'the PGD sweep attacks nothing'),
    'eval negative fraction': (lambda f, t: _eval(f, t, '--eps', '-8/255'), '--eps: -8/255 = -0.0313725 is outside'),
    'eval autoattack eps 0': (lambda f, t: _eval(f, t, '--autoattack', '--aa-eps', '0'),
                              'argument --aa-eps: 0 cannot attack'),
    'train attack eps 0': (lambda f, t: _train(f, t, '--gradreg', 'pgd', '--attack-eps', '0'),
                           'argument --attack-eps: 0 cannot attack'),
    'validation steps -1': (lambda f, t: _train(f, t, '--adv-val-steps', '-1'),
                            'argument --adv-val-steps: must be >= 0'),
    # the rest of a new user's first hour
    'disk full': (lambda f, t: _subprocess(['timm_gradreg.cli.train', *tiny_train_argv(f, t / 'out', 'run', '--epochs',
                                                                                       '1')], limit_file_size=60_000),
                  "could not save the checkpoint of epoch 0 in '", 1),
    'preempted': (lambda f, t: _subprocess(['timm_gradreg.cli.train', *tiny_train_argv(f, t / 'out', 'run', '--epochs',
                                                                                       '2')], stop_after='Train: 0 ['),
                  'timm-train: stopped by SIGTERM after epoch ', 75),
    'eval preempted': (_eval_preempted, 'gradreg-eval: stopped by SIGTERM: rerun the same command', 75),
    'launch a file that is not train.py': (lambda f, t: launch_main([_file(t, 'x.py', 'print("hi")'), '--gradreg',
                                                                     'gradnorm']),
                                           "does not look like timm's train.py"),
    "another method's option": (lambda f, t: _train(f, t, '--gradreg', 'natural', '--gn-weight', '2'),
                                '--gn-weight is an option of --gradreg gradnorm, and this run trains --gradreg '
                                'natural'),
    "another method's option in the config": (lambda f, t: train_main(['-c', _file(t, 'c.yaml', 'gradreg: natural\n'
                                                                                   'gn_weight: 2\n')]),
                                              "config key 'gn_weight' is an option of --gradreg gradnorm"),
    'nesterov without momentum': (lambda f, t: _train(f, t, '--opt', 'sgd', '--momentum', '0'),
                                  '--opt sgd with these settings: Nesterov momentum requires a momentum'),
    'threads 0': (lambda f, t: _train(f, t, '--threads', '0'), 'argument --threads: must be >= 1'),
    'float16 autocast on a CPU': (lambda f, t: _train(f, t, '--amp'), '--amp-dtype bfloat16 is the CPU mixed precision',
                                  0),
    'swap without --output': (lambda f, t: swap_main(['test_resnet', 'gelu']), 'nothing written: --output FILE saves',
                              0),
    'swap over an existing file': (lambda f, t: swap_main(['test_resnet', 'gelu', '--output', _file(t)]),
                                   "exists: give another path, or --overwrite"),
    'corrupt image': (lambda f, t: _train(_with_corrupt_image(f, t), t, '--adv-val-steps', '0', '--eval-metric',
                                          'top1'),
                      "(file '", 0),
    'misspelt method': (lambda f, t: _train(f, t, '--gradreg', 'gradnrom'), "did you mean 'gradnorm'?"),
    'misspelt method in the config': (lambda f, t: train_main(['-c', _file(t, 'c.yaml', 'gradreg: gradnrom\n')]),
                                      "did you mean 'gradnorm'?"),
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
    command, expected, *code = CASES[name]
    expected_code = code[0] if code else 2
    try:
        exit_code = command(folder, tmp_path)
    except SystemExit as e:  # argparse's usage errors
        exit_code = e.code
    captured = capsys.readouterr()
    err = captured.err
    assert exit_code == expected_code, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    said = [line for line in (captured.out + err).splitlines() if expected in line]
    assert len(said) == 1, err[-3000:]  # said once, not 'ERROR: ...' and then 'prog: error: ...'
    if expected_code == 2:
        errors = [line for line in err.splitlines() if 'error' in line.lower()]
        assert len(errors) == 1 and expected in errors[0], err
        assert len([line for line in err.splitlines() if line.startswith('usage:')]) <= 1
        assert not (tmp_path / 'out').is_dir(), f'left an output folder: {os.listdir(tmp_path / "out")}'
    assert 'hi' not in err.splitlines()  # a refused script never ran
