"""What every timed step shares: the model, its copies, the batch, the clock, the AMP dtype."""
import argparse
import copy
import time
from typing import Optional, Tuple

import torch
import torch.nn as nn

from timm_gradreg.models.activations import swap_activations
from timm_gradreg.utils.device import default_device
from timm_gradreg.models.loading import create_model

__all__ = ['bench_device', 'make_model', 'input_size', 'amp_dtype', 'memory_format', 'model_copy', 'fixed_batch',
           'clock']


def bench_device(args: argparse.Namespace) -> torch.device:
    return torch.device(default_device(args.device))


def make_model(args: argparse.Namespace) -> nn.Module:
    if args.no_fused_attn:
        from timm.layers import set_fused_attn
        set_fused_attn(False)
    kwargs = {'num_classes': args.num_classes, 'in_chans': getattr(args, 'in_chans', 3)}
    if args.img_size:
        kwargs['img_size'] = args.img_size
    try:
        model = create_model(args.model, **kwargs)
    except TypeError:  # CNNs take any size and no img_size argument
        kwargs.pop('img_size', None)
        model = create_model(args.model, **kwargs)
    if args.act:
        swap_activations(model, args.act, check_functional=False)
    return model


def input_size(args, model) -> int:
    return args.img_size or model.pretrained_cfg.get('input_size', (3, 224, 224))[-1]


def amp_dtype(args) -> Optional[torch.dtype]:
    return {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]


def memory_format(args) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def model_copy(model: nn.Module, args, device: torch.device) -> nn.Module:
    """A copy of ``model`` on ``device`` in the run's memory format, BatchNorm in eval mode unless --train-bn."""
    return copy.deepcopy(model).to(device, memory_format=memory_format(args)).train(args.train_bn)


def fixed_batch(args, model: nn.Module, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed random batch every step of a run trains on: images and labels."""
    size = input_size(args, model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, getattr(args, 'in_chans', 3), size, size, generator=generator).to(device, memory_format=memory_format(args))
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    return x, y


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished the work queued so far."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()
