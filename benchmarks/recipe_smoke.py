"""Every paper recipe takes optimizer steps at its real shapes: model, input size, augmentation, EMA, AMP
setting, task, and a schedule position past the warm-ups.

    python benchmarks/recipe_smoke.py                                   # every imagenet/ and cifar10/ recipe
    python benchmarks/recipe_smoke.py --recipes imagenet/swin_base_gradnorm cifar10/preact_resnet18_gradnorm
    python benchmarks/recipe_smoke.py --routes launch --train-py tests/fixtures/timm_train/train-main-aa4b5850.py

Each recipe trains through timm-train on a synthetic image folder (random images at the recipe's input
size; 2 steps at batch 2 per process) from a random initialization (pretrained weights off: nothing
downloads), starting at epoch 6, past every warm-up of the paper's recipes (5 epochs), and stopping
after it (a fine-tune shorter than that: its last epoch). Two routes: timm-train, and gradreg-launch
driving timm's own train.py (unmodified; the recipe's YAML with pretrained off, the schedule cut at that
epoch). It checks a finite training loss and weights changed from the saved initialization, and prints
the time per step (wall time of the run over its 2 steps, set-up and validation included: an upper bound).
"""
import argparse
import csv
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from timm_gradreg.recipes import list_recipes

START_EPOCH = 6
DDP_TOLERANCE = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: timm's own train.py (tests/fixtures/timm_train: unmodified Apache-2.0 copies)
STOCK_TRAIN_PY = os.path.join(ROOT, 'tests', 'fixtures', 'timm_train', 'train-main-aa4b5850.py')


def synthetic_folder(root: str, size: int, train: int = 4, val: int = 2, classes: int = 2) -> str:
    """Random RGB images at ``size`` in class folders, train/ and validation/."""
    rng = np.random.default_rng(0)
    for split, count in (('train', train), ('validation', val)):
        for i in range(count):
            folder = os.path.join(root, split, f'class_{i % classes}')
            os.makedirs(folder, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f'{i}.png'))
    return root


def _recipe_config(name: str) -> Dict:
    import yaml
    recipe = next(r for r in list_recipes() if r.name == name)
    return yaml.safe_load(open(recipe.path))


def _swap(name: str) -> List[str]:
    match = re.search(r'resnet50_(gelu|silu)', name)
    return ['--swap-activations', match.group(1)] if match else []


def _run_timm_train(name: str, config: Dict, data: str, init: str, start: int, out: str, device: str = 'cpu') -> int:
    from timm_gradreg.cli.train import main as train_main
    argv = ['-c', name, '--dataset', '', '--data-dir', data, '-b', '2', '--grad-accum-steps', '1', '--no-pretrained',
            '--initial-checkpoint', init, '--resume', '', '--start-epoch', str(start), '--stop-epoch',
            str(start + 1), '--workers', '0', '--device', device, '--adv-val-steps', '1', '--output', out,
            '--experiment', name.replace('/', '_'), '--log-interval', '1', '--seed', '0', *_swap(name)]
    try:
        return train_main(argv)
    except SystemExit as e:  # an option refused by the parser: reported as a failure of this recipe
        return e.code if isinstance(e.code, int) else 2


