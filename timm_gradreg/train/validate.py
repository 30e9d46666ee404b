"""Validation during training: clean top-1/top-5 and robust top-1 ('advtop1') under PGD."""
import argparse
import logging
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm import utils

from ..core.attacks import pgd_attack
from ..core.budget import AttackBudgetError, check_attack_budget, check_attack_count
from ..core.normalization import PixelSpace
from ..utils._private import evaluation_sample_limit

__all__ = ['RobustValidationConfig', 'RobustAccuracy', 'CleanAccuracy', 'validate', 'robust_accuracy',
           'check_eval_metric', 'EVAL_METRICS']

#: The metrics validation produces, usable as --eval-metric.
EVAL_METRICS = ('top1', 'top5', 'loss', 'advtop1')


def check_eval_metric(metric: str, adv_val_steps: int) -> None:
    """Refuse a metric validation does not produce, and advtop1 without robust validation."""
    if metric not in EVAL_METRICS:
        raise ValueError(f"--eval-metric '{metric}' is not produced here; choose from {', '.join(EVAL_METRICS)}.")
    if metric == 'advtop1' and adv_val_steps <= 0:
        raise ValueError('--eval-metric advtop1 needs robust validation: set --adv-val-steps > 0 (e.g. 10).')

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RobustValidationConfig:
    """PGD used to report ``advtop1`` (default PGD-10, ε 4/255, step 1/255, random start)."""
    steps: int = 10
    eps: float = 4 / 255
    step_size: float = 1 / 255
    max_samples: Optional[int] = None

    def __post_init__(self):
        if self.steps < 0:
            raise AttackBudgetError(f'robust validation steps {self.steps}: give a whole number >= 1, or 0 to turn '
                                    'robust validation off')
        if self.steps:
            check_attack_budget(eps=self.eps, step_size=self.step_size)
        if self.max_samples is not None:
            check_attack_count(self.max_samples, 'attacked samples')

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'RobustValidationConfig':
        return cls(args.adv_val_steps, args.adv_val_eps, args.adv_val_step_size, args.adv_val_samples)


class RobustAccuracy:
    """Accumulates top-1 under an L∞ PGD attack made in pixel space, with the model in eval mode.

    Counts stay on the device (no per-batch sync); ``max_samples`` bounds the attacked
    samples per process (and drops distributed-sampler padding).
    """

    def __init__(self, config: RobustValidationConfig, space: PixelSpace, device: torch.device,
                 max_samples: Optional[int] = None):
        self.config, self.space, self.device = config, space, device
        limits = [v for v in (max_samples, config.max_samples) if v is not None]
        self.limit = min(limits) if limits else None
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)  # attacked, still correct
        self.seen = 0

    def update(self, model: nn.Module, input: torch.Tensor, target: torch.Tensor,
               amp_autocast: Callable = suppress) -> None:
        count = input.shape[0] if self.limit is None else max(0, min(input.shape[0], self.limit - self.seen))
        if not count or not self.config.enabled:
            return
        x, y = input[:count], target[:count]
        with amp_autocast():
            adv = pgd_attack(model, x, y, eps=self.config.eps, step_size=self.config.step_size,
                             steps=self.config.steps, space=self.space, random_start=True)
            with torch.no_grad():
                correct = (model(adv).argmax(-1) == y).sum()
        self.seen += count
        self.counts[0] += count
        self.counts[1] += correct

    def summary(self) -> float:
        return 100.0 * self.counts[1].item() / max(self.counts[0].item(), 1)

    def compute(self, distributed: bool = False) -> float:
        counts = self.counts.clone()
        if distributed:
            dist.all_reduce(counts)
        return 100.0 * counts[1].item() / max(counts[0].item(), 1)


