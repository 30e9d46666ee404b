"""AutoAttack (Croce & Hein 2020) through ``pyautoattack``, resumable, with per-sample robust flags.

``pyautoattack`` is the PyPI packaging of the original code (``pip install
'timm-gradreg[eval]'``); the original ``autoattack`` package is used if that is what
is installed. torchattacks' "AutoAttack" is a different, weaker attack (10 iterations,
n_classes-1 targets) and is never used here.

The attacks run one at a time on the samples still robust, and the flags are saved
after each attack, so an interrupted evaluation resumes where it stopped.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..core.budget import check_attack_budget
from ..utils.files import write_json
from ..utils.progress import Progress, count_forwards

__all__ = ['STANDARD_ATTACKS', 'autoattack_backend', 'AutoAttackResult', 'run_autoattack']

_logger = logging.getLogger(__name__)

#: AutoAttack 'standard' (L∞): APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries).
STANDARD_ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')


def autoattack_backend() -> Tuple[str, type]:
    """('pyautoattack' or 'autoattack', its AutoAttack class); ImportError with the install hint if neither."""
    try:
        from pyautoattack import AutoAttack
        return 'pyautoattack', AutoAttack
    except ImportError:
        pass
    try:
        from autoattack import AutoAttack  # the original repository, if installed from source
        return 'autoattack', AutoAttack
    except ImportError:
        raise ImportError("AutoAttack needs the 'pyautoattack' package: pip install 'timm-gradreg[eval]'") from None


def _build(backend: str, cls: type, model: nn.Module, eps: float, norm: str, version: str, device, seed: int):
    if backend == 'pyautoattack':
        attack = cls(model, eps=eps, norm=norm, version=version, device=device, seed=seed)
    else:
        attack = cls(model, norm=norm, eps=eps, version=version, device=str(device), seed=seed)
    attack.verbose = False
    return attack


def _run_one(backend: str, attack, name: str, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    attack.attacks_to_run = [name]
    if backend == 'pyautoattack':
        x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=batch_size)
    else:
        x_adv = attack.run_standard_evaluation(x, y, bs=batch_size)
    return x_adv


def _forwards_per_chunk(attack, name: str) -> int:
    """Model forward passes of one attack on one chunk whose samples all stay robust (an upper bound).

    Counted on pyautoattack: its clean check, then APGD's iterations (plus its step-size checks),
    FAB's two passes per iteration per target, Square's queries; plus the pass that checks the result.
    """
    apgd, apgd_t, fab, square = attack.apgd, attack.apgd_targeted, attack.fab, attack.square
    counts = {
        'apgd-ce': 2 + apgd.n_restarts * (apgd.n_iter + 9),
        'apgd-dlr': 2 + apgd.n_restarts * (apgd.n_iter + 9),
        'apgd-t': 1 + apgd_t.n_target_classes * apgd_t.n_restarts * (apgd_t.n_iter + 3),
        'fab-t': 1 + fab.n_target_classes * fab.n_restarts * (2 * fab.n_iter + 4),
        'fab': 1 + fab.n_restarts * (2 * fab.n_iter + 4),
        'square': square.n_restarts * square.n_queries + 12,
    }
    return 1 + counts.get(name, 1)


@dataclass
class AutoAttackResult:
    eps: float
    version: str
    clean: torch.Tensor
    robust: torch.Tensor
    per_attack: Dict[str, float] = field(default_factory=dict)
    backend: str = 'pyautoattack'

    def clean_accuracy(self) -> float:
        return 100.0 * self.clean.float().mean().item()

    def robust_accuracy(self) -> float:
        return 100.0 * self.robust.float().mean().item()


def _load_state(path: Optional[str], signature: dict) -> Optional[dict]:
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        state = json.load(f)
    if state.get('signature') != signature:
        _logger.warning(f'AutoAttack state {path} is for a different setup; starting over.')
        return None
    return state


def _save_state(path: Optional[str], state: dict) -> None:
    if not path:
        return
    write_json(path, state, indent=None)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, x.shape[0], batch_size)])


def run_autoattack(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float,
        version: str = 'standard',
        attacks: Optional[Sequence[str]] = None,
        norm: str = 'Linf',
        batch_size: int = 256,
        device: Optional[torch.device] = None,
        seed: int = 0,
        state_path: Optional[str] = None,
        square_queries: Optional[int] = None,
        show_progress: bool = False,
        desc: str = 'AutoAttack',
) -> AutoAttackResult:
    """AutoAttack on a pixel-space model (normalization inside, eval mode, fp32), inputs in [0, 1].

    Args:
        attacks: Subset to run (default: the version's list, 'standard' = STANDARD_ATTACKS).
        state_path: JSON file with the per-sample flags after each attack; rerunning with the
            same setup skips the attacks already done.
        square_queries: Override Square's query budget (5000 in 'standard').
        show_progress: A progress display per model forward pass (attacks run in chunks of
            ``batch_size``, exactly the batches AutoAttack would form, so results are unchanged).
    """
    check_attack_budget(eps=eps, queries=square_queries, norm=norm)
    backend, cls = autoattack_backend()
    device = device or x.device
    model.eval()
    backend_logger = logging.getLogger('auto-attack')  # pyautoattack logs its settings there, unprefixed
    level = backend_logger.level
    backend_logger.setLevel(logging.WARNING)
    try:
        attack = _build(backend, cls, model, eps, norm, version, device, seed)
    finally:
        backend_logger.setLevel(level)
    if square_queries is not None:
        attack.square.n_queries = square_queries
    names = list(attacks or attack.attacks_to_run)
    if not names:
        raise ValueError(f"AutoAttack version '{version}' runs no attacks; pass attacks=[...]")
    signature = {'eps': eps, 'version': version, 'norm': norm, 'attacks': names, 'n': int(x.shape[0]),
                 'labels_sum': int(y.sum()), 'seed': seed, 'square_queries': attack.square.n_queries}
    state = _load_state(state_path, signature)
    if state is None:
        clean = _predict(model, x, batch_size) == y
        state = {'signature': signature, 'clean': clean.tolist(), 'robust': clean.tolist(), 'done': {}}
        _save_state(state_path, state)
    robust = torch.tensor(state['robust'], dtype=torch.bool, device=x.device)
    todo = [name for name in names if name not in state['done']]
    if state['done']:
        _logger.info(f"{desc}: resumed from {state_path}: {', '.join(state['done'])} done, "
                     f"{', '.join(todo) or 'nothing'} to run")

    def work_left(count: int, attacks: Sequence[str]) -> int:
        chunks = -(-count // batch_size)
        return sum(chunks * _forwards_per_chunk(attack, a) for a in attacks)

    bar = Progress(work_left(int(robust.sum()), todo), desc, enabled=show_progress)
    with bar, count_forwards(model, bar):
        for k, name in enumerate(todo):
            idx = robust.nonzero().squeeze(1)
            bar.set_total(bar.done + work_left(idx.numel(), todo[k:]))
            per_chunk = _forwards_per_chunk(attack, name)
            for start in range(0, idx.numel(), batch_size):
                chunk = idx[start:start + batch_size]
                chunk_end = bar.done + per_chunk
                x_adv = _run_one(backend, attack, name, x[chunk], y[chunk], batch_size)
                robust[chunk] = _predict(model, x_adv.to(x.device), batch_size) == y[chunk]
                bar.advance_to(chunk_end)
            state['robust'] = robust.tolist()
            state['done'][name] = 100.0 * robust.float().mean().item()
            _save_state(state_path, state)
            _logger.info(f'{desc} {name}: robust accuracy {state["done"][name]:.2f}%')
    return AutoAttackResult(eps=eps, version=version, clean=torch.tensor(state['clean']), robust=robust.cpu(),
                            per_attack=dict(state['done']), backend=backend)
