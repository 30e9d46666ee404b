"""The command-line parser of the tools: argparse with a one-line usage on errors.

argparse prints the whole usage (80 lines for timm-train's options) before a bad-value message,
burying it; these parsers print the message and where to find the options, in two lines.
"""
import argparse
import sys
from typing import NoReturn

__all__ = ['ArgumentParser']


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are ``usage: PROG [options] ...`` and ``PROG: error: MESSAGE``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f'usage: {self.prog} [options] (see {self.prog} --help)\n{self.prog}: error: {message}\n')
        sys.exit(2)
