"""Gradient-masking checklist (Carlini et al. 2019, "On Evaluating Adversarial Robustness").

Each check compares attacks whose ordering is known for an honestly evaluated model;
a violation means the white-box attack is being fooled (gradient masking), so its
robust accuracy cannot be trusted. Accuracies are percentages on the same samples.
"""
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.attacks import fgsm_attack, pgd_attack, pgd_step_size
from ..core.budget import check_attack_budget
from ..utils.progress import Progress, count_forwards
from ..utils.registry import Registry

__all__ = ['CheckResult', 'SanityContext', 'register_check', 'list_checks', 'describe_check', 'run_sanity_checks',
           'masking_verdict']


@dataclass
class CheckResult:
    """Outcome of one check: passed True/False, or None when it could not run (``detail`` says why)."""
    name: str
    passed: Optional[bool]
    numbers: Dict[str, float] = field(default_factory=dict)
    detail: str = ''

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SanityContext:
    """Model (pixel space), samples and attack budget shared by the checks; attack results are cached.

    ``tolerance`` (accuracy points) is raised to two samples' worth on small sample sets.
    """
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    steps: int = 20
    tolerance: float = 1.0
    source_model: Optional[nn.Module] = None
    square_queries: int = 1000
    unbounded_eps: float = 1.0
    max_zero_gradient_fraction: float = 0.01
    seed: int = 0

    def __post_init__(self):
        check_attack_budget(eps=self.eps, steps=self.steps, queries=self.square_queries)
        # two samples' worth at least: a one-sample change on a small set is not evidence of masking
        self.tolerance = max(self.tolerance, 200.0 / max(self.x.shape[0], 1))

    def accuracy(self, adv: torch.Tensor) -> float:
        with torch.no_grad():
            return 100.0 * (self.model(adv).argmax(-1) == self.y).float().mean().item()

    def pgd(self, steps: int, eps: Optional[float] = None, direction: str = 'sign',
            model: Optional[nn.Module] = None) -> torch.Tensor:
        eps = self.eps if eps is None else eps
        torch.manual_seed(self.seed)
        return pgd_attack(model or self.model, self.x, self.y, eps=eps, step_size=pgd_step_size(eps, steps), steps=steps,
                          random_start=True, direction=direction)

    @cached_property
    def pgd_accuracy(self) -> float:
        """White-box reference: PGD-``steps`` with CE at ε."""
        return self.accuracy(self.pgd(self.steps))

    @cached_property
    def clean_accuracy(self) -> float:
        return self.accuracy(self.x)


_CHECKS: Registry[Callable[[SanityContext], CheckResult]] = Registry('sanity check', sorted_names=False)
_FORWARDS: Dict[str, Callable[[SanityContext], int]] = {}


def register_check(name: str, forwards: Optional[Callable[[SanityContext], int]] = None):
    """Register a check ``fn(ctx: SanityContext) -> CheckResult``; checks run in registration order.

    ``forwards(ctx)``: the model forward passes it makes, for the progress display's ETA.
    """
    if forwards is not None:
        _FORWARDS[name] = forwards
    return _CHECKS.register(name)


def list_checks() -> List[str]:
    return _CHECKS.names()


@register_check('steps_converge', forwards=lambda ctx: 2 * ctx.steps + 1)
def _steps_converge(ctx: SanityContext) -> CheckResult:
    """Doubling the PGD iterations changes robust accuracy little."""
    doubled = ctx.accuracy(ctx.pgd(2 * ctx.steps))
    drop = ctx.pgd_accuracy - doubled
    return CheckResult('steps_converge', drop <= ctx.tolerance,
                       {f'pgd{ctx.steps}': ctx.pgd_accuracy, f'pgd{2 * ctx.steps}': doubled, 'drop': drop},
                       f'PGD-{2 * ctx.steps} lowers accuracy by {drop:.2f} points (tolerance {ctx.tolerance})')


@register_check('unbounded_eps', forwards=lambda ctx: max(ctx.steps, 20) + 1)
def _unbounded_eps(ctx: SanityContext) -> CheckResult:
    """With an unbounded budget any image can be changed into any other: accuracy must reach ~0."""
    acc = ctx.accuracy(ctx.pgd(max(ctx.steps, 20), eps=ctx.unbounded_eps))
    return CheckResult('unbounded_eps', acc <= ctx.tolerance, {'eps': ctx.unbounded_eps, 'accuracy': acc},
                       f'PGD at ε={ctx.unbounded_eps:g} leaves {acc:.2f}% correct (should be ~0)')


