"""How GradNorm's penalty reaches the parameters: exact double backprop, or a finite difference of two
first-order passes (no double backward: torch.compile, fused attention and FSDP work, less memory). Each is a
small object built from its own options and chosen by name (``--gn-impl``); which one needs a double backward is
declared once, on GradNorm's registry entry (``first_order_kwargs``).

A rule is called as ``rule(task, x, target, ce_weight, weight)`` and returns the task's step on ``x``:
{'loss', 'output', 'ce', 'penalty', 'weight'}, whose one ordinary ``backward()`` gives
λ_CE·∇θCE + weight·∇θpenalty.
"""
import abc
from typing import Any, Dict

import torch

from ..core.input_grad import at_least_fp32, loss_and_input_gradient, per_sample_loss_sum, scaled_grad
from ..utils._private import foreach_mul_
from ..utils.registry import Registry
from ..utils.sharding import is_sharded
from .options import Option, TaskPart, create_part, number, register_part

__all__ = ['PenaltyGradientRule', 'DoubleBackprop', 'FiniteDifference', 'PENALTY_GRADIENTS',
           'create_penalty_gradient']

#: name -> class: how the penalty's parameter gradient is computed (``--gn-impl``)
PENALTY_GRADIENTS: Registry[type] = Registry('GradNorm parameter-gradient rule')
#: the GradNorm option that chooses the rule
SWITCH = 'impl'


class PenaltyGradientRule(TaskPart, abc.ABC):
    """How the penalty's parameter gradient is computed (the step it returns is the task's)."""

    @abc.abstractmethod
    def __call__(self, task: Any, x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                 weight: float) -> Dict[str, torch.Tensor]:
        """The task's step on ``x`` with this rule's parameter gradient of the penalty."""


@register_part(PENALTY_GRADIENTS, SWITCH, 'double_backprop')
class DoubleBackprop(PenaltyGradientRule):
    """The penalty of the differentiable input gradient; its parameter gradient comes by double backprop."""

    def __call__(self, task: Any, x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                 weight: float) -> Dict[str, torch.Tensor]:
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


@register_part(PENALTY_GRADIENTS, SWITCH, 'fd', [
    Option('--gn-fd-step', 'fd_step', number(0, 1, low_open=True),
           help='finite-difference step as a fraction of the ε step; 1 would be FGSM training', metavar='H',
           aliases=('--fd-step',))])
class FiniteDifference(PenaltyGradientRule):
    """The penalty's parameter gradient from two first-order passes, no double backward.

    ∇θ[(ε/σ)||g||₁] = H_θx·v with v = (ε/σ)⊙sign(g) ≈ ∇θ[L(x + h·v) − L(x)] / h, h = ``fd_step`` as a fraction
    of the ε step (h = 1 would be FGSM training).
    """

    def __init__(self, fd_step: float = 0.1):
        if not 0 < fd_step <= 1:
            raise ValueError(f'fd_step must be in (0, 1] (a fraction of the ε step), got {fd_step}')
        self.fd_step = float(fd_step)

    def __call__(self, task: Any, x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                 weight: float) -> Dict[str, torch.Tensor]:
        """Pass 1 (on the module without DDP) takes g and ∇θL(x) in one backward; pass 2 is an ordinary
        forward at x + h·v. The returned loss carries ∇θL(x) through a zero-valued
        ``_GradientInjection`` term, so one ordinary backward (DDP all-reduce, GradScaler, accumulation) yields
        λ_CE·∇CE + w·(∇θL(x + h·v) − ∇θL(x)) / h. Its value is exactly λ_CE·CE + w·penalty, as
        double backprop's: the finite-difference terms enter with value zero.
        """
        if not torch.is_grad_enabled():
            raise RuntimeError('GradNormTask needs autograd: call outside torch.no_grad() / torch.inference_mode().')
        if is_sharded(task.trainable_module):
            return self._sharded(task, x, target, ce_weight, weight)
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
        step = self.fd_step
        shifted = (x.detach() + step * task.direction(grad)).detach()
        shifted_ce = per_sample_loss_sum(task.criterion, at_least_fp32(task.trainable_module(shifted)), target) / batch
        coef = (ce_weight - weight / step) / batch
        pairs = [(p, g) for p, g in zip(params, grads[1:]) if g is not None]
        injected = _GradientInjection.apply(len(pairs), coef, *[p for p, _ in pairs], *[g for _, g in pairs]) if pairs else 0.0
        value = ce_weight * ce + weight * penalty.detach()
        loss = value + (weight / step) * (shifted_ce - shifted_ce.detach()) + injected
        return {'loss': loss, 'output': output.detach(), 'ce': ce, 'penalty': penalty.detach(), 'weight': weight}

    def _sharded(self, task: Any, x: torch.Tensor, target: torch.Tensor, ce_weight: float,
                 weight: float) -> Dict[str, torch.Tensor]:
        """The finite difference on an FSDP2-sharded model: both passes' parameter gradients from one ordinary
        backward.

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
        step = self.fd_step
        shifted = (x.detach() + step * task.direction(grad)).detach()
        shifted_ce = per_sample_loss_sum(task.criterion, at_least_fp32(module(shifted)), target) / batch
        value = ce_weight * ce.detach() + weight * penalty.detach()
        loss = value + (ce_weight - weight / step) * (ce - ce.detach()) + (weight / step) * (shifted_ce - shifted_ce.detach())
        return {'loss': loss, 'output': output.detach(), 'ce': ce.detach(), 'penalty': penalty.detach(), 'weight': weight}

    def extra_repr(self) -> str:
        return f'fd_step={self.fd_step}'


def create_penalty_gradient(name: str, **kwargs) -> PenaltyGradientRule:
    """The parameter-gradient rule ``name`` (``PENALTY_GRADIENTS``) built from its options."""
    return create_part(PENALTY_GRADIENTS, SWITCH, name, kwargs)
