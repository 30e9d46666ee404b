"""CPU threads for a run on the CPU: one per core that no other process is busy on.

torch's intra-op threads wait for each other by spinning. When another process holds one of the
cores, a thread on that core is descheduled and every parallel region waits for it: on a 2-core
machine with one busy core, a demo epoch takes 10 times longer with 2 threads than with 1 (see
``benchmarks/cpu_threads.py``). The default therefore samples how busy each core this process may
use is (``/proc/stat``, a quarter of a second) and leaves out the busy ones. ``--threads N`` or
``OMP_NUM_THREADS`` (torchrun sets it to 1 per process) take precedence.
"""
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ['busy_cores', 'choose_cpu_threads', 'set_cpu_threads']

_logger = logging.getLogger(__name__)


def _available_cores() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _core_times() -> Dict[int, Tuple[int, int]]:
    """core -> (busy, total) jiffies since boot, from /proc/stat (empty where there is none)."""
    times = {}
    try:
        with open('/proc/stat') as f:
            for line in f:
                name, *values = line.split()
                if not name.startswith('cpu') or name == 'cpu':
                    continue
                counts = [int(v) for v in values]
                idle = counts[3] + (counts[4] if len(counts) > 4 else 0)  # idle + iowait
                times[int(name[3:])] = (sum(counts[:8]) - idle, sum(counts[:8]))
    except (OSError, ValueError, IndexError):
        return {}
    return times


def busy_cores(interval: float = 0.25) -> Optional[float]:
    """How many of this process's cores other processes keep busy, sampled over ``interval`` seconds while
    this process sleeps; None where the system does not say."""
    cores = _available_cores()
    before = _core_times()
    if not before:
        return None
    time.sleep(interval)
    after = _core_times()
    busy = 0.0
    for core in cores:
        if core in before and core in after:
            total = after[core][1] - before[core][1]
            busy += (after[core][0] - before[core][0]) / total if total > 0 else 0.0
    return busy


def choose_cpu_threads(requested: Optional[int] = None) -> Tuple[int, str]:
    """The number of torch threads for a CPU run, and why: ``requested`` (--threads), else OMP_NUM_THREADS,
    else the cores this process may use less those other processes keep busy (at least 1)."""
    if requested:
        return requested, '--threads'
    if os.environ.get('OMP_NUM_THREADS', '').strip().isdigit():
        return max(1, int(os.environ['OMP_NUM_THREADS'])), 'OMP_NUM_THREADS'
    cores = len(_available_cores())
    busy = busy_cores()
    if busy is None:
        return cores, f'{cores} core(s)'
    threads = max(1, min(cores, round(cores - busy)))
    return threads, f'{cores} core(s), {busy:.1f} busy with other processes'


def set_cpu_threads(requested: Optional[int] = None, log: bool = True) -> int:
    """Set torch's intra-op threads for a CPU run (``choose_cpu_threads``) and say so in one line."""
    threads, why = choose_cpu_threads(requested)
    torch.set_num_threads(threads)
    if log:
        _logger.info(f'CPU threads: {threads} ({why}; --threads N sets it).')
    return threads
