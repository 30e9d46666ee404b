"""``F.scaled_dot_product_attention`` with a fused forward and a compiled, differentiable backward.

The fused SDPA kernels (flash, memory-efficient) have no double backward, and the math kernel,
which has one, materialises the attention matrix in the forward and differentiates softmax
through a chain of elementwise kernels on it (strided, as the batched matmuls' gradients
arrive). Here the forward is the fused kernel, and the backward recomputes the attention
matrix in a ``CompiledKernel``, whose derivative AOTAutograd compiles.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .common import bind_args, gradient_needed, record_inputs
from .kernels import CompiledKernel

__all__ = ['attention']

_SDPA_ARGS = ('query', 'key', 'value', 'attn_mask', 'dropout_p', 'is_causal', 'scale', 'enable_gqa')
_SDPA_DEFAULTS = {'attn_mask': None, 'dropout_p': 0.0, 'is_causal': False, 'scale': None, 'enable_gqa': False}


def _attention_grads(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor], scale: float, mask_grad: bool) -> Tuple[torch.Tensor, ...]:
    """∂/∂(q, k, v) of softmax(q·kᵀ·scale + mask)·v, and with ``mask_grad`` ∂/∂mask."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)
    grad_probs = torch.matmul(grad_out, v.transpose(-2, -1))
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
    grad_q = torch.matmul(grad_scores, k) * scale
    grad_k = torch.matmul(grad_scores.transpose(-2, -1), q) * scale
    if mask_grad:
        return grad_q, grad_k, grad_v, grad_scores.sum_to_size(mask.shape)
    return grad_q, grad_k, grad_v


_ATTENTION_GRADS = CompiledKernel(_attention_grads)


def _fused_backends() -> list:
    from torch.nn.attention import SDPBackend
    return [b for b in (getattr(SDPBackend, name, None) for name in
                        ('CUDNN_ATTENTION', 'FLASH_ATTENTION', 'EFFICIENT_ATTENTION', 'MATH')) if b is not None]


class _Attention(torch.autograd.Function):
    """Fused-kernel attention whose backward is the compiled ``_attention_grads``."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        from torch.nn.attention import sdpa_kernel
        record_inputs(ctx, q, k, v, mask, scale)
        ctx.save_for_backward(q, k, v, mask)
        ctx.scale = scale
        with sdpa_kernel(_fused_backends()):  # double_backward_safe allows only the math kernel elsewhere
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask = ctx.saved_tensors
        mask_grad = mask is not None and gradient_needed(ctx, 3)
        grads = _ATTENTION_GRADS(grad_out, q, k, v, mask, ctx.scale, mask_grad)
        return grads[0], grads[1], grads[2], grads[3] if mask_grad else None, None


def attention(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """``F.scaled_dot_product_attention`` with a fused forward and compiled double backward; None (the
    math kernel) for dropout, causal or grouped-query attention, boolean masks, autocast and
    dtypes other than fp32 / fp64."""
    sdpa = bind_args(_SDPA_ARGS, _SDPA_DEFAULTS, args, kwargs)
    q, k, v, mask = sdpa['query'], sdpa['key'], sdpa['value'], sdpa['attn_mask']
    tensors = [q, k, v] + ([mask] if mask is not None else [])
    if (sdpa['dropout_p'] or sdpa['is_causal'] or sdpa['enable_gqa'] or torch.is_autocast_enabled(q.device.type)
            or q.dtype not in (torch.float32, torch.float64) or any(t.dtype != q.dtype for t in tensors)):
        return None
    scale = sdpa['scale'] if sdpa['scale'] is not None else 1.0 / math.sqrt(q.shape[-1])
    return _Attention.apply(q, k, v, mask, float(scale))
