"""GradNorm training task (paper Eq. 2), by double backprop or by finite differences."""
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch

from ..core.attacks import pgd_attack
from ..core.input_grad import at_least_fp32, loss_and_input_gradient, per_sample_loss_sum, scaled_grad
from ..utils.sharding import is_sharded
from ..core.penalties import Sigma, gradnorm_penalty, penalty_direction, resolve_sigma
from ..core.schedules import LinearWarmup
from ..models.activations import find_kinks
from ..utils._private import foreach_mul_
from ._registry import PrecisionLimit, create_task, register_task
from .adversarial import ATTACK_EPS, ATTACK_SELECT, ATTACK_STEP_SIZE, ATTACK_STEPS, ATTACK_WARMUP, ATTACK_WARMUP_PER
from .base import GradRegTask
from .options import Option, attack_radius, number, pixel_amount, sigma_value
from .placement import create_placement

__all__ = ['GradNormTask', 'GRADNORM_INPUTS', 'GRADNORM_IMPLS', 'PenaltyGradient', 'gradnorm_fd_agreement']


def _counts(counts: Dict[str, int]) -> str:
    return ', '.join(f'{name} x{n}' for name, n in counts.items())


def _clean_inputs(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return x


def _noisy_inputs(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian noise of std ``noise_std`` in pixel space, clipped to [0, 1] (paper Table 8)."""
    pixels = task.space.to_pixel(x)
    pixels = (pixels + task.noise_std * torch.randn_like(pixels)).clamp(0.0, 1.0)
    return task.space.to_normalized(pixels)


def _uniform_inputs(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Uniform noise in [−r, r] per pixel, clipped to [0, 1] (the official random start, r = ε·factor)."""
    pixels = task.space.to_pixel(x)
    noise = torch.empty_like(pixels).uniform_(-task.uniform_eps, task.uniform_eps)
    return task.space.to_normalized((pixels + noise).clamp(0.0, 1.0))


def _pgd_inputs(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PGD from a uniform start, its step warmed up and its iterate selected as the pgd task's."""
    return pgd_attack(
        task.attack_model(), x, target, eps=task.attack_eps,
        step_size=task.attack_step_size * task.attack_warmup(task.epoch), steps=task.attack_steps, space=task.space,
        select=task.attack_select)


#: Where the penalty is evaluated: clean images, Gaussian-noised (paper Table 8), uniformly perturbed (the
#: official random start), or PGD-perturbed (Table 8).
GRADNORM_INPUTS: Dict[str, Callable] = {'clean': _clean_inputs, 'noise': _noisy_inputs, 'uniform': _uniform_inputs,
                                        'pgd': _pgd_inputs}


def _double_backprop(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                     weight: float) -> Dict[str, torch.Tensor]:
    """Penalty of the differentiable input gradient; its parameter gradient comes by double backprop."""
    output, ce, grad = loss_and_input_gradient(
        task.trainable_module, x, target, task.criterion, create_graph=True, grad_scaler=task.grad_scaler)
    penalty = task.penalty(grad)
    return {'loss': ce_weight * ce + weight * penalty, 'output': output, 'ce': ce.detach(),
            'penalty': penalty.detach(), 'weight': weight}


class _GradientInjection(torch.autograd.Function):
    """A zero-valued scalar whose backward hands ``coef``·(given tensors) to the parameters as gradients.

    Adds precomputed parameter gradients to the one ordinary backward without copies or saved
    activations (a linear surrogate Σ⟨p, G⟩ would save G again for its own backward); the
    scaling by ``coef`` and by the incoming gradient is one in-place pass over the tensors.
    """

    @staticmethod
    def forward(ctx, count: int, coef: float, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.grads, ctx.coef = tensors[count:], coef
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grads = list(ctx.grads)
        ctx.grads = None
        foreach_mul_(grads, grad_output * ctx.coef)  # in place: the tensors are ours
        return (None, None, *grads, *[None] * len(grads))


def _finite_difference(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                       weight: float) -> Dict[str, torch.Tensor]:
    """The penalty's parameter gradient from two first-order passes, no double backward.

    ∇θ[(ε/σ)||g||₁] = H_θx·v with v = (ε/σ)⊙sign(g) ≈ ∇θ[L(x + h·v) − L(x)] / h. Pass 1 (on
    the module without DDP) takes g and ∇θL(x) in one backward; pass 2 is an ordinary
    forward at x + h·v. The returned loss carries ∇θL(x) through a zero-valued
    ``_GradientInjection`` term, so one ordinary backward (DDP all-reduce, GradScaler, accumulation) yields
    λ_CE·∇CE + w·(∇θL(x + h·v) − ∇θL(x)) / h. Its value is exactly λ_CE·CE + w·penalty, as
    double backprop's: the finite-difference terms enter with value zero.
    """
    if not torch.is_grad_enabled():
        raise RuntimeError('GradNormTask needs autograd: call outside torch.no_grad() / torch.inference_mode().')
    if is_sharded(task.trainable_module):
        return _finite_difference_sharded(task, x, target, ce_weight, weight)
    module = task.attack_model()
    params = [p for p in module.parameters() if p.requires_grad]
    batch = x.shape[0]
    xg = x.detach().requires_grad_(True)
    output = module(xg)
    loss_sum = per_sample_loss_sum(task.criterion, at_least_fp32(output), target)
    grads = scaled_grad(loss_sum, [xg] + params, grad_scaler=task.grad_scaler, allow_unused=True)
    grad = grads[0]
    ce = loss_sum.detach() / batch
    penalty = task.penalty(grad)
    step = task.fd_step
    shifted = (x.detach() + step * task.direction(grad)).detach()
    shifted_ce = per_sample_loss_sum(task.criterion, at_least_fp32(task.trainable_module(shifted)), target) / batch
    coef = (ce_weight - weight / step) / batch
    pairs = [(p, g) for p, g in zip(params, grads[1:]) if g is not None]
    injected = _GradientInjection.apply(len(pairs), coef, *[p for p, _ in pairs], *[g for _, g in pairs]) if pairs else 0.0
    value = ce_weight * ce + weight * penalty.detach()
    loss = value + (weight / step) * (shifted_ce - shifted_ce.detach()) + injected
    return {'loss': loss, 'output': output.detach(), 'ce': ce, 'penalty': penalty.detach(), 'weight': weight}


def _finite_difference_sharded(task: 'GradNormTask', x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                               weight: float) -> Dict[str, torch.Tensor]:
    """The finite difference on an FSDP2-sharded model: both passes' parameter gradients from one ordinary backward.

    FSDP2 gathers the parameters for a pass and reduce-scatters their gradients in hooks of that backward; a
    gradient taken with ``autograd.grad`` on ``module.parameters()`` (the sharded tensors, not the gathered ones
    the forward used) never reaches them. So pass 1 takes only the input gradient, keeping its graph, and the
    loss carries (λ_CE − w/h)·L(x) + (w/h)·L(x + h·v): its value is still λ_CE·CE + w·penalty, the terms enter
    with value zero.
    """
    module = task.trainable_module
    batch = x.shape[0]
    xg = x.detach().requires_grad_(True)
    output = module(xg)
    ce = per_sample_loss_sum(task.criterion, at_least_fp32(output), target) / batch
    (grad,) = scaled_grad(ce * batch, [xg], grad_scaler=task.grad_scaler, retain_graph=True)
    penalty = task.penalty(grad)
    step = task.fd_step
    shifted = (x.detach() + step * task.direction(grad)).detach()
    shifted_ce = per_sample_loss_sum(task.criterion, at_least_fp32(module(shifted)), target) / batch
    value = ce_weight * ce.detach() + weight * penalty.detach()
    loss = value + (ce_weight - weight / step) * (ce - ce.detach()) + (weight / step) * (shifted_ce - shifted_ce.detach())
    return {'loss': loss, 'output': output.detach(), 'ce': ce.detach(), 'penalty': penalty.detach(), 'weight': weight}


@dataclass(frozen=True)
class PenaltyGradient:
    """How the penalty's parameter gradient is computed: ``step(task, x, target, ce_weight, weight)`` (which one
    needs a double backward is declared once, on the task's registry entry: ``first_order_kwargs``)."""
    step: Callable[..., Dict[str, torch.Tensor]]


#: How the penalty's parameter gradient is computed: exact double backprop, or finite differences
#: of two first-order passes (works with torch.compile and fused attention, less memory).
GRADNORM_IMPLS: Dict[str, PenaltyGradient] = {'double_backprop': PenaltyGradient(_double_backprop),
                                              'fd': PenaltyGradient(_finite_difference)}


def _penalty_gradient(impl: str) -> PenaltyGradient:
    if impl not in GRADNORM_IMPLS:
        raise ValueError(f"Unknown GradNorm impl {impl!r}; valid: {', '.join(GRADNORM_IMPLS)}")
    return GRADNORM_IMPLS[impl]


_OPTIONS = [
    Option('--gn-ce-weight', 'ce_weight', number(0), help='GradNorm λ_CE (paper: Swin-B 0.8, ResNet-50 0.5)',
           metavar='W'),
    Option('--gn-weight', 'gn_weight', number(0), help='GradNorm λ_GN (paper: Swin-B 1.2, ResNet-50 0.5)',
           metavar='W'),
    Option('--gn-eps', 'eps', attack_radius, help='GradNorm ε: L∞ radius of its first-order attack model',
           metavar='EPS'),
    Option('--gn-sigma', 'sigma', sigma_value,
           help="GradNorm σ: one scalar (paper 0.225) or 'channel' for the data std per channel (exact)",
           metavar='SIGMA'),
    Option('--gn-warmup-epochs', 'warmup_epochs', number(0),
           help='epochs over which λ_GN rises linearly from 0, updated per iteration', metavar='N'),
    Option('--gn-threshold', 'threshold', number(0),
           help='hinge: penalize only (ε/σ)·||g_b||_1 above this value, per sample (official DBPThresholded, '
                '0.001); 0 for the plain penalty', metavar='T'),
    Option('--gn-channel-weights', 'channel_weights', number(0), nargs='+',
           help="weights of each channel's L1 norm, e.g. 1 2 1 (official DBPChannel, the 'green' config) "
                '(default: equal)', metavar='W'),
    Option('--gn-inputs', 'inputs', choices=lambda: list(GRADNORM_INPUTS),
           help='where the penalty is taken: clean images, Gaussian noise, uniform noise (the official random '
                'start), or PGD'),
    Option('--gn-noise-std', 'noise_std', number(0), help='pixel std of the noise for --gn-inputs noise',
           metavar='STD'),
    Option('--gn-uniform-eps', 'uniform_eps', pixel_amount,
           help='half-width in pixels of the noise for --gn-inputs uniform (default: the official '
                'random_start_eps_factor 0.5 of --gn-eps)', metavar='EPS'),
    Option('--gradnorm-impl', 'impl', choices=lambda: list(GRADNORM_IMPLS),
           help='GradNorm parameter gradient: exact double backprop, or finite differences of two first-order passes '
                '(works with --torchcompile and fused attention, less memory)'),
    Option('--gn-penalty-fraction', 'penalty_fraction', number(0, 1, low_open=True),
           help='take the penalty on a random fraction ρ of each batch (CE on all of it): its double backward '
                'costs ρ of the full one', metavar='RHO'),
    Option('--gn-every', 'every', number(1, integer=True),
           help='take the penalty every k-th step only, weighted k times; other steps are natural training', metavar='K'),
    Option('--gn-resolution', 'resolution', number(0, 1, low_open=True),
           help='take the penalty on the images downsampled by this factor and run at that size (CE at full '
                'size): its passes cost about its square; convolutional models', metavar='R'),
    Option('--fd-step', 'fd_step', number(0, 1, low_open=True),
           help='finite-difference step as a fraction of the ε step; 1 would be FGSM training',
           metavar='H'),
    ATTACK_EPS.to('attack_eps'), ATTACK_STEP_SIZE.to('attack_step_size'), ATTACK_STEPS.to('attack_steps'),
    ATTACK_WARMUP.to('attack_warmup_epochs'), ATTACK_WARMUP_PER.to('attack_warmup_per'), ATTACK_SELECT.to('attack_select'),
]


#: The finite difference under mixed precision (measured: benchmarks/compat_matrix.py)
FD_UNDER_AMP = PrecisionLimit(
    '--gradnorm-impl fd cannot be used with {option}: the finite difference of two low-precision passes cancels '
    'most of its digits (measured in docs/compatibility.md). Train the finite difference in float32 (it works with '
    '--torchcompile), or double backprop (--gradnorm-impl double_backprop) under --amp.', when={'impl': 'fd'})


@register_task('gradnorm', options=_OPTIONS, title='GradNorm (--gradreg gradnorm)', double_backprop=True,
               first_order_kwargs={'impl': 'fd'}, precision_limit=FD_UNDER_AMP)
class GradNormTask(GradRegTask):
    """λ_CE·CE + λ_GN·w(t)·(ε/σ)·mean_b ||∇ₓCE_b||_1, trained by double backprop or finite differences.

    Two choices are separate strategies: where the penalty is taken (``inputs``: clean or perturbed
    images; ``penalty_fraction``, ``resolution``, ``every``: a ``PenaltyPlacement`` from
    ``timm_gradreg.tasks.placement``) and how its parameter gradient is computed (``impl``: a
    ``PenaltyGradient`` of ``GRADNORM_IMPLS``). Any placement works with either gradient.

    The input gradient is per sample (independent of batch size and criterion
    reduction) and differentiable; the penalty's parameter gradient flows through it
    in the one ordinary ``backward()`` of the total loss, which is what DDP needs.
    The forward runs under ``double_backward_safe()`` (fused attention runs as its twice
    differentiable math formulation; see ``timm_gradreg.double_backward``); under fp16
    autocast the input gradient is taken of the scaled loss and unscaled.

    Args:
        model, criterion: As for timm's ClassificationTask.
        ce_weight: λ_CE (paper Swin-B 0.8, ResNet-50 0.5).
        gn_weight: λ_GN (paper Swin-B 1.2, ResNet-50 0.5).
        eps: Pixel-space L∞ radius ε of the first-order attack model (4/255).
        sigma: 'channel' for the data std per channel (exact), or one scalar (paper 0.225).
        warmup_epochs: λ_GN rises linearly from 0 over these epochs, per iteration (5).
        threshold: Hinge threshold t: mean_b max(0, (ε/σ)·||g_b||_1 − t) (official DBPThresholded);
            0 for the plain penalty (0).
        channel_weights: Per-channel weights of the L1 norm (official DBPChannel: 1, 2, 1); None
            for equal weights.
        inputs: Where the penalty is taken: 'clean' (default), 'noise' (Gaussian), 'uniform' (the
            official random start), 'pgd'.
        noise_std: Pixel-space std of the Gaussian noise for inputs='noise' (4/255).
        uniform_eps: Pixel-space half-width of the uniform noise for inputs='uniform'; None: the official
            factor 0.5 of ``eps`` (2/255 at 4/255).
        attack_eps, attack_step_size, attack_steps: PGD for inputs='pgd' (4/255, 8/255/3, 3).
        attack_warmup_epochs, attack_warmup_per: Its step rises linearly from 0, at epoch boundaries as the
            official code trains from a pretrained network (5, 'epoch'); 0 as its fine-tunes.
        attack_select: Its iterate: 'last', or the highest-loss 'sample' or 'batch' (official: 'batch').
        impl: 'double_backprop' (exact) or 'fd' (finite differences: two first-order passes, no
            double backward, so torch.compile and fused attention kernels work).
        fd_step: h of the finite difference, as a fraction of the ε step (h = 1 would be FGSM
            training) (default 0.1).
        penalty_fraction: ρ, the penalty on a random ⌈ρ·B⌉ samples of each batch, CE on all B (1): an
            unbiased estimate of the batch's penalty (``SampleFraction``).
        every: k, the penalty on every k-th training step only, weighted k times (1) (``EveryKthStep``).
        resolution: r, the penalty on the images downsampled by r, CE at full size (1) (``ReducedResolution``).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.

    Example:
        >>> task = create_task('gradnorm', model, ce_weight=0.5, gn_weight=0.5, mean=cfg['mean'], std=cfg['std'])
        >>> task.set_epoch(epoch + i / steps); out = task(x, y); out['loss'].backward()
    """

    def __init__(
            self,
            model,
            criterion=None,
            *,
            ce_weight: float = 0.8,
            gn_weight: float = 1.2,
            eps: float = 4 / 255,
            sigma: Sigma = 0.225,
            warmup_epochs: float = 5.0,
            threshold: float = 0.0,
            channel_weights: Optional[Sequence[float]] = None,
            inputs: str = 'clean',
            noise_std: float = 4 / 255,
            uniform_eps: Optional[float] = None,
            attack_eps: float = 4 / 255,
            attack_step_size: float = 8 / 255 / 3,
            attack_steps: int = 3,
            attack_warmup_epochs: float = 5.0,
            attack_warmup_per: str = 'epoch',
            attack_select: str = 'last',
            impl: str = 'double_backprop',
            fd_step: float = 0.1,
            penalty_fraction: float = 1.0,
            every: int = 1,
            resolution: float = 1.0,
            **kwargs,
    ):
        super().__init__(model, criterion, **kwargs)
        if not 0 < fd_step <= 1:
            raise ValueError(f'fd_step must be in (0, 1] (a fraction of the ε step), got {fd_step}')
        self.impl = impl
        self.penalty_gradient = _penalty_gradient(impl)
        self.fd_step = float(fd_step)
        if inputs not in GRADNORM_INPUTS:
            raise ValueError(f"Unknown GradNorm inputs {inputs!r}; valid: {', '.join(GRADNORM_INPUTS)}")
        if eps < 0 or ce_weight < 0 or gn_weight < 0:
            raise ValueError(f'eps, ce_weight and gn_weight must be >= 0, got {eps}, {ce_weight}, {gn_weight}')
        self.ce_weight = float(ce_weight)
        self.gn_weight = float(gn_weight)
        self.eps = float(eps)
        self.sigma = resolve_sigma(sigma, self.space)
        self.warmup = LinearWarmup(warmup_epochs)
        self.uses_schedule = self.warmup.epochs > 0
        if threshold < 0:
            raise ValueError(f'threshold must be >= 0, got {threshold}')
        self.threshold = float(threshold)
        self.channel_weights = None if channel_weights is None else tuple(float(w) for w in channel_weights)
        self.inputs = inputs
        self.noise_std = float(noise_std)
        self.uniform_eps = 0.5 * self.eps if uniform_eps is None else float(uniform_eps)
        self.attack_eps = float(attack_eps)
        self.attack_step_size = float(attack_step_size)
        self.attack_steps = int(attack_steps)
        self.attack_warmup = LinearWarmup(attack_warmup_epochs, per=attack_warmup_per)
        self.attack_select = attack_select
        if inputs == 'pgd':
            self.uses_schedule = self.uses_schedule or self.attack_warmup.epochs > 0
        self.placement = create_placement(penalty_fraction, resolution, every)
        self._warn_where_it_does_not_apply()

    def _warn_where_it_does_not_apply(self) -> None:
        """GradNorm needs smooth activations; finite differences are not exact across kinks."""
        kinks = find_kinks(self.attack_model())
        piecewise = {name: n for name, n in kinks.items() if 'Pool' not in name}
        name = type(self.attack_model()).__name__
        if piecewise:
            warnings.warn(
                f"GradNorm on {name} with piecewise-linear activations ({_counts(piecewise)}): their second "
                'derivative is zero, so the penalty barely shapes the network and buys little robustness '
                '(paper, ResNet-50 AutoAttack at 4/255: ReLU 6.82% vs GELU 30.00%). Swap them first: '
                "--swap-activations gelu, or timm_gradreg.swap_activations(model, 'gelu').", UserWarning, stacklevel=3)
        if self.impl == 'fd' and kinks:
            warnings.warn(
                f'--gradnorm-impl fd on {name} with kinks in its input gradient ({_counts(kinks)}): the finite '
                'difference crosses them and is not the exact GradNorm gradient (how far off: docs/training.md). It '
                'is exact on smooth networks; use '
                '--gradnorm-impl double_backprop for the exact gradient.', UserWarning, stacklevel=3)

    def penalty(self, grad: torch.Tensor) -> torch.Tensor:
        """The penalty of the input gradient (before λ_GN)."""
        return gradnorm_penalty(grad, self.eps, self.sigma, self.threshold, self.channel_weights)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """v with ∂penalty/∂g_b = v_b / B: the finite difference's direction."""
        return penalty_direction(grad, self.eps, self.sigma, self.threshold, self.channel_weights)

    @property
    def step_cycle(self) -> int:
        return self.placement.cycle

    def penalty_weight(self) -> float:
        """λ_GN times the warm-up factor at the current epoch."""
        return self.gn_weight * self.warmup(self.epoch)

    def get_task_state(self, module=None, ema: bool = False) -> Dict:
        return {**super().get_task_state(module, ema), **self.placement.state_dict()}

    def load_task_state(self, state, strict: bool = True, module=None, ema: bool = False) -> None:
        super().load_task_state(state, strict, module, ema)
        if state and not ema:
            self.placement.load_state_dict(state)

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = GRADNORM_INPUTS[self.inputs](self, input, target)
        training = self.training and torch.is_grad_enabled()
        result = self.placement(self._penalized, self._natural, x, target, self.ce_weight, self.penalty_weight(),
                                training)
        result['weight'] = torch.tensor(result['weight'], device=result['loss'].device)
        return result

    def _penalized(self, x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                   weight: float) -> Dict[str, torch.Tensor]:
        return self.penalty_gradient.step(self, x, target, ce_weight, weight)

    def _natural(self, x: torch.Tensor, target: torch.Tensor, ce_weight: float) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(x)
        ce = self.criterion(output, target)
        return {'loss': ce_weight * ce, 'output': output, 'ce': ce.detach()}

    def extra_repr(self) -> str:
        return (f'ce_weight={self.ce_weight}, gn_weight={self.gn_weight}, eps={self.eps:.5f}, sigma={self.sigma}, '
                f'warmup={self.warmup.epochs}, threshold={self.threshold}, channel_weights={self.channel_weights}, '
                f'inputs={self.inputs!r}, impl={self.impl!r}, placement={self.placement!r}, ' + super().extra_repr())


def gradnorm_fd_agreement(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fd_step: float = 0.1,
                          **options) -> Dict[str, float]:
    """How far the finite-difference GradNorm parameter gradient is from double backprop's on a batch.

    Returns the cosine and the relative error ||g_fd − g_db|| / ||g_db|| (computed in float64) of
    the two full training gradients, with the warm-up at full strength. Near 1 and 0 on smooth
    networks; networks with kinks (ReLU, max pooling) make ∇θL jump in x, and FD drifts from
    the exact gradient (``find_kinks``).
    """
    grads = []
    for impl in ('double_backprop', 'fd'):
        task = create_task('gradnorm', model, impl=impl, fd_step=fd_step, warmup_epochs=0, verbose=False, **options)
        model.zero_grad(set_to_none=True)
        task(x, y)['loss'].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    ref, fd = (g.double() for g in grads)  # float64: an fp32 cosine of 10^7 entries can exceed 1
    return {'cosine': torch.nn.functional.cosine_similarity(fd, ref, dim=0).item(),
            'rel_error': ((fd - ref).norm() / ref.norm()).item(), 'fd_step': fd_step}
