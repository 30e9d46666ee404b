"""The first-order passes the methods are made of, timed eager and compiled: the finite difference's floor."""
import statistics
from typing import Any, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_gradreg.core.input_grad import at_least_fp32
from timm_gradreg.models.modes import frozen_parameters

from .pages import cache_freed_memory
from .harness import amp_dtype, bench_device, clock, fixed_batch, input_size, make_model, model_copy
from .steps import paired_quartiles, rotated, warm_up

__all__ = ['PASSES', 'PassTimer', 'pass_costs', 'fd_floor']


#: The first-order passes every method is made of: key -> label.
PASSES: Dict[str, str] = {
    'forward': 'training forward',
    'backward': 'full backward',
    'attack_forward': 'attack forward (frozen)',
    'input_backward': 'input-only backward',
}


class PassTimer:
    """One model's first-order passes, timed one by one: a training step's forward and full backward,
    and an attack step's forward and input-only backward (parameters frozen, as in PGD)."""

    def __init__(self, model: nn.Module, args, device: torch.device, compiled: bool):
        self.model = model_copy(model, args, device)
        self.module = torch.compile(self.model, backend=args.torchcompile, mode=args.torchcompile_mode) \
            if compiled else self.model
        self.amp = amp_dtype(args)
        self.x, self.y = fixed_batch(args, model, device)
        self.device = device

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return F.cross_entropy(at_least_fp32(self.module(x)), self.y)  # as the tasks' losses

    def round(self) -> Dict[str, float]:
        """Seconds of each pass of ``PASSES`` in one training step and one attack step."""
        t0 = clock(self.device)
        loss = self._loss(self.x)
        t1 = clock(self.device)
        loss.backward()
        t2 = clock(self.device)
        self.model.zero_grad(set_to_none=True)
        with frozen_parameters(self.model):
            x = self.x.detach().clone().requires_grad_(True)
            t3 = clock(self.device)
            loss = self._loss(x)
            t4 = clock(self.device)
            torch.autograd.grad(loss, x)
            t5 = clock(self.device)
        return {'forward': t1 - t0, 'backward': t2 - t1, 'attack_forward': t4 - t3, 'input_backward': t5 - t4}

    def step(self) -> None:
        """An untimed round (warm-up)."""
        self.round()


def fd_floor(seconds: Dict[str, float]) -> float:
    """Two training passes (forward + full backward) over PGD-3's passes (three attack passes and one
    training pass), from the seconds of each pass of ``PASSES``."""
    training = seconds['forward'] + seconds['backward']
    return 2 * training / (3 * (seconds['attack_forward'] + seconds['input_backward']) + training)


def pass_costs(args) -> Dict[str, Any]:
    """Median seconds of each first-order pass, eager and (with ``--torchcompile``) compiled, interleaved.

    The finite difference is two training passes, forward and full backward (pass 1 also takes
    the input gradient), and PGD-3 is three attack passes and one training pass. Their ratio,
    ``floor``, is what FD costs relative to PGD-3 before its optimizer step and its own
    elementwise work, so no FD step can be cheaper than that on this machine.
    """
    device = bench_device(args)
    if device.type == 'cpu':
        cache_freed_memory()  # as in the timed runs: no page faults of re-mapped activations
    torch.manual_seed(0)
    model = make_model(args)
    kinds = ['eager'] + (['compiled'] if args.torchcompile else [])
    timers = {kind: PassTimer(model, args, device, kind == 'compiled') for kind in kinds}
    warmup = warm_up(args, device, [(kind, timer, None, None) for kind, timer in timers.items()])
    times: Dict[str, Dict[str, List[float]]] = {kind: {key: [] for key in PASSES} for kind in kinds}
    for round_index in range(max(args.steps, 1)):
        for kind in rotated(kinds, round_index):
            for key, seconds in timers[kind].round().items():
                times[kind][key].append(seconds)
    medians = {kind: {key: statistics.median(values) for key, values in passes.items()}
               for kind, passes in times.items()}
    floor = {kind: fd_floor(m) for kind, m in medians.items()}
    result = {'model': args.model, 'act': args.act, 'batch_size': args.batch_size,
              'img_size': input_size(args, model), 'device': str(device), 'amp': args.amp,
              'torchcompile': args.torchcompile, 'torchcompile_mode': args.torchcompile_mode,
              'train_bn': args.train_bn, 'channels_last': args.channels_last, 'torch': torch.__version__,
              'rounds': max(args.steps, 1), 'times': times, 'seconds': medians, 'floor': floor, **warmup}
    if 'compiled' in kinds:
        result['compiled_over_eager'] = {key: paired_quartiles(times['compiled'][key], times['eager'][key])[1]
                                         for key in PASSES}
    return result
