"""The validation sweep (benchmarks/tune.py): an equal budget, the recipe's configuration in every grid, flags that
parse to what they say, and the choice rule on hand-made records."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import tune  # noqa: E402
from timm_gradreg.train import parse_args  # noqa: E402


def test_every_method_gets_the_same_number_of_configurations():
    assert set(tune.GRIDS) == {'gradnorm', 'pgd', 'fgsm', 'nfgsm'}
    assert len({len(grid) for grid in tune.GRIDS.values()}) == 1
    assert all(len({label for label, _ in grid}) == len(grid) for grid in tune.GRIDS.values())


def test_gradnorm_configurations_are_distinct_trainings():
    """GradNorm's penalty is λ_GN·(ε/σ)·‖∇ₓL‖₁: configurations are distinct only where λ_GN·ε differs."""
    products = []
    for _, extra in tune.GRIDS['gradnorm']:
        args = parse_args(tune.sweep_flags('gradnorm', extra))[0]
        assert args.gn_impl == 'double_backprop' and not args.gn_threshold
        products.append(round(args.gn_weight * args.gn_eps, 12))
    assert len(set(products)) == len(products) and products[0] == pytest.approx(0.2)


def test_gradnorm_trains_on_the_product_of_weight_and_radius():
    """The premise of the grid: the same λ_GN·ε gives the same loss and parameter gradient, to float64 rounding."""
    import torch
    from timm_gradreg.tasks import create_task
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GELU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10)).double()
    x, y = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (5,))

    def loss_and_grad(weight, eps):
        task = create_task('gradnorm', model, gn_weight=weight, eps=eps, ce_weight=1.0, warmup_epochs=0)
        model.zero_grad()
        loss = task(x, y)['loss']
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (a, ga), (b, gb), (c, gc) = loss_and_grad(1.0, 0.1), loss_and_grad(2.0, 0.05), loss_and_grad(1.5, 0.1)
    assert a == pytest.approx(b, rel=1e-12) and torch.allclose(ga, gb, rtol=1e-10, atol=1e-14)
    assert abs(a - c) > 1e-6


@pytest.mark.parametrize('name', list(tune.GRIDS))
def test_the_first_configuration_is_the_frontier_run(name):
    from frontier import BENCHMARKS, train_flags
    recipe = vars(parse_args(train_flags(BENCHMARKS['fashion_mnist'], name))[0])
    first = vars(parse_args(tune.sweep_flags(name, tune.GRIDS[name][0][1]))[0])
    assert first == recipe


@pytest.mark.parametrize('name, options', [
    ('gradnorm', {'gn_weight': 1.0, 'gn_eps': 0.05}),
    ('pgd', {'attack_eps': 0.15, 'attack_step_size': 0.1}),
    ('fgsm', {'attack_eps': 0.075, 'attack_step_size': 0.05}),
    ('nfgsm', {'nfgsm_eps': 0.125})])
def test_a_configuration_trains_what_its_label_says(name, options):
    label = {'gradnorm': 'l1-e0.05', 'pgd': 'e0.15', 'fgsm': 'e0.075', 'nfgsm': 'e0.125'}[name]
    extra = dict(tune.GRIDS[name])[label]
    args = parse_args([*tune.sweep_flags(name, extra), '--dataset', 'fashion_mnist_holdout'])[0]
    assert args.gradreg == name and args.dataset == 'fashion_mnist_holdout'
    for key, value in options.items():
        assert getattr(args, key) == pytest.approx(value)


def _record(records, name, label, clean, pgd):
    path = tune.sweep_path(name, label, str(records))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump({'accuracy': {'clean_all': clean, 'pgd': pgd}}, open(path, 'w'))


