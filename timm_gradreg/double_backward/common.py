"""Helpers shared by the twice-differentiable ops: argument binding and autograd queries."""
from typing import Any, Dict, Sequence

import torch

from ..utils._private import engine_will_execute

__all__ = ['bind_args', 'gradient_needed', 'record_inputs']


def bind_args(names: Sequence[str], defaults: Dict[str, Any], args: tuple, kwargs: dict) -> Dict[str, Any]:
    """A torch function's arguments by name, as ``__torch_function__`` received them."""
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def record_inputs(ctx: Any, *inputs: Any) -> None:
    """Note in a custom Function's forward which inputs are tensors, for ``gradient_needed``.

    Autograd links only tensor inputs to the graph, so ``ctx.next_functions`` skips the others
    (None, numbers, shapes).
    """
    ctx.graph_position = {index: position for position, index in
                          enumerate(i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor))}


def gradient_needed(ctx: Any, index: int) -> bool:
    """Whether the backward in progress needs the gradient of input ``index`` of a custom Function
    (whose forward called ``record_inputs``).

    False also for inputs that require grad but that ``autograd.grad`` was not asked about
    (the weights while taking an input gradient).
    """
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[ctx.graph_position[index]][0]
    if node is None:
        return False
    return engine_will_execute(node)
