"""Progress displays: their totals are the work actually done, their ETA and log lines, the intervals."""
import logging

import pytest
import timm
import torch
import torch.nn as nn

from timm_gradreg.analyze.analysis import AnalysisConfig, analysis_forwards, analyze_model
from timm_gradreg.evaluate import PGDSweepConfig, pgd_sweep, run_autoattack
from timm_gradreg.evaluate.interval import format_accuracy, wilson_interval
from timm_gradreg.evaluate.robustness import _forwards_per_batch
from timm_gradreg.utils.progress import Progress, count_forwards, format_duration


class AlwaysRight(nn.Module):
    """Predicts class 0 whatever the input (with a gradient): no attack ever succeeds, none stops early."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), 1e-3))

    def forward(self, x):
        score = self.weight * x.flatten(1).mean(1, keepdim=True)
        return torch.cat([10 + score, score, -score], dim=1)


def _forward_counter(model):
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_pgd_sweep_total_is_the_forward_passes_it_makes():
    model = AlwaysRight()
    calls = _forward_counter(model)
    loader = [(torch.rand(3, 3, 8, 8), torch.zeros(3, dtype=torch.long)) for _ in range(2)]
    config = PGDSweepConfig(eps=(0, 1 / 255, 4 / 255), steps=4, restarts=2, losses=('ce', 'dlr'))
    result = pgd_sweep(model, loader, config, show_progress=False)
    assert result.robust.all()
    assert calls[0] == 1 + 2 * _forwards_per_batch(result.eps, config, 2) == 1 + 2 * (1 + 2 * 2 * 2 * 5)


def test_analysis_total_is_the_forward_passes_it_makes():
    model = timm.create_model('test_resnet', num_classes=10, act_layer='gelu').eval()
    calls = _forward_counter(model)
    config = AnalysisConfig(pgd_steps=3, power_iters=2, linearity_draws=2, path_steps=2, path_ts=(0, 0.5, 1),
                            path_power_iters=2)
    analyze_model(model, torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), config)
    assert calls[0] == analysis_forwards(config) == 3 + 3 + 2 + 6 + 2 + 3 * 3


def test_autoattack_in_chunks_equals_one_call_and_its_estimate_bounds_the_work():
    pyautoattack = pytest.importorskip('pyautoattack')
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10, act_layer='gelu').eval()
    x = torch.rand(10, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(-1)
    y[:2] = (y[:2] + 1) % 10  # two misclassified samples
    calls = _forward_counter(model)
    ours = run_autoattack(model, x, y, eps=2 / 255, version='custom', attacks=['apgd-ce', 'square'], batch_size=4,
                          square_queries=30, show_progress=True)
    attack = pyautoattack.AutoAttack(model, eps=2 / 255, norm='Linf', version='custom', device='cpu', seed=0)
    attack.attacks_to_run, attack.verbose = ['apgd-ce', 'square'], False
    attack.square.n_queries = 30
    forwards = calls[0]
    x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=4)
    with torch.no_grad():
        reference = model(x_adv).argmax(-1) == y
    assert torch.equal(ours.robust, reference)
    from timm_gradreg.evaluate.autoattack import _forwards_per_chunk
    bound = 2 * (_forwards_per_chunk(attack, 'apgd-ce') + _forwards_per_chunk(attack, 'square'))  # 8 robust: 2 chunks
    assert 0 < forwards <= bound


def test_progress_logs_eta_lines_off_a_terminal_and_nothing_when_disabled(caplog):
    caplog.set_level(logging.INFO, logger='timm_gradreg.utils.progress')
    with Progress(10, 'sweep', interval=0.0) as bar:
        for _ in range(4):
            bar.update(1)
        assert bar.eta() is not None and bar.eta() >= 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].startswith('sweep: 40% (4/10 forward passes), ') and 'ETA ' in lines[-1]
    caplog.clear()
    model = AlwaysRight()
    with Progress(5, 'quiet', enabled=False, interval=0.0) as bar, count_forwards(model, bar):
        model(torch.rand(1, 3, 2, 2))
    assert bar.done == 1 and not caplog.records


def test_durations_and_intervals_by_hand():
    assert (format_duration(12.3), format_duration(185), format_duration(3725)) == ('12s', '3m05s', '1h02m')
    low, high = wilson_interval(80.0, 10)  # Wilson 95% for 8/10: (0.4902, 0.9433)
    assert low == pytest.approx(49.02, abs=0.01) and high == pytest.approx(94.33, abs=0.01)
    assert wilson_interval(0.0, 100) == (0.0, pytest.approx(3.70, abs=0.01))
    assert format_accuracy(75.21, 359) == '75.21% (n=359, 95% CI 70.5-79.4)'
