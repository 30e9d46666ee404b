"""``timm-train --fsdp``: the model sharded with PyTorch's FSDP2 (``fully_shard``) across the torchrun processes.

Each repeated block (the items of a ``Sequential``/``ModuleList`` of one block class: ResNet bottlenecks, ViT and
Swin blocks, ConvNeXt blocks) is one FSDP unit, the rest of the model the root unit; parameters, gradients and
optimizer state are sharded, and a block's parameters are gathered for its forward and backward only.

What the sharding allows: first-order steps (natural, the attacks, TRADES, finite-difference GradNorm). Double
backprop does not run: FSDP2 reduce-scatters parameter gradients in the hooks of the backward that reaches a
block's forward, and the second backward of a double backprop runs through the first one's graph, so the
sharded gradients stay empty. A task with a first-order form (GradNorm: ``--gn-impl fd``) is switched to
it with one line; the others are refused by name.
"""
import argparse
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..tasks import task_info, task_kwargs
from ..utils.sharding import fully_shard

__all__ = ['FSDP_REFUSED_OPTIONS', 'check_fsdp', 'fsdp_task_kwargs', 'fsdp_units', 'shard_model', 'full_state',
           'load_full_state']

#: timm train.py options that do not run with --fsdp: (attribute, is it on?) -> the reason
FSDP_REFUSED_OPTIONS = {
    'model_ema': (lambda v: bool(v), "timm's model EMA deep-copies the model, hooks and shards included"),
    'torchcompile': (lambda v: bool(v), 'compiling the sharded blocks is not wired in timm-train'),
    'torchscript': (lambda v: bool(v), 'a scripted model cannot be sharded'),
    'sync_bn': (lambda v: bool(v), 'SyncBatchNorm and sharding are not combined in timm-train'),
    'clip_mode': (lambda v: v == 'agc', "adaptive clipping takes unit-wise norms over each parameter's rows, which "
                                        'the shards split'),
}


def check_fsdp(args: argparse.Namespace) -> Optional[str]:
    """Refuse what cannot run under ``--fsdp`` (ValueError naming it and why); the one line saying which first-order
    form a double-backprop task trains by, or None."""
    if not getattr(args, 'fsdp', False):
        return None
    if fully_shard is None:
        raise ValueError(f'--fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); this is torch '
                         f'{torch.__version__}. Upgrade torch, or train with DDP (drop --fsdp).')
    for name, (is_on, reason) in FSDP_REFUSED_OPTIONS.items():
        value = getattr(args, name, None)
        if is_on(value):
            flag = f"--{name.replace('_', '-')}" + ('' if isinstance(value, bool) else f' {value}')
            raise ValueError(f'{flag} cannot be used with --fsdp: {reason}. Drop one of them.')
    kwargs = task_kwargs(args.gradreg, args)
    entry = task_info(args.gradreg)
    if not entry.needs_double_backprop(kwargs):
        return None
    if entry.first_order_kwargs is None:
        raise ValueError(f'--fsdp cannot be used with --gradreg {args.gradreg}: it needs double backprop, and FSDP2 '
                         'reduce-scatters parameter gradients in hooks that the second backward does not pass (the '
                         'sharded gradients stay empty); it has no first-order form. Train it with DDP (drop --fsdp).')
    options = ', '.join(f'{k}={v!r}' for k, v in entry.first_order_kwargs.items())
    return (f'--gradreg {args.gradreg} under --fsdp trains by its first-order form ({options}): FSDP2 does not pass '
            'the second backward of double backprop to its gradient hooks.')


def fsdp_task_kwargs(args: argparse.Namespace, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The task's options under ``--fsdp``: a double-backprop task's first-order form where it has one."""
    entry = task_info(args.gradreg)
    if getattr(args, 'fsdp', False) and entry.needs_double_backprop(kwargs) and entry.first_order_kwargs:
        return {**kwargs, **entry.first_order_kwargs}
    return kwargs


def fsdp_units(model: nn.Module) -> List[nn.Module]:
    """The innermost repeated blocks of a model: the items of each Sequential or ModuleList of two or more modules
    of one class that hold parameters and contain no such list themselves (Swin's blocks, not its stages; a stem
    of mixed layers is no such list)."""
    lists = [list(m) for m in model.modules() if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m) >= 2
             and len({type(item) for item in m}) == 1 and all(any(True for _ in item.parameters()) for item in m)]
    members = {id(item) for items in lists for item in items}

    def holds_a_list(module: nn.Module) -> bool:
        return any(id(inner) in members for inner in module.modules() if inner is not module)

    return [item for items in lists if not any(holds_a_list(item) for item in items) for item in items]


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` each block (``fsdp_units``), then the root, on one mesh over every process."""
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The unsharded model and optimizer state, gathered on every process (a collective: all must call it), as
    a checkpoint stores them: loadable without FSDP, by timm and by a single process."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {'state_dict': get_model_state_dict(model, options=options),
            'optimizer': get_optimizer_state_dict(model, optimizer, options=options)}


def load_full_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], checkpoint: Dict[str, Any]) -> None:
    """A checkpoint's unsharded model (and optimizer) state into the sharded model, on every process."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, checkpoint['state_dict'], options=options)
    if optimizer is not None and 'optimizer' in checkpoint:
        # keys the scheduler added after the optimizer was made (initial_lr) are taken from the checkpoint, as
        # torch's own load_state_dict takes its groups whole
        for group, saved in zip(optimizer.param_groups, checkpoint['optimizer'].get('param_groups', [])):
            for key, value in saved.items():
                if key != 'params':
                    group.setdefault(key, value)
        set_optimizer_state_dict(model, optimizer, checkpoint['optimizer'], options=options)
