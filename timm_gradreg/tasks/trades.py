"""TRADES (Zhang et al. 2019): a clean-accuracy term plus a boundary term on the worst nearby point."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..core.budget import check_attack_budget
from ..models.modes import eval_mode, frozen_parameters
from ._registry import PrecisionLimit, register_task
from .base import GradRegTask
from .options import Option, attack_count, attack_radius, number

__all__ = ['TRADESTask']

_GROUP = 'TRADES (--gradreg trades)'
_OPTIONS = [
    Option('--trades-beta', 'beta', number(0), help='β of the boundary term (paper: 6)', metavar='B', group=_GROUP),
    Option('--trades-eps', 'eps', attack_radius, help='L∞ radius in pixels', metavar='EPS', group=_GROUP),
    Option('--trades-step-size', 'step_size', attack_radius,
           help='attack step in pixels (default: the paper\'s 0.007/0.031 of ε)', metavar='STEP', group=_GROUP),
    Option('--trades-steps', 'steps', attack_count, help='attack steps (paper: 10)', metavar='N',
           group=_GROUP),
]


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(p(x) ‖ p(x')) per sample [B], p = softmax: TRADES' boundary term."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction='none').sum(1)


#: TRADES in half precision (measured: benchmarks/compat_matrix.py)
HALF_PRECISION = PrecisionLimit(
    '{option} cannot be used with --gradreg trades: its KL term is driven by the difference of two nearly equal '
    'predictions (the clean image and one within ε of it), which half-precision logits round away (measured in '
    'docs/compatibility.md). Train TRADES in float32 (on GPUs the step keeps TF32 matmuls, which timm turns on).',
    weights=True)


@register_task('trades', options=_OPTIONS, precision_limit=HALF_PRECISION)
class TRADESTask(GradRegTask):
    """CE(f(x), y) + β·mean_b KL(p(x_b) ‖ p(x'_b)), x' maximizing the KL in the L∞ ε-ball.

    x' is found as the authors' code does (yaodongyu/TRADES, trades.py): start at x + 0.001·N(0, 1)
    (not clipped), then ``steps`` signed-gradient ascent steps on the KL to the (fixed) clean prediction,
    projected to the ε-ball and [0, 1], with the model in eval mode. Both terms are trained through (the
    clean logits too); clean and adversarial images go through the model in separate forward passes in
    its own mode, as the reference (one concatenated batch would mix their BatchNorm statistics). The
    reference forwards x a third time for the KL's target: the same values and gradient as the first
    pass, so it is reused (BatchNorm's running statistics move once less).

    Args:
        model, criterion: As for timm's ClassificationTask (the criterion is the clean term).
        beta: β (paper: 6; 1/λ in its notation).
        eps, step_size, steps: Attack radius, step and iterations in pixels (4/255, ε·0.007/0.031, 10).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, beta: float = 6.0, eps: float = 4 / 255,
                 step_size: Optional[float] = None, steps: int = 10, **kwargs):
        super().__init__(model, criterion, **kwargs)
        if beta < 0:
            raise ValueError(f'need beta >= 0, got {beta}')
        check_attack_budget(eps=eps, step_size=step_size, steps=steps)
        self.beta, self.eps, self.steps = float(beta), float(eps), int(steps)
        self.step_size = float(step_size) if step_size is not None else self.eps * 0.007 / 0.031

    def perturb(self, input: torch.Tensor) -> torch.Tensor:
        """x' (normalized space) maximizing KL(p(x) ‖ p(x')) in the pixel ε-ball around x."""
        model, space = self.attack_model(), self.space
        x = space.to_pixel(input.detach())
        with eval_mode(model), frozen_parameters(model):
            with torch.no_grad():
                clean = model(input.detach())
            adv = x + 0.001 * torch.randn_like(x)
            for _ in range(self.steps):
                adv.requires_grad_(True)
                kl = trades_kl(model(space.to_normalized(adv)), clean).sum()
                (grad,) = torch.autograd.grad(kl, adv)
                adv = adv.detach() + self.step_size * grad.sign()
                adv = torch.min(torch.max(adv, x - self.eps), x + self.eps).clamp(0.0, 1.0)
        return space.to_normalized(adv.detach())

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        adv = self.perturb(input)
        output = self.trainable_module(input)
        output_adv = self.trainable_module(adv)
        ce = self.criterion(output, target)
        kl = trades_kl(output_adv, output).mean()
        return {'loss': ce + self.beta * kl, 'output': output, 'ce': ce.detach(), 'penalty': kl.detach(),
                'weight': torch.tensor(self.beta, device=ce.device)}

    def extra_repr(self) -> str:
        return (f'beta={self.beta}, eps={self.eps:.5f}, step_size={self.step_size:.5f}, steps={self.steps}, '
                + super().extra_repr())
