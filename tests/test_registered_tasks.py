"""The generic contract of a gradreg task, checked for every registered task by being registered (as timm's
tests do for its optimizers): a third-party task registered by a plugin gets the same checks."""
import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from timm.task import ClassificationTask

from timm_gradreg import create_task, list_tasks
from timm_gradreg.tasks import FROM_TASK, fraction, get_task_class, task_info, task_options, task_parameters

from conftest import TinyNet


def _task(name, epoch=100.0, **kwargs):
    torch.manual_seed(0)
    task = create_task(name, TinyNet(), verbose=False, **kwargs)
    task.set_epoch(epoch)  # 100: past every warm-up
    return task


@pytest.mark.parametrize('name', list_tasks())
def test_a_task_is_a_timm_classification_task_with_its_name(name):
    task = _task(name)
    assert isinstance(task, ClassificationTask) and task.task_name == name == get_task_class(name).task_name


@pytest.mark.parametrize('name', list_tasks())
@pytest.mark.parametrize('soft', [False, True], ids=['labels', 'soft-targets'])
def test_a_training_step_gives_a_finite_loss_its_parts_and_gradients(name, soft, batch):
    x, y = batch
    task = _task(name)
    target = F.one_hot(y, 5).float() * 0.9 + 0.02 if soft else y
    out = task(x, target)
    assert out['loss'].dim() == 0 and torch.isfinite(out['loss']) and out['loss'].requires_grad
    assert out['output'].shape == (4, 5)
    for key, value in out.items():
        if key not in ('loss', 'output') and torch.is_tensor(value):
            assert not value.requires_grad, f'{key} is logged, so detached'
    out['loss'].backward()
    grads = [p.grad for p in task.trainable_module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('name', list_tasks())
def test_the_task_state_survives_a_checkpoint(name, batch):
    x, y = batch
    task = _task(name)
    task.set_epoch(37.25)
    task(x, y)
    state = task.get_task_state()
    restored = _task(name, epoch=0.0)  # a fresh task: its own position, not the saved one
    assert restored.get_task_state() != state
    restored.load_task_state(state)
    assert restored.get_task_state() == state and restored.epoch == 37.25


@pytest.mark.parametrize('name', list_tasks())
def test_every_option_sets_a_constructor_argument(name):
    parameters = task_parameters(name)  # the constructor's keyword arguments, through its base classes
    for option in task_options(name):
        assert option.kwarg in parameters, f'{option.flag} -> {option.kwarg} is not an argument of task {name}'
        if option.owner is not None:  # a part's option: an argument of the part it builds
            assert option.kwarg in inspect.signature(option.owner).parameters, (option.flag, option.owner)


def _constructor_default(option, task_cls):
    for klass in (option.owner or task_cls).__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(option.kwarg)
        if parameter is not None:
            return parameter.default
    raise AssertionError(f'{option.flag}: no constructor takes {option.kwarg}')


@pytest.mark.parametrize('name', list_tasks())
def test_the_parser_the_constructor_and_the_docstring_agree_on_every_default(name):
    """One option, one default: what timm-train's parser gives (and its help shows), what the constructor that
    takes it defaults to, and what the constructor's docstring says in its '(default)' where it says one."""
    from timm_gradreg.tasks.options import format_default
    from timm_gradreg.train import build_parser
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    task_cls = get_task_class(name)
    for option in task_options(name):
        expected = _constructor_default(option, task_cls)
        action = actions[option.dest]
        if option.default is not FROM_TASK:  # a flag shared by tasks whose constructors differ: its own default
            assert option.default in (None, expected), (option.flag, option.default, expected)
            continue
        assert action.default == expected, (option.flag, action.default, expected)
        if expected is not None:
            assert f'(default: {format_default(expected)})' in action.help, (option.flag, action.help)
        doc = inspect.getdoc(option.owner or task_cls) or ''
        said = re.search(rf'^\s*{option.kwarg}: .*?\(([^()]*)\)\.?$', doc, flags=re.M)
        if said and re.fullmatch(r'[\d./]+', said.group(1)):
            assert fraction(said.group(1)) == pytest.approx(expected, rel=1e-12), (option.flag, said.group(1))
        elif said and re.fullmatch(r"'\w+'", said.group(1)):
            assert said.group(1).strip("'") == expected, (option.flag, said.group(1), expected)


@pytest.mark.parametrize('name', list_tasks())
def test_torch_compile_is_refused_exactly_where_double_backprop_is_needed(name, batch):
    task = _task(name)
    if task_info(name).needs_double_backprop({}):
        with pytest.raises(RuntimeError, match=f'--torchcompile cannot be used with --gradreg {name}'):
            task.compile(backend='eager')
        return
    task.compile(backend='eager')  # a first-order task compiles its modules and still trains
    out = task(*batch)
    out['loss'].backward()
    assert torch.isfinite(out['loss']) and any(p.grad is not None for p in task.trainable_module.parameters())


def test_each_options_help_shows_the_default_the_task_has():
    from timm_gradreg.tasks import all_task_options
    from timm_gradreg.tasks.options import format_default
    for _, option, default in all_task_options():
        shown = option.argparse_kwargs(default)['help']
        if default is not None:
            assert shown.endswith(f'(default: {format_default(default)})'), (option.flag, shown)
            assert option.help.count('(default') == 0, f'{option.flag}: a default typed by hand in its help'
    assert format_default(4 / 255) == '4/255' and format_default(0.5) == '0.5' and format_default(True) == 'on'
