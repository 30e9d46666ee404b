"""torch.profiler's costliest operators of one method's steps, after the timed runs' warm-up."""
import argparse

import torch

from .pages import cache_freed_memory
from .methods import METHODS
from .harness import bench_device, make_model
from .steps import StepRunner, warm_up

__all__ = ['profile_step']


def profile_step(args: argparse.Namespace) -> str:
    """torch.profiler's table of the operators that cost the most in ``args.profile``'s steps."""
    from torch.profiler import ProfilerActivity, profile
    device = bench_device(args)
    if device.type == 'cpu':
        cache_freed_memory()  # as in the timed runs: no page faults of re-mapped activations
    torch.manual_seed(0)
    method = METHODS[args.profile]
    runner = StepRunner(args.profile, method, make_model(args), args, device,
                     compiled=bool(args.torchcompile) and method.compilable)
    warm_up(args, device, [(args.profile, runner, args.profile, None)])  # to steady state, as the timed runs
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    steps = max(args.steps, 1)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.timed_step()
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    head = f'{args.profile}: {steps} steps of {args.model}, batch {args.batch_size}, {device}, amp {args.amp}'
    return head + '\n' + prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows)
