"""The compatibility matrix's cells that CI can afford: GradNorm (double backprop and finite differences) and PGD
against each step option, measured as benchmarks/compat_matrix.py measures them; refusals are one line."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

from compat_matrix import OPTIONS, Cell, format_matrix, measure_cell, set_floor_tolerances  # noqa: E402

#: options whose cells take seconds (torch.compile takes minutes on a CPU: the benchmark runs it)
FAST = [name for name in OPTIONS if name != 'torchcompile']


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp('compat'))


TASKS = ['gradnorm', 'gradnorm-fd', 'pgd']


@pytest.fixture(scope='module')
def floors(work):
    """The cells the tolerances are set from: natural under each mixed precision (the rows' floors) and each
    task's plain float32 step (the columns' floors)."""
    rows = [measure_cell('natural', OPTIONS[name], work) for name in OPTIONS if OPTIONS[name].mixed_precision]
    return rows + [measure_cell(task, OPTIONS['float32'], work) for task in TASKS]


#: cells above their tolerance in docs/compatibility.md whose cause is not established yet (strict: a fix shows)
OPEN = {('pgd', 'mixup'), ('gradnorm', 'bce-loss'), ('gradnorm-fd', 'bce-loss')}


@pytest.mark.parametrize('option', FAST)
@pytest.mark.parametrize('task', TASKS)
def test_a_step_option_trains_with_the_right_update_or_is_refused(task, option, work, floors, request):
    if (task, option) in OPEN:
        request.applymarker(pytest.mark.xfail(strict=True, reason='above its tolerance, cause not established'))
    cell = measure_cell(task, OPTIONS[option], work)
    if option == 'jsd-loss':
        assert cell.refused.startswith('timm-train: error: --aug-splits') and '\n' not in cell.refused
        return
    if task == 'gradnorm-fd' and OPTIONS[option].mixed_precision:
        assert cell.refused.startswith('timm-train: error: --gradnorm-impl fd cannot be used with --amp')
        return
    assert not cell.refused, cell.refused
    cells = [cell, *[f for f in floors if (f.task, f.option) != (cell.task, cell.option)]]
    set_floor_tolerances(cells)
    assert cell.works, (cell.error, cell.tolerance)
    if task == 'gradnorm' and OPTIONS[option].mixed_precision:  # no less exact than plain cross-entropy there
        natural = next(f for f in floors if f.task == 'natural' and f.option == option)
        assert cell.error <= natural.error, (cell.error, natural.error)


def test_double_backprop_under_torch_compile_is_refused_with_the_alternative(work):
    cell = measure_cell('gradnorm', OPTIONS['torchcompile'], work)
    assert '--torchcompile' in cell.refused and '--gradnorm-impl fd' in cell.refused


def test_a_wrong_step_is_caught():
    """The tolerance check fails a cell whose update is off by a dropped term, and the table shows it."""
    wrong = Cell('gradnorm', 'float32', error=0.3, tolerance=1e-5)
    assert not wrong.works and '✗' in format_matrix([wrong])


def test_the_published_matrix_is_its_record_rendered():
    """docs/compatibility.md is results/compatibility.json as format_matrix writes it (no hand edits)."""
    import json
    with open(os.path.join(ROOT, 'results', 'compatibility.json')) as f:
        cells = [Cell(**cell) for cell in json.load(f)['cells']]
    with open(os.path.join(ROOT, 'docs', 'compatibility.md')) as f:
        assert f.read() == format_matrix(cells)
