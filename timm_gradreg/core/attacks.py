"""L∞ attacks in pixel space: PGD and FGSM with random start.

The model sees normalized inputs (as from a timm loader) while the perturbation
lives in [0, 1] pixel space: steps, projection onto the ε-ball and clipping to
[0, 1] all happen there, then the result is normalized again. Pass ``space=None``
when the model already takes pixels (normalization inside, the evaluation
convention). The model is put in eval mode for the attack and every module's own
mode is restored afterwards. Adversarial training and evaluation share this code.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.modes import eval_mode, frozen_parameters
from ..utils.registry import Registry, check_choice
from .input_grad import at_least_fp32
from .normalization import PixelSpace

__all__ = [
    'ATTACK_LOSSES', 'register_attack_loss', 'get_attack_loss', 'list_attack_losses',
    'cross_entropy_per_sample', 'margin_loss', 'dlr_loss', 'pgd_attack', 'fgsm_attack', 'STEP_DIRECTIONS',
    'ITERATE_SELECTIONS', 'pgd_step_size', 'ThreatModel', 'THREAT_MODELS',
]

AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ATTACK_LOSSES: Registry[AttackLoss] = Registry('attack loss')


def register_attack_loss(name: str):
    """Register a per-sample attack loss ``fn(logits, target) -> [B]`` (higher = stronger attack)."""
    return ATTACK_LOSSES.register(name)


def list_attack_losses() -> List[str]:
    return ATTACK_LOSSES.names()


def get_attack_loss(loss: Union[str, AttackLoss]) -> AttackLoss:
    return loss if callable(loss) else ATTACK_LOSSES.get(loss)


def _hard_labels(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(-1) if target.ndim == 2 else target


@register_attack_loss('ce')
def cross_entropy_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample; class indices or soft (Mixup) targets."""
    logits = at_least_fp32(logits)
    if target.ndim == 2 and target.is_floating_point():
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    return F.cross_entropy(logits, target, reduction='none')


def _true_and_best_other(logits: torch.Tensor, target: torch.Tensor):
    labels = _hard_labels(target)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[-1]).bool(), float('-inf'))
    return true, others.max(-1).values


@register_attack_loss('margin')
def margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{i≠y} z_i − z_y (positive once misclassified)."""
    true, other = _true_and_best_other(at_least_fp32(logits), target)
    return other - true


@register_attack_loss('dlr')
def dlr_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): margin scaled by z_π1 − z_π3, shift/scale invariant."""
    logits = at_least_fp32(logits)
    if logits.shape[-1] < 3:
        raise ValueError(f'DLR loss needs at least 3 classes, got {logits.shape[-1]}')
    true, other = _true_and_best_other(logits, target)
    top = logits.topk(3, dim=-1).values
    return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)


def _sign_direction(grad: torch.Tensor) -> torch.Tensor:
    return grad.sign()


def _l2_direction(grad: torch.Tensor) -> torch.Tensor:
    """The L2-normalized gradient scaled to the L2 length of a full sign step (sqrt of the dimension)."""
    flat = grad.flatten(1)
    norm = flat.norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
    return grad / norm.view(-1, *[1] * (grad.ndim - 1)) * flat.shape[1] ** 0.5


#: Step directions: 'sign' (steepest ascent for L∞) and 'l2' (the plain gradient direction, a weaker
#: L∞ attack, used as a sanity check).
STEP_DIRECTIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {'sign': _sign_direction, 'l2': _l2_direction}


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each sample, shaped to broadcast over it."""
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.ndim - 1))


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ε around the image: where PGD starts, which way it steps, how it projects back."""
    start: Callable[[torch.Tensor, float, Optional[torch.Generator]], torch.Tensor]
    direction: Callable[[torch.Tensor], torch.Tensor]
    project: Callable[[torch.Tensor, float], torch.Tensor]


