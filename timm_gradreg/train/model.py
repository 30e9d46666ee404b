"""The model of a training configuration: timm's create_model with the run's options, activation swap,
initial checkpoint and head initialisation."""
import argparse
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm import utils
from timm.layers import set_fast_norm

from ..models.activations import swap_activations
from ..models.loading import create_model, load_model_checkpoint

__all__ = ['create_train_model']


def create_train_model(cfg: argparse.Namespace, pretrained: Optional[bool] = None, load_checkpoint: bool = True,
                       log: Callable[[str], None] = lambda msg: None, check_functional: bool = False) -> nn.Module:
    """The model ``cfg`` trains (timm's train.py order). ``pretrained`` and ``load_checkpoint`` off build the
    architecture alone (e.g. on the meta device, to measure its memory)."""
    if cfg.fuser:
        utils.set_jit_fuser(cfg.fuser)
    if cfg.fast_norm:
        set_fast_norm()
    in_chans = cfg.in_chans or (cfg.input_size[0] if cfg.input_size is not None else 3)
    factory_kwargs = {}
    if cfg.pretrained_path:
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=cfg.pretrained_path, num_classes=-1)
    model = create_model(
        cfg.model,
        pretrained=cfg.pretrained if pretrained is None else pretrained,
        in_chans=in_chans,
        num_classes=cfg.num_classes,
        drop_rate=cfg.drop,
        drop_path_rate=cfg.drop_path if cfg.drop_path is not None else cfg.drop_connect,
        drop_block_rate=cfg.drop_block,
        global_pool=cfg.gp,
        bn_momentum=cfg.bn_momentum,
        bn_eps=cfg.bn_eps,
        **factory_kwargs,
        **cfg.model_kwargs,
    )
    if cfg.swap_activations:  # given, or recorded by the --initial-checkpoint (resolve_config)
        report = swap_activations(model, cfg.swap_activations, cfg.swap_source, check_functional=check_functional)
        log(f'Swapped {len(report)} activation modules to {report.act}: {report.counts()}')
    if cfg.initial_checkpoint and load_checkpoint:
        load_model_checkpoint(model, cfg.initial_checkpoint, apply_swap=False)
    if cfg.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(cfg.head_init_scale)
            model.get_classifier().bias.mul_(cfg.head_init_scale)
    if cfg.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, cfg.head_init_bias)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model
