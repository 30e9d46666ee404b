"""Preemption, bad numbers and bad checkpoints: real signals to a training process, non-finite steps, --resume of
files that cannot be resumed."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from timm_gradreg.tasks import NaturalTask, register_task
from timm_gradreg.tasks._registry import _TASKS
from timm_gradreg.train import Trainer, TrainingError, parse_args

from helpers import tiny_train_argv, write_image_folder

COMMON = ['--epochs', '3', '--gradreg', 'pgd', '--attack-eps', '8/255', '--attack-steps', '2', '--attack-step-size',
          '4/255', '--attack-warmup-epochs', '0', '--model-ema', '--model-ema-decay', '0.9', '-b', '2',
          '--adv-val-steps', '0', '--eval-metric', 'top1', '--sched-on-updates']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('data'), train_per_class=5)


def _timm_train(argv, **kwargs):
    return subprocess.Popen([sys.executable, '-m', 'timm_gradreg.cli.train', *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _stop_during_epoch_1(proc, signum):
    """Send ``signum`` once epoch 1 has logged a few steps; returns the whole output."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('Train: 1 [   3/'):
            proc.send_signal(signum)
            break
    lines += proc.stdout.readlines()
    proc.wait(timeout=120)
    return ''.join(lines)


@pytest.mark.parametrize('signum,exit_code', [(signal.SIGTERM, 75), (signal.SIGUSR1, 75)])
def test_signal_saves_a_recovery_checkpoint_and_resume_reproduces_the_run(folder, tmp_path, signum, exit_code):
    full = _timm_train(tiny_train_argv(folder, tmp_path, 'full', *COMMON))
    assert full.wait(timeout=300) == 0, full.stdout.read()[-2000:]

    proc = _timm_train(tiny_train_argv(folder, tmp_path, 'split', *COMMON))
    out = _stop_during_epoch_1(proc, signum)
    assert proc.returncode == exit_code, out[-2000:]
    assert 'Traceback' not in out
    name = signal.Signals(signum).name
    message = next(line for line in out.splitlines() if f'stopped by {name}' in line)
    assert 'after epoch 1, step ' in message and '--resume ' in message
    path = message.rsplit('--resume ', 1)[1].strip()
    assert os.path.basename(path).startswith('recovery-1-') and os.path.isfile(path)

    resumed = _timm_train(tiny_train_argv(folder, tmp_path, 'split', *COMMON, '--resume', path))
    resumed_out = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 0, resumed_out[-2000:]
    assert not os.path.exists(path), 'the recovery checkpoint stays after the resumed run is past it'
    assert f"Removed the recovery checkpoint '{path}'" in resumed_out
    a = torch.load(tmp_path / 'full' / 'last.pth.tar', weights_only=False)
    b = torch.load(tmp_path / 'split' / 'last.pth.tar', weights_only=False)
    assert a['epoch'] == b['epoch'] == 2
    for key in ('state_dict', 'state_dict_ema'):
        for name_, value in a[key].items():
            torch.testing.assert_close(b[key][name_], value, rtol=1e-5, atol=1e-6, msg=f'{key}.{name_}')


def test_ctrl_c_stops_at_a_step_boundary_without_a_traceback(folder, tmp_path):
    proc = _timm_train(tiny_train_argv(folder, tmp_path, 'ctrlc', *COMMON))
    out = _stop_during_epoch_1(proc, signal.SIGINT)
    assert proc.returncode == 130 and 'Traceback' not in out and 'KeyboardInterrupt' not in out
    assert 'stopped by SIGINT after epoch 1' in out and '--resume ' in out


@pytest.fixture
def nan_task():
    """A registered task whose loss is NaN, or whose gradient is NaN, at chosen global steps."""
    class NaNTask(NaturalTask):
        bad_steps, mode, step = set(), 'loss', 0

        def compute(self, input, target):
            out = super().compute(input, target)
            bad = NaNTask.step in NaNTask.bad_steps
            NaNTask.step += 1
            if bad and NaNTask.mode == 'loss':
                out['loss'] = out['loss'] * float('nan')
            elif bad:  # a finite loss with a NaN gradient: 0 · d/dθ sqrt(0) = 0 · inf
                weight = next(self.trainable_module.parameters())
                out['loss'] = out['loss'] + 0.0 * torch.sqrt(weight.sum() * 0.0)
            return out

    register_task('nan_test')(NaNTask)
    yield NaNTask
    _TASKS.unregister('nan_test')


