"""The frontier benchmark: --quick trains, evaluates, times, leaves its records and writes its three outputs; the
statistics against hand-computed cases."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_frontier_writes_json_markdown_and_plot(tmp_path):
    pytest.importorskip('pyautoattack')
    pytest.importorskip('matplotlib')
    out, records = tmp_path / 'frontier', tmp_path / 'records'
    argv = [sys.executable, os.path.join(ROOT, 'benchmarks', 'frontier.py'), '--quick', '--methods', 'natural',
            'gradnorm-every2', '--output', str(out), '--records', str(records), '--work', str(tmp_path / 'work')]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                         env={**os.environ, 'TIMM_GRADREG_DATA': str(tmp_path / 'data')})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.load(open(out / 'frontier.json'))['datasets']['digits']
    assert set(data['methods']) == {'natural', 'gradnorm-every2'}
    for method in data['methods'].values():
        assert 0 <= method['autoattack']['mean'] <= method['pgd50']['mean'] + 1e-9 <= 100.0 + 1e-9
        assert method['autoattack']['n'] == 16 and len(method['autoattack']['values']) == 1
        assert method['cost']['trained']['median'] > 0 and method['cost']['proxy']['median'] > 0
        assert method['passes'] > 0
    assert data['methods']['natural']['passes'] == 2 and data['methods']['gradnorm-every2']['passes'] == 3.5
    assert data['methods']['pgd' if 'pgd' in data['methods'] else 'natural']['cost']['trained']['runs']
    # the records: one per evaluation, one per timing run, in the records folder (the work folder is not published)
    assert sorted(os.listdir(records / 'digits' / 'eval')) == ['gradnorm-every2-s0-n16.json', 'natural-s0-n16.json']
    cost = json.load(open(records / 'digits' / 'cost' / 'run-0.json'))
    assert set(cost['settings']) == {'trained', 'proxy'} and cost['versions']['torch']
    assert (out / 'frontier.png').stat().st_size > 1000
    assert '| gradnorm-every2 |' in (out / 'frontier.md').read_text()
    # resumable: a second run redoes nothing and gives the same scores
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                           env={**os.environ, 'TIMM_GRADREG_DATA': str(tmp_path / 'data')})
    assert again.returncode == 0 and '$ ' not in again.stdout
    assert json.load(open(out / 'frontier.json'))['datasets']['digits']['methods'] == data['methods']


def _frontier_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('frontier', os.path.join(ROOT, 'benchmarks', 'frontier.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_interval_covers_the_sampling_spread_and_decides_the_target():
    frontier = _frontier_module()
    at = [{'robust': {i: i % 10 < 8 for i in range(1000)}} for _ in range(3)]  # 80% robust, all seeds alike
    same = frontier.ratio_interval(at, at)
    assert same[0] == pytest.approx(1.0) and same[1] == pytest.approx(1.0)  # the same images: no sampling spread
    half = [{'robust': {i: i % 10 < 4 for i in range(1000)}} for _ in range(3)]  # 40%: ratio 0.5
    low, high = frontier.ratio_interval(half, at)
    # ratio of two proportions on 1000 shared images: 0.5 ± about 1.96·0.03 (delta method, paired)
    assert low < 0.5 < high and 0.44 < low and high < 0.56
    assert frontier.verdict((low, high)) == 'below'
    assert frontier.verdict((0.92, 0.99)) == 'above' and frontier.verdict((0.85, 0.95)) == 'across'
    seeds = [{'robust': {i: i % 10 < k for i in range(1000)}} for k in (7, 8, 9)]  # seed spread widens it
    low, high = frontier.ratio_interval(seeds, at)
    assert low < 0.92 and high > 1.08  # the seeds alone span 0.875 to 1.125
    # the seeds' part takes Student's t on 2 degrees of freedom (4.3027), not the normal's 1.96: seeds 70, 80, 90%
    # against AT's alike seeds at 80% (no images' part between them beyond the bootstrap's), cv² 0.01/0.64 over 3
    assert (high - low) / 2 >= 4.3027 * (0.01 / 0.64 / 3) ** 0.5


def _fake_evaluation(work, name, seed, n, robust_share, robust_below=None):
    """An evaluation folder as gradreg-eval leaves it: results.json and the per-image AutoAttack flags
    (``robust_share`` % of the images, only among the first ``robust_below`` if given)."""
    import torch
    folder = work / 'eval' / f'{name}-s{seed}-n{n}'
    folder.mkdir(parents=True)
    flags = (torch.arange(n) % 100 < robust_share) & (torch.arange(n) < (robust_below or n))
    (folder / 'results.json').write_text(json.dumps({'config': {'subset_seed': 0, 'split': 'validation'}, 'models': [{
        'label': name, 'clean_accuracy': 90.0, 'num_samples': n,
        'sweep': {'eps': [0.0, 0.1], 'accuracy': [90.0, 80.0], 'steps': 50, 'losses': ['ce', 'dlr'], 'restarts': 1},
        'autoattack': {'eps': 0.1, 'version': 'standard', 'robust_accuracy': 100.0 * flags.float().mean().item()}}]}))
    clean = torch.arange(n) % 10 < 9
    torch.save({'indices': torch.arange(n), 'clean': clean, 'sweep_robust': torch.stack([clean, flags]),
                'aa_clean': clean, 'aa_robust': flags}, folder / f'flags_{name}.pt')


def test_study_in_progress_takes_the_larger_sample_once_it_has_the_seeds_and_names_what_is_missing(tmp_path):
    frontier = _frontier_module()
    bench = frontier.BENCHMARKS['fashion_mnist']  # base 3 seeds × 500 images, near 5 seeds × 1000
    for seed in (0, 1, 2):
        _fake_evaluation(tmp_path, 'pgd', seed, 500, 70)
        _fake_evaluation(tmp_path, 'pgd', seed, 1000, 70, robust_below=500)  # 70% of the first 500, 35% of all
    for seed in (0, 1):
        _fake_evaluation(tmp_path, 'gradnorm', seed, 500, 62)  # 0.89 of AT: near the target
        _fake_evaluation(tmp_path, 'natural', seed, 500, 0)
    _fake_evaluation(tmp_path, 'gradnorm', 0, 1000, 62)  # one seed at 1000 is not enough to switch
    records = tmp_path / 'records'
    scores, missing = frontier.evaluated_scores(bench, ['pgd', 'gradnorm', 'natural'], [0, 1, 2], [0, 1, 2, 3, 4],
                                                500, 1000, str(tmp_path), str(records))
    # each evaluation left its record, which holds each image's results
    record = json.loads((records / 'fashion_mnist' / 'eval' / 'gradnorm-s0-n500.json').read_text())
    assert record['autoattack'] == ''.join('1' if i % 100 < 62 else '0' for i in range(500))
    assert record['train_flags'][:2] == ['-c', 'fmnist/gradnorm'] and record['evaluation']['samples'] == 500
    assert [r['num_samples'] for r in scores['pgd']] == [1000] * 3
    assert [r['num_samples'] for r in scores['gradnorm']] == [500] * 2
    assert scores['gradnorm'][0]['autoattack'] == pytest.approx(62.0)
    assert sorted(missing) == sorted(['gradnorm-s2', 'natural-s2', 'pgd-s3-n1000', 'pgd-s4-n1000',
                                      'gradnorm-s1-n1000', 'gradnorm-s2-n1000', 'gradnorm-s3-n1000',
                                      'gradnorm-s4-n1000'])
    # the ratio of a 500-image method to AT's 1000-image runs is taken on the 500 images they share
    assert scores['pgd'][0]['autoattack'] == pytest.approx(35.0)
    assert frontier.paired_ratio(scores['gradnorm'], scores['pgd']) == pytest.approx(62 / 70)
    low, high = frontier.ratio_interval(scores['gradnorm'], scores['pgd'])
    assert low < 62 / 70 < high


def test_projected_interval_scales_the_image_and_seed_parts_by_hand():
    frontier = _frontier_module()
    at = [{'robust': {i: i % 10 < 8 for i in range(1000)}} for _ in range(3)]
    half = [{'robust': {i: i % 10 < 4 for i in range(1000)}} for _ in range(3)]
    # seeds alike: only the images' part, which at the same counts is the bootstrap's interval ...
    low, high = frontier.ratio_interval(half, at)
    p_low, p_high = frontier.projected_interval(half, at, seeds=3, images=1000)
    assert p_low + p_high == pytest.approx(1.0) and p_high - p_low == pytest.approx(high - low, rel=0.1)
    # ... and on four times the images half as wide
    q_low, q_high = frontier.projected_interval(half, at, seeds=5, images=4000)
    assert q_high - q_low == pytest.approx((p_high - p_low) / 2, rel=1e-9)
    # images without end: only the seeds' part, the delta method by hand. Seeds at 70, 80, 90% (mean 80,
    # variance 0.01, cv² 0.01/0.64) against AT's alike seeds at 80%: ratio 1, half-width t(4)·sqrt(cv²/5), Student's
    # t 0.975 quantile on 4 degrees of freedom 2.7764 (a table's value)
    seeds = [{'robust': {i: i % 10 < k for i in range(1000)}} for k in (7, 8, 9)]
    low, high = frontier.projected_interval(seeds, at, seeds=5, images=10 ** 12)
    assert (high - low) / 2 == pytest.approx(2.7764 * (0.01 / 0.64 / 5) ** 0.5, rel=1e-4)
    assert frontier.verdict((low, high)) == 'across'
    # one seed has no seed spread to scale: no projection
    assert all(v != v for v in frontier.projected_interval(seeds[:1], at, seeds=5, images=1000))


def test_a_panel_without_at_or_timings_plots_without_a_legend_warning(tmp_path):
    pytest.importorskip('matplotlib')
    import warnings
    frontier = _frontier_module()
    scores = {'mean': 72.0, 'std': 0.0, 'values': [72.0]}
    data = {'title': 'one method', 'eps': 0.1, 'pareto': [],
            'methods': {'trades': {'autoattack': scores, 'cost': {}}}}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        frontier.plot({'fashion_mnist': data}, str(tmp_path / 'one.png'))
    assert (tmp_path / 'one.png').stat().st_size > 0


def test_a_tuned_row_sits_beside_its_method_with_the_methods_step_cost(tmp_path):
    import shutil
    frontier = _frontier_module()
    source = os.path.join(ROOT, 'results', 'frontier', 'fashion_mnist')
    records = tmp_path / 'records' / 'fashion_mnist'
    shutil.copytree(os.path.join(source, 'eval'), records / 'eval')
    shutil.copytree(os.path.join(source, 'cost'), records / 'cost')
    for seed in (0, 1, 2):  # the recipe's own runs, as if the sweep had chosen another configuration
        record = json.loads((records / 'eval' / f'gradnorm-s{seed}-n500.json').read_text())
        record['method'] = 'gradnorm-tuned'
        (records / 'eval' / f'gradnorm-tuned-s{seed}-n500.json').write_text(json.dumps(record))
    out = tmp_path / 'out'
    frontier.main(['--dataset', 'fashion_mnist', '--evaluated-only', '--records', str(tmp_path / 'records'),
                   '--output', str(out), '--work', str(tmp_path / 'work')])
    methods = json.loads((out / 'frontier.json').read_text())['datasets']['fashion_mnist']['methods']
    tuned, recipe = methods['gradnorm-tuned'], methods['gradnorm']
    assert tuned['autoattack']['values'] == recipe['autoattack']['values']
    assert tuned['ratio_to_at'] == recipe['ratio_to_at'] and tuned['passes'] == recipe['passes'] == 5
    assert tuned['cost'] == recipe['cost'] and tuned['cost']['trained']['median'] > 0
    assert 'gradnorm-tuned' in (out / 'frontier.md').read_text()
