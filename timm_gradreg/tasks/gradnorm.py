"""GradNorm training task (paper Eq. 2): λ_CE·CE + λ_GN·w(t)·(ε/σ)·mean_b ||∇ₓCE_b||_1.

Three parts are chosen by option, each a small object built from its own options: where the penalty is taken
(``inputs``: ``penalty_inputs``), how its parameter gradient is computed (``impl``: ``penalty_gradients``), and
which samples and steps take it (``penalty_fraction``, ``resolution``, ``every``: ``placement``).
"""
import warnings
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..core.penalties import Sigma, gradnorm_penalty, penalty_direction, resolve_sigma
from ..core.schedules import LinearWarmup
from ..models.activations import find_kinks
from ._registry import PrecisionLimit, create_task, register_task
from .base import GradRegTask
from .options import Option, attack_radius, number, part_options, sigma_value
from .penalty_gradients import PENALTY_GRADIENTS, PenaltyGradientRule, create_penalty_gradient
from .penalty_inputs import PENALTY_INPUTS, PenaltyInputs, create_penalty_inputs
from .placement import create_placement

__all__ = ['GradNormTask', 'gradnorm_fd_agreement']


def _counts(counts: Dict[str, int]) -> str:
    return ', '.join(f'{name} x{n}' for name, n in counts.items())


#: The options of GradNorm's parts (each used when its part is chosen)
_PART_OPTIONS = [*part_options(PENALTY_INPUTS), *part_options(PENALTY_GRADIENTS)]

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
    Option('--gn-inputs', 'inputs', choices=lambda: PENALTY_INPUTS.names(),
           help='where the penalty is taken: clean images, Gaussian noise, uniform noise (the official random '
                'start), or PGD'),
    Option('--gn-impl', 'impl', choices=lambda: PENALTY_GRADIENTS.names(), aliases=('--gradnorm-impl',),
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
    *_PART_OPTIONS,
]


