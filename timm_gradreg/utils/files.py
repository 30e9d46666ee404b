"""Atomic file writes: a crash, kill or preemption leaves the previous file or the new one, never a
truncated one. Every output of the package (checkpoints, JSON results, resumable attack state)
goes through ``atomic_write``."""
import json
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator

import torch

__all__ = ['atomic_write', 'atomic_save', 'write_json', 'fsync_dir', 'OutputPathError', 'check_output_path']


class OutputPathError(ValueError):
    """An output folder that cannot be written: the message names the path and why."""


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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through ``atomic_write``."""
    with atomic_write(path, 'wb') as f:
        torch.save(obj, f)


def write_json(path: str, data: Any, indent: int = 2) -> None:
    """JSON through ``atomic_write``."""
    with atomic_write(path, 'w') as f:
        json.dump(data, f, indent=indent)
