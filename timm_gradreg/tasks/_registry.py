"""Name -> task registry: each task's class and its options, and the factory that builds it."""
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn

from ..utils.registry import Registry, closest
from .options import Option, options_to_kwargs, resolve_default, unique_options

__all__ = ['register_task', 'list_tasks', 'get_task_class', 'create_task', 'task_parameters', 'task_options',
           'task_kwargs', 'all_task_options', 'task_info', 'TaskEntry', 'PrecisionLimit']


@dataclass(frozen=True)
class PrecisionLimit:
    """A task whose step loses its digits in half precision: refused under ``--amp`` (and, with ``weights``,
    half-precision weights) when its options match ``when`` (always where it is empty). ``message`` is the
    refusal, with ``{option}`` for the option that asked for half precision."""
    message: str
    when: Mapping[str, Any] = field(default_factory=dict)
    weights: bool = False

    def applies(self, kwargs: Mapping[str, Any]) -> bool:
        return all(kwargs.get(k) == v for k, v in self.when.items())


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its class, its options, the title of their help group, and what it needs of autograd
    and precision (as timm's ``OptimInfo`` declares ``second_order``).

    ``double_backprop``: the task differentiates an input gradient (``create_graph``), so torch.compile,
    TorchScript, half-precision weights and SyncBatchNorm cannot run it; ``first_order_kwargs``: the options that
    make it first-order (GradNorm by finite differences), where it has such a form; ``precision_limit``: where
    half precision ruins its step. ``tasks.checks.check_task_setup`` reads them.
    """
    cls: type
    options: Tuple[Option, ...]
    title: str
    double_backprop: bool = False
    first_order_kwargs: Optional[Mapping[str, Any]] = None
    precision_limit: Optional[PrecisionLimit] = None

    def needs_double_backprop(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether the task built with these options (``create_task`` kwargs) needs double backprop."""
        first_order = self.first_order_kwargs
        return self.double_backprop and not (first_order and all(kwargs.get(k) == v for k, v in first_order.items()))

    def first_order_flags(self) -> str:
        """The command-line form of ``first_order_kwargs`` ('' where there is none), e.g. '--gn-impl fd'."""
        flags = {option.kwarg: option.flag for option in self.options}
        return ' '.join(f'{flags.get(k, k)} {v}' for k, v in (self.first_order_kwargs or {}).items())


_TASKS: Registry[TaskEntry] = Registry('gradreg task')


def register_task(name: str, options: Sequence[Option] = (), title: Optional[str] = None, *,
                  double_backprop: bool = False, first_order_kwargs: Optional[Mapping[str, Any]] = None,
                  precision_limit: Optional[PrecisionLimit] = None) -> Callable[[type], type]:
    """Class decorator: make the task available to ``create_task(name, ...)`` and its options to every
    front end (timm-train flags and YAML keys, the train.py launcher).

    Args:
        name: Task name (``--gradreg NAME``).
        options: The task's ``Option``s; a flag shared with another task must be declared identically.
        title: Help-group title for the options (default: the name).
        double_backprop: The task needs double backprop (with its default options).
        first_order_kwargs: The options under which it needs none (its first-order form), if any.
        precision_limit: Where half precision ruins its step, if anywhere.
    """
    def _register(cls: type) -> type:
        for option in options:
            resolve_default(option, cls)  # fail at registration, not at parse time
        unique_options([list(options)] + [list(e.options) for n, e in _TASKS.items() if n != name])
        if first_order_kwargs and not double_backprop:
            raise ValueError(f'task {name!r}: first_order_kwargs name the first-order form of a double-backprop task')
        cls.task_name = name
        _TASKS.register(name, TaskEntry(cls, tuple(options), title or name, double_backprop,
                                        dict(first_order_kwargs) if first_order_kwargs else None, precision_limit))
        return cls
    return _register


def list_tasks() -> List[str]:
    """Registered task names, e.g. ['edge', 'fgsm', 'gradnorm', 'natural', 'pgd']."""
    return _TASKS.names()


def get_task_class(name: str) -> type:
    return _TASKS.get(name).cls


def task_info(name: str) -> TaskEntry:
    """The registry entry of a task: its class, options and what it needs of autograd."""
    return _TASKS.get(name)


def task_options(name: str) -> List[Option]:
    """The options a task declares (its flags and the constructor kwargs they set)."""
    return list(_TASKS.get(name).options)


def all_task_options() -> List[Tuple[str, Option, Any]]:
    """(help-group title, option, default) for every flag of every registered task, each flag once."""
    rows, seen = [], set()
    for _, entry in _TASKS.items():
        for option in entry.options:
            if option.flag not in seen:
                seen.add(option.flag)
                rows.append((option.group or entry.title, option, resolve_default(option, entry.cls)))
    return rows


def task_kwargs(name: str, config: Any) -> Dict[str, Any]:
    """``create_task`` keyword arguments from parsed options (a Namespace or a mapping)."""
    return options_to_kwargs(task_options(name), config)


def task_parameters(name: str) -> List[str]:
    """Keyword arguments the task accepts beyond those of timm's ClassificationTask: its constructor's, through
    its base classes, then the options of its parts (taken as keyword arguments by the part chosen)."""
    cls = get_task_class(name)
    params = []
    for klass in cls.__mro__:
        if klass.__module__.startswith('timm.'):
            break
        for p in list(inspect.signature(klass.__init__).parameters.values())[1:]:
            if p.kind == p.KEYWORD_ONLY and p.name not in params:
                params.append(p.name)
    params += [o.kwarg for o in task_options(name) if o.owner is not None and o.kwarg not in params]
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
        names = ', '.join(f"'{key}'" + (f" (did you mean '{closest(key, valid)}'?)" if closest(key, valid) else '')
                          for key in unknown)
        raise TypeError(f"Task '{name}' got unknown option(s) {names}. Valid: {', '.join(valid)}.")
    return cls(model, criterion, **kwargs)
