"""The step-cost benchmark: one step of each method on a tiny model gives a well-formed table."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

from cost import pages, steps  # noqa: E402
from cost.methods import METHODS, REFERENCE  # noqa: E402
from cost.passes import PASSES, PassTimer, fd_floor  # noqa: E402
from cost.harness import make_model  # noqa: E402
from step_cost import build_parser, main  # noqa: E402
TINY = ['--model', 'test_resnet', '--act', 'gelu', '--img-size', '32', '-b', '2', '--num-classes', '10',
        '--steps', '1', '--warmup', '0']
ROW = re.compile(r'^(?P<method>[a-z0-9\-]+(?: \((?:compiled|eager)\))?)\s+(?P<passes>\d+(?:\.\d+)?)\s+(?P<rel_at>\d\.\d{3})\s+'
                 r'(?P<seconds>\d+\.\d{4})\s+(?P<ratio>\d+\.\d{3})\s+(?P<q1>\d+\.\d{3})–(?P<q3>\d+\.\d{3})\s+'
                 r'(?P<mem>\d+|—)\s+(?P<mem_rel>\d+\.\d{2}|—)$')


def _rows(text):
    return {m['method']: m for m in map(ROW.match, text.splitlines()) if m}


#: A paper method of each kind, a cheaper GradNorm and a literature one (each row costs a fresh process).
SOME = ['natural', 'gradnorm', 'gradnorm-fd', 'pgd', 'gradnorm-every2', 'cure']


def test_table_and_json_are_well_formed(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(TINY + ['--methods', *SOME, '--output', str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0].startswith('test_resnet (gelu), batch 2, 32px, cpu, amp none, BatchNorm eval mode')
    assert lines[1].split() == ['method', 'passes', 'rel.', 'AT', 's/step', 'rel.', 'rounds', 'peak', 'MB', 'mem/nat']
    rows = _rows(text)
    assert list(rows) == SOME  # one row per method, in order
    for name, row in rows.items():
        assert float(row['passes']) == METHODS[name].passes
        assert float(row['rel_at']) == round(METHODS[name].passes / METHODS[REFERENCE].passes, 3)
        assert float(row['seconds']) > 0
        assert row['mem'] != '—'  # peak memory measured in a fresh process per method
    assert rows[REFERENCE]['ratio'] == '1.000'
    assert rows['natural']['mem_rel'] == '1.00'
    fd_line = re.search(r'gradnorm-fd vs double backprop parameter gradient: cosine (\S+), relative error (\S+)', text)
    assert fd_line and float(fd_line[1]) > 0.9
    assert re.search(r'^warm-up: \d+ rounds, (steady state|memory still growing)', text, re.M)

    result = json.loads(out.read_text())
    assert [r['method'] for r in result['rows']] == SOME
    for r in result['rows']:
        assert len(r['times']) == 1 and r['seconds'] == r['times'][0] and len(r['page_faults']) == 1
        # one round: its ratio to PGD-3's step is the median and every quartile
        assert r['ratio'] == r['seconds'] / next(x['seconds'] for x in result['rows'] if x['method'] == REFERENCE)
        assert r['ratio_quartiles'] == [r['ratio']] * 3
    assert result['compiled_over_eager'] == {}
    assert result['fd_accuracy']['fd_step'] == 0.1
    assert 1 <= result['warmup_rounds'] <= 12 and isinstance(result['steady'], bool)


def test_profile_lists_the_operators_of_one_method(capsys):
    assert main(TINY + ['--profile', 'gradnorm', '--profile-rows', '5']) == 0
    text = capsys.readouterr().out
    assert text.startswith('gradnorm: 1 steps of test_resnet, batch 2, cpu, amp none')
    ops = [line.split()[0] for line in text.splitlines() if line.strip().startswith('aten::')]
    assert 1 <= len(ops) <= 5  # the costliest operators, as many as asked for
    assert 'Self CPU time total' in text


def test_compiled_variants_are_labelled_and_compared_to_eager_fd(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(TINY + ['--methods', 'natural', 'gradnorm', 'gradnorm-fd', 'pgd', '--torchcompile', 'aot_eager',
                        '--torchcompile-mode', 'default', '--no-memory', '--no-fd-check', '--steps', '2',
                        '--output', str(out)]) == 0
    text = capsys.readouterr().out
    rows = _rows(text)
    # double backprop cannot be compiled; FD and PGD-3 are also timed eager, each ratio is to PGD-3 of its kind
    assert list(rows) == ['natural (compiled)', 'gradnorm', 'gradnorm-fd (compiled)', 'gradnorm-fd (eager)',
                          'pgd (compiled)', 'pgd (eager)']
    assert rows['pgd (compiled)']['ratio'] == '1.000' and rows['pgd (eager)']['ratio'] == '1.000'
    assert all(r['mem'] == '—' for r in rows.values())
    for name in ('gradnorm-fd', 'pgd'):
        line = re.search(rf'^{name} compiled / eager, round by round: median (\S+), interquartile (\S+)–(\S+) '
                         r'\((faster|slower|no clear difference) compiled\)$', text, re.M)
        assert line and float(line[2]) <= float(line[1]) <= float(line[3])
    assert ', compile mode default, ' in text.splitlines()[0]
    result = json.loads(out.read_text())
    assert result['torchcompile'] == 'aot_eager' and result['torchcompile_mode'] == 'default'
    by_label = {r['method']: r for r in result['rows']}
    fd, pgd = by_label['gradnorm-fd (compiled)'], by_label['pgd (compiled)']
    round_ratios = sorted(t / r for t, r in zip(fd['times'], pgd['times']))
    assert fd['ratio'] == pytest.approx(sum(round_ratios) / 2)  # two rounds: the median is their mean
    low, high = round_ratios
    quarter = (high - low) / 4
    assert fd['ratio_quartiles'] == pytest.approx([low + quarter, low + 2 * quarter, low + 3 * quarter])
    speedups = [c / e for c, e in zip(fd['times'], by_label['gradnorm-fd (eager)']['times'])]
    assert result['compiled_over_eager']['gradnorm-fd'][1] == pytest.approx(sum(speedups) / 2)


@pytest.mark.parametrize('name,cycle', [('natural', 1), ('gradnorm', 1), ('gradnorm-every2', 2),
                                         ('gradnorm-fd-every2', 2), ('gradnorm-every4', 4)])
def test_a_timed_step_of_an_every_k_method_averages_over_its_k_steps(name, cycle):
    """A penalty every k-th step costs its mean over k steps: one timed sample alone would alternate
    between a penalized and a natural step, and the median of such samples is a natural step's."""
    args = build_parser().parse_args(TINY)
    runner = steps.StepRunner(name, METHODS[name], make_model(args), args, torch.device('cpu'), compiled=False)
    assert runner.task.step_cycle == cycle  # from the method's options (every), not the label
    calls = []
    original = runner.step
    runner.step = lambda: (calls.append(1), original())
    assert runner.timed_step() > 0 and len(calls) == cycle


