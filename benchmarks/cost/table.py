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

__all__ = ['run_benchmark', 'run_interleaved']


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    """Every method of ``args`` timed on its model, with peak memory and the finite difference's agreement."""
    return run_interleaved({'': args})['']


def _label(setting: str, label: str) -> str:
    return f'{setting}: {label}' if setting else label


def run_interleaved(settings: Dict[str, argparse.Namespace]) -> Dict[str, Dict[str, Any]]:
    """Several settings (model, input, batch) timed in one run: each round steps every method of every setting,
    in a rotated order, so the machine's drifts hit them all alike; each setting's ratios are to its own PGD-3.
    Peak memory and the finite-difference check are measured for a single setting only."""
    first = next(iter(settings.values()))
    device = bench_device(first)
    cached_malloc = device.type == 'cpu' and cache_freed_memory()
    models, runners = {}, []
    for key, args in settings.items():
        torch.manual_seed(0)
        models[key] = make_model(args)
        runners += [(_label(key, label), StepRunner(label, METHODS[name], models[key], args, device, compiled), name,
                     compiled) for label, name, compiled in variants(args)]
    warmup = warm_up(first, device, runners)
    times: Dict[str, List[float]] = {label: [] for label, *_ in runners}
    faults: Dict[str, List[int]] = {label: [] for label, *_ in runners}
    for round_index in range(first.steps):
        for label, runner, _, _ in rotated(runners, round_index):
            seconds, step_faults = with_page_faults(runner.timed_step)
            times[label].append(seconds)
            faults[label].append(step_faults)
    results = {}
    for key, args in settings.items():
        mine = [(runner.name, runner, name, compiled) for label, runner, name, compiled in runners
                if label == _label(key, runner.name)]
        rows = []
        for label, runner, name, compiled in mine:
            timed = _label(key, label)
            rows.append({'method': label, 'passes': METHODS[name].passes,
                         'passes_rel_at': METHODS[name].passes / METHODS[REFERENCE].passes,
                         'seconds': statistics.median(times[timed]), 'times': times[timed],
                         'page_faults': faults[timed], 'compiled': compiled})
        reference = {row['compiled']: row for row in rows  # 'pgd', 'pgd (compiled)', 'pgd (eager)'; not 'pgd2'
                     if row['method'] == REFERENCE or row['method'].startswith(REFERENCE + ' (')}
        for row in rows:
            ref = reference.get(row['compiled']) or reference.get(False) or reference.get(True)
            row['ratio_quartiles'] = paired_quartiles(row['times'], ref['times']) if ref else None
            row['ratio'] = row['ratio_quartiles'][1] if ref else None
        single = len(settings) == 1
        natural_mb = None if args.no_memory or not single else measure_memory(args, device, mine, rows)
        by_label = {row['method']: row for row in rows}
        compile_speedups = {name: paired_quartiles(by_label[f'{name} (compiled)']['times'],
                                                    by_label[f'{name} (eager)']['times'])
                            for name in EAGER_TOO if f'{name} (compiled)' in by_label and f'{name} (eager)' in by_label}
        result = {'model': args.model, 'act': args.act, 'batch_size': args.batch_size,
                  'img_size': input_size(args, models[key]), 'in_chans': getattr(args, 'in_chans', 3),
                  'device': str(device), 'amp': args.amp,
                  'torchcompile': args.torchcompile, 'torchcompile_mode': args.torchcompile_mode,
                  'train_bn': args.train_bn, 'channels_last': args.channels_last,
                  'rows': rows, 'compiled_over_eager': compile_speedups,
                  'torch': torch.__version__, 'cpu_malloc_cached': cached_malloc,
                  'interleaved_with': [k for k in settings if k != key], **warmup}
        if natural_mb is not None:
            result['natural_eager_peak_mb'] = natural_mb
        if single and not args.no_fd_check and 'gradnorm-fd' in args.methods:
            result['fd_accuracy'] = gradnorm_fd_agreement(model_copy(models[key], args, device), mine[0][1].x,
                                                          mine[0][1].y)
        results[key] = result
    return results
