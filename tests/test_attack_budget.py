"""The rule: a budget that cannot attack (steps or restarts below 1, ε or step at most 0) is refused, for every
attack and evaluation option of every tool and for every library entry point, never reported as robustness.

The lists of budget options below are written from the rule, not read from the parsers; a completeness test
makes sure no parser grows an ε / steps / restarts option that is missing from them."""
import re

import pytest
import timm
import torch

from timm_gradreg.analyze import AnalysisConfig
from timm_gradreg.cli.analyze import build_parser as analyze_parser
from timm_gradreg.cli.evaluate import build_parser as eval_parser
from timm_gradreg.train.launch import gradreg_parser as launch_parser
from timm_gradreg.core.budget import AttackBudgetError
from timm_gradreg.evaluate import PGDSweepConfig, SanityContext, run_autoattack, worst_case_correct
from timm_gradreg.tasks import create_task
from timm_gradreg.train.args import build_parser as train_parser
from timm_gradreg.train.validate import RobustValidationConfig

RADIUS, COUNT = ('0', '-1/255'), ('0', '-3')

#: tool -> {flag: the values that cannot attack}
TRAIN_BUDGETS = {
    '--attack-eps': RADIUS, '--attack-step-size': RADIUS, '--attack-steps': COUNT,
    '--trades-eps': RADIUS, '--trades-step-size': RADIUS, '--trades-steps': COUNT,
    '--gradalign-eps': RADIUS, '--gradalign-step-size': RADIUS, '--gn-eps': RADIUS,
    '--nfgsm-eps': RADIUS, '--nfgsm-step-size': RADIUS, '--elle-eps': RADIUS,
    '--adv-val-eps': RADIUS, '--adv-val-step-size': RADIUS, '--adv-val-samples': COUNT,
    '--adv-val-steps': ('-1',),  # 0 turns robust validation off
}
BUDGETS = {
    'timm-train': (train_parser, TRAIN_BUDGETS),
    'gradreg-launch': (launch_parser, TRAIN_BUDGETS),
    'gradreg-eval': (eval_parser, {
        '--steps': COUNT, '--restarts': COUNT, '--aa-eps': RADIUS, '--sanity-eps': RADIUS, '--sanity-steps': COUNT,
        '--sanity-samples': COUNT, '--square-queries': COUNT, '--num-samples': COUNT,
        '--eps': ('-1/255',), '--step-size-factor': ('0', '-1')}),  # --eps 0 is the sweep's clean point
    'gradreg-analyze': (analyze_parser, {
        '--eps': RADIUS, '--pgd-steps': COUNT, '--linearity-eps': RADIUS, '--num-samples': COUNT}),
}
#: options whose names look like a budget but are not one: what each is instead
NOT_BUDGETS = {'--opt-eps': "the optimizer's ε", '--bn-eps': "BatchNorm's ε", '--grad-accum-steps': 'accumulation',
               '--max-skipped-steps': 'a stopping rule', '--gn-uniform-eps': 'a noise width, 0 allowed',
               '--gn-noise-std': 'a noise width', '--cure-h': "CURE's finite-difference step"}
_BUDGET_NAME = re.compile(r'(eps|steps|step-size|restarts|queries|samples)$')


def _rows():
    for tool, (build, budgets) in BUDGETS.items():
        for flag, values in budgets.items():
            for value in values:
                yield pytest.param(tool, flag, value, id=f'{tool} {flag} {value}')


@pytest.mark.parametrize('tool', list(BUDGETS))
def test_every_budget_like_option_is_listed(tool):
    build, budgets = BUDGETS[tool]
    flags = {s for a in build()._actions for s in a.option_strings if s.startswith('--')}
    budget_like = {f for f in flags if _BUDGET_NAME.search(f)} - set(NOT_BUDGETS)
    budget_like -= {'--train-num-samples', '--val-num-samples', '--gn-warmup-epochs'}
    assert budget_like <= set(budgets), f'{tool}: budget options missing from the rule: {budget_like - set(budgets)}'


@pytest.mark.parametrize('tool,flag,value', list(_rows()))
def test_a_budget_that_cannot_attack_is_refused(tool, flag, value, capsys):
    build, _ = BUDGETS[tool]
    parser = build()
    argv = [f'{flag}={value}']
    if tool == 'gradreg-eval' and flag == '--eps':
        argv = ['--eps', '0', value]
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv) if tool != 'gradreg-launch' else parser.parse_known_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f'argument {flag}' in err and value in err, err


def test_a_config_budget_that_cannot_attack_is_refused(tmp_path, capsys):
    from timm_gradreg.train import parse_args
    config = tmp_path / 'c.yaml'
    config.write_text('gradreg: pgd\nattack_steps: 0\n')
    with pytest.raises(SystemExit):
        parse_args(['-c', str(config)])
    assert "config key 'attack_steps': 0 cannot attack" in capsys.readouterr().err


def test_a_sweep_of_zero_radii_is_refused():
    with pytest.raises(AttackBudgetError):
        PGDSweepConfig(eps=(0.0,))
    PGDSweepConfig(eps=(0.0, 4 / 255))  # the clean point beside a real one is fine


@pytest.fixture(scope='module')
def model():
    return timm.create_model('test_resnet', num_classes=4, act_layer='gelu').eval()


LIBRARY = {
    'sweep steps 0': lambda m: PGDSweepConfig(steps=0),
    'sweep restarts 0': lambda m: PGDSweepConfig(restarts=0),
    'sweep step factor 0': lambda m: PGDSweepConfig(step_size_factor=0.0),
    'worst case steps 0': lambda m: worst_case_correct(m, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 8 / 255,
                                                       steps=0, step_size=1 / 255),
    'worst case restarts 0': lambda m: worst_case_correct(m, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 8 / 255,
                                                          steps=2, step_size=1 / 255, restarts=0),
    'autoattack eps 0': lambda m: run_autoattack(m, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), eps=0.0),
    'checklist eps 0': lambda m: SanityContext(m, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), eps=0.0),
    'checklist steps 0': lambda m: SanityContext(m, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), eps=0.1, steps=0),
    'validation eps 0': lambda m: RobustValidationConfig(steps=10, eps=0.0),
    'validation steps -1': lambda m: RobustValidationConfig(steps=-1),
    'analysis eps 0': lambda m: AnalysisConfig(eps=0.0),
    'analysis steps 0': lambda m: AnalysisConfig(pgd_steps=0),
    'pgd task eps 0': lambda m: create_task('pgd', m, eps=0.0),
    'pgd task steps 0': lambda m: create_task('pgd', m, steps=0),
    'fgsm task step 0': lambda m: create_task('fgsm', m, step_size=0.0),
    'trades steps 0': lambda m: create_task('trades', m, steps=0),
    'gradalign eps 0': lambda m: create_task('gradalign', m, eps=0.0),
}


@pytest.mark.parametrize('name', list(LIBRARY))
def test_the_library_refuses_it_too(name, model):
    with pytest.raises(AttackBudgetError, match='cannot attack|attacks nothing|turn robust validation off'):
        LIBRARY[name](model)


def test_robust_validation_off_is_still_allowed():
    assert not RobustValidationConfig(steps=0, eps=0.0).enabled
