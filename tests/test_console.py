"""The command-line tools log each message once, to the stderr of the moment."""
import logging

from timm_gradreg.cli.console import setup_console_logging


def test_repeated_setup_logs_each_message_once_to_the_current_stderr(capsys):
    for _ in range(3):
        setup_console_logging()
    logging.getLogger('timm_gradreg.test').info('one line')
    logging.getLogger('timm_gradreg.test').warning('careful')
    err = capsys.readouterr().err
    assert err.count('one line') == 1
    assert err.count('WARNING: careful') == 1


def test_a_later_stderr_receives_the_messages(capsys):
    setup_console_logging()
    capsys.readouterr()
    with capsys.disabled():
        pass
    logging.getLogger('timm_gradreg.test').info('after a stream change')
    err = capsys.readouterr().err
    assert err.count('after a stream change') == 1 and 'Logging error' not in err
