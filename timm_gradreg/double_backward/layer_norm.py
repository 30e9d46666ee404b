"""``F.layer_norm`` whose input gradient is one compiled kernel.

LayerNorm's native double backward (``native_layer_norm_backward``'s derivative) is a long
chain of elementwise and reduction kernels per layer, a large share of a transformer's double
backprop. Here the forward is the native kernel; under ``create_graph`` the backward is a
``CompiledKernel`` that recomputes the statistics, so its derivative, which AOTAutograd
compiles, carries the second-order terms through them.
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from ..utils._private import autocast_enabled
from .common import bind_args, gradient_needed, record_inputs
from .kernels import CompiledKernel

__all__ = ['layer_norm']

_LAYER_NORM_ARGS = ('input', 'normalized_shape', 'weight', 'bias', 'eps')
_LAYER_NORM_DEFAULTS = {'weight': None, 'bias': None, 'eps': 1e-5}


def _layer_norm_grads(grad_out: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
                      ndim: int, affine_grads: bool) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """∂/∂x of LayerNorm over the last ``ndim`` dims, and with ``affine_grads`` ∂/∂weight and ∂/∂bias."""
    dims = tuple(range(-ndim, 0))
    mean = x.mean(dims, keepdim=True)
    centered = x - mean
    rstd = torch.rsqrt(centered.square().mean(dims, keepdim=True) + eps)
    normalized = centered * rstd
    grad_normalized = grad_out * weight if weight is not None else grad_out
    grad_x = rstd * (grad_normalized - grad_normalized.mean(dims, keepdim=True)
                     - normalized * (grad_normalized * normalized).mean(dims, keepdim=True))
    if not affine_grads:
        return grad_x
    batch_dims = tuple(range(x.ndim - ndim))
    return grad_x, (grad_out * normalized).sum(batch_dims), grad_out.sum(batch_dims)


_LAYER_NORM_GRADS = CompiledKernel(_layer_norm_grads)


class _LayerNorm(torch.autograd.Function):
    """Native LayerNorm; its backward under ``create_graph`` is the compiled ``_layer_norm_grads``."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        record_inputs(ctx, x, normalized_shape, weight, bias, eps)
        out, mean, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.normalized_shape, ctx.eps = normalized_shape, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        need_weight = weight is not None and gradient_needed(ctx, 2)
        need_bias = bias is not None and gradient_needed(ctx, 3)
        if not torch.is_grad_enabled():  # first-order backward: the native kernel
            grads = torch.ops.aten.native_layer_norm_backward(
                grad_out, x, ctx.normalized_shape, mean, rstd, weight, bias,
                [gradient_needed(ctx, 0), need_weight, need_bias])
            return grads[0], None, grads[1], grads[2], None
        if not (need_weight or need_bias):
            grad_x = _LAYER_NORM_GRADS(grad_out, x, weight, ctx.eps, len(ctx.normalized_shape), False)
            return grad_x, None, None, None, None
        grad_x, grad_weight, grad_bias = _LAYER_NORM_GRADS(
            grad_out, x, weight, ctx.eps, len(ctx.normalized_shape), True)
        return grad_x, None, grad_weight if need_weight else None, grad_bias if need_bias else None, None


def layer_norm(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """``F.layer_norm`` with a compiled double backward; None (native) under autocast, whose dtype
    policy for it differs by device, and for dtypes other than fp32 / fp64."""
    ln = bind_args(_LAYER_NORM_ARGS, _LAYER_NORM_DEFAULTS, args, kwargs)
    x, weight, bias = ln['input'], ln['weight'], ln['bias']
    tensors = [t for t in (x, weight, bias) if t is not None]
    if (autocast_enabled(x.device.type) or x.dtype not in (torch.float32, torch.float64)
            or any(t.dtype != x.dtype for t in tensors)):
        return None
    shape = ln['normalized_shape']
    normalized_shape = tuple(shape) if isinstance(shape, Sequence) else (int(shape),)
    return _LayerNorm.apply(x, normalized_shape, weight, bias, float(ln['eps']))
