"""Strict YAML configs for the command-line tools, with timm train.py's ``-c/--config`` semantics.

The YAML sets the parser's defaults and command-line flags win, as in timm's train.py; unlike
timm, an unknown key is an error naming the closest valid key, and each value is converted and
checked as its command-line flag would be (``lr: fast`` or ``input_size: 224`` fail).
"""
import argparse
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

import yaml
from timm import utils

from .registry import closest

__all__ = ['ConfigError', 'load_config', 'parse_with_config', 'flags_given', 'config_keys', 'Locate']

#: Where a ``-c`` value names its file: the path itself, or e.g. a packaged recipe (``recipes.config_path``)
Locate = Callable[[str], str]


class ConfigError(ValueError):
    """A YAML config that does not fit the parser."""


def _actions_by_dest(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Each option's action by its config key: its dest, and the key of each older flag it still takes."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    for action in list(actions.values()):
        for flag in action.option_strings:
            key = flag.lstrip('-').replace('-', '_')
            if flag.startswith('--') and key != action.dest:
                actions.setdefault(key, action)
    return actions


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    def fail(what: str):
        raise ConfigError(f"config key '{key}': {what}")

    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            fail(f'expected true or false, got {value!r}')
        return value
    if isinstance(action, utils.ParseKwargs):
        if not isinstance(value, dict):
            fail(f'expected a mapping (key: value), got {value!r}')
        return value

    def one(v):
        if action.type is not None:
            if isinstance(v, (list, dict)):
                fail(f'expected a single value, got {v!r}')
            if isinstance(v, bool) and action.type in (int, float):
                fail(f'expected a number, got {v!r}')
            try:
                v = action.type(v)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
                fail(f'{e}' if isinstance(e, argparse.ArgumentTypeError) else
                     f'expected {getattr(action.type, "__name__", "a value")}, got {v!r}')
        if action.choices is not None and v not in action.choices:
            close = closest(str(v), [str(c) for c in action.choices])
            fail(f"{v!r} is not one of {', '.join(map(str, action.choices))}"
                 + (f"; did you mean '{close}'?" if close else ''))
        return v

    if action.nargs in ('+', '*') or isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)):
            fail(f'expected a list, got {value!r}')
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            fail(f'expected {action.nargs} values, got {len(value)}')
        return [one(v) for v in value]
    return one(value)


def _as_given(path: str) -> str:
    return path


def load_config(parser: argparse.ArgumentParser, path: str, only: Optional[Set[str]] = None, *,
                locate: Locate = _as_given, unknown_hint: str = '') -> Dict[str, Any]:
    """Read a YAML config and return parser defaults, strictly checked.

    ``only``: read just these keys (the rest of the file belongs to another parser); ``locate``: the file a
    ``-c`` value names; ``unknown_hint``: said after an unknown key that resembles no option.
    """
    path = locate(path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    if cfg is None:
        raise ConfigError(f"config file '{path}' is empty: give it the options as 'name: value' lines, or leave out -c")
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of argument names to values")
    actions = _actions_by_dest(parser)
    defaults = {}
    for raw_key, value in cfg.items():
        key = str(raw_key).replace('-', '_')
        if only is not None and key not in only:
            continue
        if key not in actions:
            close = closest(key, list(actions))
            hint = f"; did you mean '{close}'?" if close else f'; see {parser.prog} --help{unknown_hint}'
            raise ConfigError(f"unknown key '{raw_key}' in config '{path}'{hint}")
        defaults[actions[key].dest] = _convert(actions[key], raw_key, value)
    return defaults


class _Unset:
    """Namespace value of an option the command line did not give (argparse sets defaults only on missing names)."""


def flags_given(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Set[str]:
    """The dests the command line ``argv`` sets itself (not through defaults or the ``-c`` YAML)."""
    unset = _Unset()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str)
    _, remaining = config_parser.parse_known_args(argv)
    parsed, _ = parser.parse_known_args(remaining, namespace=namespace)
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def config_keys(path: str, locate: Locate = _as_given) -> Dict[str, Any]:
    """The raw keys and values of a YAML config already checked by ``load_config`` (dashes as underscores)."""
    with open(locate(path)) as f:
        return {str(k).replace('-', '_'): v for k, v in (yaml.safe_load(f) or {}).items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, *,
                      locate: Locate = _as_given, unknown_hint: str = '') -> Tuple[argparse.Namespace, str]:
    """Parse ``argv``: YAML defaults from ``-c/--config`` (strict), then the flags; returns (args, args as YAML).

    A bad config is a usage error (``parser.error``): one line naming the key and what is wrong.
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str)
    args_config, remaining = config_parser.parse_known_args(argv)
    if args_config.config:
        try:
            parser.set_defaults(**load_config(parser, args_config.config, locate=locate, unknown_hint=unknown_hint))
        except ConfigError as e:
            parser.error(str(e))
    args = parser.parse_args(remaining)
    args.config = args_config.config
    return args, yaml.safe_dump(args.__dict__, default_flow_style=False)
