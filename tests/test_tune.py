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
