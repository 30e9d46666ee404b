"""What a registered task cannot be combined with, decided in one place from its registry entry.

timm-train (``train.args.check_args``), gradreg-launch (before timm's train.py runs) and the task itself
(``GradRegTask.compile``) call ``check_task_setup``; each refusal is one line naming the combination, why it
cannot work and what to use instead.
"""
from typing import Any, Mapping, Optional

import torch.nn as nn

from ..utils._private import compile_mode_names
from ._registry import create_task, task_info

__all__ = ['TaskSetupError', 'CompileModeError', 'check_task_setup', 'check_task_options', 'check_compile_mode',
           'DISTILLATION_REFUSAL']

#: timm's knowledge distillation builds its own task, which would take the place of the gradreg task
DISTILLATION_REFUSAL = ('--kd-model-name: knowledge distillation trains timm\'s own distillation task, which takes '
                        'the place of the gradreg task; distill through gradreg-launch (timm\'s train.py) with '
                        '--gradreg natural.')

_HALF = ('float16', 'bfloat16')


class TaskSetupError(ValueError):
    """A task combined with an option it cannot run under; the message is one line."""


class CompileModeError(ValueError):
    """A ``torch.compile`` mode that cannot be used: unknown to torch, or given without a backend."""


def check_compile_mode(mode: Optional[str], backend: Optional[str] = 'inductor') -> None:
    """Refuse a ``torch.compile`` mode that torch does not know (naming the ones it does), or one
    given without a backend to compile with (``--torchcompile-mode`` without ``--torchcompile``)."""
    if mode is None:
        return
    if not backend:
        raise CompileModeError(f'--torchcompile-mode {mode} has no effect without --torchcompile: add '
                               '--torchcompile, or drop the mode.')
    valid = compile_mode_names()
    if mode not in valid:
        raise CompileModeError(f"unknown torch.compile mode {mode!r}; valid: {', '.join(valid)}")


def check_task_setup(name: str, kwargs: Mapping[str, Any], *, compile: Optional[str] = None,
                     torchscript: bool = False, model_dtype: Optional[str] = None, amp: bool = False,
                     sync_bn: bool = False, distill: bool = False) -> None:
    """Refuse what task ``name`` built with ``kwargs`` (``create_task`` options) cannot run under.

    Args:
        compile: The torch.compile backend, if the model or task is compiled.
        torchscript: The model is scripted.
        model_dtype: The weights' dtype ('float16', 'bfloat16', 'float64', ...), if not float32.
        amp: Mixed precision (autocast).
        sync_bn: BatchNorm statistics synchronized across processes while BatchNorm trains.
        distill: timm's knowledge distillation is asked for (``--kd-model-name``).
    """
    entry = task_info(name)
    double_backprop = entry.needs_double_backprop(kwargs)
    first_order = entry.first_order_kwargs or {}
    first_order_repr = ', '.join(f'{k}={v!r}' for k, v in first_order.items())
    if distill and name != 'natural':
        raise TaskSetupError(DISTILLATION_REFUSAL)
    if compile and double_backprop:
        alternative = f' or use {entry.first_order_flags()} ({first_order_repr})' if first_order else ''
        raise TaskSetupError(f'--torchcompile cannot be used with --gradreg {name}: torch.compile does not support the '
                             f'double backward it needs. Train without --torchcompile{alternative}.')
    if torchscript and double_backprop:
        raise TaskSetupError(f'--torchscript cannot be used with --gradreg {name}: a scripted model runs no '
                             'Python-level ops, and double backprop needs the rewritten ones. Use --torchcompile with '
                             'a first-order method, or drop --torchscript.')
    if sync_bn and double_backprop:
        alternative = f', train by its first-order form ({first_order_repr})' if first_order else ''
        raise TaskSetupError(f"--sync-bn cannot be used with --gradreg {name}: it needs double backprop, and torch's "
                             'SyncBatchNorm backward (an all-reduce and batch_norm_backward_elemt) is not '
                             f'differentiable. Freeze BatchNorm (--bn-eval, as the paper does){alternative}, or drop '
                             '--sync-bn.')
    if double_backprop and model_dtype in _HALF:
        raise TaskSetupError(f'--model-dtype {model_dtype} cannot be used with --gradreg {name}: per-pixel input '
                             'gradients underflow in low-precision weights. Use --amp --amp-dtype bfloat16.')
    limit = entry.precision_limit
    if limit and limit.applies(kwargs) and (amp or limit.weights and model_dtype in _HALF):
        raise TaskSetupError(limit.message.format(option='--amp' if amp else f'--model-dtype {model_dtype}'))


def check_task_options(name: str, kwargs: Mapping[str, Any]) -> None:
    """Run the task's own checks of its options (those of its constructor, e.g. an option another one excludes)
    before a model is built, so a front end can refuse them in one line; raises their ValueError."""
    create_task(name, nn.Identity(), verbose=False, **kwargs)
