"""Where a training step takes an input-gradient penalty: the whole batch, a random fraction of it, the
images at a reduced resolution; and on which steps (every k-th).

A placement decides only where the penalty goes. It is handed the task's two steps,
``penalized(x, target, ce_weight, weight)`` (λ_CE·CE + weight·penalty on ``x``, its parameter gradient
computed however the task computes it) and ``natural(x, target, ce_weight)``, and returns the task's
result for the whole batch: {'loss', 'output', 'ce', 'penalty', 'weight'}. So every placement works with
every way of computing the penalty's gradient (double backprop, finite differences).
"""
import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from ..utils.registry import Registry

__all__ = ['PenaltyPlacement', 'WholeBatch', 'SampleFraction', 'ReducedResolution', 'EveryKthStep',
           'PLACEMENTS', 'create_placement']

Result = Dict[str, torch.Tensor]
PenalizedStep = Callable[[torch.Tensor, torch.Tensor, float, float], Result]
NaturalStep = Callable[[torch.Tensor, torch.Tensor, float], Result]

#: name -> placement class: where in the batch the penalty is taken.
PLACEMENTS: Registry[type] = Registry('penalty placement')


class PenaltyPlacement:
    """Where in a step the penalty is taken (the base: the whole batch)."""

    #: Training steps after which the pattern of penalized and natural steps repeats: a step's cost
    #: is measured as the mean over one cycle.
    cycle: int = 1

    def __call__(self, penalized: PenalizedStep, natural: NaturalStep, x: torch.Tensor, target: torch.Tensor,
                 ce_weight: float, weight: float, training: bool = True) -> Result:
        return penalized(x, target, ce_weight, weight)

    @classmethod
    def from_options(cls, penalty_fraction: float = 1.0, resolution: float = 1.0) -> 'PenaltyPlacement':
        """The placement built from the task's options (each reads those it uses)."""
        return cls()

    def state_dict(self) -> Dict[str, int]:
        return {}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        pass

    def extra_repr(self) -> str:
        return ''

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.extra_repr()})'


@PLACEMENTS.register('batch')
class WholeBatch(PenaltyPlacement):
    """The penalty on every sample of the batch (the paper's GradNorm)."""


