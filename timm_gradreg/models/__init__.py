"""Models: timm model creation and checkpoint loading, activation swaps, the CIFAR PreActResNet, BatchNorm
modes, and the checkpoints' layouts and swap records."""