def test_the_choice_is_the_best_mean_of_clean_and_robust_once_the_grid_is_complete(tmp_path):
    grid = [label for label, _ in tune.GRIDS['gradnorm']]
    _record(tmp_path, 'gradnorm', grid[0], 76.0, 64.0)  # 70.0
    _record(tmp_path, 'gradnorm', grid[1], 82.0, 60.0)  # 71.0: the best mean
    _record(tmp_path, 'gradnorm', grid[2], 90.0, 40.0)  # 65.0: the best clean
    assert tune.choose('gradnorm', str(tmp_path)) is None  # one configuration still to run
    _record(tmp_path, 'gradnorm', grid[3], 70.0, 68.0)  # 69.0: the best robust
    assert tune.choose('gradnorm', str(tmp_path)) == (grid[1], dict(tune.GRIDS['gradnorm'])[grid[1]])
    table = tune.report(str(tmp_path), str(tmp_path / 'none'))
    assert f'| gradnorm | {grid[1]} (chosen) | 82.0 | 60.0 | 71.0 |' in table


def test_a_tuned_row_is_checked_on_the_run_it_was_evaluated_on(monkeypatch):
    import frontier
    import frontier_checks
    chosen = dict(tune.GRIDS['fgsm'])['e0.15']
    calls = []
    monkeypatch.setattr(tune, 'choose', lambda name, records=tune.RECORDS: ('e0.15', chosen))
    monkeypatch.setattr(tune, 'train_run', lambda *args: calls.append(args) or 'last.pth.tar')
    checkpoint, flags = frontier_checks.trained(frontier.BENCHMARKS['fashion_mnist'], 'fgsm-tuned', 1, 'unused')
    assert checkpoint == 'last.pth.tar' and flags == tune.sweep_flags('fgsm', chosen)
    assert calls == [(flags, 1, tune.WORK, 'fgsm-tuned-s1', False)]
    assert parse_args(flags)[0].attack_eps == pytest.approx(0.15)


def test_the_recipe_configuration_winning_leaves_no_tuned_row(monkeypatch):
    monkeypatch.setattr(tune, 'choose', lambda name, records=tune.RECORDS: tune.GRIDS[name][0])
    assert tune.tuned_flags('pgd') is None
    with pytest.raises(SystemExit, match='pgd has no tuned row'):
        tune.train_tuned('pgd', 0)


def test_tuned_rows_are_refused_where_no_sweep_ran(capsys):
    import frontier_checks
    with pytest.raises(SystemExit):
        frontier_checks.main(['--dataset', 'digits', '--methods', 'gradnorm-tuned'])
    assert "tuned rows ['gradnorm-tuned'] exist for --dataset fashion_mnist only, not digits" in capsys.readouterr().err


def test_committed_tuned_rows_train_the_committed_choice():
    """A tuned row published beside the recipe rows is the configuration the committed sweep chooses."""
    import frontier
    from frontier_records import RESULTS, read_evaluation_record, record_path
    bench = frontier.BENCHMARKS['fashion_mnist']
    rows = frontier.tuned_methods(bench)
    for row in rows:
        name = frontier.base_method(row)
        if tune.choose(name) is None:  # the sweep is still running: its rows wait for it
            continue
        for seed in bench.seeds:
            path = record_path(bench.key, row, seed, bench.samples, RESULTS)
            if os.path.exists(path):
                assert read_evaluation_record(path)['train_flags'] == tune.tuned_flags(name), path


def test_a_tuned_row_of_an_earlier_choice_is_not_kept_silently(tmp_path, monkeypatch):
    from frontier_records import record_path
    chosen = dict(tune.GRIDS['fgsm'])['e0.15']
    monkeypatch.setattr(tune, 'choose', lambda name, records=tune.RECORDS: ('e0.15', chosen))
    path = record_path('fashion_mnist', 'fgsm-tuned', 0, 500, str(tmp_path))
    os.makedirs(os.path.dirname(path))
    json.dump({'train_flags': tune.sweep_flags('fgsm', dict(tune.GRIDS['fgsm'])['e0.125'])}, open(path, 'w'))
    with pytest.raises(SystemExit, match='but the sweep now chooses'):
        tune.tuned_runs('fgsm', str(tmp_path / 'work'), False, tune.RECORDS, str(tmp_path))
