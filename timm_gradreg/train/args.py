"""timm-train arguments: timm train.py's names and YAML semantics, plus the gradreg group.

``-c/--config FILE`` sets defaults from YAML exactly like timm's train.py (command-line
flags win), but strictly (``yaml_config``): an unknown key is an error naming the closest
valid key, and each value is converted and checked as its command-line flag would be.
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from timm import utils

from ..models.activations import add_swap_args
from ..data import is_demo_dataset
from ..recipes import config_path, list_recipes, recipe_table
from ..tasks import (all_task_options, attack_count, attack_radius, check_compile_mode, check_task_options,
                     check_task_setup, get_task_class, list_tasks, number, task_kwargs, task_options)
from ..tasks.checks import DISTILLATION_REFUSAL
from ..utils.parser import ArgumentParser
from ..utils.plugins import load_plugins
from ..utils.yaml_config import ConfigError, config_keys, flags_given, load_config, parse_with_config
from .fsdp import check_fsdp
from .validate import check_eval_metric

__all__ = ['build_parser', 'add_gradreg_args', 'add_threads_arg', 'parse_args', 'load_config', 'check_args',
           'check_distributed_options', 'check_method_options', 'check_part_options', 'with_demo_recipe', 'ConfigError']

_logger = logging.getLogger(__name__)


class _ListRecipes(argparse.Action):
    """``--list-recipes``: print the packaged recipes and exit, like ``--help``."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(recipe_table(), end='')
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The full timm-train parser (timm train.py names and defaults, plus gradreg options, plugins' included)."""
    parser = ArgumentParser(
        prog='timm-train', usage='timm-train [-c FILE] [--gradreg METHOD] [method options] [timm train.py options]',
        description='timm training with input-gradient regularizers (GradNorm, edge alignment) and adversarial '
                    'training baselines. Same arguments and YAML configs as timm\'s train.py, plus the "gradreg" '
                    'group. Numbers like epsilons accept fractions, e.g. --gn-eps 4/255.',
        epilog='Example: timm-train -c demo/digits_gradnorm   |   '
               'torchrun --nproc_per_node 8 -m timm_gradreg.cli.train -c imagenet/swin_base_gradnorm '
               '--data-dir /imagenet')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file specifying default arguments (unknown keys are an error), or the '
                             'name of a packaged recipe, e.g. demo/digits_gradnorm (a local file wins)')
    parser.add_argument('--list-recipes', action=_ListRecipes,
                        help='list the packaged recipes with the paper result each reproduces, and exit')

    add_gradreg_args(parser)  # first in --help: the options this tool adds to timm's
    add_threads_arg(parser)

    group = parser.add_argument_group('Dataset parameters')
    parser.add_argument('data', nargs='?', metavar='DIR', const=None,
                        help='path to dataset (positional is *deprecated*, use --data-dir)')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir); for demo/ datasets the cache dir')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name ("<type>/<name>"), ImageFolder/ImageTar if empty, or the embedded '
                            '"demo/digits" (built on first use, no download)')
    group.add_argument('--train-split', metavar='NAME', default='train', help='dataset train split (default: train)')
    group.add_argument('--val-split', metavar='NAME', default='validation',
                       help='dataset validation split (default: validation, empty to skip validation)')
    group.add_argument('--train-num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in train split, for IterableDatasets.')
    group.add_argument('--val-num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in validation split, for IterableDatasets.')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='Allow download of dataset for torch/ and tfds/ datasets that support it.')
    group.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                       help='Allow huggingface dataset import to execute code downloaded from the dataset\'s repo.')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='path to class to idx mapping file (default: "")')
    group.add_argument('--input-img-mode', default=None, type=str, help='Dataset image conversion mode for input images.')
    group.add_argument('--input-key', default=None, type=str, help='Dataset key for input images.')
    group.add_argument('--target-key', default=None, type=str, help='Dataset key for target labels.')

    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL',
                       help='Name of model to train (default: "resnet50")')
    group.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=False,
                       help='Start with pretrained version of specified network (needs the HF hub)')
    group.add_argument('--pretrained-path', default=None, type=str,
                       help='Load this checkpoint as if they were the pretrained weights (with adaptation).')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='Load this checkpoint into model after initialization; an activation swap recorded by '
                            'swap-activations is re-applied first')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='Resume model, optimizer, scheduler position, EMA, AMP scaler and regularizer warm-up '
                            'from checkpoint (default: none)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='prevent resume of optimizer state when resuming model')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of label classes (Model default if None)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='Global pool type, one of (fast, avg, max, avgmax, avgmaxc). Model default if None.')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='Image size (default: None => model default)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='Image input channels (default: None => 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                       help='Input all image dimensions (d h w, e.g. --input-size 3 224 224), uses model default if '
                            'empty')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help='Input image center crop percent (for validation only)')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='Override mean pixel value of dataset')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='Override std deviation of dataset')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help='Image resize interpolation type (overrides model)')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N',
                       help='Input batch size for training (default: 128)')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='Validation batch size override (default: None)')
    group.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                       help='Use channels_last memory layout')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='The number of steps to accumulate gradients (default: 1)')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='Enable gradient checkpointing through model blocks/stages')
    group.add_argument('--fast-norm', default=False, action='store_true', help='enable experimental fast-norm')
    group.add_argument('--model-dtype', default=None, type=str, choices=('float32', 'float64', 'float16', 'bfloat16'),
                       help='Model dtype override (non-AMP) (default: float32); not float16/bfloat16 with '
                            'double-backprop methods (float64 for reference runs)')
    group.add_argument('--torchscript', dest='torchscript', action='store_true',
                       help='torch.jit.script the full model (not with double-backprop methods)')
    group.add_argument('--fuser', default='', type=str, help="Select jit fuser. One of ('', 'te', 'old', 'nvfuser')")
    group.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs,
                       help='extra create_model kwargs, e.g. --model-kwargs act_layer=gelu')
    group.add_argument('--head-init-scale', default=None, type=float, help='Head initialization scale')
    group.add_argument('--head-init-bias', default=None, type=float, help='Head initialization bias value')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='Enable compilation w/ specified backend (default: inductor). Not possible with '
                            'double-backprop regularizers.')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help='torch.compile mode with --torchcompile, e.g. max-autotune (default: torch\'s default).')

    group = parser.add_argument_group('Device parameters')
    group.add_argument('--device', default=None, type=str,
                       help='Device (accelerator) to use (default: cuda if available, else cpu).')
    group.add_argument('--amp', action=argparse.BooleanOptionalAction, default=False,
                       help='use AMP for mixed precision training')
    group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
                       help='lower precision AMP dtype (default: float16)')
    group.add_argument('--device-modules', default=None, type=str, nargs='+',
                       help='Python imports for device backend modules.')
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='Force broadcast buffers for native DDP to off.')
    group.add_argument('--fsdp', action='store_true', default=False,
                       help='Shard the model, gradients and optimizer state over the torchrun processes with '
                            "PyTorch's FSDP2 (fully_shard), for models that do not fit one GPU; not in timm's "
                            'train.py')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='torch.cuda.synchronize() end of each step')
    group.add_argument('--local_rank', default=0, type=int, help=argparse.SUPPRESS)

    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help='Optimizer (default: "sgd")')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help='Optimizer Epsilon (default: None, use opt default)')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='Optimizer Betas (default: None, use opt default)')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M', help='Optimizer momentum (default: 0.9)')
    group.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay (default: 2e-5)')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='Clip gradient norm (default: None, no clipping)')
    group.add_argument('--clip-mode', type=str, default='norm', choices=('norm', 'value', 'agc'),
                       help='Gradient clipping mode. One of ("norm", "value", "agc")')
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise learning rate decay (default: None)')
    group.add_argument('--layer-decay-min-scale', default=0, type=float,
                       help='layer-wise lr decay minimum scale')
    group.add_argument('--layer-decay-no-opt-scale', default=None, type=float,
                       help='layer-wise lr decay no optimization scale')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs,
                       help='extra optimizer kwargs, e.g. --opt-kwargs foreach=False')

    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help='LR scheduler (default: "cosine"')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='Apply LR scheduler step on update instead of epoch end.')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate, overrides lr-base if set (default: None)')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='base learning rate: lr = lr_base * global_batch_size / base_size')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV',
                       help='base learning rate batch size (divisor, default: 256).')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='base learning rate vs batch_size scaling ("linear", "sqrt", based on opt if empty)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='learning rate noise on/off epoch percentages')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT',
                       help='learning rate noise limit percent (default: 0.67)')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV',
                       help='learning rate noise std-dev (default: 1.0)')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT',
                       help='learning rate cycle len multiplier (default: 1.0)')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT',
                       help='amount to decay each learning rate cycle (default: 0.5)')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N',
                       help='learning rate cycle limit, cycles enabled if > 1')
    group.add_argument('--lr-k-decay', type=float, default=1.0, help='learning rate k-decay for cosine/poly')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR',
                       help='warmup learning rate (default: 1e-5)')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR',
                       help='lower lr bound for cyclic schedulers that hit 0 (default: 0)')
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='number of epochs to train (default: 300)')
    group.add_argument('--stop-epoch', type=int, default=None, metavar='N',
                       help='stop after this many epochs of the schedule (the schedule still spans --epochs); '
                            'continue later with --resume')
    group.add_argument('--epoch-repeats', type=float, default=0., metavar='N',
                       help='epoch repeat multiplier (number of times to repeat dataset epoch per train epoch).')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='manual epoch number (useful on restarts)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='list of decay epoch indices for multistep lr. must be increasing')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='epoch interval to decay LR')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N',
                       help='epochs to warmup LR, if scheduler supports')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='Exclude warmup period from decay schedule.')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='epochs to cooldown LR at min_lr, after cyclic schedule ends')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='patience epochs for Plateau LR scheduler (default: 10)')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE',
                       help='LR decay rate (default: 0.1)')

    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='Disable all training augmentation, override other train aug args')
    group.add_argument('--train-crop-mode', type=str, default=None, help='Crop-mode in train')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='Random resize scale (default: 0.08 1.0)')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='Random resize aspect ratio (default: 0.75 1.33)')
    group.add_argument('--hflip', type=float, default=0.5, help='Horizontal flip training aug probability')
    group.add_argument('--vflip', type=float, default=0., help='Vertical flip training aug probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT',
                       help='Color jitter factor (default: 0.4)')
    group.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying any color jitter.')
    group.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying random grayscale conversion.')
    group.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying gaussian blur.')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='Use AutoAugment policy. "v0" or "original". (default: None)')
    group.add_argument('--aug-repeats', type=float, default=0,
                       help='Number of augmentation repetitions (distributed training only) (default: 0)')
    group.add_argument('--loss', default=None, type=str, choices=('ce', 'bce'),
                       help='Loss type (default: "ce"); the input gradient is taken of this loss')
    group.add_argument('--bce-target-thresh', type=float, default=None,
                       help='Threshold for binarizing softened BCE targets (default: None, disabled).')
    group.add_argument('--bce-loss', action='store_true', default=False,
                       help='Enable BCE loss w/ Mixup/CutMix use (same as --loss bce).')
    group.add_argument('--bce-sum', action='store_true', default=False,
                       help='Sum over classes when using BCE loss.')
    group.add_argument('--bce-pos-weight', type=float, default=None, help='Positive weighting for BCE loss.')
    group.add_argument('--aug-splits', type=int, default=0,
                       help='Number of augmentation splits (default: 0, valid: 0 or >=2); not with timm-train')
    group.add_argument('--jsd-loss', action='store_true', default=False,
                       help='Enable Jensen-Shannon Divergence + CE loss; not with timm-train')
    group.add_argument('--resplit', action='store_true', default=False,
                       help='Do not random erase first (clean) augmentation split; not with timm-train')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='Random erase prob (default: 0.)')
    group.add_argument('--remode', type=str, default='pixel', help='Random erase mode (default: "pixel")')
    group.add_argument('--recount', type=int, default=1, help='Random erase count (default: 1)')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha, mixup enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha, cutmix enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='cutmix min/max ratio, overrides alpha and enables cutmix if set (default: None)')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='Probability of performing mixup or cutmix when either/both is enabled')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='Probability of switching to cutmix when both mixup and cutmix enabled')
    group.add_argument('--mixup-mode', type=str, default='batch', choices=('batch', 'pair', 'elem'),
                       help='How to apply mixup/cutmix params. Per "batch", "pair", or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='Turn off mixup after this epoch, disabled if 0 (default: 0)')
    group.add_argument('--smoothing', type=float, default=0.1, help='Label smoothing (default: 0.1)')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='Training interpolation (random, bilinear, bicubic default: "random")')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='Dropout rate (default: 0.)')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='Drop path rate (default: None)')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='Drop block rate (default: None)')

    group.add_argument('--drop-connect', type=float, default=None, metavar='PCT',
                       help='Drop connect rate, DEPRECATED, use drop-path (default: None)')
    group = parser.add_argument_group('Batch norm parameters')
    group.add_argument('--bn-momentum', type=float, default=None, help='BatchNorm momentum override (if not None)')
    group.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon override (if not None)')
    group.add_argument('--sync-bn', action='store_true', help='Enable synchronized BatchNorm.')
    group.add_argument('--split-bn', action='store_true',
                       help='Enable separate BN layers per augmentation split; not with timm-train')
    group.add_argument('--dist-bn', type=str, default='reduce', choices=('broadcast', 'reduce', ''),
                       help='Distribute BatchNorm stats between nodes after each epoch ("broadcast", "reduce", or "")')

    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action=argparse.BooleanOptionalAction, default=False,
                       help='Enable tracking moving average of model weights.')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='Force ema to be tracked on CPU, rank=0 node only. Disables EMA validation.')
    group.add_argument('--model-ema-decay', type=float, default=0.9998,
                       help='Decay factor for model weights moving average (default: 0.9998)')
    group.add_argument('--model-ema-warmup', action='store_true', help='Enable warmup for model EMA decay.')

    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--max-skipped-steps', type=int, default=10, metavar='N',
                       help='stop after N consecutive updates with a non-finite loss or gradient (never applied to the '
                            'weights); 0 never stops (default: 10)')
    group.add_argument('--dry-run', action='store_true', default=False,
                       help='print the fully resolved configuration (every option, the effective learning rate and '
                            'global batch, the task options) as YAML and exit: no data, no model, no download')
    group.add_argument('--world-size', type=int, default=None, metavar='N',
                       help='with --dry-run: resolve for N processes (default: torchrun\'s WORLD_SIZE, else 1)')
    group.add_argument('--paper-global-batch', type=int, default=None, metavar='N',
                       help='the global batch of the run a recipe reproduces; --dry-run says when the resolved one '
                            'differs and which --batch-size/--grad-accum-steps restore it')
    group.add_argument('--gpu-memory', type=float, default=None, metavar='GiB',
                       help="with --dry-run: the memory of one GPU to plan for; when the predicted peak does not fit, "
                            "the --batch-size and --grad-accum-steps that keep the global batch (default: this "
                            "machine's CUDA device, if any)")
    group.add_argument('--predict-memory', action=argparse.BooleanOptionalAction, default=True,
                       help='with --dry-run: predict the memory per GPU of a training step (a step on the meta '
                            'device: seconds, no data, no download)')
    group.add_argument('--export-hub', action='store_true', default=False,
                       help='after training, write the best checkpoint (else the last) as a timm Hub folder, '
                            'OUTPUT/EXPERIMENT/hub, as gradreg-export does')
    group.add_argument('--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')
    group.add_argument('--worker-seeding', type=str, default='all', help='worker seed mode (default: all)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='how many batches to wait before logging training status')
    group.add_argument('--val-interval', type=int, default=1, metavar='N',
                       help='how many epochs between validation and checkpointing')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='how many batches to wait before writing recovery checkpoint')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N',
                       help='number of checkpoints to keep (default: 10)')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N',
                       help='how many training processes to use (default: 4)')
    workers = group.add_mutually_exclusive_group()
    workers.add_argument('--persistent-workers', dest='persistent_workers', action='store_true',
                         help='keep data-loader workers alive between epochs when --workers > 0 (default: enabled)')
    workers.add_argument('--no-persistent-workers', dest='persistent_workers', action='store_false',
                         help='restart data-loader worker processes after each epoch')
    group.set_defaults(persistent_workers=True)
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='Pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')
    group.add_argument('--no-prefetcher', action='store_true', default=False, help='disable fast prefetcher')
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='path to output folder (default: none, current dir)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME',
                       help='name of train experiment, name of sub-folder for output')
    group.add_argument('--save-images', action='store_true', default=False,
                       help='save images of the first batch of each epoch\'s training logs (debug)')
    group.add_argument('--tta', type=int, default=0, metavar='N',
                       help='Test/inference time augmentation factor; not with timm-train')
    group.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                       help='use the multi-epochs-loader to save time at the beginning of every epoch')
    group.add_argument('--log-wandb', action='store_true', default=False,
                       help='log training and validation metrics to wandb (pip install timm-gradreg[wandb])')
    group.add_argument('--wandb-project', default=None, type=str, help='wandb project name')
    group.add_argument('--wandb-tags', default=[], type=str, nargs='+', help='wandb tags')
    group.add_argument('--wandb-resume-id', default='', type=str, metavar='ID',
                       help='If resuming a run, the id of the run in wandb')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help='Best metric: top1, top5, loss or advtop1 (robust top-1) (default: top1)')

    _add_stock_only_args(parser)
    return parser


