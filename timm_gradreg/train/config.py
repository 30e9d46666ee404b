"""The resolved run configuration: parsed arguments with every derived value filled in.

The value path is one-way: ``parse_args`` (flags over YAML) -> ``check_args`` -> ``resolve_config``
-> the Trainer and the task. The Trainer reads the resolved configuration and never writes to
it; ``timm-train --dry-run`` prints it.
"""
import argparse
import copy
import os
from typing import Any, Dict, Optional, Tuple

import yaml
from timm.utils.distributed import world_info_from_env

from ..data import default_data_root, is_demo_dataset
from ..models.activations import DEFAULT_SOURCES
from ..models.checkpoint import read_swap_record
from ..tasks import task_kwargs
from ..utils.device import default_device
from .fsdp import fsdp_task_kwargs

__all__ = ['resolve_config', 'resolve_lr', 'config_summary', 'config_yaml', 'batch_for_global', 'global_batch_note',
           'mixup_active', 'criterion_kwargs']


def resolve_lr(cfg: argparse.Namespace, global_batch_size: int) -> Dict[str, Any]:
    """timm's rule: ``--lr`` if given, else lr_base · (global batch / lr_base_size), linearly or by the
    square root (adaptive optimizers, when ``--lr-base-scale`` is empty)."""
    if cfg.lr:
        return {'lr': cfg.lr, 'lr_base_scale': cfg.lr_base_scale}
    scale = cfg.lr_base_scale or ('sqrt' if any(o in cfg.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    ratio = global_batch_size / cfg.lr_base_size
    return {'lr': cfg.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio), 'lr_base_scale': scale}


def resolve_config(args: argparse.Namespace, world_size: Optional[int] = None) -> argparse.Namespace:
    """A copy of ``args`` with the derived values set; ``args`` is left as parsed.

    Filled in: ``device`` (CUDA when available), ``prefetcher``, ``data_dir`` (the positional
    ``data``, or a demo dataset's cache folder), ``world_size`` (torchrun's, or the given one
    for a dry run) and ``global_batch_size``, ``lr`` and ``lr_base_scale`` (timm's base-LR
    rule), ``task_kwargs`` (the method's options as ``create_task`` arguments), the activation
    swap an ``--initial-checkpoint`` records, and ``dist_bn`` (off with ``--sync-bn``). Under ``--fsdp`` a
    double-backprop task's options are its first-order form (``fsdp.fsdp_task_kwargs``).
    """
    cfg = copy.deepcopy(args)
    cfg.device = default_device(args.device)
    cfg.prefetcher = not args.no_prefetcher
    cfg.data_dir = args.data_dir or args.data
    if is_demo_dataset(args.dataset) and not cfg.data_dir:
        cfg.data_dir = default_data_root(args.dataset.split('/', 1)[1])
    cfg.world_size = world_size or getattr(args, 'world_size', None) or world_info_from_env()[2]
    cfg.global_batch_size = args.batch_size * cfg.world_size * args.grad_accum_steps
    vars(cfg).update(resolve_lr(args, cfg.global_batch_size))
    cfg.task_kwargs = fsdp_task_kwargs(args, task_kwargs(args.gradreg, args))
    if args.initial_checkpoint and not args.swap_activations and os.path.isfile(args.initial_checkpoint):
        record = read_swap_record(args.initial_checkpoint)
        if record:
            cfg.swap_activations, cfg.swap_source = record['act'], list(record.get('sources') or DEFAULT_SOURCES)
    if args.sync_bn and cfg.world_size > 1:
        cfg.dist_bn = ''
    return cfg


def batch_for_global(target: int, world_size: int, max_per_process: int, max_accum: int = 16) -> Tuple[int, int]:
    """(per-process batch b <= max_per_process, accumulation steps a <= max_accum) for a global batch b·world_size·a
    of ``target``: exact with the fewest accumulation steps if possible, else within 2% with the fewest, else the
    closest."""
    candidates = []
    for accum in range(1, max_accum + 1):
        batch = min(max_per_process, max(1, round(target / (world_size * accum))))
        candidates.append((abs(batch * world_size * accum - target), accum, batch))
    for tolerance in (0, 0.02 * target):
        within = [c for c in candidates if c[0] <= tolerance]
        if within:
            _, accum, batch = min(within, key=lambda c: (c[1], c[0]))
            return batch, accum
    _, accum, batch = min(candidates)
    return batch, accum


def global_batch_note(cfg: argparse.Namespace) -> Optional[str]:
    """One line when the resolved global batch is not the reproduced run's (``--paper-global-batch``: the paper's,
    or its official config's where the paper gives none): the
    ``--batch-size``/``--grad-accum-steps`` that restore it on this many processes, or the closest."""
    target = getattr(cfg, 'paper_global_batch', None)
    if not target or cfg.global_batch_size == target:
        return None
    batch, accum = batch_for_global(target, cfg.world_size, cfg.batch_size)
    reached = batch * cfg.world_size * accum
    how = f'--batch-size {batch} --grad-accum-steps {accum}'
    if reached == target:
        advice = f'{how} restores it'
    else:
        advice = (f'{target} is not reachable on {cfg.world_size} processes with at most {cfg.batch_size} per process; '
                  f'the closest is {how} ({reached}; timm scales the lr)')
    return (f'global batch {cfg.global_batch_size} on {cfg.world_size} processes differs from the reproduced run\'s '
            f'{target}: {advice}')


def mixup_active(cfg: argparse.Namespace) -> bool:
    """Whether the run mixes images (mixup or cutmix): its targets are then soft."""
    return cfg.mixup > 0 or cfg.cutmix > 0. or cfg.cutmix_minmax is not None


def criterion_kwargs(cfg: argparse.Namespace) -> Dict[str, Any]:
    """The task's timm criterion options (``--loss``, ``--smoothing``, the BCE options, soft targets)."""
    kwargs: Dict[str, Any] = dict(loss_type='bce' if cfg.bce_loss else cfg.loss, smoothing=cfg.smoothing,
                                  soft_targets=mixup_active(cfg))
    if cfg.bce_sum:
        kwargs['bce_sum'] = True
    if cfg.bce_pos_weight is not None:
        kwargs['pos_weight'] = cfg.bce_pos_weight
    if cfg.bce_target_thresh is not None:
        kwargs['bce_target_thresh'] = cfg.bce_target_thresh
    return kwargs


def config_summary(cfg: argparse.Namespace) -> Dict[str, Any]:
    """The headline numbers of a resolved configuration (for logs and ``--dry-run``)."""
    return {'gradreg': cfg.gradreg, 'task_kwargs': cfg.task_kwargs, 'model': cfg.model, 'epochs': cfg.epochs,
            'world_size': cfg.world_size, 'global_batch_size': cfg.global_batch_size, 'lr': cfg.lr}


def _plain(value: Any) -> Any:
    """YAML-safe form of a configuration value (tuples as lists, recursively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_yaml(cfg: argparse.Namespace) -> str:
    """The resolved configuration as YAML, in the parser's order."""
    return yaml.safe_dump(_plain(vars(cfg)), default_flow_style=False, sort_keys=False, allow_unicode=True)
