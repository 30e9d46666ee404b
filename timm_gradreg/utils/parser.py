"""The command-line parser of the tools: argparse with a one-line usage on errors.

argparse prints the whole usage (80 lines for timm-train's options) before a bad-value message,
burying it; these parsers print the message and where to find the options, in two lines.
"""
import argparse
import re
import sys
from typing import NoReturn

from .registry import closest

__all__ = ['ArgumentParser']


#: A negative number as argparse sees one, fractions included ('-8/255'), so it reaches the option's
#: converter (which names it and the allowed range) instead of being taken for an unknown flag.
_NEGATIVE_NUMBER = re.compile(r'^-(\d+|\d*\.\d+)(/\d*\.?\d+)*$')


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def _did_you_mean(message: str) -> str:
    """" (did you mean 'x'?)" for argparse's invalid-choice message when a choice is close, else ''."""
    match = _INVALID_CHOICE.search(message)
    if not match:
        return ''
    close = closest(match.group(1), re.findall(r"'([^']*)'", match.group(2)))
    return f"; did you mean '{close}'?" if close else ''


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are ``usage: PROG [options] ...`` and ``PROG: error: MESSAGE``;
    negative fractions such as ``-8/255`` are values, not flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        message += _did_you_mean(message)
        sys.stderr.write(f'usage: {self.prog} [options] (see {self.prog} --help)\n{self.prog}: error: {message}\n')
        sys.exit(2)
