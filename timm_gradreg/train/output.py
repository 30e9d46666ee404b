"""A run's own output folder: never shared with another run.

A folder that holds a run (a summary or a checkpoint) is not written into again unless the run resumes
from a checkpoint in it; a new run takes the next free ``NAME-1``, ``NAME-2``, ... (timm's ``get_outdir``
suffixes). A live run holds a lock file in its folder, so two runs started at once never take the same
one; a lock left by a process that died is taken over.
"""
import glob
import itertools
import os
from typing import Optional, Tuple

__all__ = ['RunFolderError', 'claim_run_folder', 'release_run_folder', 'LOCK_NAME']

LOCK_NAME = '.run.lock'


class RunFolderError(RuntimeError):
    """The run folder is in use by a live process."""


def holds_run(folder: str) -> bool:
    """Whether ``folder`` holds a run's results (a summary or a checkpoint)."""
    return os.path.exists(os.path.join(folder, 'summary.csv')) or bool(glob.glob(os.path.join(folder, '*.pth.tar')))


def _lock_owner(folder: str) -> Optional[int]:
    """The live process holding ``folder``'s lock, None when unlocked or its holder is gone."""
    try:
        pid = int(open(os.path.join(folder, LOCK_NAME)).read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None
    if pid == os.getpid():
        return pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


def _try_lock(folder: str) -> bool:
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if _lock_owner(folder) is not None:
            return False
        os.remove(path)  # a lock left by a process that died
        return _try_lock(folder)
    with os.fdopen(fd, 'w') as f:
        f.write(str(os.getpid()))
    return True


def claim_run_folder(root: str, name: str, resume: Optional[str] = None) -> Tuple[str, bool]:
    """(folder, created): ``root/name`` when it holds no run, or when ``resume`` is a checkpoint in it;
    else the first free ``root/name-N``. The folder is locked until ``release_run_folder``."""
    base = os.path.join(root, name)
    resuming = bool(resume) and os.path.abspath(os.path.dirname(resume)) == os.path.abspath(base)
    for n in itertools.count():
        folder = base if n == 0 else f'{base}-{n}'
        created = not os.path.exists(folder)
        os.makedirs(folder, exist_ok=True)
        if resuming and n == 0:
            if not _try_lock(folder):
                raise RunFolderError(f"'{folder}' is in use by the run of process {_lock_owner(folder)}: wait for it "
                                     'to finish, or stop it, before resuming there.')
            return folder, created
        if not holds_run(folder) and _try_lock(folder):
            if holds_run(folder):  # a run finished in between
                release_run_folder(folder)
                continue
            return folder, created
    raise AssertionError('unreachable')


def release_run_folder(folder: Optional[str]) -> None:
    """Remove this process's lock from ``folder``."""
    if folder and _lock_owner(folder) == os.getpid():
        os.remove(os.path.join(folder, LOCK_NAME))
