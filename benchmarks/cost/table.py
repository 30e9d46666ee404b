"""The Table-3 benchmark: every method's full training steps, interleaved, with ratios to PGD-3."""
import argparse
import statistics
from typing import Any, Dict, List

import torch

from timm_gradreg.tasks import gradnorm_fd_agreement

from .memory import measure_memory
from .methods import EAGER_TOO, METHODS, REFERENCE
from .pages import cache_freed_memory, with_page_faults
from .harness import bench_device, input_size, make_model, model_copy
from .steps import StepRunner, paired_quartiles, rotated, variants, warm_up

__all__ = ['run_benchmark']


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    device = bench_device(args)
    cached_malloc = device.type == 'cpu' and cache_freed_memory()
    torch.manual_seed(0)
    model = make_model(args)
    runners = [(label, StepRunner(label, METHODS[name], model, args, device, compiled), name, compiled)
               for label, name, compiled in variants(args)]
    warmup = warm_up(args, device, runners)
    times: Dict[str, List[float]] = {label: [] for label, *_ in runners}
    faults: Dict[str, List[int]] = {label: [] for label, *_ in runners}
    for round_index in range(args.steps):
        for label, runner, _, _ in rotated(runners, round_index):
            seconds, step_faults = with_page_faults(runner.timed_step)
            times[label].append(seconds)
            faults[label].append(step_faults)
    rows = []
    for label, runner, name, compiled in runners:
        rows.append({'method': label, 'passes': METHODS[name].passes,
                     'passes_rel_at': METHODS[name].passes / METHODS[REFERENCE].passes,
                     'seconds': statistics.median(times[label]), 'times': times[label],
                     'page_faults': faults[label], 'compiled': compiled})
    reference = {row['compiled']: row for row in rows if row['method'].startswith(REFERENCE)}
    for row in rows:
        ref = reference.get(row['compiled']) or reference.get(False) or reference.get(True)
        row['ratio_quartiles'] = paired_quartiles(row['times'], ref['times']) if ref else None
        row['ratio'] = row['ratio_quartiles'][1] if ref else None
    natural_mb = None if args.no_memory else measure_memory(args, device, runners, rows)
    by_label = {row['method']: row for row in rows}
    compile_speedups = {name: paired_quartiles(by_label[f'{name} (compiled)']['times'],
                                                by_label[f'{name} (eager)']['times'])
                        for name in EAGER_TOO if f'{name} (compiled)' in by_label and f'{name} (eager)' in by_label}
    result = {'model': args.model, 'act': args.act, 'batch_size': args.batch_size,
              'img_size': input_size(args, model), 'device': str(device), 'amp': args.amp,
              'torchcompile': args.torchcompile, 'torchcompile_mode': args.torchcompile_mode,
              'train_bn': args.train_bn, 'channels_last': args.channels_last,
              'rows': rows, 'compiled_over_eager': compile_speedups,
              'torch': torch.__version__, 'cpu_malloc_cached': cached_malloc, **warmup}
    if natural_mb is not None:
        result['natural_eager_peak_mb'] = natural_mb
    if not args.no_fd_check and 'gradnorm-fd' in args.methods:
        result['fd_accuracy'] = gradnorm_fd_agreement(model_copy(model, args, device), runners[0][1].x, runners[0][1].y)
    return result