class CleanAccuracy:
    """Accumulates loss, top-1 and top-5 on the device (no per-batch sync), over at most ``max_samples``
    samples per process (the distributed sampler's padding is dropped)."""

    def __init__(self, device: torch.device, max_samples: Optional[int] = None):
        self.limit = max_samples
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.counts = torch.zeros(3, dtype=torch.int64, device=device)  # samples, top-1, top-5 correct
        self.seen = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        count = output.shape[0] if self.limit is None else max(0, min(output.shape[0], self.limit - self.seen))
        if not count:
            return
        output, target = output[:count].float(), target[:count]
        self.loss_sum += F.cross_entropy(output, target, reduction='sum').double()
        top = output.topk(min(5, output.shape[-1]), dim=-1).indices == target[:, None]
        self.counts += torch.stack([torch.tensor(count, device=top.device), top[:, 0].sum(), top.any(-1).sum()])
        self.seen += count

    def _metrics(self, loss_sum: torch.Tensor, counts: torch.Tensor) -> 'OrderedDict[str, float]':
        n = max(counts[0].item(), 1)
        return OrderedDict(loss=loss_sum.item() / n, top1=100.0 * counts[1].item() / n, top5=100.0 * counts[2].item() / n)

    def summary(self) -> 'OrderedDict[str, float]':
        return self._metrics(self.loss_sum, self.counts)

    def compute(self, distributed: bool = False) -> 'OrderedDict[str, float]':
        loss_sum, counts = self.loss_sum.clone(), self.counts.clone()
        if distributed:
            dist.all_reduce(loss_sum)
            dist.all_reduce(counts)
        return self._metrics(loss_sum, counts)


def validate(
        model: nn.Module,
        loader,
        *,
        space: PixelSpace,
        robust: RobustValidationConfig = RobustValidationConfig(),
        device: torch.device = torch.device('cpu'),
        amp_autocast: Callable = suppress,
        distributed: bool = False,
        channels_last: bool = False,
        log_interval: int = 50,
        log_suffix: str = '',
        input_dtype: Optional[torch.dtype] = None,
        verbose: bool = True,
) -> 'OrderedDict[str, float]':
    """Clean loss/top1/top5 and, if enabled, ``advtop1``, in one pass.

    Runs under ``no_grad`` with gradients re-enabled for the attack only (never
    inference_mode, whose tensors cannot be attacked).
    """
    sample_limit = evaluation_sample_limit(loader)
    evaluator = CleanAccuracy(device, max_samples=sample_limit)
    adv = RobustAccuracy(robust, space, device, max_samples=sample_limit) if robust.enabled else None
    model.eval()
    batch_time = utils.AverageMeter()
    end = time.time()
    last_idx = len(loader) - 1
    for batch_idx, (input, target) in enumerate(loader):
        input, target = input.to(device=device, dtype=input_dtype), target.to(device)
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), amp_autocast():
            output = model(input)
        evaluator.update(output, target)
        if adv is not None:
            adv.update(model, input, target, amp_autocast)
        batch_time.update(time.time() - end)
        end = time.time()
        if verbose and (batch_idx == last_idx or batch_idx % log_interval == 0):
            text = '  '.join(f'{k}: {v:.4f}' for k, v in evaluator.summary().items())
            if adv is not None:
                text += f'  advtop1: {adv.summary():.4f}'
            _logger.info(f'Test{log_suffix}: [{batch_idx:>4d}/{last_idx}]  Time: {batch_time.val:.3f} '
                         f'({batch_time.avg:.3f})  {text}')
    metrics = evaluator.compute(distributed=distributed)
    if adv is not None:
        metrics['advtop1'] = adv.compute(distributed)
    if verbose:
        _logger.info(f'Test{log_suffix}: ' + '  '.join(f'{k}: {v:.4f}' for k, v in metrics.items()))
    return metrics


def robust_accuracy(model: nn.Module, loader, data_config: dict, args: argparse.Namespace, *,
                    device: torch.device, amp_autocast: Callable = suppress) -> Dict[str, float]:
    """``{'advtop1': ...}`` from the gradreg args, for loops that validate under inference_mode (timm's train.py)."""
    config = RobustValidationConfig.from_args(args)
    meter = RobustAccuracy(config, PixelSpace.from_data_config(data_config), device,
                           max_samples=evaluation_sample_limit(loader))
    model.eval()
    for input, target in loader:
        meter.update(model, input.to(device), target.to(device), amp_autocast)
    value = meter.compute(getattr(args, 'distributed', False))
    if getattr(args, 'rank', 0) == 0:
        _logger.info(f'Robust top-1 under PGD-{config.steps} (eps {config.eps:.4f}): {value:.4f}')
    return {'advtop1': value}