def _linf_start(delta: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    return delta.uniform_(-eps, eps, generator=generator)


def _l2_start(delta: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A uniform direction at a radius uniform in [0, ε] (as torchattacks' and robustness' L2 PGD start)."""
    delta.normal_(generator=generator)
    radius = torch.empty(delta.shape[0], device=delta.device, dtype=delta.dtype).uniform_(0, 1, generator=generator)
    return delta * (radius.view(-1, *[1] * (delta.ndim - 1)) * eps / _per_sample_norm(delta).clamp_min(1e-12))


def _unit_l2(grad: torch.Tensor) -> torch.Tensor:
    """The gradient scaled to unit L2 norm per sample (steepest ascent for an L2 ball)."""
    return grad / _per_sample_norm(grad).clamp_min(1e-12)


def _l2_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    return delta * (eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)


#: The threat models PGD attacks in: 'Linf' (sign steps, clipped to the box) and 'L2' (unit-norm gradient steps,
#: rescaled onto the ball); both then clipped to the [0, 1] pixel range.
THREAT_MODELS: Dict[str, ThreatModel] = {
    'Linf': ThreatModel(_linf_start, _sign_direction, lambda delta, eps: delta.clamp(-eps, eps)),
    'L2': ThreatModel(_l2_start, _unit_l2, _l2_project),
}


def _improves_per_sample(values: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    return values > best


def _improves_per_batch(values: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    return (values.mean() > best.mean()).expand_as(values)


#: Which PGD iterate is returned: 'last'; 'sample', each sample's highest-loss iterate; 'batch', the
#: iterate of highest batch-mean loss for the whole batch (what the official code's ``replace_best`` does
#: with its batch-mean ``mixup`` criterion). The start point and every step are candidates.
ITERATE_SELECTIONS = ('last', 'sample', 'batch')
_IMPROVES = {'sample': _improves_per_sample, 'batch': _improves_per_batch}


#: The usual PGD evaluation step factor: α = 2.5·ε/steps (Madry et al.).
PGD_STEP_FACTOR = 2.5


def pgd_step_size(eps: float, steps: int, factor: float = PGD_STEP_FACTOR) -> float:
    """The usual PGD evaluation step, factor·ε/steps (Madry et al.; 2.5 reaches the ball's far side)."""
    return factor * eps / steps


def _identity_space() -> PixelSpace:
    return PixelSpace(0.0, 1.0)


@torch.enable_grad()
def pgd_attack(
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        *,
        eps: float,
        step_size: float,
        steps: int,
        space: Optional[PixelSpace] = None,
        random_start: bool = True,
        loss: Union[str, AttackLoss] = 'ce',
        select: str = 'last',
        direction: str = 'sign',
        norm: str = 'Linf',
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Untargeted PGD in an L∞ or L2 ball; returns adversarial inputs in the same space as ``inputs``.

    Args:
        model: Classifier taking inputs in ``space`` (normalized) or pixels if ``space`` is None.
        inputs: Clean batch [B, C, H, W].
        target: Class indices [B] or soft targets [B, K].
        eps: The ball's radius in [0, 1] pixel units (L∞: e.g. 4/255; L2: e.g. 0.5 for CIFAR, 3 for ImageNet).
        step_size: Pixel-space step per iteration (L∞: each pixel's step; L2: the step's L2 length).
        steps: Number of signed-gradient steps (1 with random start is FGSM-RS).
        space: Normalization the model expects; None means the model takes pixels.
        random_start: Start from a uniform point in the ε-ball.
        loss: Per-sample loss to ascend: 'ce', 'margin', 'dlr' or a callable.
        select: Which iterate to return: 'last', 'sample' (each sample's highest-loss one) or 'batch'
            (the one of highest batch-mean loss), see ``ITERATE_SELECTIONS``.
        direction: Under L∞: 'sign' (PGD) or 'l2' (normalized gradient, then projected: a weaker L∞ attack).
        norm: The threat model, 'Linf' or 'L2' (``THREAT_MODELS``).
        generator: Optional RNG for the random start.

    A model whose output does not depend on its input through autograd (e.g. a detached
    preprocessing step) gets zero gradients rather than an error: that is gradient
    masking, which the evaluation checklist reports.
    """
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f'eps, step_size and steps must be >= 0, got {eps}, {step_size}, {steps}')
    check_choice('iterate selection', select, ITERATE_SELECTIONS)
    check_choice('step direction', direction, list(STEP_DIRECTIONS))
    check_choice('threat model', norm, list(THREAT_MODELS))
    threat = THREAT_MODELS[norm]
    space = space or _identity_space()
    loss_fn = get_attack_loss(loss)
    step_direction = STEP_DIRECTIONS[direction] if norm == 'Linf' else threat.direction
    x_pix = space.to_pixel(inputs.detach()).clamp(0.0, 1.0)
    if eps == 0 or steps == 0:
        return space.to_normalized(x_pix)

    delta = torch.zeros_like(x_pix)
    if random_start:
        delta = threat.start(delta, eps, generator)
        delta = (x_pix + delta).clamp(0.0, 1.0) - x_pix
    best_delta, best_value = delta.clone(), None
    keep_best = select != 'last'

    with eval_mode(model), frozen_parameters(model):  # input gradients only
        for step in range(steps + int(keep_best)):
            scoring_only = keep_best and step == steps  # the extra forward that scores the final iterate
            delta.requires_grad_(not scoring_only)
            with torch.set_grad_enabled(not scoring_only):  # no graph to keep for it
                values = loss_fn(model(space.to_normalized(x_pix + delta)), target)
            if keep_best:
                detached = values.detach()
                improved = (torch.ones_like(detached, dtype=torch.bool) if best_value is None
                            else _IMPROVES[select](detached, best_value))
                best_value = detached if best_value is None else torch.where(improved, detached, best_value)
                best_delta = torch.where(improved.view(-1, *[1] * (delta.ndim - 1)), delta.detach(), best_delta)
                if scoring_only:
                    break
            grad = _input_grad(values, delta)
            delta = threat.project(delta.detach() + step_size * step_direction(grad), eps)
            delta = (x_pix + delta).clamp(0.0, 1.0) - x_pix
    final = best_delta if keep_best else delta.detach()
    return space.to_normalized(x_pix + final).detach()


def _input_grad(values: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if not values.requires_grad:
        return torch.zeros_like(delta)
    (grad,) = torch.autograd.grad(values.sum(), delta, allow_unused=True)
    return torch.zeros_like(delta) if grad is None else grad


def fgsm_attack(
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        *,
        eps: float,
        step_size: Optional[float] = None,
        space: Optional[PixelSpace] = None,
        random_start: bool = True,
        loss: Union[str, AttackLoss] = 'ce',
        select: str = 'last',
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One signed-gradient step; with random start this is FGSM-RS (Wong et al. 2020).

    ``step_size`` defaults to 1.25·ε with random start and ε without; ``select`` as for ``pgd_attack``
    (the start point and the step are the candidates).
    """
    if step_size is None:
        step_size = 1.25 * eps if random_start else eps
    return pgd_attack(
        model, inputs, target, eps=eps, step_size=step_size, steps=1, space=space,
        random_start=random_start, loss=loss, select=select, generator=generator)
