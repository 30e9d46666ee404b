"""``F.scaled_dot_product_attention`` as its math formulation with a compiled softmax double backward.

The fused SDPA kernels (flash, memory-efficient) have no double backward, and the math
kernel's runs softmax's second derivative as a chain of strided elementwise kernels over the
attention matrix. Written out here (scaled ``q·kᵀ``, mask, softmax, ``·v``), the matrix
products keep their native derivatives and softmax gets the compiled one of ``softmax``.
"""
import math
from typing import Callable, Optional

import torch

from ..utils._private import autocast_enabled
from .common import bind_args
from .softmax import twice_differentiable_softmax

__all__ = ['attention']


_SDPA_ARGS = ('query', 'key', 'value', 'attn_mask', 'dropout_p', 'is_causal', 'scale', 'enable_gqa')
_SDPA_DEFAULTS = {'attn_mask': None, 'dropout_p': 0.0, 'is_causal': False, 'scale': None, 'enable_gqa': False}


def attention(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """softmax(q·kᵀ·scale + mask)·v with a compiled softmax double backward; None (the math kernel) for
    dropout, causal or grouped-query attention, boolean masks, autocast and dtypes other than fp32 / fp64."""
    sdpa = bind_args(_SDPA_ARGS, _SDPA_DEFAULTS, args, kwargs)
    q, k, v, mask = sdpa['query'], sdpa['key'], sdpa['value'], sdpa['attn_mask']
    tensors = [q, k, v] + ([mask] if mask is not None else [])
    if (sdpa['dropout_p'] or sdpa['is_causal'] or sdpa['enable_gqa'] or autocast_enabled(q.device.type)
            or q.dtype not in (torch.float32, torch.float64) or any(t.dtype != q.dtype for t in tensors)):
        return None
    scale = sdpa['scale'] if sdpa['scale'] is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q * scale, k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    return torch.matmul(twice_differentiable_softmax(scores, -1), v)
