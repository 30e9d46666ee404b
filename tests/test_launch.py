"""gradreg-launch drives a train.py with timm's structure (the names it rebinds, the calls it wraps).

The fixture script below is written for this test in the shape of timm's train.py (>= 1.0.27): a module
parser and ``_parse_args`` reading ``-c`` YAML, ``main()`` calling ``resolve_data_config``,
``NativeScaler``, ``ClassificationTask(model=..., criterion=...)``, ``train_one_epoch(epoch, model,
loader, optimizer, args, task=...)`` and ``validate(model, loader, loss_fn, args, device=...)``. The
real train.py revisions are checked against the fetched timm repository (the version table of the
README).
"""
import json
import subprocess
import sys
import textwrap

import pytest
import yaml

TRAIN_PY = textwrap.dedent('''
    import argparse, json, sys
    from contextlib import suppress
    import torch, yaml
    import torch.nn.functional as F
    from timm.data import resolve_data_config
    from timm.models import create_model
    from timm.task import ClassificationTask
    from timm.utils import NativeScaler

    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    parser = argparse.ArgumentParser()
    parser.add_argument('--model', default='test_resnet')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--grad-accum-steps', type=int, default=1)
    parser.add_argument('--eval-metric', default='top1')
    parser.add_argument('--torchcompile', default=None)
    parser.add_argument('--output', default='')

    def _parse_args():
        args_config, remaining = config_parser.parse_known_args()
        if args_config.config:
            with open(args_config.config) as f:
                parser.set_defaults(**yaml.safe_load(f))
        args = parser.parse_args(remaining)
        return args, yaml.safe_dump(args.__dict__)

    def train_one_epoch(epoch, model, loader, optimizer, args, task=None, device=torch.device('cpu'),
                        amp_autocast=suppress, loss_scaler=None):
        model.train()
        seen = []
        for batch_idx, (input, target) in enumerate(loader):
            seen.append(task.epoch)
            loss = task(input, target)['loss']
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return {'loss': loss.item(), 'positions': seen, 'training': [m.training for m in model.modules()
                                                                     if isinstance(m, torch.nn.BatchNorm2d)]}

    def validate(model, loader, loss_fn, args, device=torch.device('cpu'), amp_autocast=suppress, model_dtype=None,
                 log_suffix=''):
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for input, target in loader:
                correct += (model(input).argmax(-1) == target).sum().item()
                total += len(target)
        return {'top1': 100.0 * correct / total}

    def main():
        args, args_text = _parse_args()
        model = create_model(args.model, num_classes=3)
        data_config = resolve_data_config(vars(args), model=model)
        loss_scaler = NativeScaler(device='cpu')
        task = ClassificationTask(model=model, criterion=torch.nn.CrossEntropyLoss(), device=torch.device('cpu'),
                                  dtype=None, verbose=False)
        if args.torchcompile:
            task.compile()
        optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(4)]
        history = []
        for epoch in range(args.epochs):
            train = train_one_epoch(epoch, task.get_trainable_module(), data, optimizer, args, task=task)
            metrics = validate(task.get_eval_model(), data, None, args)
            history.append({'train': train, 'eval': metrics, 'chosen': metrics[args.eval_metric]})
        with open(args.output, 'w') as f:
            json.dump({'task': type(task).__name__, 'scaler': task.grad_scaler is loss_scaler,
                       'gn_weight': getattr(task, 'gn_weight', None), 'args': yaml.safe_load(args_text),
                       'history': history, 'mean': list(data_config['mean']),
                       'acts': sorted({type(m).__name__ for m in model.modules() if 'LU' in type(m).__name__})}, f)

    if __name__ == '__main__':
        main()
''')


@pytest.fixture
def script(tmp_path):
    path = tmp_path / 'train.py'
    path.write_text(TRAIN_PY)
    return path


def _launch(*argv):
    return subprocess.run([sys.executable, '-m', 'timm_gradreg.cli.launch', *map(str, argv)], capture_output=True,
                          text=True)


def test_stock_script_trains_with_the_chosen_task(script, tmp_path):
    out = tmp_path / 'result.json'
    config = tmp_path / 'args.yaml'
    config.write_text(yaml.safe_dump({'epochs': 2, 'gradreg': 'gradnorm', 'gn_weight': '3/2', 'gn_warmup_epochs': 2,
                                      'model': 'test_resnet'}))
    run = _launch(script, '-c', config, '--output', out, '--swap-activations', 'gelu', '--bn-eval',
                  '--eval-metric', 'advtop1', '--adv-val-steps', '2', '--adv-val-eps', '8/255',
                  '--adv-val-step-size', '4/255')
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['task'] == 'GradNormTask' and result['gn_weight'] == 1.5  # the YAML's gradreg keys were read
    assert result['scaler']  # the script's GradScaler is shared with the task
    assert result['args']['gradreg'] == 'gradnorm' and result['args']['swap_activations'] == 'gelu'  # saved args
    first, second = result['history']
    assert first['train']['positions'] == [0.0, 0.25, 0.5, 0.75]  # schedule position set before each batch
    assert second['train']['positions'] == [1.0, 1.25, 1.5, 1.75]
    assert not any(first['train']['training'])  # --bn-eval: BatchNorm frozen after the script's model.train()
    for epoch in result['history']:
        assert 0.0 <= epoch['eval']['advtop1'] <= epoch['eval']['top1'] and epoch['chosen'] == epoch['eval']['advtop1']
    assert result['acts'] == ['GELU']  # --swap-activations applied before the task was built


def test_bad_options_are_refused_in_one_line(script, tmp_path):
    config = tmp_path / 'bad.yaml'
    config.write_text(yaml.safe_dump({'gradreg': 'gradnorm', 'gn_weight': 'lots'}))
    run = _launch(script, '-c', config, '--output', tmp_path / 'x.json')
    assert run.returncode == 2 and "config key 'gn_weight'" in run.stderr and 'Traceback' not in run.stderr
    run = _launch(script, '--gradreg', 'gradnorm', '--torchcompile', 'inductor', '--output', tmp_path / 'x.json')
    assert run.returncode == 2 and 'gradreg-launch: error: --torchcompile cannot be used with --gradreg gradnorm' in \
        run.stderr and 'gn-impl fd' in run.stderr
    run = _launch(tmp_path / 'missing.py', '--gradreg', 'pgd')
    assert run.returncode == 2 and "train script '" in run.stderr and 'does not exist' in run.stderr
    not_timm = tmp_path / 'other.py'
    not_timm.write_text('print("hello")\n')
    run = _launch(not_timm, '--gradreg', 'pgd')
    assert run.returncode == 2 and "does not look like timm's train.py" in run.stderr


def test_help_lists_the_gradreg_options():
    run = _launch('--help')
    assert run.returncode == 0 and '--gradreg' in run.stdout and '--gn-weight' in run.stdout


def test_a_packaged_recipe_reaches_train_py_as_its_file(tmp_path, monkeypatch):
    from timm_gradreg.train.launch import split_gradreg_args
    from timm_gradreg.recipes import find_recipe
    monkeypatch.chdir(tmp_path)
    options, rest = split_gradreg_args(['-c', 'demo/digits_gradnorm', '--epochs', '1', '--gn-weight', '0.5'])
    assert options.gradreg == 'gradnorm' and options.gn_eps == pytest.approx(24 / 255)
    assert options.gn_weight == 0.5  # the flag wins over the recipe
    assert rest == ['-c', find_recipe('demo/digits_gradnorm'), '--epochs', '1']
