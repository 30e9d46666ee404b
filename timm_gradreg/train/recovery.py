"""Stopping and resuming a run: signals handled at step boundaries, recovery points, checkpoint checks.

SIGTERM and SIGUSR1 (cluster preemption, ``scancel``, torchrun shutting down) and Ctrl-C do not
kill the step in progress: the trainer finishes it, writes a recovery checkpoint atomically and
raises ``TrainingInterrupted``. The checkpoint records the position inside the epoch and every RNG
state, so ``--resume`` continues with the next step as if the run had never stopped.
"""
import glob
import os
import random
import signal
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from ..utils.exit_codes import signal_exit_code

__all__ = ['RESUME_KEY', 'TrainingInterrupted', 'StopSignals', 'get_rng_state', 'set_rng_state',
           'check_resume_checkpoint', 'CheckpointFileError']

#: Checkpoint key of a recovery point: {'epoch', 'updates' done in that epoch, 'rng' states}.
RESUME_KEY = 'gradreg_resume'
#: Signals that stop a run at the next step boundary (the exit code of each: ``utils.exit_codes``).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *((signal.SIGUSR1,) if hasattr(signal, 'SIGUSR1') else ()))


class TrainingInterrupted(Exception):
    """The run stopped at a step boundary on a signal; ``path`` is the recovery checkpoint to resume from."""

    def __init__(self, signum: int, epoch: int, update_idx: int, updates_per_epoch: int, path: Optional[str]):
        self.signum, self.epoch, self.update_idx, self.path = signum, epoch, update_idx, path
        self.exit_code = signal_exit_code(signum)
        where = f'epoch {epoch}, step {update_idx + 1}/{updates_per_epoch}'
        saved = f"saved '{path}'" if path else 'the primary process saved the recovery checkpoint'
        super().__init__(f'stopped by {signal.Signals(signum).name} after {where}: {saved}. Continue with the same '
                         f'command plus --resume {path or "<recovery checkpoint>"}')


class StopSignals:
    """Records the first stop signal instead of dying; ``signum`` is None until one arrives."""

    def __init__(self):
        self.signum: Optional[int] = None

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator['StopSignals']:
        previous = {}
        try:
            for signum in STOP_SIGNALS:
                try:
                    previous[signum] = signal.signal(signum, self._handler)
                except ValueError:  # not the main thread: leave signals alone
                    break
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def get_rng_state() -> Dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable by timm's weights-only checkpoint reader)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                       cached], 'python': list(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class CheckpointFileError(ValueError):
    """A --resume file that cannot be resumed from; the message names it, the problem and an alternative."""


def _load(path: str) -> Any:
    return torch.load(path, map_location='cpu', weights_only=False, mmap=True)


def _problem(path: str) -> Optional[str]:
    """What is wrong with ``path`` as a training checkpoint, or None."""
    try:
        checkpoint = _load(path)
    except Exception as e:  # truncated zip, not a torch file, unpickling errors: all mean "unreadable"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else 'no message'
        return f'it is not a readable torch checkpoint: truncated or corrupt (torch: {type(e).__name__}: {reason})'
    if not isinstance(checkpoint, dict) or 'epoch' not in checkpoint or not (
            'state_dict' in checkpoint or 'task_state' in checkpoint):
        keys = ', '.join(map(repr, list(checkpoint)[:8])) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        return (f'it is not a training checkpoint (no epoch and model state; found {keys}): to start from its weights '
                'use --initial-checkpoint')
    return None


def _newest_valid(folder: str, exclude: str) -> Optional[str]:
    candidates: List[str] = sorted(glob.glob(os.path.join(folder, '*.pth.tar')), key=os.path.getmtime, reverse=True)
    for candidate in candidates:
        if os.path.abspath(candidate) != os.path.abspath(exclude) and _problem(candidate) is None:
            return candidate
    return None


def check_resume_checkpoint(path: str) -> Dict[str, Any]:
    """Load ``path`` for --resume, or raise CheckpointFileError naming the file, what is wrong with it and the
    newest valid checkpoint beside it."""
    if not os.path.isfile(path):
        problem = 'it does not exist'
    else:
        problem = _problem(path)
    if problem is None:
        return _load(path)
    folder = os.path.dirname(os.path.abspath(path))
    alternative = _newest_valid(folder, path) if os.path.isdir(folder) else None
    hint = f"; the newest valid checkpoint there is '{alternative}'" if alternative else ''
    raise CheckpointFileError(f"--resume '{path}': {problem}{hint}.")
