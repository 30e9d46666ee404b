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
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..core.values import attack_count, attack_radius, fraction, number, pixel_amount, sigma_value

__all__ = ['Option', 'fraction', 'number', 'pixel_amount', 'attack_radius', 'attack_count', 'sigma_value', 'FROM_TASK',
           'options_to_kwargs', 'resolve_default', 'unique_options', 'TaskPart', 'register_part', 'create_part',
           'part_options']


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
        short = f'{value:g}'
        if value.is_integer() or len(short.lstrip('0.').replace('.', '')) <= 3:  # 0.8, 0.225: as they are
            return short
        for divisor, suffix in ((255, '/255'), (765, '/255/3')):  # 4/255, 8/255/3: as ε and steps are written
            scaled = value * divisor
            if abs(scaled - round(scaled)) < 1e-9:
                return f'{round(scaled)}{suffix}'
        return short
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
        aliases: Older flags that still work (a config may use their key).
        owner: The class whose constructor takes the value and holds its default (None: the task's); set by
            ``register_part`` for the options of a task's part.
        applies: (switch, value): the option is used only when the task option ``switch`` is ``value`` (the
            part it builds is chosen); set by ``register_part``.
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
    aliases: Tuple[str, ...] = ()
    owner: Optional[type] = None
    applies: Optional[Tuple[str, Any]] = None

    def __post_init__(self):
        for flag in (self.flag, *self.aliases):
            if not flag.startswith('--'):
                raise ValueError(f"option flag must start with '--', got {flag!r}")

    @property
    def flags(self) -> Tuple[str, ...]:
        """The flag and its aliases, as ``add_argument`` takes them."""
        return (self.flag, *self.aliases)

    @property
    def alias_dests(self) -> Tuple[str, ...]:
        """The config keys of the aliases."""
        return tuple(a[2:].replace('-', '_') for a in self.aliases)

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
        """Whether two declarations define the same flag identically (they may set different kwargs, of
        different classes)."""
        def argument(option):
            return replace(option, kwarg='', owner=None, applies=None)
        return argument(self) == argument(other)


def resolve_default(option: Option, cls: type) -> Any:
    """The option's default; ``FROM_TASK`` looks it up in the constructor signature of its owner (a task's part)
    or of ``cls``."""
    if option.default is not FROM_TASK:
        return option.default
    cls = option.owner or cls
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(option.kwarg)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise TypeError(f'option {option.flag}: {cls.__name__} has no default for {option.kwarg!r}; give Option(default=...)')


def options_to_kwargs(options: Iterable[Option], config: Any) -> Dict[str, Any]:
    """Keyword arguments from parsed values (an argparse Namespace or a mapping); None is left out, and so are
    the options of a part that the run does not choose."""
    options = list(options)
    values = config if isinstance(config, dict) else vars(config)
    chosen = {option.kwarg: values.get(option.dest) for option in options if option.applies is None}
    kwargs = {}
    for option in options:
        value = values.get(option.dest)
        if value is not None and (option.applies is None or chosen.get(option.applies[0]) == option.applies[1]):
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


class TaskPart:
    """A part of a task chosen by name (``register_part``): the options it is built from, and its settings as
    its repr shows them."""

    #: The options this part is built from (set by its registration).
    options: Tuple[Option, ...] = ()

    def extra_repr(self) -> str:
        return ''

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.extra_repr()})'


def register_part(registry: Any, switch: str, name: str, options: Sequence[Option] = ()) -> Callable[[type], type]:
    """Class decorator: register a part of a task (a strategy the task option ``switch`` chooses by ``name``, e.g.
    GradNorm's ``inputs='noise'``) with the options it is built from. Each option's default is read from the
    part's constructor, and it is passed only when the part is chosen."""
    def _register(cls: type) -> type:
        cls.options = tuple(replace(option, owner=cls, applies=(switch, name)) for option in options)
        for option in cls.options:
            resolve_default(option, cls)  # fail at registration, not at parse time
        registry.register(name, cls)
        return cls
    return _register


def part_options(registry: Any) -> List[Option]:
    """The options of every part in ``registry``, in registration order of the parts."""
    return [option for _, cls in registry.items() for option in cls.options]


def create_part(registry: Any, switch: str, name: Any, kwargs: Dict[str, Any]) -> Any:
    """The part ``name`` of ``registry`` built from ``kwargs`` (an instance is used as it is); an option of
    another part is refused, naming the part it belongs to."""
    if not isinstance(name, str):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} build a part by name; {switch}={name!r} is built already")
        return name
    cls = registry.get(name)
    own = {option.kwarg for option in cls.options}
    for key in kwargs:
        if key not in own:
            owners = [n for n, other in registry.items() if key in {o.kwarg for o in other.options}]
            raise ValueError(f"option {key!r} applies to {switch}={' or '.join(map(repr, owners))}, not "
                             f"{switch}={name!r}")
    return cls(**kwargs)
