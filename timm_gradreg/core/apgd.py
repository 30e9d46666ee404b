"""APGD as a training attack (Croce & Hein 2020's step-size rule, L∞), the attack of Singh et al. (NeurIPS 2023),
who train ImageNet models on 2 of its iterations.

The step starts at 2ε and is halved, per sample, at checkpoints where the loss oscillated or stopped improving;
each step mixes the new signed step with the previous one (momentum 0.75 after the first); the iterate of highest
loss so far (the start included) is returned. No random start. The model is in eval mode with its parameters
frozen, as in ``pgd_attack``.
"""
from typing import Optional, Union

import torch
import torch.nn as nn

from ..models.modes import eval_mode, frozen_parameters
from .attacks import AttackLoss, get_attack_loss
from .normalization import PixelSpace

__all__ = ['apgd_attack', 'APGD_INITIAL_STEP']

#: The first step, in units of ε.
APGD_INITIAL_STEP = 2.0
_MOMENTUM = 0.75
_OSCILLATION_FRACTION = 0.75


def _checkpoint_schedule(steps: int):
    """(first interval, minimum interval, decrement) between step-size checks, from the iteration budget."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def _oscillated(history: torch.Tensor, step: int, interval: int) -> torch.Tensor:
    """Per sample: the loss rose in at most 75% of the last ``interval`` steps (rows not yet run count as 0)."""
    rises = torch.zeros_like(history[0])
    for back in range(interval):
        rises += (history[step - back] > history[step - back - 1]).to(rises.dtype)
    return rises <= interval * _OSCILLATION_FRACTION


@torch.enable_grad()
def apgd_attack(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, *, eps: float, steps: int,
                space: Optional[PixelSpace] = None, loss: Union[str, AttackLoss] = 'ce',
                step_scale: float = 1.0) -> torch.Tensor:
    """L∞ APGD with ``steps`` iterations from the clean point; returns each sample's highest-loss iterate in the
    space of ``inputs``. ``step_scale`` scales the initial step (a warm-up of the attack).

    ``steps`` + 1 forward passes and ``steps`` input gradients (the last iterate is only scored).
    """
    if eps < 0 or steps < 0 or step_scale < 0:
        raise ValueError(f'eps, steps and step_scale must be >= 0, got {eps}, {steps}, {step_scale}')
    space = space or PixelSpace(0.0, 1.0)
    loss_fn = get_attack_loss(loss)
    x = space.to_pixel(inputs.detach()).clamp(0.0, 1.0)
    if eps == 0 or steps == 0:
        return space.to_normalized(x)
    shape = (-1,) + (1,) * (x.ndim - 1)

    def project(point: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(point, x - eps), x + eps).clamp(0.0, 1.0)

    interval, min_interval, decrement = _checkpoint_schedule(steps)
    step_size = torch.full((x.shape[0],), APGD_INITIAL_STEP * eps * step_scale, dtype=x.dtype, device=x.device)
    with eval_mode(model), frozen_parameters(model):
        adv = x.clone().requires_grad_(True)
        values = loss_fn(model(space.to_normalized(adv)), target)
        (grad,) = torch.autograd.grad(values.sum(), adv)
        adv, values = adv.detach(), values.detach()
        best, best_grad, best_value = adv.clone(), grad.clone(), values.clone()
        value_at_check, reduced_at_check = best_value.clone(), torch.ones_like(best_value)
        history = torch.zeros(steps, x.shape[0], dtype=values.dtype, device=x.device)
        previous, since_check = adv.clone(), 0
        for i in range(steps):
            momentum = adv - previous
            previous = adv.clone()
            a = _MOMENTUM if i > 0 else 1.0
            stepped = project(adv + step_size.view(shape) * grad.sign())
            adv = project(adv + (stepped - adv) * a + momentum * (1 - a))
            scoring_only = i == steps - 1  # the last iterate is scored, not differentiated
            adv.requires_grad_(not scoring_only)
            with torch.set_grad_enabled(not scoring_only):
                values = loss_fn(model(space.to_normalized(adv)), target)
            if not scoring_only:
                (grad,) = torch.autograd.grad(values.sum(), adv)
            adv, values = adv.detach(), values.detach()
            history[i] = values
            improved = values > best_value  # masks by torch.where, not indexing: no data-dependent shapes
            rows = improved.view(shape)
            best, best_grad = torch.where(rows, adv, best), torch.where(rows, grad, best_grad)
            best_value = torch.where(improved, values, best_value)
            since_check += 1
            if since_check == interval:
                stalled = (1 - reduced_at_check) * (value_at_check >= best_value).to(values.dtype)
                halve = torch.max(_oscillated(history, i, interval).to(values.dtype), stalled)
                reduced_at_check, value_at_check = halve.clone(), best_value.clone()
                halve = halve > 0
                step_size = torch.where(halve, step_size / 2.0, step_size)
                adv = torch.where(halve.view(shape), best, adv)
                grad = torch.where(halve.view(shape), best_grad, grad)
                since_check, interval = 0, max(interval - decrement, min_interval)
    return space.to_normalized(best).detach()
