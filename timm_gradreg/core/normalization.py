"""Pixel space <-> normalized space.

timm loaders hand the model normalized tensors, ``(x - mean) / std``, while
perturbation budgets (ε = 4/255, ...) and image statistics are defined on [0, 1]
pixels. ``PixelSpace`` converts between the two so attacks, penalties and edge maps
can be written once in pixel units whatever the data config.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ['PixelSpace', 'Normalize', 'normalized_model']

Stats = Union[float, Sequence[float]]


def _as_tuple(value: Stats, name: str) -> Tuple[float, ...]:
    values = (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if not values:
        raise ValueError(f'{name} must have at least one value, got {value!r}')
    if name == 'std' and any(v <= 0 for v in values):
        raise ValueError(f'std values must be > 0, got {values}')
    return values


class PixelSpace:
    """Maps between [0, 1] pixels and the normalized tensors a model consumes.

    Args:
        mean: Per-channel (or single) mean used by the data pipeline.
        std: Per-channel (or single) standard deviation used by the data pipeline.
    """

    def __init__(self, mean: Stats = IMAGENET_DEFAULT_MEAN, std: Stats = IMAGENET_DEFAULT_STD):
        self.mean = _as_tuple(mean, 'mean')
        self.std = _as_tuple(std, 'std')
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(f'mean {self.mean} and std {self.std} have different channel counts')

    @classmethod
    def from_data_config(cls, data_config: dict) -> 'PixelSpace':
        """Build from a timm ``resolve_data_config`` dict."""
        return cls(data_config.get('mean', IMAGENET_DEFAULT_MEAN), data_config.get('std', IMAGENET_DEFAULT_STD))

    def __repr__(self) -> str:
        return f'PixelSpace(mean={self.mean}, std={self.std})'

    def _stat(self, values: Tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        channels = like.shape[1] if like.ndim >= 2 else 1
        if len(values) not in (1, channels):
            raise ValueError(
                f'{self} has {len(values)} channel statistics but the input has {channels} channels')
        t = torch.tensor(values, device=like.device, dtype=like.dtype if like.is_floating_point() else None)
        return t.view(1, -1, *([1] * (like.ndim - 2)))

    def mean_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return self._stat(self.mean, like)

    def std_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return self._stat(self.std, like)

    def to_pixel(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tensor -> [0, 1] pixels (not clamped)."""
        return x * self.std_tensor(x) + self.mean_tensor(x)

    def to_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> normalized tensor."""
        return (x - self.mean_tensor(x)) / self.std_tensor(x)


class Normalize(nn.Module):
    """Normalization as a layer, so a model can take [0, 1] pixels (attack / evaluation convention)."""

    def __init__(self, mean: Stats = IMAGENET_DEFAULT_MEAN, std: Stats = IMAGENET_DEFAULT_STD):
        super().__init__()
        space = PixelSpace(mean, std)
        self.register_buffer('mean', torch.tensor(space.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(space.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalized_model(model: nn.Module, mean: Optional[Stats] = None, std: Optional[Stats] = None) -> nn.Module:
    """Wrap ``model`` so it accepts [0, 1] pixels; mean/std default to the model's pretrained_cfg."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = mean if mean is not None else cfg.get('mean', IMAGENET_DEFAULT_MEAN)
    std = std if std is not None else cfg.get('std', IMAGENET_DEFAULT_STD)
    return nn.Sequential(Normalize(mean, std), model)
