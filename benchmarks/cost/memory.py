"""Peak memory of a step: CUDA's peak allocation, or on CPU the peak RSS growth of one method's step
in a fresh process."""
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import torch

from .methods import METHODS
from .harness import make_model
from .steps import StepRunner

__all__ = ['memory_child', 'measure_memory']

#: The script a memory measurement runs in a fresh process.
_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'step_cost.py')


def _peak_memory_cuda(runner: StepRunner) -> float:
    torch.cuda.synchronize(runner.device)
    torch.cuda.reset_peak_memory_stats(runner.device)
    base = torch.cuda.memory_allocated(runner.device)
    runner.step()
    torch.cuda.synchronize(runner.device)
    return (torch.cuda.max_memory_allocated(runner.device) - base) / 2 ** 20


def _peak_memory_cpu(args, name: str, compiled: bool) -> Optional[float]:
    argv = [sys.executable, _SCRIPT, '--memory-child', name, '--model', args.model,
            '--num-classes', str(args.num_classes), '-b', str(args.batch_size), '--amp', args.amp, '--device', 'cpu']
    argv += ['--act', args.act] if args.act else []
    argv += ['--img-size', str(args.img_size)] if args.img_size else []
    argv += ['--no-fused-attn'] if args.no_fused_attn else []
    argv += ['--train-bn'] if args.train_bn else []
    argv += ['--channels-last'] if args.channels_last else []
    # large blocks straight from mmap, so freed tensors leave RSS at once and the peak is the live peak
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])['peak_mb']


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(args) -> None:
    """Fresh process: model, task, batch and optimizer state ready, then the peak RSS growth of two steps.

    The peak is VmHWM after resetting it (``/proc/self/clear_refs``): a process inherits its
    parent's peak across fork/exec, so getrusage cannot be used here.
    """
    runner = StepRunner(args.memory_child, METHODS[args.memory_child], make_model(args), args, torch.device('cpu'),
                     compiled=False)
    for p in runner.model.parameters():  # create the optimizer state up front, it is not the method's cost
        p.grad = torch.zeros_like(p)
    runner.optimizer.step()
    runner.optimizer.zero_grad(set_to_none=True)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS counter
    base = _status_kb('VmRSS')
    runner.step()
    runner.step()
    print(json.dumps({'peak_mb': (_status_kb('VmHWM') - base) / 1024.0}))


def measure_memory(args, device: torch.device, runners: list, rows: List[Dict[str, Any]]) -> Optional[float]:
    """Fill each row's peak_mb and mem_rel_natural; returns natural training's peak (eager on CPU)."""
    for (label, runner, name, compiled), row in zip(runners, rows):
        if device.type == 'cuda':
            row['peak_mb'] = _peak_memory_cuda(runner)
        else:  # eager only: RSS cannot separate a step from compilation
            row['peak_mb'] = None if compiled else _peak_memory_cpu(args, name, compiled)
    natural = next((r['peak_mb'] for r in rows if r['method'].startswith('natural')), None)
    if natural is None and device.type == 'cpu' and 'natural' in args.methods:  # natural ran compiled
        natural = _peak_memory_cpu(args, 'natural', False)
    for row in rows:
        row['mem_rel_natural'] = row['peak_mb'] / natural if natural and row['peak_mb'] else None
    return natural
