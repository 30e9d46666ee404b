"""Edge-regularization training task (paper Eq. 3-4)."""
from typing import Dict, Union

import torch

from ..double_backward import double_backward_safe
from ..edges import COSINE_MODES, GradientTeacher, cosine_alignment_loss, create_gradient_teacher, list_gradient_teachers
from ..input_grad import at_least_fp32, input_gradient
from ..schedules import LinearGrowth
from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['EdgeTask']

_OPTIONS = [
    Option('--edge-teacher', 'teacher', choices=list_gradient_teachers,
           help='target map: the official Sobel edge pipeline, the literal Gaussian-derivative energy, or any '
                'registered teacher (default: sobel)'),
    Option('--edge-sigma', 'teacher_sigma', number(0, low_open=True),
           help='Gaussian σ of the edge filters in pixels (default: 1)', metavar='SIGMA'),
    Option('--edge-temperature', 'temperature', number(0, low_open=True),
           help='softmax temperature for sampling the target class (default: 0.5)', metavar='T'),
    Option('--edge-cosine', 'cosine', choices=COSINE_MODES,
           help='cosine loss: official batch-RMS MSE or literal per-image (default: batch_rms)'),
    Option('--edge-weight-start', 'weight_start', number(0), help='edge loss weight at epoch 0 (default: 1)',
           metavar='W'),
    Option('--edge-weight-growth', 'weight_growth', number(), help='edge weight growth per epoch (default: 0.09)',
           metavar='W'),
    Option('--edge-weight-cap', 'weight_cap', number(0), help='edge weight cap (default: 19)', metavar='W'),
]


@register_task('edge', options=_OPTIONS, title='Edge alignment (--gradreg edge)')
class EdgeTask(GradRegTask):
    """CE + w(epoch)·(2 − 2·cos(∇ₓ f(x)_t, teacher(x))), trained by double backprop.

    The target class t is sampled (without gradient) from softmax(f(x)/T); the class
    gradient is that of the *logit* f(x)_t. The teacher map is computed on [0, 1]
    pixels and is a constant target.

    Args:
        model, criterion: As for timm's ClassificationTask.
        teacher: Registered teacher name ('sobel', the official edge pipeline, or
            'gaussian', the literal Eq. 4 energy) or any callable images -> map.
        teacher_sigma: Gaussian σ of the named edge teachers (1.0).
        temperature: Softmax temperature T for sampling the target class (0.5).
        cosine: 'batch_rms' (official) or 'per_image' (literal Eq. 3).
        weight_start, weight_growth, weight_cap: weight = min(start + growth·epoch, cap),
            stepping at epoch boundaries (1, 0.09, 19).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    double_backprop = True
    loss_types = ('ce',)
    loss_types_reason = 'it aligns the gradient of a class logit sampled from the softmax.'

    def __init__(
            self,
            model,
            criterion=None,
            *,
            teacher: Union[str, GradientTeacher] = 'sobel',
            teacher_sigma: float = 1.0,
            temperature: float = 0.5,
            cosine: str = 'batch_rms',
            weight_start: float = 1.0,
            weight_growth: float = 0.09,
            weight_cap: float = 19.0,
            **kwargs,
    ):
        super().__init__(model, criterion, **kwargs)
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        if cosine not in COSINE_MODES:
            raise ValueError(f'Unknown cosine mode {cosine!r}; valid: {", ".join(COSINE_MODES)}')
        self.teacher = create_gradient_teacher(teacher, sigma=teacher_sigma) if isinstance(teacher, str) \
            else create_gradient_teacher(teacher)
        self.temperature = float(temperature)
        self.cosine = cosine
        self.schedule = LinearGrowth(weight_start, weight_growth, weight_cap)
        self.uses_schedule = self.schedule.rate != 0

    def alignment_weight(self) -> float:
        return self.schedule(self.epoch)

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not torch.is_grad_enabled():
            raise RuntimeError('EdgeTask needs autograd: call outside torch.no_grad() / torch.inference_mode().')
        x = input.detach().requires_grad_(True)
        with double_backward_safe():
            output = self.trainable_module(x)
        ce = self.criterion(output, target)
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=at_least_fp32(output.detach()) / self.temperature).sample()
            edges = self.teacher(self.space.to_pixel(input.detach()).clamp(0.0, 1.0))
        class_logit = at_least_fp32(output).gather(1, sampled[:, None]).sum()
        grad = input_gradient(class_logit, x, create_graph=True, grad_scaler=self.grad_scaler)
        alignment = cosine_alignment_loss(grad, edges, self.cosine)
        weight = self.alignment_weight()
        loss = ce + weight * alignment
        return {
            'loss': loss,
            'output': output,
            'ce': ce.detach(),
            'penalty': alignment.detach(),
            'weight': torch.tensor(weight, device=loss.device),
        }

    def extra_repr(self) -> str:
        return (f'teacher={self.teacher}, temperature={self.temperature}, cosine={self.cosine!r}, '
                f'schedule={self.schedule}, ' + super().extra_repr())