#: train.py options timm-train accepts (a stock args.yaml loads) but does not run, with the reason and what does.
UNSUPPORTED = {
    ('aug_splits', 'jsd_loss', 'split_bn', 'resplit'): (
        'AugMix augmentation splits are not run by timm-train: the regularizers take per-sample input gradients '
        'of one view of each image; run timm\'s train.py through gradreg-launch for AugMix'),
    ('tta',): 'test-time augmentation is not part of timm-train\'s clean-and-robust validation',
    ('train_img_sizes', 'train_batch_sizes', 'train_size_probs', 'train_batches_per_epoch'): (
        'variable-size training is not run by timm-train; run timm\'s train.py through gradreg-launch'),
    ('naflex_loader',): 'NaFlex training is not run by timm-train; run timm\'s train.py through gradreg-launch',
}


def _add_stock_only_args(parser: argparse.ArgumentParser) -> None:
    """timm train.py's variable-size, NaFlex and distillation options: accepted with train.py's names and defaults
    (so its args.yaml loads), refused when set (``UNSUPPORTED``)."""
    group = parser.add_argument_group('Variable-size, NaFlex and distillation (timm train.py; use gradreg-launch)')
    group.add_argument('--train-img-sizes', type=int, nargs='+', default=None, metavar='N')
    group.add_argument('--train-batch-sizes', type=int, nargs='+', default=None, metavar='N')
    group.add_argument('--train-size-probs', type=float, nargs='+', default=None, metavar='P')
    group.add_argument('--train-size-schedule', type=str, default='constant', choices=('constant', 'progressive'))
    group.add_argument('--train-size-schedule-spread', type=float, default=0.65)
    group.add_argument('--train-size-random-mix', type=float, default=0.1)
    group.add_argument('--train-batches-per-epoch', '--train-steps-per-epoch', type=int, default=None, metavar='N')
    group.add_argument('--variable-batch-loss-scale', type=str, default='none', choices=('none', 'sqrt', 'linear'))
    group.add_argument('--naflex-loader', action='store_true', default=False)
    group.add_argument('--naflex-train-seq-lens', type=int, nargs='+', default=[128, 256, 576, 784, 1024])
    group.add_argument('--naflex-max-seq-len', type=int, default=576)
    group.add_argument('--naflex-patch-sizes', type=int, nargs='+', default=None)
    group.add_argument('--naflex-patch-size-probs', type=float, nargs='+', default=None)
    group.add_argument('--naflex-loss-scale', type=str, default='linear', choices=('none', 'sqrt', 'linear'))
    group.add_argument('--naflex-patchify-channels-first', action='store_true', default=False)
    group.add_argument('--kd-model-name', type=str, default=None)
    group.add_argument('--kd-distill-type', type=str, default='logit', choices=['logit', 'feature', 'token'])
    group.add_argument('--kd-loss-type', type=str, default='kl')
    group.add_argument('--distill-loss-weight', type=float, default=None)
    group.add_argument('--task-loss-weight', type=float, default=None)
    group.add_argument('--kd-temperature', type=float, default=4.0)
    group.add_argument('--kd-student-feature-dim', type=int, default=None)
    group.add_argument('--kd-teacher-feature-dim', type=int, default=None)
    group.add_argument('--kd-token-distill-type', type=str, default='soft', choices=['soft', 'hard'])


