"""Checkpoint files: atomic writes, timm's CheckpointSaver made crash-safe, the activation-swap record."""
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import torch
from timm.utils import CheckpointSaver

__all__ = ['atomic_save', 'AtomicCheckpointSaver', 'SWAP_KEY', 'read_swap_record']

#: Checkpoint key under which the activation swap of the model is recorded.
SWAP_KEY = 'gradreg_swap'


def _fsync_dir(directory: str) -> None:
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


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    A process killed mid-write leaves the previous file intact, never a truncated one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver whose files are never missing or truncated after a crash.

    timm writes ``tmp.pth.tar`` without fsync, then *unlinks* ``last.pth.tar`` before
    renaming: a kill in between loses the last checkpoint. Here every file is fsynced
    and put in place with a single atomic rename (links/copies go via a temp name too).
    """

    def _save(self, save_path, epoch, metric=None):
        super()._save(save_path, epoch, metric)
        with open(save_path, 'rb+') as f:
            os.fsync(f.fileno())

    def _replace(self, src, dst):
        os.replace(src, dst)
        _fsync_dir(os.path.dirname(os.path.abspath(dst)))

    def _duplicate(self, src, dst):
        tmp = dst + '.tmp'
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except (OSError, AttributeError):  # filesystem or platform without hard links: copy
            shutil.copy2(src, tmp)
        self._replace(tmp, dst)


def read_swap_record(path: str) -> Optional[Dict[str, Any]]:
    """The activation swap a checkpoint's weights expect, or None.

    From ``swap-activations`` output (its ``gradreg_swap`` entry) or from a timm-train
    checkpoint (the ``--swap-activations`` / ``--swap-source`` of its saved args).
    """
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    if not isinstance(checkpoint, dict):
        return None
    if checkpoint.get(SWAP_KEY):
        return checkpoint[SWAP_KEY]
    args = checkpoint.get('args')
    act = getattr(args, 'swap_activations', None)
    if act:
        return {'act': act, 'sources': list(getattr(args, 'swap_source', None) or ['relu', 'relu6'])}
    return None