def _options_of(registry, name: Any, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of ``kwargs`` that are options of the part ``name`` (removed from ``kwargs``)."""
    if not isinstance(name, str) or name not in registry:
        return {}
    own = {o.kwarg for o in registry.get(name).options}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in own}


def _name_of(registry, part: Any) -> str:
    """The registered name of a part's class ('' for a class registered nowhere)."""
    return next((name for name, cls in registry.items() if type(part) is cls), '')


#: The finite difference under mixed precision (measured: benchmarks/compat_matrix.py)
FD_UNDER_AMP = PrecisionLimit(
    '--gn-impl fd cannot be used with {option}: the finite difference of two low-precision passes cancels '
    'most of its digits (measured in docs/compatibility.md). Train the finite difference in float32 (it works with '
    '--torchcompile), or double backprop (--gn-impl double_backprop) under --amp.', when={'impl': 'fd'})


@register_task('gradnorm', options=_OPTIONS, title='GradNorm (--gradreg gradnorm)', double_backprop=True,
               first_order_kwargs={'impl': 'fd'}, precision_limit=FD_UNDER_AMP)
class GradNormTask(GradRegTask):
    """λ_CE·CE + λ_GN·w(t)·(ε/σ)·mean_b ||∇ₓCE_b||_1, trained by double backprop or finite differences.

    Its parts are chosen by name or given built: where the penalty is taken (``inputs``, a ``PenaltyInputs``
    of ``PENALTY_INPUTS``), how its parameter gradient is computed (``impl``, a ``PenaltyGradientRule`` of
    ``PENALTY_GRADIENTS``), which samples and steps take it (``penalty_fraction``, ``resolution``, ``every``: a
    ``PenaltyPlacement``). A part chosen by name takes its own options as keyword arguments (``noise_std``
    for inputs='noise', ``attack_*`` for 'pgd', ``fd_step`` for impl='fd'; ``timm-train --help`` lists them).

    The input gradient is per sample (independent of batch size and criterion
    reduction) and differentiable; the penalty's parameter gradient flows through it
    in the one ordinary ``backward()`` of the total loss, which is what DDP needs.
    The forward runs under ``double_backward_safe()`` (fused attention runs as its twice
    differentiable math formulation; see ``timm_gradreg.double_backward``); under fp16
    autocast the input gradient is taken of the scaled loss and unscaled.

    Args:
        model, criterion: As for timm's ClassificationTask.
        ce_weight: λ_CE (paper: Swin-B 0.8, ResNet-50 0.5) (0.8).
        gn_weight: λ_GN (paper: Swin-B 1.2, ResNet-50 0.5) (1.2).
        eps: Pixel-space L∞ radius ε of the first-order attack model (4/255).
        sigma: 'channel' for the data std per channel (exact), or one scalar (0.225).
        warmup_epochs: λ_GN rises linearly from 0 over these epochs, per iteration (5).
        threshold: Hinge threshold t: mean_b max(0, (ε/σ)·||g_b||_1 − t) (official DBPThresholded);
            0 for the plain penalty (0).
        channel_weights: Per-channel weights of the L1 norm (official DBPChannel: 1, 2, 1); None
            for equal weights.
        inputs: Where the penalty is taken: 'clean', 'noise' (Gaussian), 'uniform' (the official random
            start), 'pgd', or a ``PenaltyInputs`` (clean).
        impl: 'double_backprop' (exact) or 'fd' (finite differences: two first-order passes, no double
            backward, so torch.compile and fused attention kernels work), or a ``PenaltyGradientRule``
            (double_backprop).
        penalty_fraction: ρ, the penalty on a random ⌈ρ·B⌉ samples of each batch, CE on all B (1): an
            unbiased estimate of the batch's penalty (``SampleFraction``).
        every: k, the penalty on every k-th training step only, weighted k times (1) (``EveryKthStep``).
        resolution: r, the penalty on the images downsampled by r, CE at full size (1) (``ReducedResolution``).
        **kwargs: The options of the parts chosen by name, then those of GradRegTask (mean, std,
            criterion_kwargs, device, dtype, verbose).

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
            inputs: Union[str, PenaltyInputs] = 'clean',
            impl: Union[str, PenaltyGradientRule] = 'double_backprop',
            penalty_fraction: float = 1.0,
            every: int = 1,
            resolution: float = 1.0,
            **kwargs: Any,
    ):
        parts = {o.kwarg for o in _PART_OPTIONS}
        part_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in parts}
        super().__init__(model, criterion, **kwargs)
        if eps < 0 or ce_weight < 0 or gn_weight < 0:
            raise ValueError(f'eps, ce_weight and gn_weight must be >= 0, got {eps}, {ce_weight}, {gn_weight}')
        if threshold < 0:
            raise ValueError(f'threshold must be >= 0, got {threshold}')
        self.ce_weight = float(ce_weight)
        self.gn_weight = float(gn_weight)
        self.eps = float(eps)
        self.sigma = resolve_sigma(sigma, self.space)
        self.warmup = LinearWarmup(warmup_epochs)
        self.threshold = float(threshold)
        self.channel_weights = None if channel_weights is None else tuple(float(w) for w in channel_weights)
        self.penalty_inputs = create_penalty_inputs(inputs, **_options_of(PENALTY_INPUTS, inputs, part_kwargs))
        self.penalty_gradient = create_penalty_gradient(impl, **_options_of(PENALTY_GRADIENTS, impl, part_kwargs))
        for key in part_kwargs:  # an option of a part not chosen
            switch, owner = next(o.applies for o in _PART_OPTIONS if o.kwarg == key)
            chosen = {'inputs': inputs, 'impl': impl}[switch]
            raise ValueError(f'GradNorm option {key!r} applies to {switch}={owner!r}, not {switch}={chosen!r}')
        self.inputs = _name_of(PENALTY_INPUTS, self.penalty_inputs)
        self.impl = _name_of(PENALTY_GRADIENTS, self.penalty_gradient)
        self.uses_schedule = self.warmup.epochs > 0 or self.penalty_inputs.uses_schedule
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
                f'--gn-impl fd on {name} with kinks in its input gradient ({_counts(kinks)}): the finite '
                'difference crosses them and is not the exact GradNorm gradient (how far off: docs/training.md). It '
                'is exact on smooth networks; use --gn-impl double_backprop for the exact gradient.', UserWarning,
                stacklevel=3)

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
        x = self.penalty_inputs(self, input, target)
        training = self.training and torch.is_grad_enabled()
        result = self.placement(self._penalized, self._natural, x, target, self.ce_weight, self.penalty_weight(),
                                training)
        result['weight'] = torch.tensor(result['weight'], device=result['loss'].device)
        return result

    def _penalized(self, x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                   weight: float) -> Dict[str, torch.Tensor]:
        return self.penalty_gradient(self, x, target, ce_weight, weight)

    def _natural(self, x: torch.Tensor, target: torch.Tensor, ce_weight: float) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(x)
        ce = self.criterion(output, target)
        return {'loss': ce_weight * ce, 'output': output, 'ce': ce.detach()}

    def extra_repr(self) -> str:
        return (f'ce_weight={self.ce_weight}, gn_weight={self.gn_weight}, eps={self.eps:.5f}, sigma={self.sigma}, '
                f'warmup={self.warmup.epochs}, threshold={self.threshold}, channel_weights={self.channel_weights}, '
                f'inputs={self.penalty_inputs!r}, impl={self.penalty_gradient!r}, placement={self.placement!r}, '
                + super().extra_repr())


def gradnorm_fd_agreement(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fd_step: float = 0.1,
                          **options) -> Dict[str, float]:
    """How far the finite-difference GradNorm parameter gradient is from double backprop's on a batch.

    Returns the cosine and the relative error ||g_fd − g_db|| / ||g_db|| (computed in float64) of
    the two full training gradients, with the warm-up at full strength. Near 1 and 0 on smooth
    networks; networks with kinks (ReLU, max pooling) make ∇θL jump in x, and FD drifts from
    the exact gradient (``find_kinks``).
    """
    grads = []
    for impl, own in (('double_backprop', {}), ('fd', {'fd_step': fd_step})):
        task = create_task('gradnorm', model, impl=impl, warmup_epochs=0, verbose=False, **own, **options)
        model.zero_grad(set_to_none=True)
        task(x, y)['loss'].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    ref, fd = (g.double() for g in grads)  # float64: an fp32 cosine of 10^7 entries can exceed 1
    return {'cosine': torch.nn.functional.cosine_similarity(fd, ref, dim=0).item(),
            'rel_error': ((fd - ref).norm() / ref.norm()).item(), 'fd_step': fd_step}
