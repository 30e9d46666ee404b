"""The default device, the same for training, evaluation, analysis and the benchmarks."""
from typing import Optional

import torch

__all__ = ['default_device']


def default_device(requested: Optional[str] = None) -> str:
    """``requested`` if given, else 'cuda' when a GPU is available, else 'cpu'."""
    if requested:
        return requested
    return 'cuda' if torch.cuda.is_available() else 'cpu'
