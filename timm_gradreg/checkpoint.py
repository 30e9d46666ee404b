"""Checkpoint files: atomic writes, timm's CheckpointSaver made crash-safe, the activation-swap record."""
import os
import shutil
from typing import Any, Dict, Optional

import torch
from timm.utils import CheckpointSaver

from .activations import DEFAULT_SOURCES
from .files import atomic_save, fsync_dir

__all__ = ['atomic_save', 'AtomicCheckpointSaver', 'SWAP_KEY', 'swap_record', 'read_swap_record']

#: Checkpoint key under which the activation swap of the model is recorded.
SWAP_KEY = 'gradreg_swap'


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
        fsync_dir(os.path.dirname(os.path.abspath(dst)))

    def _duplicate(self, src, dst):
        tmp = dst + '.tmp'
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except (OSError, AttributeError):  # filesystem or platform without hard links: copy
            shutil.copy2(src, tmp)
        self._replace(tmp, dst)


def swap_record(checkpoint: Any) -> Optional[Dict[str, Any]]:
    """The activation swap a loaded checkpoint's weights expect, or None.

    From ``swap-activations`` output (its ``gradreg_swap`` entry) or from a timm-train
    checkpoint (the ``swap_activations`` / ``swap_source`` of its saved args).
    """
    if not isinstance(checkpoint, dict):
        return None
    if checkpoint.get(SWAP_KEY):
        return checkpoint[SWAP_KEY]
    args = checkpoint.get('args')
    args = vars(args) if hasattr(args, '__dict__') else (args or {})
    act = args.get('swap_activations') if isinstance(args, dict) else None
    if act:
        return {'act': act, 'sources': list(args.get('swap_source') or DEFAULT_SOURCES)}
    return None


def read_swap_record(path: str) -> Optional[Dict[str, Any]]:
    """``swap_record`` of the checkpoint file at ``path`` (tensors memory-mapped, not read)."""
    return swap_record(torch.load(path, map_location='cpu', weights_only=False, mmap=True))
