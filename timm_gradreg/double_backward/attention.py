"""``F.scaled_dot_product_attention`` as its math formulation with a compiled softmax double backward.

The fused SDPA kernels (flash, memory-efficient) have no double backward, and the math
kernel's runs softmax's second derivative as a chain of strided elementwise kernels over the
attention matrix. Written out here (scaled ``q·kᵀ``, mask, softmax, ``·v``), the matrix
products keep their native derivatives and softmax gets the compiled one of ``softmax``. A fused
forward with a compiled backward that recomputes the attention matrix measured no faster (it
needs more matrix products in the double backward) and took more memory. One node whose whole
input gradient (the five products, softmax's gradient between them, the packed ``qkv`` gradient)
was a single compiled graph measured no faster either.

Where ``q, k, v`` are timm's split of one packed projection, they are taken from it directly
(``_SplitHeads``): the gradients go back into the packed layout with one ``stack``, where the
``unbind``/``permute``/``reshape`` chain takes a stack and then a copy: ViT-S double backprop
0.8% faster per step on CPU (16 rounds, the two versions alternating which runs first).
"""
import math
from typing import Callable, Optional, Tuple

import torch

from .common import bind_args
from .softmax import twice_differentiable_softmax

__all__ = ['attention']


def packed_projection(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[torch.Tensor]:
    """The contiguous (B, N, 3·H·D) projection whose split ``q, k, v`` are, or None.

    The split is timm's, ``qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``, and
    ``q``, ``k``, ``v`` are used as the ``unbind`` gave them (it is still their shared ``grad_fn``).
    """
    node = q.grad_fn
    base = q._base
    if (q.ndim != 4 or node is None or type(node).__name__ != 'UnbindBackward0' or k.grad_fn is not node
            or v.grad_fn is not node or base is None or k._base is not base or v._base is not base):
        return None
    b, h, n, d = q.shape
    offset = base.storage_offset()
    if (not base.is_contiguous() or base.numel() != 3 * b * h * n * d
            or q.stride() != (n * 3 * h * d, d, 3 * h * d, 1)
            or (q.storage_offset(), k.storage_offset(), v.storage_offset()) != (offset, offset + h * d,
                                                                                 offset + 2 * h * d)):
        return None
    return base


class _SplitHeads(torch.autograd.Function):
    """Contiguous (B, H, N, D) ``q·scale``, ``k`` and ``v`` of a packed projection.

    The backward writes the three gradients into the packed layout with one ``stack`` of
    transposed views; it is made of differentiable ops, so double backward goes through it.
    """

    @staticmethod
    def forward(ctx, packed: torch.Tensor, shape: Tuple[int, int, int, int], scale: float):
        b, h, n, d = shape
        ctx.packed_shape, ctx.scale = packed.shape, scale
        heads = packed.view(b, n, 3, h, d)
        return (heads[:, :, 0].transpose(1, 2) * scale, heads[:, :, 1].transpose(1, 2).contiguous(),
                heads[:, :, 2].transpose(1, 2).contiguous())

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        grads = (grad_q * ctx.scale, grad_k, grad_v)
        return torch.stack([g.transpose(1, 2) for g in grads], dim=2).view(ctx.packed_shape), None, None


_SDPA_ARGS = ('query', 'key', 'value', 'attn_mask', 'dropout_p', 'is_causal', 'scale', 'enable_gqa')
_SDPA_DEFAULTS = {'attn_mask': None, 'dropout_p': 0.0, 'is_causal': False, 'scale': None, 'enable_gqa': False}


def attention(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """softmax(q·kᵀ·scale + mask)·v with a compiled softmax double backward; None (the math kernel) for
    dropout, causal or grouped-query attention, boolean masks, autocast and dtypes other than fp32 / fp64."""
    sdpa = bind_args(_SDPA_ARGS, _SDPA_DEFAULTS, args, kwargs)
    q, k, v, mask = sdpa['query'], sdpa['key'], sdpa['value'], sdpa['attn_mask']
    tensors = [q, k, v] + ([mask] if mask is not None else [])
    if (sdpa['dropout_p'] or sdpa['is_causal'] or sdpa['enable_gqa'] or torch.is_autocast_enabled(q.device.type)
            or q.dtype not in (torch.float32, torch.float64) or any(t.dtype != q.dtype for t in tensors)):
        return None
    scale = sdpa['scale'] if sdpa['scale'] is not None else 1.0 / math.sqrt(q.shape[-1])
    packed = packed_projection(q, k, v)
    if packed is not None:
        q, k, v = _SplitHeads.apply(packed, tuple(q.shape), scale)
    else:
        q = q * scale
    scores = torch.matmul(q, k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    return torch.matmul(twice_differentiable_softmax(scores, -1), v)
