"""``double_backward_safe``: a torch-function mode routing ops to twice-differentiable, cheap versions."""
import contextlib
from typing import Callable, Dict, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .activation import SMOOTH_ACTIVATIONS, smooth_activation
from .attention import attention
from .conv import eval_batch_norm, fast_conv2d
from .layer_norm import layer_norm
from .softmax import softmax

__all__ = ['double_backward_safe', 'DOUBLE_BACKWARD_OPS']

#: torch function -> handler(func, args, kwargs) returning the result computed with a cheap double
#: backward, or None where the native op (and, for attention, the math kernel) is needed.
DOUBLE_BACKWARD_OPS: Dict[Callable, Callable[[Callable, tuple, dict], Optional[torch.Tensor]]] = {
    **{act: smooth_activation for act in SMOOTH_ACTIVATIONS},
    F.batch_norm: eval_batch_norm,
    F.conv2d: fast_conv2d,
    F.layer_norm: layer_norm,
    F.scaled_dot_product_attention: attention,
    F.softmax: softmax,
    torch.softmax: softmax,
    torch.Tensor.softmax: softmax,
}


class _CheapDoubleBackward(TorchFunctionMode):
    """Routes the ops of ``DOUBLE_BACKWARD_OPS`` to their handlers while autograd records a graph."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = DOUBLE_BACKWARD_OPS.get(func)
        if handler is not None and torch.is_grad_enabled():
            out = handler(func, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def double_backward_safe() -> Iterator[None]:
    """Context in which forward passes can be differentiated twice, and cheaply (package docstring)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(_CheapDoubleBackward())
        yield
