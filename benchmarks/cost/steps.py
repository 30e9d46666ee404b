"""Full training steps of each method, interleaved round by round after a steady-state warm-up."""
import statistics
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

from timm_gradreg.tasks import create_task

from .methods import EAGER_TOO, METHODS, BenchMethod
from .pages import STEADY_PAGE_FAULTS, with_page_faults
from .harness import amp_dtype, clock, fixed_batch, model_copy

__all__ = ['StepRunner', 'warm_up', 'rotated', 'paired_quartiles', 'variants']


class StepRunner:
    """One method's task, optimizer and batch: ``step()`` is one full training step."""

    def __init__(self, name: str, method: BenchMethod, model: nn.Module, args, device, compiled: bool):
        self.name, self.method = name, method
        self.model = model_copy(model, args, device)
        options = dict(method.options)
        channels = getattr(args, 'in_chans', 3)
        if channels != 3:  # the cost does not depend on the statistics, only on their shape
            options.update(mean=(0.5,) * channels, std=(0.5,) * channels)
        self.task = create_task(method.task, self.model, verbose=False, **options)
        self.task.set_epoch(100.0)  # schedules at full strength
        if compiled:
            self.task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.amp = amp_dtype(args)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        if self.scaler is not None:
            self.task.attach_grad_scaler(self.scaler)
        self.x, self.y = fixed_batch(args, model, device)
        self.device = device

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.task(self.x, self.y)['loss']
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self) -> float:
        """Seconds per step, averaged over the task's cycle (a penalty every k-th step: k steps)."""
        cycle = self.task.step_cycle
        start = clock(self.device)
        for _ in range(cycle):
            self.step()
        return (clock(self.device) - start) / cycle


def warm_up(args, device: torch.device, runners: list) -> Dict[str, Any]:
    """Untimed rounds: ``--warmup`` of them, then on CPU more until no step faults in fresh pages."""
    on_cpu = device.type == 'cpu'
    rounds, faults, steady = 0, None, None
    while rounds < (max(args.warmup, args.max_warmup) if on_cpu else args.warmup):
        faults = {label: with_page_faults(runner.step)[1] for label, runner, _, _ in runners}
        rounds += 1
        steady = max(faults.values()) < STEADY_PAGE_FAULTS if on_cpu else None
        if rounds >= args.warmup and steady is not False:
            break
    return {'warmup_rounds': rounds, 'steady': steady, 'last_warmup_page_faults': faults}


def variants(args) -> List[tuple]:
    """(label, method name, compiled) for every timed variant."""
    out = []
    for name in args.methods:
        method = METHODS[name]
        compiled = bool(args.torchcompile) and method.compilable
        out.append((name + (' (compiled)' if compiled else ''), name, compiled))
        if compiled and name in EAGER_TOO:
            out.append((name + ' (eager)', name, False))
    return out


def rotated(items: List[Any], shift: int) -> List[Any]:
    """``items`` starting at position ``shift`` (mod its length), wrapping around.

    Each round's steps run in a rotated order: a step runs measurably faster or slower by
    what ran just before it (up to 2% on CPU), so no method always follows the same one.
    """
    shift %= max(len(items), 1)
    return items[shift:] + items[:shift]


def paired_quartiles(times: List[float], reference: List[float]) -> Tuple[float, float, float]:
    """Quartiles (q1, median, q3) of the round-by-round ratios ``times[i] / reference[i]``.

    Steps of one round run back to back, so a ratio within a round cancels the machine's slow
    drifts; the quartiles show how far the rounds agree.
    """
    ratios = sorted(t / r for t, r in zip(times, reference))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return q1, median, q3
