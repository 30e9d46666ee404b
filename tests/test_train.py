"""timm-train end to end: summaries, resume, atomic checkpoints, AMP, distributed, recipes, demo data."""
import csv
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from timm_gradreg.models.checkpoint import AtomicCheckpointSaver
from timm_gradreg.cli.train import main as train_main
from timm_gradreg.data import prepare_demo_dataset
from timm_gradreg.recipes import RECIPE_DIR
from timm_gradreg.train import Trainer, parse_args

from helpers import training_recipes, tiny_train_argv, write_image_folder

RECIPES = training_recipes()


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('data'))


def _train(argv):
    args, text = parse_args(argv)
    trainer = Trainer(args, text)
    return trainer, trainer.fit()


def _summary(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_gradnorm_run_writes_components_and_robust_metrics(folder, tmp_path):
    trainer, results = _train(tiny_train_argv(folder, tmp_path, 'gn', '--epochs', '2', '--gradreg', 'gradnorm',
                                              '--gn-warmup-epochs', '2', '--eval-metric', 'advtop1'))
    exp = tmp_path / 'gn'
    rows = _summary(exp / 'summary.csv')
    assert [int(r['epoch']) for r in rows] == [0, 1]
    for key in ('train_loss', 'train_ce', 'train_penalty', 'train_weight', 'eval_top1', 'eval_top5',
                'eval_advtop1'):
        assert key in rows[0], key
    w0, w1 = float(rows[0]['train_weight']), float(rows[1]['train_weight'])
    assert 0 < w0 < 0.5 < w1 < 1.2  # λ_GN 1.2 warmed up per iteration over 2 epochs
    assert float(rows[0]['train_penalty']) > 0
    assert all(float(r['eval_advtop1']) <= float(r['eval_top1']) for r in rows)
    saved = yaml.safe_load((exp / 'args.yaml').read_text())
    assert saved['gradreg'] == 'gradnorm' and saved['gn_weight'] == 1.2
    ckpt = torch.load(exp / 'last.pth.tar', weights_only=False)
    assert ckpt['epoch'] == 1 and ckpt['task_state']['task'] == 'gradnorm'
    assert 1.0 < ckpt['task_state']['epoch'] < 2.0
    assert ckpt['metric'] == pytest.approx(results[-1]['validation']['advtop1'])


def test_resume_after_stop_matches_uninterrupted_run(folder, tmp_path):
    common = ['--epochs', '3', '--gradreg', 'gradnorm', '--gn-warmup-epochs', '2', '--model-ema',
              '--model-ema-decay', '0.9', '--sched', 'cosine']
    _train(tiny_train_argv(folder, tmp_path, 'full', *common))
    _train(tiny_train_argv(folder, tmp_path, 'split', *common, '--stop-epoch', '1'))
    assert torch.load(tmp_path / 'split' / 'last.pth.tar', weights_only=False)['epoch'] == 0
    _train(tiny_train_argv(folder, tmp_path, 'split', *common, '--resume', str(tmp_path / 'split' / 'last.pth.tar')))
    full = torch.load(tmp_path / 'full' / 'last.pth.tar', weights_only=False)
    split = torch.load(tmp_path / 'split' / 'last.pth.tar', weights_only=False)
    assert split['epoch'] == 2
    for key in ('state_dict', 'state_dict_ema'):
        for name, value in full[key].items():
            torch.testing.assert_close(split[key][name], value, rtol=1e-5, atol=1e-6, msg=f'{key}.{name}')
    assert [int(r['epoch']) for r in _summary(tmp_path / 'split' / 'summary.csv')] == [0, 1, 2]
    assert split['task_state']['epoch'] == pytest.approx(full['task_state']['epoch'])


def test_checkpoint_saver_never_leaves_a_truncated_last(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = AtomicCheckpointSaver(model=model, optimizer=opt, checkpoint_dir=str(tmp_path), max_history=2)
    saver.save_checkpoint(0, metric=1.0)
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        with open(f, 'wb') if isinstance(f, str) else f as handle:
            handle.write(b'PK\x03\x04 half a checkpoint')
        raise KeyboardInterrupt('killed while saving')

    monkeypatch.setattr(torch, 'save', crash_midway)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1, metric=2.0)
    monkeypatch.setattr(torch, 'save', real_save)
    assert torch.load(tmp_path / 'last.pth.tar', weights_only=False)['epoch'] == 0


_KILL_SCRIPT = '''
import sys, torch
from timm_gradreg.models.checkpoint import atomic_save
big = {"w": torch.randn(4_000_000)}
i = 0
while True:
    big["epoch"] = i
    atomic_save(big, sys.argv[1])
    i += 1
    print(i, flush=True)
'''


def test_killed_writer_leaves_a_loadable_file(tmp_path):
    path = str(tmp_path / 'last.pth.tar')
    for delay in (0.9, 1.3, 1.7):
        proc = subprocess.Popen([sys.executable, '-c', _KILL_SCRIPT, path], stdout=subprocess.PIPE)
        proc.stdout.readline()  # at least one complete save
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert torch.load(path, weights_only=False)['w'].numel() == 4_000_000
    assert not [f for f in os.listdir(tmp_path) if f != 'last.pth.tar' and not f.endswith('.tmp')]


@pytest.mark.parametrize('gradreg,dtype', [('gradnorm', 'bfloat16'), ('gradnorm', 'float16'),
                                           ('edge', 'bfloat16'), ('edge', 'float16')])
def test_amp_training(folder, tmp_path, gradreg, dtype):
    warmup = ['--gn-warmup-epochs', '0'] if gradreg == 'gradnorm' else []
    trainer, results = _train(tiny_train_argv(folder, tmp_path, f'{gradreg}-{dtype}', '--epochs', '1', '--gradreg',
                                              gradreg, *warmup, '--amp', '--amp-dtype', dtype))
    train = results[-1]['train']
    assert all(torch.isfinite(torch.tensor(v)) for v in train.values())
    assert train['penalty'] > 0
    assert (trainer.loss_scaler is not None) == (dtype == 'float16')
    if dtype == 'float16':
        assert trainer.task.grad_scaler is trainer.loss_scaler


def test_swap_recorded_in_initial_checkpoint_is_reapplied(folder, tmp_path):
    from timm_gradreg.cli.swap_activations import main as swap_main
    ckpt = tmp_path / 'swapped.pth.tar'
    assert swap_main(['test_resnet', 'silu', '--num-classes', '4', '--output', str(ckpt)]) == 0
    argv = tiny_train_argv(folder, tmp_path, 'ft', '--epochs', '1', '--initial-checkpoint', str(ckpt))
    argv[argv.index('--model-kwargs') + 1] = 'act_layer=relu'
    trainer, _ = _train(argv)
    acts = {type(m).__name__ for m in trainer.task.get_trainable_module().modules()}
    assert 'SiLU' in acts and 'ReLU' not in acts
    assert yaml.safe_load((tmp_path / 'ft' / 'args.yaml').read_text())['gradreg'] == 'natural'
    assert torch.load(tmp_path / 'ft' / 'last.pth.tar', weights_only=False)['args'].swap_activations == 'silu'


def test_cli_reports_setup_errors(tmp_path, capsys):
    assert train_main(['--data-dir', str(tmp_path / 'missing'), '--device', 'cpu']) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert train_main(['--device', 'cpu']) == 2
    assert 'give --data-dir' in capsys.readouterr().err


def test_demo_dataset_is_built_once(tmp_path):
    root = prepare_demo_dataset('demo/digits', str(tmp_path / 'digits'))
    train = glob.glob(os.path.join(root, 'train', '*', '*.png'))
    val = glob.glob(os.path.join(root, 'validation', '*', '*.png'))
    assert len(train) + len(val) == 1797 and len(val) == 359
    mtime = os.path.getmtime(train[0])
    assert prepare_demo_dataset('demo/digits', root) == root and os.path.getmtime(train[0]) == mtime
    with pytest.raises(ValueError, match='demo/digits'):
        prepare_demo_dataset('demo/mnist')


@pytest.mark.parametrize('recipe', RECIPES, ids=[os.path.relpath(r, RECIPE_DIR) for r in RECIPES])
def test_every_recipe_runs_two_steps_with_a_tiny_model(tmp_path_factory, recipe):
    data = write_image_folder(tmp_path_factory.mktemp('two'), classes=2, train_per_class=4, val_per_class=2)
    out = tmp_path_factory.mktemp('out')
    argv = ['-c', recipe, '--dataset', '', '--data-dir', data, '--val-split', 'validation', '--model', 'test_resnet',
            '--num-classes', '2', '--input-size', '3', '32', '32', '-b', '4', '--stop-epoch', '1', '--workers', '0',
            '--output', str(out), '--experiment', 'r', '--initial-checkpoint', '', '--no-pretrained', '--device',
            'cpu', '--grad-accum-steps', '1', '--adv-val-samples', '2', '--adv-val-steps', '1', '--log-interval', '1']
    trainer, results = _train(argv)
    assert trainer.updates_per_epoch == 2
    assert torch.isfinite(torch.tensor(results[-1]['train']['loss']))
    assert (out / 'r' / 'last.pth.tar').exists()


def test_distributed_two_processes_match_one_process(tmp_path):
    data = write_image_folder(tmp_path / 'data', classes=4, train_per_class=2, val_per_class=1)
    common = ['--epochs', '3', '--gradreg', 'gradnorm', '--gn-warmup-epochs', '0', '--val-split', '',
              '--gn-weight', '2.0']
    single = tiny_train_argv(data, tmp_path, 'single', *common)
    single[single.index('-b') + 1] = '8'
    _train(single)
    dist = tiny_train_argv(data, tmp_path, 'ddp', *common)
    dist[dist.index('-b') + 1] = '4'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          '-m', 'timm_gradreg.cli.train', *dist], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'distributed mode' in run.stderr
    a = torch.load(tmp_path / 'single' / 'last.pth.tar', weights_only=False)['state_dict']
    b = torch.load(tmp_path / 'ddp' / 'last.pth.tar', weights_only=False)['state_dict']
    moved = 0
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-6, msg=name)
        moved += 1
    assert moved > 10


def test_log_wandb_offline_records_the_run(folder, tmp_path, monkeypatch):
    """--log-wandb through timm's update_summary, with wandb in offline mode (no network)."""
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    _train(tiny_train_argv(folder, tmp_path, 'wb', '--epochs', '2', '--log-wandb', '--wandb-project', 'gradreg-test',
                           '--wandb-tags', 'ci'))
    import wandb
    wandb.finish()
    runs = glob.glob(str(tmp_path / 'wandb' / 'offline-run-*'))
    assert len(runs) == 1
    (log,) = glob.glob(os.path.join(runs[0], 'run-*.wandb'))  # the run's records, metric names in plain bytes
    names = (b'eval_top1', b'train_loss', b'gradreg-test')
    deadline = time.monotonic() + 60  # wandb's service process writes the file: wait for it to catch up
    while not all(n in open(log, 'rb').read() for n in names) and time.monotonic() < deadline:
        time.sleep(0.5)
    records = open(log, 'rb').read()
    assert all(n in records for n in names), records[:200]
