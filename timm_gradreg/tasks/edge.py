"""Edge-regularization training task (paper Eq. 3-4)."""
from typing import Callable, Dict, Union

import torch

from ..core.edge_maps import (COSINE_MODES, GradientTeacher, cosine_alignment_loss, create_gradient_teacher,
                              list_gradient_teachers)
from ..core.input_grad import at_least_fp32, input_gradient, per_sample_loss_sum
from ..core.schedules import LinearGrowth
from ..double_backward import double_backward_safe
from ..utils.registry import check_choice
from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['EdgeTask', 'EDGE_TARGETS', 'CLASS_SAMPLERS']


def _hard_sample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One-hot class drawn from softmax(logits / T), without gradient (no argument validation: it reads values,
    which the memory prediction's meta tensors do not have; the draw is the same)."""
    with torch.no_grad():
        index = torch.distributions.Categorical(logits=logits.detach() / temperature, validate_args=False).sample()
    return torch.nn.functional.one_hot(index, logits.shape[-1]).to(logits.dtype)


def _relaxed_sample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Relaxed (Gumbel-softmax) one-hot at temperature T, differentiable in the logits (official 'smooth')."""
    return torch.distributions.RelaxedOneHotCategorical(
        torch.tensor(temperature, device=logits.device, dtype=logits.dtype), logits=logits,
        validate_args=False).rsample()


#: How the target class is drawn from the logits.
CLASS_SAMPLERS: Dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    'hard': _hard_sample, 'relaxed': _relaxed_sample}


def _logit_gradient(task: 'EdgeTask', x: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∇ₓ f(x)_t of the sampled class's logit (paper Eq. 3)."""
    logits = at_least_fp32(output)
    chosen = (logits * CLASS_SAMPLERS[task.sampling](logits, task.temperature)).sum()
    return input_gradient(chosen, x, create_graph=True, grad_scaler=task.grad_scaler)


def _saliency(task: 'EdgeTask', x: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """max_c |∇ₓ f(x)_t|: the saliency map, one channel (Fig. 14 F)."""
    return _logit_gradient(task, x, output, target).abs().amax(1, keepdim=True)


def _loss_gradient(task: 'EdgeTask', x: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∇ₓ CE: the loss gradient instead of a class gradient (Fig. 14 G)."""
    loss_sum = per_sample_loss_sum(task.criterion, at_least_fp32(output), target)
    return input_gradient(loss_sum, x, create_graph=True, grad_scaler=task.grad_scaler)


#: Which input gradient is aligned with the teacher's map.
EDGE_TARGETS: Dict[str, Callable] = {'logit': _logit_gradient, 'saliency': _saliency, 'loss': _loss_gradient}


_OPTIONS = [
    Option('--edge-teacher', 'teacher', choices=list_gradient_teachers,
           help="target map: 'sobel' (the official pipeline on [0, 1] pixels), 'official' (the official code's "
                "filters term for term, on the normalized input), 'gaussian' (the literal Eq. 4 energy), or any "
                'registered teacher'),
    Option('--edge-target', 'target', choices=lambda: list(EDGE_TARGETS),
           help="which gradient is aligned with the edges: the sampled class 'logit' (the paper's method), the "
                "'saliency' map max_c |∇ₓf_t| or the 'loss' gradient ∇ₓCE (Fig. 14 F/G: the negative results)"),
    Option('--edge-sampling', 'sampling', choices=lambda: list(CLASS_SAMPLERS),
           help="target class: 'hard' sample of softmax(f/T), or the 'relaxed' (Gumbel-softmax) one-hot the "
                "official 'smooth' option draws"),
    Option('--edge-sigma', 'teacher_sigma', number(0, low_open=True),
           help='Gaussian σ of the edge filters in pixels', metavar='SIGMA'),
    Option('--edge-temperature', 'temperature', number(0, low_open=True),
           help='softmax temperature for sampling the target class', metavar='T'),
    Option('--edge-cosine', 'cosine', choices=COSINE_MODES,
           help='cosine loss: official batch-RMS MSE or literal per-image'),
    Option('--edge-weight-start', 'weight_start', number(0), help='edge loss weight at epoch 0',
           metavar='W'),
    Option('--edge-weight-growth', 'weight_growth', number(),
           help='edge weight growth per epoch, applied every iteration', metavar='W'),
    Option('--edge-weight-cap', 'weight_cap', number(0), help='edge weight cap', metavar='W'),
]


@register_task('edge', options=_OPTIONS, title='Edge alignment (--gradreg edge)', double_backprop=True)
class EdgeTask(GradRegTask):
    """CE + w(t)·(2 − 2·cos(∇ₓ f(x)_t, teacher(x))), trained by double backprop.

    The target class t is sampled from softmax(f(x)/T) (without gradient); the class gradient
    is that of the *logit* f(x)_t. The teacher map is a constant target, computed on [0, 1]
    pixels or, for a teacher whose ``input_space`` is 'normalized' (the official filters), on
    the loader's normalized images.

    Args:
        model, criterion: As for timm's ClassificationTask.
        teacher: Registered teacher name ('sobel', 'official', 'gaussian') or any callable
            images -> map.
        teacher_sigma: Gaussian σ of the named edge teachers (1.0).
        temperature: Softmax temperature T for sampling the target class (0.5).
        cosine: 'batch_rms' (official) or 'per_image' (literal Eq. 3).
        target: The aligned gradient: 'logit' (the method), 'saliency' or 'loss' (the paper's
            negative results, Fig. 14 F and G).
        sampling: 'hard' (the method) or 'relaxed' (Gumbel-softmax, official 'smooth').
        weight_start, weight_growth, weight_cap: weight = min(start + growth·epoch, cap), updated
            every iteration (1, 0.09, 19).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

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
            target: str = 'logit',
            sampling: str = 'hard',
            weight_start: float = 1.0,
            weight_growth: float = 0.09,
            weight_cap: float = 19.0,
            **kwargs,
    ):
        super().__init__(model, criterion, **kwargs)
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        check_choice('cosine mode', cosine, list(COSINE_MODES))
        check_choice('edge target', target, list(EDGE_TARGETS))
        check_choice('class sampling', sampling, list(CLASS_SAMPLERS))
        self.teacher = create_gradient_teacher(teacher, sigma=teacher_sigma) if isinstance(teacher, str) \
            else create_gradient_teacher(teacher)
        self.temperature = float(temperature)
        self.cosine = cosine
        self.target = target
        self.sampling = sampling
        self.schedule = LinearGrowth(weight_start, weight_growth, weight_cap)
        self.uses_schedule = self.schedule.rate != 0

    def alignment_weight(self) -> float:
        return self.schedule(self.epoch)

    def teacher_map(self, input: torch.Tensor) -> torch.Tensor:
        """The teacher's target map of the batch, on the images its ``input_space`` asks for."""
        with torch.no_grad():
            if getattr(self.teacher, 'input_space', 'pixel') == 'normalized':
                return self.teacher(input.detach())
            return self.teacher(self.space.to_pixel(input.detach()).clamp(0.0, 1.0))

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not torch.is_grad_enabled():
            raise RuntimeError('EdgeTask needs autograd: call outside torch.no_grad() / torch.inference_mode().')
        x = input.detach().requires_grad_(True)
        with double_backward_safe():
            output = self.trainable_module(x)
        ce = self.criterion(output, target)
        grad = EDGE_TARGETS[self.target](self, x, output, target)
        alignment = cosine_alignment_loss(grad, self.teacher_map(input), self.cosine)
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
                f'target={self.target!r}, sampling={self.sampling!r}, schedule={self.schedule}, '
                + super().extra_repr())