def add_gradreg_args(parser: argparse.ArgumentParser) -> None:
    """Add the gradreg options to a parser: the method, every registered task's options (one group per
    task, shared flags once), the activation swap and robust validation. Plugins are loaded first."""
    load_plugins()
    group = parser.add_argument_group(
        'Gradient regularization (gradreg)',
        'Method and its parameters; defaults are the paper\'s (Swin-B recipe). Epsilons and steps are in [0, 1] '
        'pixel units whatever the normalization, and accept fractions such as 4/255.')
    group.add_argument('--gradreg', default='natural', choices=list_tasks(),
                       help='training method (default: natural). Options of each method are in its group below.')
    add_swap_args(group, 'before training')
    group.add_argument('--bn-eval', action=argparse.BooleanOptionalAction, default=False,
                       help='train with BatchNorm frozen in eval mode (the paper\'s ResNet runs): per-sample input '
                            'gradients, and double backprop at 0.73x instead of 1.06x a PGD-3 step (resnet50-GELU, CPU)')
    group.add_argument('--train-in-eval-mode', action=argparse.BooleanOptionalAction, default=False,
                       help='train with the whole model in eval mode, as the paper\'s runs ("training done in evaluation '
                            'mode"): BatchNorm frozen and dropout / drop-path off')
    group.add_argument('--adv-val-steps', type=number(0, integer=True), default=10, metavar='N',
                       help='PGD steps for robust validation, 0 to disable (default: 10)')
    group.add_argument('--adv-val-eps', type=attack_radius, default=4 / 255, metavar='EPS',
                       help='robust validation radius (default: 4/255)')
    group.add_argument('--adv-val-step-size', type=attack_radius, default=1 / 255, metavar='STEP',
                       help='robust validation step (default: 1/255)')
    group.add_argument('--adv-val-samples', type=attack_count, default=None, metavar='N',
                       help='attack only the first N validation samples per process (default: all)')
    groups: Dict[str, Any] = {}
    for title, option, default in all_task_options():
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        groups[title].add_argument(*option.flags, **option.argparse_kwargs(default))


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads``: the tools' CPU threads (``utils.threads``), which timm's train.py does not have."""
    parser.add_argument('--threads', type=number(1, integer=True), default=None, metavar='N',
                        help='CPU threads of a CPU run (default: the cores no other process is busy on; '
                             'OMP_NUM_THREADS, which torchrun sets to 1, also counts)')


#: said after an unknown config key that resembles no timm-train option
NEWER_TRAIN_PY_HINT = (" (an option of a newer timm's train.py? timm-train follows the train.py of its timm release; "
                       'run that train.py through gradreg-launch)')


def parse_args(argv: Optional[Sequence[str]] = None,
               parser: Optional[argparse.ArgumentParser] = None) -> Tuple[argparse.Namespace, str]:
    """Parse ``argv`` (YAML defaults from -c/--config, then flags); returns (args, args as YAML text)."""
    parser = parser or build_parser()
    argv = with_demo_recipe(list(sys.argv[1:] if argv is None else argv))
    args, args_text = parse_with_config(parser, argv, locate=config_path, unknown_hint=NEWER_TRAIN_PY_HINT)
    try:
        check_args(args)
        config = config_keys(args.config, config_path) if args.config else {}
        given = flags_given(parser, argv)
        check_method_options(args.gradreg, given, config.get('gradreg', parser.get_default('gradreg')), set(config))
        check_part_options(args.gradreg, args, given | set(config))
    except ValueError as e:
        parser.error(str(e))
    return args, args_text


def with_demo_recipe(argv: List[str]) -> List[str]:
    """``argv`` with ``-c`` the demo's recipe when it trains on an embedded demo set without a config.

    timm's defaults (resnet50 at 160 px, SGD, ReLU) do not learn the 32-px demo: the demo's own recipe for
    the method (``demo/digits_gradnorm``), or its natural recipe with the method switched, gives the
    settings; every flag still wins. Says so in one line.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    pre.add_argument('--dataset', default='')
    pre.add_argument('--gradreg', default='natural')
    pre.add_argument('--experiment', default='')
    known, _ = pre.parse_known_args(argv)
    if known.config or not is_demo_dataset(known.dataset):
        return argv
    recipes = {recipe.name for recipe in list_recipes()}
    recipe = f'{known.dataset}_{known.gradreg}'
    extra: List[str] = []
    if recipe not in recipes:
        recipe = f'{known.dataset}_natural'
        if recipe not in recipes:
            return argv
        if not known.experiment:
            extra = ['--experiment', f'{known.dataset.split("/")[-1]}_{known.gradreg}']
    _logger.info(f'--dataset {known.dataset} without -c: the settings of recipe {recipe} apply (timm-train -c '
                 f'{recipe}); flags still win.')
    return ['-c', recipe, *extra, *argv]


