"""Natural (ERM) training: the baseline every robustness number is compared with."""
from typing import Dict

import torch

from ._registry import register_task
from .base import GradRegTask

__all__ = ['NaturalTask']


@register_task('natural')
class NaturalTask(GradRegTask):
    """Plain cross-entropy training, reporting its loss as the ``ce`` component.

    Example:
        >>> task = create_task('natural', model)
    """

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        loss = self.criterion(output, target)
        return {'loss': loss, 'output': output, 'ce': loss.detach()}
