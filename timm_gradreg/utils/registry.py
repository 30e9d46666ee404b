"""One small name -> object registry, shared by tasks, edge teachers, attack losses and sanity checks.

Like timm's activation and model registries: a plain dict behind ``register``/``get``/``names``,
with an unknown-name error that lists the valid names and suggests the closest one.
"""
import difflib
from typing import Dict, Generic, Iterator, List, Optional, Sequence, TypeVar

__all__ = ['Registry', 'close_matches', 'closest', 'closest_hint', 'check_choice']

T = TypeVar('T')


def close_matches(name: str, valid: Sequence[str], n: int = 1, cutoff: float = 0.6) -> List[str]:
    """Up to ``n`` valid names close to ``name``, the closest first (for "did you mean" hints)."""
    return difflib.get_close_matches(str(name), list(valid), n=n, cutoff=cutoff)


def closest(name: str, valid: Sequence[str]) -> Optional[str]:
    """The valid name closest to ``name``, if any is close."""
    close = close_matches(name, valid)
    return close[0] if close else None


def closest_hint(name: str, valid: Sequence[str]) -> str:
    """" Did you mean 'x'?" for the closest valid name, or ''."""
    close = closest(name, valid)
    return f" Did you mean '{close}'?" if close else ''


def check_choice(kind: str, value: object, valid: Sequence[str]) -> None:
    """Refuse a ``value`` that is not one of ``valid``, naming them (and the closest, if one is close)."""
    if value not in valid:
        raise ValueError(f"Unknown {kind} {value!r}; valid: {', '.join(valid)}.{closest_hint(str(value), valid)}")


class Registry(Generic[T]):
    """Named objects of one kind (``kind`` is used in error messages, e.g. 'gradreg task').

    ``sorted_names``: whether ``names()`` sorts, or keeps registration order (sanity checks
    run in the order they are registered).
    """

    def __init__(self, kind: str, sorted_names: bool = True):
        self.kind = kind
        self.sorted_names = sorted_names
        self._entries: Dict[str, T] = {}

    def register(self, name: str, obj: Optional[T] = None):
        """``register(name, obj)``, or ``@register(name)`` as a decorator; returns the object."""
        def _add(item: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f'{self.kind} name must be a non-empty string, got {name!r}')
            self._entries[name] = item
            return item
        return _add if obj is None else _add(obj)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ValueError naming the valid names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = self.names()
            raise ValueError(f"Unknown {self.kind} {name!r}. Valid: {', '.join(valid)}."
                             f"{closest_hint(name, valid)}") from None

    def names(self) -> List[str]:
        return sorted(self._entries) if self.sorted_names else list(self._entries)

    def items(self) -> Iterator:
        return iter([(n, self._entries[n]) for n in self.names()])

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f'Registry({self.kind!r}: {", ".join(self.names())})'

