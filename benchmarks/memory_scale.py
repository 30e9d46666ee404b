"""The memory per GPU of every paper recipe, predicted, and the prediction checked on this machine.

    python benchmarks/memory_scale.py                       # the table (markdown) and the CPU check
    python benchmarks/memory_scale.py --output docs/scale.md
    python benchmarks/memory_scale.py --no-table --check cifar10/preact_resnet18_gradnorm:32:128

The table: each imagenet/ and cifar10/ training recipe at the paper's per-GPU batch and process count
(``paper_global_batch``; 1 process where a recipe does not name it), its predicted peak
(``timm_gradreg.train.memory``) and, for each GPU, whether it fits or the per-GPU batch × accumulation
steps that keep the global batch. The check: the recipe's real training step (model, task, optimizer
step) in a fresh process at two batch sizes; the growth of the process's peak resident memory between
them against the predicted growth of activation memory (ratio printed). On CUDA the same step is
measured with torch.cuda.max_memory_allocated against the whole predicted peak.
"""
import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import torch

from timm_gradreg.recipes import list_recipes
from timm_gradreg.train import parse_args, resolve_config
from timm_gradreg.train.config import batch_for_global
from timm_gradreg.train.memory import GIB, USABLE_SHARE, MemoryPrediction, predict_memory

#: name -> memory in GiB (the product's nominal size)
GPUS: Dict[str, float] = {'V100-32GB': 32, 'A100-40GB': 40, 'A100-80GB': 80, 'H100-80GB': 80}
#: recipe:batch:batch of the default check (the study's own sizes: small enough for 2 CPU cores)
CHECKS = ('cifar10/preact_resnet18_gradnorm:32:160', 'imagenet/resnet50_gelu_gradnorm:2:6',
          'imagenet/swin_base_gradnorm:1:3', 'imagenet/resnet50_gelu_advtrain:2:6', 'cifar10/preact_resnet18_natural:32:160')
RECORD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results', 'memory_checks.json')


def training_recipes() -> List[str]:
    return [r.name for r in list_recipes() if r.name.split('/')[0] in ('imagenet', 'cifar10')
            and r.command == 'timm-train']


def recipe_config(name: str, world_size: Optional[int] = None, extra: Tuple[str, ...] = ()) -> argparse.Namespace:
    """The recipe resolved at ``world_size`` processes (default: the paper's, from its global batch)."""
    swap = re.search(r'resnet50_(gelu|silu)', name)  # recorded by the fine-tune's checkpoint, absent here
    args, _ = parse_args(['-c', name, '--dry-run', *(['--swap-activations', swap.group(1)] if swap else []), *extra])
    if world_size is None:
        per_update = args.batch_size * args.grad_accum_steps
        world_size = max(1, round(args.paper_global_batch / per_update)) if args.paper_global_batch else 1
    args.world_size = world_size
    return resolve_config(args, world_size=world_size)


def gpu_cell(cfg: argparse.Namespace, prediction: MemoryPrediction, gib: float) -> str:
    fits = prediction.max_batch(gib * GIB * USABLE_SHARE)
    if cfg.batch_size <= fits:
        return f'fits (≤ {fits})'
    if fits < 1:
        return 'no (batch 1 too large)'
    target = cfg.paper_global_batch or cfg.global_batch_size
    batch, accum = batch_for_global(target, cfg.world_size, fits, max_accum=64)
    mark = '' if batch * cfg.world_size * accum == target else f' ({batch * cfg.world_size * accum})'
    return f'{batch} × {accum}{mark}'


def table(names: List[str]) -> str:
    head = ('| recipe | GPUs × batch × accum | saved / sample | states | predicted peak | '
            + ' | '.join(GPUS) + ' |\n|---|---|---|---|---|' + '---|' * len(GPUS) + '\n')
    rows = []
    for name in names:
        cfg = recipe_config(name)
        p = predict_memory(cfg)
        cells = [gpu_cell(cfg, p, gib) for gib in GPUS.values()]
        rows.append(f'| {name} | {cfg.world_size} × {cfg.batch_size} × {cfg.grad_accum_steps} | '
                    f'{p.activations_per_sample / 2 ** 20:.0f} MiB | {p.states / GIB:.2f} GiB | '
                    f'{p.peak(cfg.batch_size) / GIB:.1f} GiB | ' + ' | '.join(cells) + ' |')
        print(rows[-1], flush=True)
    return head + '\n'.join(rows) + '\n'