@register_check('iterative_beats_single_step', forwards=lambda ctx: 2)
def _iterative(ctx: SanityContext) -> CheckResult:
    """FGSM (one step) must not be stronger than PGD."""
    torch.manual_seed(ctx.seed)
    fgsm = ctx.accuracy(fgsm_attack(ctx.model, ctx.x, ctx.y, eps=ctx.eps, random_start=False))
    return CheckResult('iterative_beats_single_step', ctx.pgd_accuracy <= fgsm + ctx.tolerance,
                       {'fgsm': fgsm, 'pgd': ctx.pgd_accuracy},
                       f'FGSM {fgsm:.2f}% vs PGD-{ctx.steps} {ctx.pgd_accuracy:.2f}%')


@register_check('black_box_not_better', forwards=lambda ctx: ctx.square_queries + 14)
def _black_box(ctx: SanityContext) -> CheckResult:
    """A gradient-free attack (Square) must not beat the white-box attack."""
    try:
        from .autoattack import run_autoattack
        result = run_autoattack(ctx.model, ctx.x, ctx.y, eps=ctx.eps, version='custom', attacks=['square'],
                                batch_size=max(ctx.x.shape[0], 1), seed=ctx.seed, square_queries=ctx.square_queries,
                                desc='Checklist, gradient-free Square attack')
    except ImportError as e:
        return CheckResult('black_box_not_better', None, {}, f'skipped: {e}')
    square = result.robust_accuracy()
    return CheckResult('black_box_not_better', square >= ctx.pgd_accuracy - ctx.tolerance,
                       {'square': square, 'pgd': ctx.pgd_accuracy, 'queries': ctx.square_queries},
                       f'Square ({ctx.square_queries} queries) {square:.2f}% vs PGD {ctx.pgd_accuracy:.2f}%')


@register_check('transfer_weaker', forwards=lambda ctx: 1)
def _transfer(ctx: SanityContext) -> CheckResult:
    """Adversarial examples transferred from another model must be weaker than white-box ones."""
    if ctx.source_model is None:
        return CheckResult('transfer_weaker', None, {}, 'skipped: no --source-checkpoint given')
    transfer = ctx.accuracy(ctx.pgd(ctx.steps, model=ctx.source_model))
    return CheckResult('transfer_weaker', transfer >= ctx.pgd_accuracy - ctx.tolerance,
                       {'transfer': transfer, 'pgd': ctx.pgd_accuracy},
                       f'transfer from the source model {transfer:.2f}% vs white-box {ctx.pgd_accuracy:.2f}%')


@register_check('l2_direction_weaker', forwards=lambda ctx: ctx.steps + 1)
def _l2_direction(ctx: SanityContext) -> CheckResult:
    """Under an L∞ budget, stepping along the L2-normalized gradient must be weaker than sign steps."""
    l2 = ctx.accuracy(ctx.pgd(ctx.steps, direction='l2'))
    return CheckResult('l2_direction_weaker', l2 >= ctx.pgd_accuracy - ctx.tolerance,
                       {'l2_direction': l2, 'sign': ctx.pgd_accuracy},
                       f'L2-direction PGD {l2:.2f}% vs sign PGD {ctx.pgd_accuracy:.2f}%')


@register_check('zero_gradients', forwards=lambda ctx: 1)
def _zero_gradients(ctx: SanityContext) -> CheckResult:
    """Samples whose loss-input gradient is exactly zero cannot be attacked by gradients."""
    x = ctx.x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(ctx.model(x), ctx.y, reduction='sum')
    grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
    grad = torch.zeros_like(x) if grad is None else grad
    zero = (grad.flatten(1).abs().sum(1) == 0).float()
    fraction = zero.mean().item()
    return CheckResult('zero_gradients', fraction <= ctx.max_zero_gradient_fraction,
                       {'zero_gradient_samples': int(zero.sum().item()), 'fraction': fraction},
                       f'{int(zero.sum().item())} of {x.shape[0]} samples have an all-zero input gradient')


def describe_check(name: str) -> str:
    """What the check ``name`` asserts: the first line of its docstring."""
    return (_CHECKS.get(name).__doc__ or name).strip().splitlines()[0]


def run_sanity_checks(ctx: SanityContext, names: Optional[Sequence[str]] = None, show_progress: bool = False,
                      desc: str = 'Checklist') -> List[CheckResult]:
    """Run the named checks (all by default) in registration order."""
    names = list(names or list_checks())
    checks = [_CHECKS.get(name) for name in names]
    total = ctx.steps + 1 + sum(_FORWARDS.get(name, lambda c: 0)(ctx) for name in names)  # + the PGD reference
    with Progress(total, desc, enabled=show_progress) as bar, count_forwards(ctx.model, bar):
        return [check(ctx) for check in checks]


def masking_verdict(results: Sequence[CheckResult]) -> str:
    failed = [r.name for r in results if r.passed is False]
    if failed:
        return 'GRADIENT MASKING SUSPECTED: ' + ', '.join(failed) + ' failed; the white-box numbers are not reliable.'
    skipped = [r.name for r in results if r.passed is None]
    return 'no sign of gradient masking' + (f" ({', '.join(skipped)} skipped)" if skipped else '')
