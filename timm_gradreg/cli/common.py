"""Command-line options shared by gradreg-eval and gradreg-analyze."""
import argparse
from typing import Optional

from ..core.values import number
from ..evaluate.data import SUBSETS
from ..models.activations import add_swap_args

__all__ = ['add_model_args', 'add_data_args']


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
    group.add_argument('--subset', default='seeded', choices=list(SUBSETS),
                       help="which images: a seeded sample of the split, or the fixed list of 5,000 ImageNet "
                            "validation images of the paper's evaluation, which is RobustBench's (official and "
                            'robustbench name the same list) (default: seeded)')
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