def _check_share(name: str, value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError(f'{name} must be in (0, 1], got {value}')
    return float(value)


def _choose(batch: int, fraction: float, device: torch.device) -> torch.Tensor:
    """A uniform random ⌈ρ·B⌉ of the batch's rows (at least one)."""
    return torch.randperm(batch, device=device)[:max(1, math.ceil(fraction * batch))]


@PLACEMENTS.register('fraction')
class SampleFraction(PenaltyPlacement):
    """The penalty on a random ⌈ρ·B⌉ samples of each batch, CE on all B.

    The penalized pass carries the CE of its own samples and a natural pass the rest's, so the loss is
    λ_CE·CE(batch) + w·penalty(subset): the batch mean of the per-sample penalty is estimated without
    bias from the subset, and only the variance of the gradient grows.
    """

    def __init__(self, fraction: float):
        self.fraction = _check_share('penalty_fraction', fraction)

    @classmethod
    def from_options(cls, penalty_fraction: float = 1.0, resolution: float = 1.0) -> 'SampleFraction':
        return cls(penalty_fraction)

    def __call__(self, penalized, natural, x, target, ce_weight, weight, training=True):
        batch = x.shape[0]
        chosen = _choose(batch, self.fraction, x.device)
        count = chosen.numel()
        rest = torch.ones(batch, dtype=torch.bool, device=x.device)
        rest[chosen] = False
        parts = [(chosen, penalized(x[chosen], target[chosen], ce_weight * count / batch, weight))]
        if count < batch:
            parts.append((rest, natural(x[rest], target[rest], ce_weight * (batch - count) / batch)))
        first = parts[0][1]['output']
        output = first.new_empty((batch, *first.shape[1:]))
        for rows, part in parts:
            output[rows] = part['output'].detach()
        return {'loss': sum(part['loss'] for _, part in parts), 'output': output,
                'ce': sum(part['ce'] * part['output'].shape[0] for _, part in parts) / batch,
                'penalty': parts[0][1]['penalty'], 'weight': weight}

    def extra_repr(self) -> str:
        return f'fraction={self.fraction}'


@PLACEMENTS.register('resolution')
class ReducedResolution(PenaltyPlacement):
    """The penalty on the images downsampled by r (bilinear, antialiased) and run through the network at
    that size; CE at full size.

    The passes cost about r² of full-size ones (convolutional models), which is the point. What the
    penalty flattens is the loss of the network applied to the small image, a different function from
    the network at full size: the first-order bound of GradNorm holds for that small-image function
    only, and whether a flat loss at one scale carries over to another is an empirical question
    (docs/cost_robustness.md measures it). With ``fraction`` < 1 only a random subset is downsampled
    and penalized.
    """

    def __init__(self, resolution: float, fraction: float = 1.0):
        self.resolution = _check_share('resolution', resolution)
        self.fraction = _check_share('penalty_fraction', fraction)

    @classmethod
    def from_options(cls, penalty_fraction: float = 1.0, resolution: float = 1.0) -> 'ReducedResolution':
        return cls(resolution, penalty_fraction)

    def __call__(self, penalized, natural, x, target, ce_weight, weight, training=True):
        rows = _choose(x.shape[0], self.fraction, x.device)
        small = F.interpolate(x[rows], scale_factor=self.resolution, mode='bilinear', align_corners=False,
                              antialias=True)  # linear per channel: commutes with the normalization
        result = penalized(small, target[rows], 0.0, weight)
        full = natural(x, target, ce_weight)
        return {'loss': full['loss'] + result['loss'], 'output': full['output'], 'ce': full['ce'],
                'penalty': result['penalty'], 'weight': weight}

    def extra_repr(self) -> str:
        return f'resolution={self.resolution}, fraction={self.fraction}'


class EveryKthStep(PenaltyPlacement):
    """``inner``'s penalty on every k-th training step only, weighted k times; the steps between are natural.

    The expected gradient over k steps equals the every-step one to first order in the learning rate. A
    step without the penalty returns the same keys (penalty and weight 0), so logged means are over all
    steps. Outside training (validation) every call takes the penalty at its own weight. The count of
    training steps is state, saved with the task so a resumed run keeps the phase.
    """

    def __init__(self, every: int, inner: PenaltyPlacement):
        if int(every) != every or every < 1:
            raise ValueError(f'every must be an integer >= 1, got {every}')
        self.every, self.inner = int(every), inner
        self.steps_done = 0

    @property
    def cycle(self) -> int:
        return self.every * self.inner.cycle

    def __call__(self, penalized, natural, x, target, ce_weight, weight, training=True):
        if not training:
            return self.inner(penalized, natural, x, target, ce_weight, weight, training)
        penalty_step = self.steps_done % self.every == 0
        self.steps_done += 1
        if penalty_step:
            return self.inner(penalized, natural, x, target, ce_weight, weight * self.every, training)
        result = natural(x, target, ce_weight)
        return {**result, 'penalty': torch.zeros_like(result['ce']), 'weight': 0.0}

    def state_dict(self) -> Dict[str, int]:
        return {'steps_done': self.steps_done}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.steps_done = int(state.get('steps_done', 0))

    def extra_repr(self) -> str:
        return f'every={self.every}, inner={self.inner!r}'


def create_placement(penalty_fraction: float = 1.0, resolution: float = 1.0, every: int = 1) -> PenaltyPlacement:
    """The placement these options call for, from ``PLACEMENTS``: 'resolution' below full size, else
    'fraction' below the whole batch, else 'batch'; taken on every ``every``-th step."""
    _check_share('penalty_fraction', penalty_fraction), _check_share('resolution', resolution)
    name = 'resolution' if resolution < 1 else 'fraction' if penalty_fraction < 1 else 'batch'
    placement = PLACEMENTS.get(name).from_options(penalty_fraction=penalty_fraction, resolution=resolution)
    return EveryKthStep(every, placement) if every != 1 else placement
