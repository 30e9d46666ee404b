"""The compatibility matrix, cell by cell: every task against every step option, measured as
benchmarks/compat_matrix.py measures them; a published ✓ must pass here, a published refusal be the same line."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

from compat_matrix import OPTIONS, TASKS as MATRIX_TASKS, Cell, format_matrix, measure_cell, set_floor_tolerances  # noqa: E402,E501

#: a training step of every task under every option, against a float64 step: minutes
pytestmark = pytest.mark.slow

#: every option (torch.compile's cells take about a minute together on a CPU, with a cold inductor cache)
OPTION_NAMES = list(OPTIONS)


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp('compat'))


TASKS = list(MATRIX_TASKS)


@pytest.fixture(scope='module')
def floors(work):
    """The cells the tolerances are set from: natural under each mixed precision (the rows' floors) and each
    task's plain float32 step, BatchNorm frozen and in train mode (the columns' floors)."""
    rows = [measure_cell('natural', OPTIONS[name], work) for name in OPTIONS if OPTIONS[name].mixed_precision]
    return rows + [measure_cell(task, OPTIONS[plain], work) for plain in ('float32', 'float32-train-bn')
                   for task in TASKS]


def _recorded() -> dict:
    import json
    with open(os.path.join(ROOT, 'results', 'compatibility.json')) as f:
        return {(c['task'], c['option']): Cell(**c) for c in json.load(f)['cells']}


RECORDED = _recorded()


@pytest.mark.parametrize('option', OPTION_NAMES)
@pytest.mark.parametrize('task', TASKS)
def test_a_step_option_trains_with_the_right_update_or_is_refused(task, option, work, floors):
    """A cell published as working trains within its tolerance here; a cell published as refused is refused with
    the same one line, before the first step."""
    cell = measure_cell(task, OPTIONS[option], work)
    recorded = RECORDED[(task, option)]
    if recorded.refused:
        assert cell.refused == recorded.refused and '\n' not in cell.refused
        return
    assert not cell.refused, cell.refused
    cells = [cell, *[f for f in floors if (f.task, f.option) != (cell.task, cell.option)]]
    set_floor_tolerances(cells)
    assert cell.works, (cell.error, cell.tolerance)
    if task == 'gradnorm' and OPTIONS[option].mixed_precision:  # no less exact than plain cross-entropy there
        natural = next(f for f in floors if f.task == 'natural' and f.option == option)
        assert cell.error <= natural.error, (cell.error, natural.error)


def test_the_published_matrix_has_no_cell_above_its_tolerance():
    assert [k for k, c in RECORDED.items() if not c.refused and not c.works and not c.floor] == []


@pytest.mark.parametrize('option', ['amp-fp16', 'amp-bf16'])
def test_trades_in_half_precision_is_refused_before_it_runs(option, work):
    cell = measure_cell('trades', OPTIONS[option], work)
    assert cell.refused == ('timm-train: error: --amp cannot be used with --gradreg trades: its KL term is driven by '
                            'the difference of two nearly equal predictions (the clean image and one within ε of it), '
                            'which half-precision logits round away (measured in docs/compatibility.md). Train TRADES '
                            'in float32 (on GPUs the step keeps TF32 matmuls, which timm turns on).')


def test_a_sign_tie_is_resolved_as_the_reference_resolves_it():
    """A component within rounding of zero takes the reference's sign (sign and abs, abs staying differentiable);
    a call whose signs differ in more than 1% of its components is left as it is."""
    import torch
    from compat_matrix import _Ties
    reference = torch.linspace(-1, 1, 400, dtype=torch.float64).reshape(4, 100)
    reference[1, 7] = 1e-12
    recorded = _Ties()
    with recorded:
        torch.sign(reference), reference.abs(), torch.sign(reference)
    run = reference.float().clone().requires_grad_(True)
    flipped = run.detach().clone()
    flipped[1, 7] = -1e-12
    wrong = -run.detach()
    replay = _Ties(recorded.signs)
    with replay:
        sign = torch.sign(flipped)
        absolute = (run.detach() * torch.where(torch.arange(400).reshape(4, 100) == 107, -1.0, 1.0)).requires_grad_()
        value = absolute.abs()
        untouched = torch.sign(wrong)
    assert sign[1, 7] == 1 and replay.ties == 2
    value.sum().backward()
    assert absolute.grad[1, 7] == 1  # d|x|/dx with the reference's sign
    assert torch.equal(untouched, torch.sign(wrong)) and replay.untied == 400  # every sign differs


def test_double_backprop_under_torch_compile_is_refused_with_the_alternative(work):
    cell = measure_cell('gradnorm', OPTIONS['torchcompile'], work)
    assert '--torchcompile' in cell.refused and '--gn-impl fd' in cell.refused


def test_a_wrong_step_is_caught():
    """The tolerance check fails a cell whose update is off by a dropped term, and the table shows it."""
    wrong = Cell('gradnorm', 'float32', error=0.3, tolerance=1e-5)
    assert not wrong.works and '✗' in format_matrix([wrong])
