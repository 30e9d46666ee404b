"""Checkpoint files: atomic writes, timm's CheckpointSaver made crash-safe, the activation-swap record."""
import os
import shutil
from typing import Any, Dict, Optional

import torch
from timm.utils import CheckpointSaver
from timm.utils.model import get_state_dict

from ..utils.files import OutputWriteError, atomic_save, fsync_dir
from .activations import DEFAULT_SOURCES

__all__ = ['atomic_save', 'AtomicCheckpointSaver', 'SWAP_KEY', 'swap_record', 'read_swap_record']

#: Checkpoint key under which the activation swap of the model is recorded.
SWAP_KEY = 'gradreg_swap'


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver whose files are never missing or truncated after a crash.

    timm writes ``tmp.pth.tar`` without fsync, then *unlinks* ``last.pth.tar`` before
    renaming: a kill in between loses the last checkpoint. Here every file is written to a
    temporary name, fsynced and put in place with a single atomic rename (links/copies go via a
    temp name too). ``extra_state`` entries are saved beside timm's (the trainer's position
    inside an epoch for recovery checkpoints).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.extra_state: Dict[str, Any] = {}

    def checkpoint_state(self, epoch: int, metric: Optional[float] = None) -> Dict[str, Any]:
        """The dict timm's CheckpointSaver saves (model or task state, optimizer, scaler, args, metric, its
        own bookkeeping where this timm keeps one), plus ``extra_state``."""
        state: Dict[str, Any] = {'epoch': epoch, 'arch': type(self.model).__name__.lower(),
                                 'optimizer': self.optimizer.state_dict(), 'version': 2}
        if self.args is not None:
            state['arch'], state['args'] = self.args.model, self.args
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if self.task is not None:
            state.update(self.task.get_checkpoint_state(unwrap_fn=self.unwrap_fn))
            state.update(self.task.get_checkpoint_state(ema=True, unwrap_fn=self.unwrap_fn))
        else:
            state['state_dict'] = get_state_dict(self.model, self.unwrap_fn)
            if self.model_ema is not None:
                state['state_dict_ema'] = get_state_dict(self.model_ema, self.unwrap_fn)
        if metric is not None:
            state['metric'] = metric
        if callable(getattr(CheckpointSaver, 'state_dict', None)):  # timm >= 1.0.31 ranks across resumes
            state['saver'] = self.state_dict(epoch, metric)
        state.update(self.extra_state)
        return state

    def _save(self, save_path, epoch, metric=None):
        try:
            atomic_save(self.checkpoint_state(epoch, metric), save_path)
        except OutputWriteError as e:
            folder = os.path.dirname(os.path.abspath(save_path))
            kept = sorted(f for f in os.listdir(folder) if f.endswith('.pth.tar') and
                          os.path.join(folder, f) != os.path.abspath(save_path))
            intact = f"the checkpoints already there are intact ({', '.join(kept)})" if kept else 'nothing was saved'
            raise OutputWriteError(f"could not save the checkpoint of epoch {epoch} in '{folder}'", e.reason,
                                   f'{intact}. Free space there or give another --output.') from None

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
