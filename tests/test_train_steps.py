"""The training step as a unit: gradient accumulation, frozen BatchNorm, robust validation, EMA evaluation."""
import argparse
import copy

import pytest
import torch
import torch.nn as nn

from timm_gradreg.models.loading import load_eval_model
from timm_gradreg.core.normalization import PixelSpace
from timm_gradreg.train import Trainer, parse_args, robust_accuracy
from timm_gradreg.train.validate import RobustValidationConfig, validate

from helpers import tiny_train_argv, write_image_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('data'))


def _trainer(folder, tmp_path, name, *extra):
    args, text = parse_args(tiny_train_argv(folder, tmp_path, name, '--epochs', '1', '--opt', 'momentum', '--momentum', '0',
                                            '--lr', '0.05', '--sched', 'step', '--decay-epochs', '100',
                                            '--weight-decay', '0', *extra))
    return Trainer(args, text).setup()


def _batches(trainer, sizes):
    """The same 12 samples cut into batches of the given sizes (one fixed, unshuffled order)."""
    x, y = [], []
    for input, target in trainer.loader_eval:
        x.append(input)
        y.append(target)
    x, y = torch.cat(x)[:sum(sizes)], torch.cat(y)[:sum(sizes)]
    out, start = [], 0
    for size in sizes:
        out.append((x[start:start + size], y[start:start + size]))
        start += size
    return out


@pytest.mark.parametrize('gradreg', ['natural', 'gradnorm'])
def test_accumulation_with_a_short_tail_equals_steps_on_the_merged_batches(folder, tmp_path, gradreg):
    """Accumulating 2 batches of 4 equals one step on their 8 samples, and the tail batch (1 of 2 in its
    group) is weighted as a step of its own: 3 batches with accumulation 2 = 2 batches of 8 and 4."""
    options = ['--gradreg', gradreg] + (['--gn-warmup-epochs', '0'] if gradreg == 'gradnorm' else [])
    accumulated = _trainer(folder, tmp_path, f'{gradreg}-accum', *options, '--grad-accum-steps', '2')
    merged = _trainer(folder, tmp_path, f'{gradreg}-merged', *options)
    merged.task.get_trainable_module().load_state_dict(accumulated.task.get_trainable_module().state_dict())
    start = copy.deepcopy(accumulated.task.get_trainable_module().state_dict())

    accumulated.loader_train = _batches(accumulated, [4, 4, 4])
    accumulated.updates_per_epoch = 2
    merged.loader_train = _batches(merged, [8, 4])
    merged.updates_per_epoch = 2
    accumulated.train_one_epoch(0)
    merged.train_one_epoch(0)
    a = accumulated.task.get_trainable_module().state_dict()
    m = merged.task.get_trainable_module().state_dict()
    moved = 0
    for name, value in m.items():
        torch.testing.assert_close(a[name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(value, start[name]))
    assert moved > 0  # the steps did change the weights


def test_bn_eval_freezes_running_statistics_and_train_mode_updates_them(folder, tmp_path):
    for bn_eval, changes in (('--bn-eval', False), ('--no-bn-eval', True)):
        trainer = _trainer(folder, tmp_path, f'bn{bn_eval}', bn_eval)
        bns = [m for m in trainer.task.get_trainable_module().modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns
        before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.item()) for m in bns]
        trainer.train_one_epoch(0)
        for m, (mean, var, tracked) in zip(bns, before):
            assert torch.equal(m.running_mean, mean) != changes
            assert torch.equal(m.running_var, var) != changes
            assert (m.num_batches_tracked.item() == tracked) != changes


class _SumClassifier(nn.Module):
    """Two classes decided by the sum of the [0, 1] pixels of a 1×2×2 image: class 1 iff Σ pixels > 2."""

    def __init__(self, space: PixelSpace):
        super().__init__()
        self.space = space

    def forward(self, x):
        pixel_sum = self.space.to_pixel(x).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(pixel_sum), 10.0 * (pixel_sum - 2.0)], dim=1)


def test_robust_accuracy_counts_the_samples_pgd_cannot_flip():
    """An L∞ step of ε moves the pixel sum of a 2×2 image by at most 4ε: a sample whose margin to the
    decision boundary exceeds 4ε is robust, the others are flipped by PGD. Counted by hand: 3 of 5."""
    space = PixelSpace((0.5,), (0.5,))
    eps = 4 / 255
    margins = torch.tensor([0.3, 5 * eps, 2 * eps, 3 * eps, 0.2])  # robust: > 4ε
    labels = torch.tensor([1, 1, 1, 0, 0])
    pixel_sums = torch.where(labels == 1, 2.0 + margins, 2.0 - margins)
    pixels = (pixel_sums / 4).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    loader = [(space.to_normalized(pixels[:3]), labels[:3]), (space.to_normalized(pixels[3:]), labels[3:])]
    args = argparse.Namespace(adv_val_steps=10, adv_val_eps=eps, adv_val_step_size=1 / 255, adv_val_samples=None,
                              distributed=False, rank=0, world_size=1)
    data_config = {'mean': (0.5,), 'std': (0.5,)}
    result = robust_accuracy(_SumClassifier(space), loader, data_config, args, device=torch.device('cpu'))
    assert result == {'advtop1': pytest.approx(100 * 3 / 5)}
    clean = validate(_SumClassifier(space), loader, space=space, robust=RobustValidationConfig(0), verbose=False)
    assert clean['top1'] == pytest.approx(100.0)


def test_use_ema_evaluates_the_ema_weights(folder, tmp_path):
    trainer = _trainer(folder, tmp_path, 'ema', '--model-ema', '--model-ema-decay', '0.5', '--epochs', '2')
    trainer.fit()
    path = str(tmp_path / 'ema' / 'last.pth.tar')
    checkpoint = torch.load(path, weights_only=False)
    plain, _ = load_eval_model(path)
    ema, _ = load_eval_model(path, use_ema=True)
    differs = 0
    for name, value in checkpoint['state_dict_ema'].items():
        torch.testing.assert_close(ema.state_dict()[name], value)
        torch.testing.assert_close(plain.state_dict()[name], checkpoint['state_dict'][name])
        differs += int(not torch.equal(value, checkpoint['state_dict'][name]))
    assert differs > 0  # the EMA is a different set of weights