@pytest.mark.parametrize('mode', ['loss', 'gradient'])
def test_non_finite_steps_are_skipped_and_counted(folder, tmp_path, nan_task, mode):
    nan_task.bad_steps, nan_task.mode, nan_task.step = {2, 5}, mode, 0
    args, text = parse_args(tiny_train_argv(folder, tmp_path, f'nan-{mode}', '--epochs', '1', '--gradreg', 'nan_test',
                                            '-b', '2', '--adv-val-steps', '0', '--eval-metric', 'top1'))
    trainer = Trainer(args, text)
    results = trainer.fit()
    assert results[0]['train']['skipped_steps'] == 2.0
    checkpoint = torch.load(tmp_path / f'nan-{mode}' / 'last.pth.tar', weights_only=False)
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values() if v.is_floating_point())


def test_consecutive_non_finite_steps_stop_the_run_naming_where(folder, tmp_path, nan_task):
    nan_task.bad_steps, nan_task.mode, nan_task.step = set(range(100)), 'loss', 0
    args, text = parse_args(tiny_train_argv(folder, tmp_path, 'nan-stop', '--epochs', '1', '--gradreg', 'nan_test',
                                            '-b', '2', '--adv-val-steps', '0', '--max-skipped-steps', '3'))
    trainer = Trainer(args, text).setup()
    before = {k: v.clone() for k, v in trainer.task.get_trainable_module().state_dict().items()}
    with pytest.raises(TrainingError, match=r'training stopped at epoch 0, step 2: 3 consecutive updates had a '
                                            r'non-finite loss or gradient .*last: loss nan, ce '):
        trainer.fit()
    for key, value in trainer.task.get_trainable_module().state_dict().items():
        assert torch.equal(value, before[key]), key  # never updated


def test_resume_of_a_truncated_or_foreign_file_names_it_and_the_newest_valid_one(folder, tmp_path, capsys):
    from timm_gradreg.cli.train import main
    argv = tiny_train_argv(folder, tmp_path, 'ok', '--epochs', '1', '--adv-val-steps', '0', '--eval-metric', 'top1')
    assert main(argv) == 0
    good = tmp_path / 'ok' / 'last.pth.tar'
    truncated = tmp_path / 'ok' / 'broken.pth.tar'
    truncated.write_bytes(good.read_bytes()[:5000])
    os.utime(truncated, None)
    assert main(argv + ['--resume', str(truncated)]) == 2
    err = capsys.readouterr().err
    assert f"--resume '{truncated}': it is not a readable torch checkpoint" in err
    assert "the newest valid checkpoint there is '" in err and 'Traceback' not in err
    foreign = tmp_path / 'weights.pth'
    torch.save({'conv.weight': torch.zeros(2)}, foreign)
    assert main(argv + ['--resume', str(foreign)]) == 2
    assert 'it is not a training checkpoint' in capsys.readouterr().err


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB file system (tmpfs), where the system lets this process mount one."""
    mount = tmp_path / 'disk'
    mount.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(mount)], capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here (needs root); the disk-full row of test_errors covers the message')
    yield mount
    subprocess.run(['umount', str(mount)], check=False)


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(folder, small_disk):
    first = _timm_train(tiny_train_argv(folder, small_disk, 'run', '--epochs', '2', '--stop-epoch', '1', '-b', '4'))
    assert first.wait(timeout=300) == 0, first.stdout.read()[-2000:]
    last = small_disk / 'run' / 'last.pth.tar'
    saved = last.read_bytes()
    filler = small_disk / 'filler'
    with open(filler, 'wb') as f:  # leave less room than one more checkpoint needs
        f.write(b'\0' * max(0, os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - len(saved) // 2))
    resumed = _timm_train(tiny_train_argv(folder, small_disk, 'run', '--epochs', '2', '-b', '4', '--resume', str(last)))
    out = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 1, out[-2000:]
    assert 'Traceback' not in out
    error = [line for line in out.splitlines() if 'error' in line.lower()]
    assert len(error) == 1 and 'could not save the checkpoint of epoch 1' in error[0], out[-2000:]
    assert 'No space left on device' in error[0] and 'last.pth.tar' in error[0]
    assert last.read_bytes() == saved  # the last checkpoint is the one of epoch 0, whole
    assert not [p for p in os.listdir(small_disk / 'run') if p.endswith('.tmp') or p.startswith('tmp')]
