"""Every paper recipe takes optimizer steps at its real shapes: model, input size, augmentation, EMA, AMP
setting, task, and a schedule position past the warm-ups.

    python benchmarks/recipe_smoke.py                                   # every imagenet/ and cifar10/ recipe
    python benchmarks/recipe_smoke.py --recipes imagenet/swin_base_gradnorm cifar10/preact_resnet18_gradnorm

Each recipe trains through timm-train on a synthetic image folder (random images at the recipe's input
size; 2 steps at batch 2 per process) from a random initialization (pretrained weights off: nothing
downloads), starting at epoch 6, past every warm-up of the paper's recipes (5 epochs), and stopping
after it (a fine-tune shorter than that: its last epoch). It checks a finite training loss and weights changed from the saved initialization, and prints the time
per step (wall time of the run over its 2 steps, set-up and validation included: an upper bound).
"""
import argparse
import csv
import math
import os
import re
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from timm_gradreg.recipes import list_recipes

START_EPOCH = 6


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


def smoke(name: str, work: str) -> Dict:
    """Train the recipe for its epoch START_EPOCH on the synthetic folder; loss, weight change, time per step."""
    from timm_gradreg.cli.train import main as train_main
    config = _recipe_config(name)
    start = min(START_EPOCH, int(config.get('epochs', START_EPOCH + 1)) - 1)  # a short fine-tune: its last epoch
    size = config.get('input_size', [3, 224, 224])[-1]
    data = synthetic_folder(os.path.join(work, f'data{size}'), size)
    out = os.path.join(work, 'out')
    import timm
    import timm_gradreg  # noqa: F401  (registers preact_resnet18_cifar)
    model = timm.create_model(config['model'], num_classes=config.get('num_classes', 1000),
                              **(config.get('model_kwargs') or {}))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    init_path = os.path.join(work, 'init.pth.tar')
    torch.save({'state_dict': initial}, init_path)
    argv = ['-c', name, '--dataset', '', '--data-dir', data, '-b', '2', '--grad-accum-steps', '1', '--no-pretrained',
            '--initial-checkpoint', init_path, '--resume', '', '--start-epoch', str(start), '--stop-epoch',
            str(start + 1), '--workers', '0', '--device', 'cpu', '--adv-val-steps', '1', '--output', out,
            '--experiment', name.replace('/', '_'), '--log-interval', '1', '--seed', '0', *_swap(name)]
    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        code = train_main(argv)
    except SystemExit as e:  # an option refused by the parser: reported as a failure of this recipe
        code = e.code if isinstance(e.code, int) else 2
    elapsed = time.perf_counter() - started
    folder = os.path.join(out, name.replace('/', '_'))
    rows = list(csv.DictReader(open(os.path.join(folder, 'summary.csv')))) if code == 0 else []
    loss = float(rows[-1]['train_loss']) if rows else float('nan')
    checkpoint = torch.load(os.path.join(folder, 'last.pth.tar'), map_location='cpu', weights_only=False) \
        if code == 0 else None
    changed = checkpoint is not None and any(
        not torch.equal(value, initial[key]) for key, value in checkpoint['state_dict'].items()
        if key in initial and value.is_floating_point())
    return {'recipe': name, 'exit': code, 'loss': loss, 'finite': math.isfinite(loss), 'changed': changed,
            'seconds_per_step': elapsed / 2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [r.name for r in list_recipes() if r.name.split('/')[0] in ('imagenet', 'cifar10')
             and r.command == 'timm-train']
    parser.add_argument('--recipes', nargs='+', default=names, choices=names)
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory() as work:
        for name in args.recipes:
            result = smoke(name, work)
            ok = result['exit'] == 0 and result['finite'] and result['changed']
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: loss {result['loss']:.4f}, "
                  f"{result['seconds_per_step']:.1f} s per step (wall time, incl. setup)", flush=True)
    print(f'{len(args.recipes) - failed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
