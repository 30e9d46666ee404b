"""The exit codes of the command-line tools, one convention a scheduler can act on.

====  ==========================================================================================
0     finished: the run did everything it was asked
1     failed: an error during the run (disk full, out of memory, a bug); the last checkpoint is intact
2     refused: bad input, refused before any work with one line naming the value (argparse's code)
75    preempted: stopped by SIGTERM or SIGUSR1 after writing a recovery checkpoint; rerun the same
      command with ``--resume`` (sysexits' EX_TEMPFAIL, "try again later")
130   interrupted: stopped by Ctrl-C (128 + SIGINT), a recovery checkpoint written as for 75
====  ==========================================================================================

``timm-train … && gradreg-eval …`` evaluates only a finished run; a job script can requeue on 75.
"""
import signal
from enum import IntEnum

__all__ = ['ExitCode', 'signal_exit_code']


class ExitCode(IntEnum):
    FINISHED = 0
    FAILED = 1
    REFUSED = 2
    PREEMPTED = 75
    INTERRUPTED = 130


def signal_exit_code(signum: int) -> ExitCode:
    """The exit code of a run stopped by ``signum`` at a step boundary, its recovery checkpoint written."""
    return ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.PREEMPTED
