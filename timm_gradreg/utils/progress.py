"""Progress with an ETA for long work: a tqdm bar on a terminal, a log line every half minute otherwise.

Work is counted in model forward passes where the caller can predict them (attack steps, power
iterations): ``count_forwards`` ticks a ``Progress`` from a forward hook, so the bar moves with every
pass whatever code runs the model. ``enabled=False`` (``--no-progress``) shows nothing.
"""
import contextlib
import logging
import sys
import time
from typing import Iterator, Optional

import torch.nn as nn

__all__ = ['Progress', 'count_forwards', 'format_duration']

_logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 185 -> '3m05s', 12.3 -> '12s'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f'{hours}h{minutes:02d}m'
    return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class Progress:
    """``total`` units of work under ``desc``; ``update(n)`` as they are done, ``close()`` (or ``with``) at the end.

    On a terminal (stderr is a TTY) it draws a tqdm bar with rate and ETA; otherwise it logs
    ``desc: 40% (400/1000 forward passes), 1m20s elapsed, ETA 2m00s`` at most every ``interval`` seconds.
    """

    def __init__(self, total: float, desc: str, *, enabled: bool = True, unit: str = 'forward passes',
                 interval: float = 30.0):
        self.total, self.desc, self.unit, self.interval = max(float(total), 1.0), desc, unit, interval
        self.done = 0.0
        self.start = self._last_log = time.monotonic()
        self._bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=round(self.total), desc=desc, unit=' ' + unit.split()[-1][:4], leave=False,
                                 dynamic_ncols=True)
            except ImportError:
                pass

    def eta(self) -> Optional[float]:
        """Seconds left at the rate so far (None before any work is done)."""
        if self.done <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed * max(self.total - self.done, 0.0) / self.done

    def set_total(self, total: float) -> None:
        """A better estimate of the total, e.g. once the number of samples left is known."""
        self.total = max(float(total), self.done, 1.0)
        if self._bar is not None:
            self._bar.total = round(self.total)
            self._bar.refresh()

    def update(self, n: float = 1.0) -> None:
        self.done = min(self.done + n, self.total)
        if self._bar is not None:
            self._bar.n = round(self.done)
            self._bar.update(0)
        elif self.enabled and time.monotonic() - self._last_log >= self.interval:
            self._last_log = time.monotonic()
            _logger.info(self.status())

    def advance_to(self, done: float) -> None:
        """Jump to ``done`` units (work that turned out unnecessary, e.g. no sample left to attack)."""
        if done > self.done:
            self.update(done - self.done)

    def status(self) -> str:
        eta = self.eta()
        return (f'{self.desc}: {100.0 * self.done / self.total:.0f}% ({self.done:.0f}/{self.total:.0f} {self.unit}), '
                f'{format_duration(time.monotonic() - self.start)} elapsed'
                + (f', ETA {format_duration(eta)}' if eta is not None else ''))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def count_forwards(model: nn.Module, bar: Optional[Progress]) -> Iterator[None]:
    """Tick ``bar`` once per forward pass of ``model`` inside the block."""
    if bar is None:
        yield
        return
    handle = model.register_forward_hook(lambda *_: bar.update(1))
    try:
        yield
    finally:
        handle.remove()
