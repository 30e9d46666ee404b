"""Name -> task class registry with a factory that explains bad names and arguments."""
import difflib
import inspect
from typing import Callable, Dict, List, Optional

import torch.nn as nn

__all__ = ['register_task', 'list_tasks', 'get_task_class', 'create_task', 'task_parameters']

_TASKS: Dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: make the task available to ``create_task(name, ...)``."""
    def _register(cls: type) -> type:
        cls.task_name = name
        _TASKS[name] = cls
        return cls
    return _register


def list_tasks() -> List[str]:
    """Registered task names, e.g. ['edge', 'fgsm', 'gradnorm', 'natural', 'pgd']."""
    return sorted(_TASKS)


def get_task_class(name: str) -> type:
    if name not in _TASKS:
        close = difflib.get_close_matches(name, _TASKS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"Unknown gradreg task '{name}'. Valid tasks: {', '.join(list_tasks())}.{hint}")
    return _TASKS[name]


def task_parameters(name: str) -> List[str]:
    """Keyword arguments the task accepts beyond those of timm's ClassificationTask."""
    cls = get_task_class(name)
    params = []
    for klass in cls.__mro__:
        if klass.__module__.startswith('timm.'):
            break
        for p in list(inspect.signature(klass.__init__).parameters.values())[1:]:
            if p.kind == p.KEYWORD_ONLY and p.name not in params:
                params.append(p.name)
    return params


def create_task(name: str, model: nn.Module, criterion: Optional[Callable] = None, **kwargs):
    """Build a registered training task around ``model``.

    Args:
        name: One of ``list_tasks()``.
        model: The timm model (or any nn.Module classifier) to train.
        criterion: Training loss; timm's ``create_classification_loss`` default if None.
        **kwargs: Task options (``task_parameters(name)``) and ClassificationTask options
            (``criterion_kwargs``, ``device``, ``dtype``, ``verbose``).

    Example:
        >>> task = create_task('gradnorm', model, ce_weight=0.5, gn_weight=0.5)
        >>> out = task(images, targets); out['loss'].backward()
    """
    cls = get_task_class(name)
    valid = task_parameters(name)
    valid += [k for k in ('criterion_kwargs', 'device', 'dtype', 'verbose') if k not in valid]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        msgs = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            msgs.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ''))
        raise TypeError(f"Task '{name}' got unknown option(s) {', '.join(msgs)}. Valid: {', '.join(valid)}.")
    return cls(model, criterion, **kwargs)