def test_round_order_rotates():
    rotated = steps.rotated
    assert [rotated(['a', 'b', 'c'], r) for r in range(4)] == [
        ['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    assert rotated([], 3) == []


def test_round_ratio_quartiles_by_hand():
    _paired_quartiles = steps.paired_quartiles
    # rounds' ratios 2/1, 3/2, 1/1, 4/2, 6/4 -> sorted 1, 1.5, 1.5, 2, 2 -> quartiles 1.5, 1.5, 2
    assert _paired_quartiles([2, 3, 1, 4, 6], [1, 2, 1, 2, 4]) == (1.5, 1.5, 2.0)
    assert _paired_quartiles([3.0], [2.0]) == (1.5, 1.5, 1.5)


def test_script_entry_point_help():
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'step_cost.py'), '--help'],
                         capture_output=True, text=True)
    assert run.returncode == 0
    assert '--torchcompile' in run.stdout and 'PGD-3' in run.stdout


class _Runner:
    def step(self):
        pass


def _warm_up_with_faults(monkeypatch, faults_per_step, warmup, max_warmup, device='cpu'):
    counter = iter(range(10 ** 6))
    total = [0]

    def fake_faults():  # the runners' steps fault in the scripted numbers of pages, in order
        n = next(counter)
        if n % 2:  # after a step
            total[0] += faults_per_step[min(n // 2, len(faults_per_step) - 1)]
        return total[0]

    monkeypatch.setattr(pages, '_minor_page_faults', fake_faults)
    args = build_parser().parse_args(['--warmup', str(warmup), '--max-warmup', str(max_warmup)])
    runners = [('a', _Runner(), 'natural', False), ('b', _Runner(), 'pgd', False)]
    return steps.warm_up(args, torch.device(device), runners)


def test_cpu_warm_up_runs_until_no_step_faults_in_fresh_memory(monkeypatch):
    # rounds of two steps: (5000, 3000), (0, 900), (0, 0) -> steady after round 3
    faults = [5000, 3000, 0, 900, 0, 0, 0, 0]
    result = _warm_up_with_faults(monkeypatch, faults, warmup=1, max_warmup=12)
    assert result == {'warmup_rounds': 3, 'steady': True, 'last_warmup_page_faults': {'a': 0, 'b': 0}}
    assert _warm_up_with_faults(monkeypatch, faults, warmup=5, max_warmup=12)['warmup_rounds'] == 5
    capped = _warm_up_with_faults(monkeypatch, [4000] * 8, warmup=2, max_warmup=3)
    assert capped['warmup_rounds'] == 3 and capped['steady'] is False
    cuda = _warm_up_with_faults(monkeypatch, [4000] * 8, warmup=2, max_warmup=12, device='cuda')
    assert cuda['warmup_rounds'] == 2 and cuda['steady'] is None  # the caching allocator: fixed warm-up


def test_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--model', 'no_such_model', '--steps', '1', '--warmup', '0'])
    assert exit_info.value.code == 2
    assert "Unknown timm model 'no_such_model'" in capsys.readouterr().err


@pytest.mark.parametrize('argv,needle', [
    (['--torchcompile', '--torchcompile-mode', 'fastest'], "unknown torch.compile mode 'fastest'; valid: default"),
    (['--torchcompile-mode', 'max-autotune'], 'has no effect without --torchcompile'),
])
def test_bad_compile_mode_is_a_usage_error(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(TINY + argv + ['--steps', '1', '--warmup', '0'])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_channels_last_lays_out_model_and_batch_and_is_reported(capsys):
    args = build_parser().parse_args(TINY + ['--channels-last'])
    runner = steps.StepRunner('gradnorm', METHODS['gradnorm'], make_model(args), args, torch.device('cpu'),
                              compiled=False)
    assert runner.x.is_contiguous(memory_format=torch.channels_last) and not runner.x.is_contiguous()
    conv_weights = [m.weight for m in runner.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)

    assert main(TINY + ['--channels-last', '--methods', 'gradnorm', 'pgd', '--no-memory', '--no-fd-check']) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith('test_resnet (gelu), batch 2, 32px, cpu, amp none, BatchNorm eval mode, '
                                           'channels_last, torch ')
    assert list(_rows(text)) == ['gradnorm', 'pgd']


PASS_ROW = re.compile(r'^(?P<label>[a-z\- ()]+?)\s+(?P<eager>\d+\.\d)\s+(?P<compiled>\d+\.\d)\s+(?P<ratio>\d+\.\d{3})$')


def test_pass_costs_table_json_and_floor(tmp_path, capsys):
    out = tmp_path / 'passes.json'
    assert main(TINY + ['--passes', '--torchcompile', 'aot_eager', '--steps', '2', '--output', str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith('test_resnet (gelu), batch 2, 32px, cpu, amp none, BatchNorm eval mode, torch ')
    assert lines[0].endswith(': first-order passes, median ms of 2 rounds')
    rows = {m['label']: m for m in map(PASS_ROW.match, lines) if m}
    assert list(rows) == list(PASSES.values())
    result = json.loads(out.read_text())
    for kind in ('eager', 'compiled'):
        times, medians = result['times'][kind], result['seconds'][kind]
        for key in PASSES:
            assert len(times[key]) == 2 and medians[key] == pytest.approx(sum(times[key]) / 2)
            assert float(rows[PASSES[key]][kind]) == pytest.approx(medians[key] * 1000, abs=0.051)
        assert result['floor'][kind] == pytest.approx(fd_floor(medians))
    for key in PASSES:
        ratios = [c / e for c, e in zip(result['times']['compiled'][key], result['times']['eager'][key])]
        assert result['compiled_over_eager'][key] == pytest.approx(sum(ratios) / 2)
    floor = re.search(r'^gradnorm-fd floor, .+: eager (\S+), compiled (\S+)$', text, re.M)
    assert floor and float(floor[1]) == pytest.approx(result['floor']['eager'], abs=5e-4)
    assert lines[-1].startswith('warm-up: ') and result['warmup_rounds'] >= 1  # the timed runs' warm-up


def test_fd_floor_by_hand():
    # training 1 + 2 = 3 twice; PGD-3: three attack passes of 1 + 1 and one training pass: 6 / 9
    assert fd_floor({'forward': 1.0, 'backward': 2.0, 'attack_forward': 1.0, 'input_backward': 1.0}) == pytest.approx(2 / 3)
    # training 2 + 3 = 5 twice = 10; PGD-3: 3 · (1 + 0.5) + 5 = 9.5
    assert fd_floor({'forward': 2.0, 'backward': 3.0, 'attack_forward': 1.0, 'input_backward': 0.5}) == pytest.approx(
        10 / 9.5)


def test_pass_timer_leaves_no_gradients_and_restores_trainable_parameters():
    args = build_parser().parse_args(TINY + ['--passes'])
    timer = PassTimer(make_model(args), args, torch.device('cpu'), compiled=False)
    seconds = timer.round()
    assert set(seconds) == set(PASSES) and all(s > 0 for s in seconds.values())
    assert all(p.grad is None and p.requires_grad for p in timer.model.parameters())
    assert not timer.model.training  # BatchNorm in eval mode, as the timed runs


def test_passes_and_profile_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(TINY + ['--passes', '--profile', 'gradnorm'])
    assert exit_info.value.code == 2
    assert '--passes and --profile are two different reports' in capsys.readouterr().err


def test_pgd3_is_the_reference_beside_methods_whose_names_begin_with_pgd(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(TINY + ['--methods', 'pgd2', 'pgd', '--no-memory', '--no-fd-check', '--output', str(out)]) == 0
    rows = {r['method']: r for r in json.loads(out.read_text())['rows']}
    assert rows['pgd']['ratio'] == 1.0
    assert rows['pgd2']['ratio'] == rows['pgd2']['seconds'] / rows['pgd']['seconds']