def _method_owners() -> Dict[str, List[str]]:
    """Each task option's dest -> the methods that read it."""
    owners: Dict[str, List[str]] = {}
    for name in list_tasks():
        for option in task_options(name):
            owners.setdefault(option.dest, []).append(name)
    return owners


def check_method_options(method: str, flags: Set[str], config_method: Optional[str] = None,
                         config: Set[str] = frozenset()) -> None:
    """Refuse an option of another method, which the run would silently ignore: a command-line flag is
    checked against ``method``, a key of the ``-c`` YAML against the YAML's own ``gradreg``
    (``config_method``), so a recipe's options stay valid when the command line switches method."""
    owners = _method_owners()
    for given, against, config_key in ((flags, method, False), (config - flags, config_method or method, True)):
        for dest in sorted(given):
            methods = owners.get(dest)
            if methods is None or against in methods:
                continue
            name = f"config key '{dest}'" if config_key else f"--{dest.replace('_', '-')}"
            raise ValueError(f"{name} is an option of --gradreg {' / '.join(methods)}, and this run trains "
                             f'--gradreg {against}, which would ignore it: drop it, or train '
                             + (f'--gradreg {methods[0]}.' if len(methods) == 1 else 'one of those methods.'))


def check_part_options(method: str, args: argparse.Namespace, given: Set[str]) -> None:
    """Refuse an option of a part the run does not choose (``--gn-noise-std`` without ``--gn-inputs noise``),
    which it would ignore; ``given``: the dests set by the command line or the config."""
    options = task_options(method)
    switches = {option.kwarg: option for option in options if option.applies is None}
    for option in options:
        if option.applies is None or option.dest not in given:
            continue
        switch = switches[option.applies[0]]
        chosen = getattr(args, switch.dest)
        if chosen != option.applies[1]:
            raise ValueError(f'{option.flag} is an option of {switch.flag} {option.applies[1]}, and this run takes '
                             f'{switch.flag} {chosen}, which would ignore it: drop it, or add {switch.flag} '
                             f'{option.applies[1]}.')


