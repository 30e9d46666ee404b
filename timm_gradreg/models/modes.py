"""Context managers that switch module modes and restore them exactly."""
from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn

__all__ = ['eval_mode', 'frozen_parameters', 'freeze_batchnorm']


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore every submodule's own flag afterwards.

    ``module.train()`` after the fact would be wrong for models with frozen parts
    (e.g. BatchNorm kept in eval for GradNorm), so each flag is remembered.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on every parameter, restoring each one's own flag afterwards.

    For passes that only need input gradients (attacks): eager autograd then records no
    parameter graph, and a ``torch.compile``d model runs a backward graph without the
    weight gradients (AOTAutograd computes the gradient of every input that requires it).
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in trainable:
            p.requires_grad_(True)


def freeze_batchnorm(module: nn.Module) -> int:
    """Put every BatchNorm layer in eval mode (running statistics, no batch coupling).

    Returns the number of layers frozen. Call after each ``model.train()``, as
    ``train()`` flips them back. The paper's ResNet GradNorm runs trained this way:
    it keeps the per-sample input gradient independent of batch companions and
    avoids BatchNorm's expensive double backward.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            count += 1
    return count
