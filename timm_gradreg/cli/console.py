"""Console logging for the command-line tools.

timm's ``setup_default_logging`` adds a new handler bound to the ``sys.stderr`` of the moment on every call,
so a process that runs several commands (a notebook, a test session, a sweep script) prints each message
once per earlier call and eventually writes to closed streams. The commands here install one handler,
once, that looks the stream up when it writes.
"""
import logging
import sys

from timm.utils.log import FormatterNoInfo

__all__ = ['setup_console_logging']

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
