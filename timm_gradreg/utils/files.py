"""Atomic file writes: a crash, kill or preemption leaves the previous file or the new one, never a
truncated one. Every output of the package (checkpoints, JSON results, resumable attack state)
goes through ``atomic_write``."""
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator, Optional

import torch

__all__ = ['atomic_write', 'atomic_save', 'write_json', 'fsync_dir', 'OutputPathError', 'OutputWriteError',
           'check_output_path', 'write_failure']

#: errno values of a file system that takes no more data.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OutputPathError(ValueError):
    """An output folder that cannot be written: the message names the path and why."""


class OutputWriteError(OSError):
    """An output file could not be written for lack of room (disk full, quota, file size limit).

    ``what`` failed for ``reason`` (the system's words and the free space); ``outcome`` says what was kept
    and what to do. The message is the three together, one line.
    """

    def __init__(self, what: str, reason: str, outcome: str):
        super().__init__(f'{what}: {reason}; {outcome}')
        self.what, self.reason, self.outcome = what, reason, outcome


def _no_room(exc: BaseException) -> Optional[OSError]:
    """The disk-full OSError behind ``exc`` (torch.save wraps it in a RuntimeError), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(path: str) -> str:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return 'free space unknown'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if free < 1024 or unit == 'TiB':
            return f'{free:.0f} {unit} free' if unit == 'B' else f'{free:.1f} {unit} free'
        free /= 1024
    return ''


def write_failure(exc: BaseException) -> Optional[str]:
    """One line for an exception that means "no room to write" (``OutputWriteError`` or an OSError such as
    ENOSPC from any write), None for any other exception."""
    if isinstance(exc, OutputWriteError):
        return str(exc)
    full = _no_room(exc)
    if full is None:
        return None
    where = full.filename or 'an output file'
    return (f"could not write '{where}': {full.strerror} ({_free_space(os.path.dirname(os.path.abspath(where)))})."
            ' Free space there or give another --output.')


def check_output_path(path: str, option: str = '--output') -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, or is not writable."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputPathError(f"{option} '{path}': '{existing}' is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY) if hasattr(os, 'statvfs') else False
        why = 'it is on a read-only file system' if read_only else 'no permission to write there'
        raise OutputPathError(f"{option} '{path}': cannot write in '{existing}' ({why}); give a writable folder.")


def fsync_dir(directory: str) -> None:
    """Flush a directory entry (a rename into it) to disk where the platform allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str, mode: str = 'wb') -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the permissions a plain ``open`` would (0666 less the umask), not the
    temporary file's 0600.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = _no_room(e)
        if full is None:
            raise
        kept = 'the previous file is intact' if os.path.exists(path) else 'no partial file is left'
        raise OutputWriteError(f"could not write '{path}'", f'{full.strerror} ({_free_space(directory)})',
                               f'{kept}. Free space there or give another --output.') from None


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through ``atomic_write``."""
    with atomic_write(path, 'wb') as f:
        torch.save(obj, f)


def write_json(path: str, data: Any, indent: int = 2) -> None:
    """JSON through ``atomic_write``."""
    with atomic_write(path, 'w') as f:
        json.dump(data, f, indent=indent)
