"""Console logging and the exit-code convention of the command-line tools.

timm's ``setup_default_logging`` adds a new handler bound to the ``sys.stderr`` of the moment on every call,
so a process that runs several commands (a notebook, a test session, a sweep script) prints each message
once per earlier call and eventually writes to closed streams. The commands here install one handler,
once, that looks the stream up when it writes.
"""
import functools
import logging
import signal
import sys
import threading
from typing import Callable

import torch
from timm.utils.log import FormatterNoInfo

from ..utils.exit_codes import ExitCode
from ..utils.files import write_failure

__all__ = ['setup_console_logging', 'command', 'Preempted']

_PREEMPTION_SIGNALS = (signal.SIGTERM, *((signal.SIGUSR1,) if hasattr(signal, 'SIGUSR1') else ()))

_HANDLER_NAME = 'timm_gradreg.console'


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the current ``sys.stderr``."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # set by StreamHandler.__init__; the live stream is used instead
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    """Route INFO and above to stderr as timm does (bare INFO lines, ``LEVEL:`` prefix otherwise), idempotently."""
    root = logging.getLogger()
    if not any(getattr(h, 'name', None) == _HANDLER_NAME for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.name = _HANDLER_NAME
        handler.setFormatter(FormatterNoInfo())
        root.addHandler(handler)
    root.setLevel(level)


class Preempted(Exception):
    """SIGTERM or SIGUSR1 outside a training loop (which handles them itself at step boundaries)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_preempted(signum, frame) -> None:
    raise Preempted(signum)


def command(prog: str, preempted_note: str = 'nothing was saved; rerun the same command') -> Callable:
    """Decorate a tool's ``main``: the exit-code convention of ``utils.exit_codes`` for what it does not
    handle itself. A write that finds no room is one line and exit 1; SIGTERM / SIGUSR1 is one line with
    ``preempted_note`` and exit 75; other exceptions (bugs) keep their traceback. torch's CPU threads,
    which the tool may set, are as before when it returns (a tool called from Python, a notebook)."""
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            previous, threads = {}, torch.get_num_threads()
            if threading.current_thread() is threading.main_thread():
                for signum in _PREEMPTION_SIGNALS:
                    previous[signum] = signal.signal(signum, _raise_preempted)
            try:
                return main(*args, **kwargs)
            except Preempted as e:
                print(f'{prog}: stopped by {e}: {preempted_note}.', file=sys.stderr)
                return ExitCode.PREEMPTED
            except Exception as e:
                message = write_failure(e)
                if message is None:
                    raise
                print(f'{prog}: error: {message}', file=sys.stderr)
                return ExitCode.FAILED
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                torch.set_num_threads(threads)
        return wrapped
    return decorate
