"""Checkpoint files: atomic writes and the activation-swap record."""
import os
import tempfile
from typing import Any, Dict, Optional

import torch

__all__ = ['atomic_save', 'SWAP_KEY', 'read_swap_record']

#: Checkpoint key under which ``swap-activations`` records what it did.
SWAP_KEY = 'gradreg_swap'


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``.

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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_swap_record(path: str) -> Optional[Dict[str, Any]]:
    """The activation-swap record of a checkpoint, or None if it has none."""
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    if isinstance(checkpoint, dict):
        return checkpoint.get(SWAP_KEY)
    return None
