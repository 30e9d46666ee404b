"""Smooth activations (exact GELU, SiLU) whose input gradient is one compiled kernel.

Their native double backward is a chain of some ten elementwise kernels per layer; here the
input gradient under ``create_graph`` is a ``CompiledKernel`` whose derivative AOTAutograd
compiles into one more.
"""
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from .kernels import CompiledKernel

__all__ = ['SMOOTH_ACTIVATIONS', 'smooth_activation']


def _gelu_input_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """gelu'(x)·grad_out for the exact GELU x·Φ(x): (Φ(x) + x·φ(x))·grad_out."""
    cdf = 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5)))
    pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return grad_out * (cdf + x * pdf)


def _silu_input_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """silu'(x)·grad_out for x·σ(x): σ(x)·(1 + x·(1 − σ(x)))·grad_out."""
    sig = torch.sigmoid(x)
    return grad_out * (sig * (1.0 + x * (1.0 - sig)))


@dataclass(frozen=True)
class _SmoothActivation:
    """An activation's native first-order backward, its compiled input gradient, and the keyword
    arguments (with the values) under which it is that function."""
    native_backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    input_grad: CompiledKernel
    plain_kwargs: Dict[str, Any]


#: Smooth activations (what the paper trains) whose double backward is fused.
SMOOTH_ACTIVATIONS: Dict[Callable, _SmoothActivation] = {
    F.gelu: _SmoothActivation(torch.ops.aten.gelu_backward, CompiledKernel(_gelu_input_grad), {'approximate': 'none'}),
    F.silu: _SmoothActivation(torch.ops.aten.silu_backward, CompiledKernel(_silu_input_grad), {'inplace': False}),
}


class _FusedActivation(torch.autograd.Function):
    """An activation whose backward under ``create_graph`` is its compiled input-gradient kernel."""

    @staticmethod
    def forward(ctx, x, func, activation):
        ctx.save_for_backward(x)
        ctx.activation = activation
        return func(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this gradient will be differentiated
            return ctx.activation.input_grad(grad_out, x), None, None
        return ctx.activation.native_backward(grad_out, x), None, None


def smooth_activation(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """``func(*args, **kwargs)`` with a fused double backward, or None where the native one is needed."""
    activation = SMOOTH_ACTIVATIONS[func]
    x = args[0] if len(args) == 1 else None
    if (x is None or any(activation.plain_kwargs.get(k, object()) != v for k, v in kwargs.items())
            or not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad)):
        return None  # tanh GELU, in-place SiLU, positional options: native path
    return _FusedActivation.apply(x, func, activation)
