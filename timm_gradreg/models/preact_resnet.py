"""PreActResNet-18 for 32×32 images (He et al. 2016, the CIFAR-10 network of the paper's Table 9), as a timm model.

timm's ``resnetv2_18`` has an ImageNet stem (7×7 stride-2 convolution and max pooling) that a
32×32 image does not survive; the CIFAR network has a 3×3 stride-1 stem, four stages of two
pre-activation basic blocks (64, 128, 256, 512 channels) and a 4×4 average pool. Parameter
names follow the common CIFAR implementation (``conv1``, ``layer1.0.bn1`` ... ``linear``), so
its checkpoints, the official code's included, load as they are. Registered with timm:
``timm.create_model('preact_resnet18_cifar', act_layer='gelu')`` once ``timm_gradreg`` is imported.
"""
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import get_act_layer
from timm.models import register_model

__all__ = ['PreActBlock', 'PreActResNet', 'preact_resnet18_cifar']


class PreActBlock(nn.Module):
    """BN → act → conv3×3 → BN → act → conv3×3, plus a 1×1 projection of the pre-activated input when the
    shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, act_layer: type = nn.ReLU):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)) \
            if stride != 1 or in_chs != out_chs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """A pre-activation ResNet of basic blocks with a CIFAR stem, timm's classifier interface included."""

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3,
                 act_layer: Union[str, type] = 'relu', global_pool: str = 'avg', **kwargs: Any):
        super().__init__()
        act = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        in_chs = 64
        for index, (width, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for block in range(depth):
                blocks.append(PreActBlock(in_chs, width, 2 if block == 0 and index > 0 else 1, act))
                in_chs = width
            self.add_module(f'layer{index + 1}', nn.Sequential(*blocks))
        self.num_features = in_chs
        self.global_pool = global_pool
        self.linear = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # the official CIFAR runs normalize with the ImageNet statistics
    return {'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (4, 4), 'crop_pct': 1.0,
            'interpolation': 'bicubic', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
            'first_conv': 'conv1', 'classifier': 'linear', **kwargs}


@register_model
def preact_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> PreActResNet:
    """PreActResNet-18 for 32×32 inputs (no pretrained weights)."""
    if pretrained:
        raise ValueError('preact_resnet18_cifar has no pretrained weights; train it from scratch or pass a checkpoint')
    for key in ('drop_rate', 'drop_path_rate', 'drop_block_rate', 'bn_momentum', 'bn_eps', 'pretrained_cfg',
                'pretrained_cfg_overlay'):
        kwargs.pop(key, None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = PreActResNet((2, 2, 2, 2), **kwargs)
    model.pretrained_cfg = model.default_cfg = _cfg()
    return model