# --- option combinations and task options ------------------------------------------------------

#: Counts that must be at least 1 (timm and torch fail on them with an assertion or a deep traceback).
_POSITIVE = {'epochs': ('--epochs', 'the number of scheduled epochs; --stop-epoch N stops earlier'),
             'batch_size': ('-b/--batch-size', 'images per process and step'),
             'validation_batch_size': ('-vb/--validation-batch-size', 'images per validation batch')}


def check_distributed_options(sync_bn: bool, aug_repeats: float, world_size: int, device_type: str) -> None:
    """Refuse the options that need processes this run does not have: ``--sync-bn`` on CPUs (torch's
    SyncBatchNorm runs on GPUs), ``--aug-repeats`` in one process (timm's sampler spreads repeats over processes)."""
    if sync_bn and world_size > 1 and device_type != 'cuda':
        raise ValueError(f"--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only; these processes "
                         f'run on {device_type}): drop it, so each process keeps its own BatchNorm statistics, or '
                         'freeze BatchNorm with --bn-eval.')
    if aug_repeats and world_size == 1:
        raise ValueError(f"--aug-repeats {aug_repeats:g} needs distributed training (timm's RepeatAugSampler gives "
                         'the repeats of an image to different processes): run under torchrun with several '
                         'processes, or drop it.')