def measure_step(name: str, batch: int) -> int:
    """Peak bytes of one real training step of the recipe at ``batch`` in this process: resident memory
    (CPU), or torch.cuda.max_memory_allocated (CUDA)."""
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm_gradreg.tasks import create_task
    from timm_gradreg.train.config import criterion_kwargs, mixup_active
    from timm_gradreg.train.model import create_train_model
    cfg = recipe_config(name, 1, ('--batch-size', str(batch)))
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(0)
    model = create_train_model(cfg, pretrained=False, load_checkpoint=False).to(device)
    data = resolve_data_config(vars(cfg), model=model, verbose=False)
    task = create_task(cfg.gradreg, model, criterion_kwargs=criterion_kwargs(cfg), device=device, verbose=False,
                       mean=data['mean'], std=data['std'], **cfg.task_kwargs)
    task.set_epoch(float(cfg.epochs) - 1.0)
    model.train(not cfg.train_in_eval_mode)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=cfg), **cfg.opt_kwargs)
    x = torch.rand(batch, *data['input_size'], device=device)
    target = (torch.softmax(torch.randn(batch, model.num_classes, device=device), 1) if mixup_active(cfg)
              else torch.randint(0, model.num_classes, (batch,), device=device))
    task(x, target)['loss'].backward()
    optimizer.step()
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured_in_fresh_process(name: str, batch: int) -> int:
    run = subprocess.run([sys.executable, __file__, '--measure', name, str(batch)], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f'measuring {name} at batch {batch} failed:\n{run.stderr[-3000:]}')
    return int(run.stdout.split()[-1])


def check(spec: str) -> dict:
    """One check's record: the saved-tensor growth the hooks count, and the measured peak growth, from B1 to B2."""
    name, small, large = spec.split(':')
    small, large = int(small), int(large)
    prediction = predict_memory(recipe_config(name, 1))
    a, b = measured_in_fresh_process(name, small), measured_in_fresh_process(name, large)
    row = {'recipe': name, 'batches': [small, large], 'saved_growth': prediction.activations_per_sample * (large - small),
           'measured': [a, b], 'device': 'cuda' if torch.cuda.is_available() else 'cpu'}
    if torch.cuda.is_available():
        row['predicted_peak'] = prediction.peak(large)
    print(check_row(row), flush=True)
    return row


def check_row(row: dict) -> str:
    (small, large), (a, b) = row['batches'], row['measured']
    line = (f"| {row['recipe']} | {small} → {large} | {row['saved_growth'] / 2 ** 20:.0f} MiB | "
            f"{(b - a) / 2 ** 20:.0f} MiB | {(b - a) / row['saved_growth']:.2f} |")
    if row.get('predicted_peak'):
        line += f" {b / row['predicted_peak']:.2f} (max_memory_allocated / predicted peak at {large}) |"
    return line


def check_table(record: dict) -> str:
    """The checks' table from their record."""
    return (f"{record['machine']}, torch {record['torch']}:\n\n"
            '| recipe | batch | saved-tensor growth (hooks) | measured peak growth (RSS) | ratio |\n'
            '|---|---|---|---|---|\n' + '\n'.join(check_row(row) for row in record['checks']) + '\n')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--recipes', nargs='+', default=None, help='(default: every imagenet/ and cifar10/ recipe)')
    parser.add_argument('--check', nargs='*', default=list(CHECKS), metavar='RECIPE:B1:B2',
                        help='CPU checks: peak growth from batch B1 to B2 against the prediction (none: skip)')
    parser.add_argument('--no-table', action='store_true')
    parser.add_argument('--output', default=None, help='write the markdown here as well')
    parser.add_argument('--record', default=None, metavar='FILE',
                        help=f'write the checks\' record here (the published one: {os.path.relpath(RECORD)})')
    parser.add_argument('--measure', nargs=2, metavar=('RECIPE', 'BATCH'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(measure_step(args.measure[0], int(args.measure[1])))
        return 0
    parts = []
    if not args.no_table:
        parts.append(table(args.recipes or training_recipes()))
    if args.check:
        record = {'machine': torch.cuda.get_device_name() if torch.cuda.is_available() else
                  f'{os.cpu_count()}-core CPU ({platform.machine()})', 'torch': torch.__version__,
                  'checks': [check(spec) for spec in args.check]}
        parts.append(check_table(record))
        if args.record:
            with open(args.record, 'w') as f:
                json.dump(record, f, indent=1)
    text = '\n'.join(parts)
    print(text)
    if args.output:
        with open(args.output, 'w') as f:
            f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