def _run_launch(name: str, config: Dict, data: str, init: str, start: int, out: str, train_py: str) -> int:
    """gradreg-launch with timm's train.py on the recipe's own YAML (pretrained off: nothing downloads;
    train.py has no --stop-epoch, so the schedule ends after the epoch)."""
    import yaml
    path = os.path.join(out, name.replace('/', '_') + '.yaml')
    os.makedirs(out, exist_ok=True)
    with open(path, 'w') as f:
        yaml.safe_dump({**config, 'pretrained': False}, f)
    cmd = [sys.executable, '-m', 'timm_gradreg.cli.launch', train_py, '-c', path, '--dataset', '', '--data-dir', data,
           '-b', '2', '--grad-accum-steps', '1', '--initial-checkpoint', init, '--start-epoch', str(start),
           '--epochs', str(start + 1), '--workers', '1', '--device', 'cpu', '--adv-val-steps', '1', '--output', out,
           '--experiment', name.replace('/', '_'), '--log-interval', '1', '--seed', '0', *_swap(name)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
    return run.returncode


def smoke(name: str, work: str, route: str = 'timm-train', train_py: str = STOCK_TRAIN_PY, device: str = 'cpu') -> Dict:
    """Train the recipe for its epoch START_EPOCH on the synthetic folder (timm-train on ``device``); loss, weight
    change, time per step."""
    config = _recipe_config(name)
    start = min(START_EPOCH, int(config.get('epochs', START_EPOCH + 1)) - 1)  # a short fine-tune: its last epoch
    size = config.get('input_size', [3, 224, 224])[-1]
    data = synthetic_folder(os.path.join(work, f'data{size}'), size)
    out = os.path.join(work, f'out-{route}')
    import timm
    import timm_gradreg  # noqa: F401  (registers preact_resnet18_cifar)
    model = timm.create_model(config['model'], num_classes=config.get('num_classes', 1000),
                              **(config.get('model_kwargs') or {}))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    init_path = os.path.join(work, 'init.pth.tar')
    torch.save({'state_dict': initial}, init_path)
    torch.manual_seed(0)
    started = time.perf_counter()
    if route == 'launch':
        code = _run_launch(name, config, data, init_path, start, out, train_py)
    else:
        code = _run_timm_train(name, config, data, init_path, start, out, device)
    elapsed = time.perf_counter() - started
    folder = os.path.join(out, name.replace('/', '_'))
    rows = list(csv.DictReader(open(os.path.join(folder, 'summary.csv')))) if code == 0 else []
    loss = float(rows[-1]['train_loss']) if rows else float('nan')
    checkpoint = torch.load(os.path.join(folder, 'last.pth.tar'), map_location='cpu', weights_only=False) \
        if code == 0 else None
    changed = checkpoint is not None and any(
        not torch.equal(value, initial[key]) for key, value in checkpoint['state_dict'].items()
        if key in initial and value.is_floating_point())
    return {'recipe': name, 'route': route, 'exit': code, 'loss': loss, 'finite': math.isfinite(loss),
            'changed': changed, 'seconds_per_step': elapsed / 2}


def _recipe_step_setup(name: str, batch: int):
    """The recipe's model (seeded random init) and task on CPU, and a fixed batch: (model, task, x, target)."""
    from timm.data import resolve_data_config
    from timm_gradreg.tasks import create_task
    from timm_gradreg.train import parse_args, resolve_config
    from timm_gradreg.train.config import criterion_kwargs, mixup_active
    from timm_gradreg.train.model import create_train_model
    args, _ = parse_args(['-c', name, '--no-pretrained', *_swap(name)])
    cfg = resolve_config(args, world_size=1)
    torch.manual_seed(0)
    model = create_train_model(cfg, load_checkpoint=False)
    data = resolve_data_config(vars(cfg), model=model, verbose=False)
    task = create_task(cfg.gradreg, model, criterion_kwargs=criterion_kwargs(cfg), verbose=False,
                       mean=data['mean'], std=data['std'], **cfg.task_kwargs)
    task.set_epoch(float(START_EPOCH))
    model.train(not cfg.train_in_eval_mode)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *data['input_size'], generator=g)
    target = (torch.softmax(torch.randn(batch, model.num_classes, generator=g), 1) if mixup_active(cfg)
              else torch.randint(0, model.num_classes, (batch,), generator=g))
    return model, task, x, target


def _ddp_worker(rank: int, world: int, name: str, work: str) -> None:
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f"file://{os.path.join(work, 'ddp-init')}", rank=rank,
                            world_size=world)
    model, task, x, target = _recipe_step_setup(name, 2 * world)
    task.prepare_distributed()
    shard = slice(rank * 2, rank * 2 + 2)
    task(x[shard], target[shard])['loss'].backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                   os.path.join(work, 'ddp-grads.pt'))
    dist.destroy_process_group()


def ddp_check(name: str, work: str, world: int = 2) -> float:
    """Relative difference of the gradient (the update's input) averaged by DDP over ``world`` gloo
    processes of batch 2 and one process on their joint batch: ||g_ddp - g|| / ||g||."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(world, name, work), nprocs=world, join=True)
    ddp = torch.load(os.path.join(work, 'ddp-grads.pt'))
    model, task, x, target = _recipe_step_setup(name, 2 * world)
    task(x, target)['loss'].backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(single) == set(ddp), 'the two runs produced gradients for different parameters'
    diff = torch.sqrt(sum(((ddp[n] - single[n]).double() ** 2).sum() for n in single))
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in single.values()))
    return float(diff / norm)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [r.name for r in list_recipes() if r.name.split('/')[0] in ('imagenet', 'cifar10')
             and r.command == 'timm-train']
    parser.add_argument('--recipes', nargs='+', default=names, choices=names)
    parser.add_argument('--routes', nargs='+', default=['timm-train', 'launch'], choices=['timm-train', 'launch'])
    parser.add_argument('--train-py', default=STOCK_TRAIN_PY, help="timm's train.py for the launch route")
    parser.add_argument('--ddp-check', nargs='*', default=['imagenet/swin_base_gradnorm'], choices=names,
                        help='recipes whose gradient on two gloo processes must equal one process on the joint batch '
                             '(rel <= 1e-5; none: skip)')
    args = parser.parse_args(argv)
    if 'launch' in args.routes and not os.path.isfile(args.train_py):
        parser.error(f"timm's train.py is not at {args.train_py}: give --train-py, or --routes timm-train")
    failed = 0
    with tempfile.TemporaryDirectory() as work:
        for name in args.recipes:
            for route in args.routes:
                result = smoke(name, work, route, args.train_py)
                ok = result['exit'] == 0 and result['finite'] and result['changed']
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} ({route}): loss {result['loss']:.4f}, "
                      f"{result['seconds_per_step']:.1f} s per step (wall time, incl. setup)", flush=True)
        for name in args.ddp_check:
            rel = ddp_check(name, work)
            ok = rel <= DDP_TOLERANCE
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name} (2 gloo processes x batch 2 vs 1 process x batch 4): "
                  f'relative gradient difference {rel:.2e} (tolerance {DDP_TOLERANCE:g})', flush=True)
    runs = len(args.recipes) * len(args.routes) + len(args.ddp_check)
    print(f'{runs - failed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
