"""Softmax whose input gradient is one compiled kernel.

Softmax's native double backward is a chain of elementwise kernels over the whole
attention matrix (strided ones, as the batched matmuls' gradients arrive), a large share of a
transformer's double backprop. Here the forward is the native kernel; under ``create_graph``
the backward is a ``CompiledKernel`` of the saved output, whose derivative AOTAutograd
compiles.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..utils._private import autocast_enabled, softmax_backward
from .common import bind_args
from .kernels import CompiledKernel

__all__ = ['softmax', 'twice_differentiable_softmax']


def _softmax_input_grad(grad_out: torch.Tensor, probs: torch.Tensor, dim: int) -> torch.Tensor:
    """∂/∂x of softmax(x) along ``dim`` applied to ``grad_out``: p ⊙ (g − Σ g ⊙ p)."""
    return probs * (grad_out - (grad_out * probs).sum(dim, keepdim=True))


_SOFTMAX_INPUT_GRAD = CompiledKernel(_softmax_input_grad)


class _Softmax(torch.autograd.Function):
    """Native softmax; its backward under ``create_graph`` is the compiled ``_softmax_input_grad``."""

    @staticmethod
    def forward(ctx, x, dim):
        probs = torch.softmax(x, dim)
        ctx.save_for_backward(probs)
        ctx.dim = dim
        return probs

    @staticmethod
    def backward(ctx, grad_out):
        (probs,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this gradient will be differentiated
            return _SOFTMAX_INPUT_GRAD(grad_out, probs, ctx.dim), None
        return softmax_backward(grad_out, probs, ctx.dim), None


def twice_differentiable_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.softmax(x, dim)`` with the compiled double backward (fp32 / fp64 ``x``)."""
    return _Softmax.apply(x, dim if dim >= 0 else dim + x.ndim)


_F_SOFTMAX_ARGS = ('input', 'dim', '_stacklevel', 'dtype')
_SOFTMAX_ARGS = ('input', 'dim', 'dtype')  # torch.softmax, Tensor.softmax


def softmax(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """Softmax with a compiled double backward; None (native) with a ``dtype``, an implicit ``dim``,
    under autocast, or for dtypes other than fp32 / fp64."""
    bound = bind_args(_F_SOFTMAX_ARGS if func is F.softmax else _SOFTMAX_ARGS, {'dim': None, 'dtype': None},
                      args, kwargs)
    x, dim, dtype = bound['input'], bound['dim'], bound['dtype']
    if (dtype is not None or not isinstance(dim, int) or not isinstance(x, torch.Tensor)
            or x.dtype not in (torch.float32, torch.float64) or autocast_enabled(x.device.type)):
        return None
    return twice_differentiable_softmax(x, dim)
