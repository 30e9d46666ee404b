"""Shared fixtures: small smooth models and deterministic data."""
import pytest
import torch
import torch.nn as nn

torch.set_num_threads(2)


class TinyNet(nn.Module):
    """A small smooth CNN (no BatchNorm): cheap enough for float64 finite differences."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, width: int = 6, act=nn.GELU):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.act1 = act()
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.act2 = act()
        self.fc = nn.Linear(width, num_classes)
        self.num_classes = num_classes
        self.pretrained_cfg = {'input_size': (in_chans, 8, 8), 'mean': (0.485, 0.456, 0.406),
                               'std': (0.229, 0.224, 0.225)}

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def batch():
    """A normalized batch (ImageNet stats) of 4 images 8×8 with labels, pixels in [0.05, 0.95]."""
    g = torch.Generator().manual_seed(1)
    pixels = 0.05 + 0.9 * torch.rand(4, 3, 8, 8, generator=g)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (pixels - mean) / std, torch.tensor([0, 1, 2, 3])
