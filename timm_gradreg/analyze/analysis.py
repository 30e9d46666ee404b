"""One model's full characterization: the paper's tables, plus what the figures need."""
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import torch
import torch.nn as nn

from ..core.attacks import pgd_attack, pgd_step_size
from ..core.budget import check_attack_budget, check_attack_count, check_attack_radius
from ..utils.progress import Progress, count_forwards
from .edge_correlation import edge_correlation_table
from .geometry import curvature_table, hessian_spectral_norm, local_linearity_error, path_profile
from .gradients import (class_logit_gradient, gradient_norm_table, loss_input_gradient, per_sample_ce, saliency_map,
                        stats)

__all__ = ['AnalysisConfig', 'analyze_model', 'analysis_forwards']


@dataclass(frozen=True)
class AnalysisConfig:
    eps: float = 4 / 255             # PGD-10 of Table 1 and the perturbations of Fig. 1/3
    pgd_steps: int = 10
    path_steps: int = 5              # PGD-5 direction of Fig. 11
    path_ts: Sequence[float] = tuple(i / 10 for i in range(11))
    power_iters: int = 20
    path_power_iters: int = 10
    linearity_eps: float = 4 / 255
    linearity_draws: int = 8
    edge_sigma: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check_attack_budget(eps=self.eps, steps=self.pgd_steps)
        check_attack_radius(self.linearity_eps, 'linearity ε')
        for name in ('path_steps', 'power_iters', 'path_power_iters', 'linearity_draws'):
            check_attack_count(getattr(self, name), name.replace('_', ' '))


def _pgd(model, x, y, eps, steps):
    return pgd_attack(model, x, y, eps=eps, step_size=pgd_step_size(eps, steps), steps=steps, random_start=True)


def analysis_forwards(config: AnalysisConfig) -> int:
    """Model forward passes of ``analyze_model``: gradients, PGD and its check, class gradients, power
    iterations, three losses per linearity draw, the PGD-5 direction, a gradient and power iterations per path point."""
    return (3 + config.pgd_steps + config.power_iters + 3 * config.linearity_draws + config.path_steps
            + len(config.path_ts) * (1 + config.path_power_iters))


def analyze_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AnalysisConfig = AnalysisConfig(),
                  show_progress: bool = False, desc: str = 'analysis') -> Dict[str, Any]:
    """Tables 1, 5, 6, 7 and the Fig. 11 profile for a pixel-space model on (x, y); tensors for Fig. 1/3/6/7."""
    with Progress(analysis_forwards(config), desc, enabled=show_progress) as bar, count_forwards(model, bar):
        return _analyze(model, x, y, config)


def _analyze(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AnalysisConfig) -> Dict[str, Any]:
    model.eval()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loss_fn = per_sample_ce(model, y)
    grad, loss, pred = loss_input_gradient(model, x, y)
    correct = pred == y
    l1 = grad.flatten(1).abs().sum(1)
    adv = _pgd(model, x, y, config.eps, config.pgd_steps)
    with torch.no_grad():
        attack_fails = model(adv).argmax(-1) == y
    class_grad = class_logit_gradient(model, x, y)
    spectral = hessian_spectral_norm(loss_fn, x, config.power_iters, generator)
    lle = local_linearity_error(loss_fn, x, config.linearity_eps, config.linearity_draws, generator)
    direction = _pgd(model, x, y, config.eps, config.path_steps) - x
    tables = {
        'clean_accuracy': 100.0 * correct.float().mean().item(),
        'pgd_accuracy': 100.0 * attack_fails.float().mean().item(),
        'table1_grad_l1': gradient_norm_table(l1, attack_fails, correct),
        'table5_edge_correlation': edge_correlation_table(x, saliency_map(class_grad), saliency_map(grad),
                                                           config.edge_sigma),
        'table6_curvature': curvature_table(grad, spectral),
        'table7_local_linearity': {**stats(lle), 'log10_mean': stats(lle.clamp_min(1e-30).log10())['mean'],
                                   'log10_median': stats(lle.clamp_min(1e-30).log10())['median']},
        'fig11_path': path_profile(loss_fn, x, direction, config.path_ts, config.path_power_iters, generator),
    }
    arrays = {'grad': grad.cpu(), 'perturbation': (adv - x).cpu(), 'grad_l1': l1.cpu(), 'correct': correct.cpu(),
              'attack_fails': attack_fails.cpu()}
    return {'tables': tables, 'arrays': arrays}
