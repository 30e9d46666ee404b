"""Options and helpers shared by gradreg-eval and gradreg-analyze."""
import argparse
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from timm import utils

from ..core.normalization import normalized_model
from ..models.activations import add_swap_args
from ..models.loading import load_eval_model
from ..tasks import number
from ..utils.device import default_device
from ..utils.threads import set_cpu_threads

__all__ = ['add_model_args', 'add_data_args', 'resolve_models', 'init_device', 'gather_rows', 'ModelSpec']


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Models')
    group.add_argument('--checkpoint', nargs='+', default=[], metavar='PATH',
                       help='timm-train / timm / swap-activations checkpoints, one per model to compare (none: '
                            'evaluate --model as initialised)')
    group.add_argument('--model', nargs='+', default=[], metavar='NAME',
                       help='timm model name, one for all checkpoints or one each (default: recorded in the '
                            'checkpoint)')
    group.add_argument('--labels', nargs='+', default=[], metavar='NAME',
                       help='names for the models in tables and plots (default: experiment folder names)')
    group.add_argument('--use-ema', action='store_true', help='load the EMA weights of the checkpoints')
    add_swap_args(group, 'before loading (only if the checkpoint does not record its swap)')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='classifier size (default: from the checkpoint or the model)')
    group.add_argument('--pretrained', action='store_true', help='start from timm pretrained weights (HF hub)')


def add_data_args(parser: argparse.ArgumentParser, default_samples: Optional[int] = None) -> None:
    group = parser.add_argument_group('Data (as timm-train)')
    group.add_argument('--data-dir', metavar='DIR', default=None, help='dataset root (image folder with splits)')
    group.add_argument('--dataset', default='', metavar='NAME',
                       help='timm dataset name ("" for an image folder, torch/cifar10, demo/digits, ...)')
    group.add_argument('--split', default='validation', metavar='NAME', help='split to evaluate (validation)')
    group.add_argument('--num-samples', type=number(1, integer=True), default=default_samples, metavar='N',
                       help='fixed seeded subset of the split (RobustBench uses 5000 ImageNet images) '
                            f'(default: {default_samples or "all"})')
    group.add_argument('--subset', default='seeded', choices=('seeded', 'official'),
                       help="which images: a seeded sample of the split, or the official code's fixed list of 5,000 "
                            'ImageNet validation images (default: seeded)')
    group.add_argument('--subset-seed', type=int, default=0, metavar='S', help='seed of the subset (0)')
    group.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                       help='override the input size the model was trained with')
    group.add_argument('--crop-pct', type=float, default=None, help='override the eval center-crop fraction')
    group.add_argument('--interpolation', default='', help='override the resize interpolation')
    group.add_argument('--mean', type=float, nargs='+', default=None, help='override the normalization mean')
    group.add_argument('--std', type=float, nargs='+', default=None, help='override the normalization std')
    group.add_argument('-b', '--batch-size', type=number(1, integer=True), default=100, metavar='N',
                       help='batch size (100)')
    group.add_argument('-j', '--workers', type=int, default=2, metavar='N', help='data loading workers (2)')
    group.add_argument('--device', default=None, help='device (default: cuda if available, else cpu)')
    group.add_argument('--threads', type=number(1, integer=True), default=None, metavar='N',
                       help='CPU threads of a CPU run (default: the cores no other process is busy on)')
    group.add_argument('--output', default='', metavar='DIR', help='output folder')
    group.add_argument('--seed', type=int, default=0, help='seed of the attacks\' random starts (0)')
    group.add_argument('--no-progress', action='store_true',
                       help='no progress display (a bar with an ETA on a terminal, a log line every 30 s otherwise)')


class ModelSpec:
    """A model to evaluate: label, pixel-space model (normalization inside), its data config."""

    def __init__(self, label: str, model: nn.Module, data_config: Dict[str, Any], checkpoint: str):
        self.label, self.model, self.data_config, self.checkpoint = label, model, data_config, checkpoint


def _label(checkpoint: str, model: str, used: List[str]) -> str:
    if checkpoint:
        parent = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
        stem = os.path.basename(checkpoint).split('.')[0]
        label = parent if stem in ('last', 'model_best') or stem.startswith('checkpoint-') else stem
    else:
        label = model
    base, i = label, 2
    while label in used:
        label, i = f'{base}-{i}', i + 1
    return label


def resolve_models(args: argparse.Namespace, device: torch.device) -> List[ModelSpec]:
    """Load every --checkpoint (or --model alone) for evaluation, wrapped to take [0, 1] pixels."""
    if not args.checkpoint and not args.model:
        raise ValueError('give --checkpoint PATH [PATH ...] and/or --model NAME [NAME ...]')
    names = list(args.model)
    checkpoints = list(args.checkpoint) or [''] * len(names)  # models as initialised, one per name
    if len(names) not in (0, 1, len(checkpoints)):
        raise ValueError(f'--model takes one name or one per checkpoint ({len(checkpoints)}), got {len(names)}')
    if args.labels and len(args.labels) != len(checkpoints):
        raise ValueError(f'--labels needs one name per model ({len(checkpoints)}), got {len(args.labels)}')
    overrides = {'input_size': args.input_size, 'crop_pct': args.crop_pct, 'interpolation': args.interpolation,
                 'mean': args.mean, 'std': args.std}
    specs: List[ModelSpec] = []
    for i, ckpt in enumerate(checkpoints):
        name = names[i] if len(names) == len(checkpoints) else (names[0] if names else None)
        model, cfg = load_eval_model(ckpt or None, name, use_ema=args.use_ema, swap=args.swap_activations,
                                     swap_source=args.swap_source, num_classes=args.num_classes,
                                     pretrained=args.pretrained, data_overrides=overrides)
        label = args.labels[i] if args.labels else _label(ckpt, name or '', [s.label for s in specs])
        pixel_model = normalized_model(model, cfg['mean'], cfg['std']).to(device).eval()
        specs.append(ModelSpec(label, pixel_model, cfg, ckpt))
    return specs


def init_device(args: argparse.Namespace) -> torch.device:
    """Device and (under torchrun) the process group, via timm."""
    args.device = default_device(args.device)
    device = utils.init_distributed_device(args)
    if device.type == 'cpu':
        set_cpu_threads(args.threads)
    return device


def gather_rows(indices: List[int], *tensors: torch.Tensor) -> Tuple[List[int], List[torch.Tensor]]:
    """Concatenate per-rank per-sample results in dataset-index order (no-op without a process group).

    Each tensor has samples on its last dimension.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (list(indices), [t.cpu() for t in tensors]))
        indices = [i for p in parts for i in p[0]]
        tensors = [torch.cat([p[1][k] for p in parts], dim=-1) for k in range(len(tensors))]
    order = sorted(range(len(indices)), key=indices.__getitem__)
    index = torch.tensor(order, dtype=torch.long)
    return [indices[i] for i in order], [t.index_select(-1, index) for t in tensors]
