"""Every private torch and timm API the package uses, each behind a guard with a public fallback.

The fallbacks compute the same values (more slowly, or without an optimization), so a release
that renames or drops one of these still trains correctly. The aten operators called directly
(``torch.ops.aten.convolution_backward``, ``gelu_backward``, ``silu_backward``,
``native_layer_norm_backward``) are the public operator registry, not listed here.
"""
import contextlib
from typing import Any, ContextManager, List

import torch

__all__ = ['engine_will_execute', 'foreach_mul_', 'compile_mode_names', 'recompile_limit', 'torch_function_disabled',
           'softmax_backward', 'timm_activation_names']

#: The modes ``torch.compile(mode=...)`` documents; used where torch cannot list its own.
_DOCUMENTED_COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def engine_will_execute(node: Any) -> bool:
    """Whether the running backward will execute autograd ``node`` (True when torch cannot tell).

    Lets a custom Function skip gradients the caller did not ask for (the weights while
    ``autograd.grad`` takes an input gradient).
    """
    query = getattr(torch._C, '_will_engine_execute_node', None)
    if query is None:
        return True
    try:
        return bool(query(node))
    except RuntimeError:  # called outside a backward pass
        return True


def foreach_mul_(tensors: List[torch.Tensor], factor: Any) -> None:
    """In-place ``t *= factor`` for each tensor, as one multi-tensor kernel where torch has it."""
    kernel = getattr(torch, '_foreach_mul_', None)
    if kernel is not None:
        kernel(tensors, factor)
        return
    for t in tensors:
        t.mul_(factor)


def compile_mode_names() -> List[str]:
    """The mode names ``torch.compile`` accepts."""
    try:
        from torch._inductor import list_mode_options
        return list(list_mode_options())
    except (ImportError, AttributeError):
        return list(_DOCUMENTED_COMPILE_MODES)


def recompile_limit(limit: int) -> ContextManager:
    """Let a compiled function keep up to ``limit`` graphs (one per input shape)."""
    config = getattr(getattr(torch, '_dynamo', None), 'config', None)
    for name in ('recompile_limit', 'cache_size_limit'):  # renamed in torch 2.6
        if config is not None and hasattr(config, name):
            return config.patch(**{name: limit})
    return contextlib.nullcontext()


def torch_function_disabled() -> ContextManager:
    """Run without ``__torch_function__`` modes (a compiled kernel must not be traced through them)."""
    disable = getattr(torch._C, 'DisableTorchFunction', None)
    return disable() if disable is not None else contextlib.nullcontext()


def softmax_backward(grad_out: torch.Tensor, probs: torch.Tensor, dim: int) -> torch.Tensor:
    """Input gradient of softmax from its output: ``probs·(grad_out − Σ grad_out·probs)`` along ``dim``."""
    kernel = getattr(torch, '_softmax_backward_data', None)
    if kernel is not None:
        return kernel(grad_out, probs, dim, probs.dtype)
    return probs * (grad_out - (grad_out * probs).sum(dim, keepdim=True))



def timm_activation_names() -> List[str]:
    """The activation names timm's ``get_act_layer`` / ``create_act_layer`` know."""
    try:
        from timm.layers.create_act import _ACT_LAYER_DEFAULT
        return sorted(_ACT_LAYER_DEFAULT)
    except ImportError:  # names are still validated by get_act_layer; only the listing is lost
        return []
