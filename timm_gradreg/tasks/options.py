"""Task options: the command-line / YAML face of a task's constructor arguments.

A task registers its options next to its class (``register_task(name, options=[...])``);
every front end (timm-train's parser and strict YAML, the stock train.py launcher,
``--dry-run``) reads them from the registry, and ``options_to_kwargs`` turns parsed values
back into ``create_task`` keyword arguments — the pattern of timm's ``optimizer_kwargs(cfg)``
beside ``create_optimizer_v2``.

    >>> EPS = Option('--my-eps', 'eps', type=fraction, help='radius in pixels')
    >>> @register_task('mine', options=[EPS])
    ... class MyTask(GradRegTask): ...
"""
import argparse
import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from ..core.values import attack_count, attack_radius, fraction, number, pixel_amount, sigma_value

__all__ = ['Option', 'fraction', 'number', 'pixel_amount', 'attack_radius', 'attack_count', 'sigma_value', 'FROM_TASK',
           'options_to_kwargs', 'resolve_default', 'unique_options']


class _FromTask:
    """Default marker: the value is the task constructor's own default."""

    def __repr__(self) -> str:
        return 'FROM_TASK'


#: Option default meaning "the constructor default of the (first) task that declares the option".
FROM_TASK = _FromTask()


def format_default(value: Any) -> str:
    """A default as the help shows it: on/off, a fraction of 255 where it is one (4/255), lists spaced."""
    if isinstance(value, bool):
        return 'on' if value else 'off'
    if isinstance(value, (list, tuple)):
        return ' '.join(format_default(v) for v in value)
    if isinstance(value, float):
        in_255 = value * 255
        if value and not value.is_integer() and abs(in_255 - round(in_255)) < 1e-9:
            return f'{round(in_255)}/255'
        return f'{value:g}'
    return str(value)


@dataclass(frozen=True)
class Option:
    """One option of a task: its flag (and YAML key), argparse settings, and the kwarg it sets.

    Args:
        flag: Command-line flag, e.g. '--gn-eps'; the YAML key / namespace attribute is the
            flag without dashes ('gn_eps').
        kwarg: Constructor keyword argument the value is passed as.
        type: Converter (an argparse ``type``); ``bool`` makes a ``--x/--no-x`` switch.
        default: The value when not given; ``FROM_TASK`` reads the constructor default; None
            means "not passed", so the task's own default applies.
        help, metavar, nargs: As for ``argparse.add_argument``.
        choices: Valid values, or a function returning them (read when a parser is built, so names
            registered later are included).
        group: Title of the help group (default: the task's).
    """
    flag: str
    kwarg: str
    type: Optional[Callable[[Any], Any]] = None
    default: Any = FROM_TASK
    help: str = ''
    choices: Union[Sequence[Any], Callable[[], Sequence[Any]], None] = None
    metavar: Optional[str] = None
    nargs: Optional[str] = None
    group: Optional[str] = None

    def __post_init__(self):
        if not self.flag.startswith('--'):
            raise ValueError(f"option flag must start with '--', got {self.flag!r}")

    @property
    def dest(self) -> str:
        return self.flag[2:].replace('-', '_')

    def to(self, kwarg: str) -> 'Option':
        """The same flag, passed to a task as another keyword argument."""
        return replace(self, kwarg=kwarg)

    def argparse_kwargs(self, default: Any) -> Dict[str, Any]:
        """``add_argument`` keywords; the help ends with the default read from the task (one source)."""
        shown = self.help
        if default is not None and '(default' not in shown:
            shown = f'{shown} (default: {format_default(default)})'
        kwargs: Dict[str, Any] = dict(dest=self.dest, default=default, help=shown)
        if self.type is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
            return kwargs
        for key in ('type', 'choices', 'metavar', 'nargs'):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        if self.choices is not None:
            kwargs['choices'] = list(self.choices() if callable(self.choices) else self.choices)
        return kwargs

    def same_argument(self, other: 'Option') -> bool:
        """Whether two declarations define the same flag identically (they may set different kwargs)."""
        return replace(self, kwarg='') == replace(other, kwarg='')


def resolve_default(option: Option, cls: type) -> Any:
    """The option's default; ``FROM_TASK`` looks it up in ``cls``'s constructor signature."""
    if option.default is not FROM_TASK:
        return option.default
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(option.kwarg)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise TypeError(f'option {option.flag}: {cls.__name__} has no default for {option.kwarg!r}; give Option(default=...)')


def options_to_kwargs(options: Iterable[Option], config: Any) -> Dict[str, Any]:
    """Keyword arguments from parsed values (an argparse Namespace or a mapping); None is left out."""
    values = config if isinstance(config, dict) else vars(config)
    kwargs = {}
    for option in options:
        value = values.get(option.dest)
        if value is not None:
            kwargs[option.kwarg] = value
    return kwargs


def unique_options(option_lists: Iterable[List[Option]]) -> List[Option]:
    """Options by flag, each once; a flag declared twice must be declared the same way."""
    seen: Dict[str, Option] = {}
    for options in option_lists:
        for option in options:
            first = seen.setdefault(option.flag, option)
            if not first.same_argument(option):
                raise ValueError(f'option {option.flag} is declared twice with different settings')
    return list(seen.values())