def check_args(args: argparse.Namespace) -> None:
    """Refuse option combinations that cannot work, saying why and what does."""
    if args.resume and not os.path.isfile(args.resume):
        raise ValueError(f"--resume '{args.resume}': no such file.")
    for name, (flag, meaning) in _POSITIVE.items():
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f'{flag} {value}: must be at least 1 ({meaning}).')
    task_cls = get_task_class(args.gradreg)
    for names, reason in UNSUPPORTED.items():
        for name in names:
            if getattr(args, name, None) not in (None, False, 0, []):
                raise ValueError(f"--{name.replace('_', '-')}: {reason}.")
    if args.kd_model_name:  # timm-train runs no distillation task, whatever the method
        raise ValueError(DISTILLATION_REFUSAL)
    check_task_options(args.gradreg, task_kwargs(args.gradreg, args))
    check_task_setup(args.gradreg, task_kwargs(args.gradreg, args), compile=args.torchcompile,
                     torchscript=args.torchscript, model_dtype=args.model_dtype, amp=args.amp,
                     sync_bn=args.sync_bn and not args.bn_eval and not args.train_in_eval_mode)
    if args.model_dtype not in (None, 'float32') and args.amp:
        raise ValueError('--model-dtype float16/bfloat16 and --amp are alternatives: pick one.')
    check_compile_mode(args.torchcompile_mode, args.torchcompile)
    check_eval_metric(args.eval_metric, args.adv_val_steps)
    check_fsdp(args)
    if (args.bn_eval or args.train_in_eval_mode) and args.sync_bn:
        raise ValueError('--bn-eval / --train-in-eval-mode freeze BatchNorm statistics, --sync-bn synchronizes them: '
                         'pick one.')
    if args.stop_epoch is not None and not 0 < args.stop_epoch <= args.epochs:
        raise ValueError(f'--stop-epoch must be in 1..--epochs ({args.epochs}), got {args.stop_epoch}.')
    if args.world_size is not None and not args.dry_run:
        raise ValueError('--world-size only applies to --dry-run; torchrun sets the number of processes.')
    if args.world_size is not None and args.world_size < 1:
        raise ValueError(f'--world-size must be >= 1, got {args.world_size}.')
    for flag in ('lr', 'lr_base'):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ValueError(f"--{flag.replace('_', '-')}: must be > 0, got {value:g}.")
    if args.gpu_memory is not None and not args.gpu_memory > 0:
        raise ValueError(f'--gpu-memory is GiB per GPU, > 0; got {args.gpu_memory}.')
    if args.paper_global_batch is not None and args.paper_global_batch < 1:
        raise ValueError(f'--paper-global-batch must be >= 1, got {args.paper_global_batch}.')
    if args.grad_accum_steps < 1:
        raise ValueError(f'--grad-accum-steps must be >= 1, got {args.grad_accum_steps}.')
    if args.loss and task_cls.loss_types is not None and args.loss not in task_cls.loss_types:
        raise ValueError(f'--gradreg {args.gradreg} does not train with --loss {args.loss}: '
                         f'{task_cls.loss_types_reason} Use --loss {" or ".join(task_cls.loss_types)}.')
