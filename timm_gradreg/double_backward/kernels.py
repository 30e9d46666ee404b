"""Differentiable functions run as ``torch.compile``d kernels.

The first backward of a twice-differentiated op is itself differentiated. Written as a
plain function of tensors and compiled, it runs as a few fused kernels, and AOTAutograd
compiles its derivative into a few more, instead of the chains of elementwise kernels
that PyTorch's native double-backward formulas launch.
"""
import warnings
from typing import Any, Callable, Optional

import torch

from ..utils._private import quiet_cuda_home_notice, recompile_limit, torch_function_disabled

__all__ = ['CompiledKernel']

#: Graphs one kernel may compile (one per input shape; a network has a handful of layer sizes).
MAX_GRAPHS_PER_KERNEL = 64

quiet_cuda_home_notice()


class CompiledKernel:
    """``fn`` run as a ``torch.compile``d graph, compiled for each input shape it meets.

    Shapes are static: on CPU, inductor's kernels for dynamic shapes run about half as fast, and a
    network has only a handful of distinct layer sizes (each compiles once, up to
    ``MAX_GRAPHS_PER_KERNEL``). Called on tensors that require grad, AOTAutograd compiles the
    derivative too. If compiling fails (no C++ compiler for CPU kernels, an unsupported
    platform) it warns once and runs ``fn`` eagerly from then on: same values, more kernels.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._compiled: Optional[Callable[..., Any]] = None
        self._failed = False

    def __call__(self, *args: Any) -> Any:
        if not self._failed:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn, dynamic=False)
                with recompile_limit(MAX_GRAPHS_PER_KERNEL), \
                        torch_function_disabled():  # not traced through double_backward_safe's mode
                    return self._compiled(*args)
            except Exception as e:  # compile errors vary by backend; the eager result is identical
                self._failed = True
                warnings.warn(f'{self.fn.__name__}: torch.compile failed ({type(e).__name__}: {e}); '
                              'running it as eager kernels.', stacklevel=2)
        return self.fn(*args)
