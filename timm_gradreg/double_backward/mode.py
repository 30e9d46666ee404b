"""``double_backward_safe``: a torch-function mode routing ops to twice-differentiable, cheap versions."""
import contextlib
import threading
from typing import Callable, Dict, Iterator, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import noop_context_fn

from .activation import SMOOTH_ACTIVATIONS, smooth_activation
from .attention import attention
from .conv import eval_batch_norm, fast_conv2d
from .layer_norm import layer_norm
from .softmax import softmax

__all__ = ['double_backward_safe', 'DOUBLE_BACKWARD_OPS', 'ReentrantCheckpointError']

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


class ReentrantCheckpointError(RuntimeError):
    """Reentrant activation checkpointing inside a forward that is differentiated twice."""


def _checkpoint_recomputed_in_mode(function, *args, use_reentrant: Optional[bool] = None,
                                   context_fn: Callable = noop_context_fn, **kwargs):
    """torch's ``checkpoint`` whose recomputation runs in ``double_backward_safe`` as its forward did.

    Non-reentrant checkpointing (timm's default) recomputes a segment when a backward unpacks its saved
    tensors, with whatever torch-function modes that backward runs under; the optimizer's backward runs
    outside this context, so without this the recomputation would take the native ops, save other
    tensors and fail torch's check. Reentrant checkpointing supports no ``torch.autograd.grad`` at all.
    """
    if use_reentrant:
        raise ReentrantCheckpointError(
            'reentrant activation checkpointing cannot be differentiated twice (torch.autograd.grad is not '
            "supported by it): use timm's default, non-reentrant checkpointing (timm.layers.set_reentrant_ckpt(False))")

    def contexts():
        forward, recompute = context_fn()
        return forward, _RecomputeInMode(recompute)

    return _TORCH_CHECKPOINT(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)


class _RecomputeInMode:
    """The recomputation context of a checkpoint taken in ``double_backward_safe``: the caller's own
    recomputation context, then the mode. Entered once per recomputation (each backward recomputes)."""

    def __init__(self, recompute):
        self.recompute = recompute
        self._stacks = []

    def __enter__(self):
        stack = contextlib.ExitStack()
        stack.enter_context(self.recompute)
        stack.enter_context(double_backward_safe())
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc):
        return self._stacks.pop().__exit__(*exc)


_TORCH_CHECKPOINT = torch.utils.checkpoint.checkpoint
_active = threading.local()


@contextlib.contextmanager
def double_backward_safe() -> Iterator[None]:
    """Context in which forward passes can be differentiated twice, and cheaply (package docstring).

    Activation checkpoints taken inside it (timm's ``--grad-checkpointing``) recompute in it too.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(_CheapDoubleBackward())
        stack.enter_context(_checkpoints_recomputed_in_mode())
        yield


@contextlib.contextmanager
def _checkpoints_recomputed_in_mode() -> Iterator[None]:
    """``torch.utils.checkpoint.checkpoint`` (which timm's checkpoint helpers call) recomputes in this mode while
    the outermost ``double_backward_safe`` is open."""
    depth = getattr(_active, 'depth', 0)
    if depth == 0:
        torch.utils.checkpoint.checkpoint = _checkpoint_recomputed_in_mode
    _active.depth = depth + 1
    try:
        yield
    finally:
        _active.depth = depth
        if depth == 0:
            torch.utils.checkpoint.checkpoint = _TORCH_CHECKPOINT
