"""timm-train arguments: timm names, strict YAML configs, fractions, refused combinations, recipes parse."""
import os

import pytest
import timm
import yaml

from timm_gradreg.recipes import RECIPE_DIR
from timm_gradreg.tasks import create_task, fraction, task_info, task_kwargs
from timm_gradreg.train.args import build_parser, parse_args

from helpers import STOCK_TRAIN_PY_FILES, training_recipes

RECIPES = training_recipes()


def _config(tmp_path, cfg):
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_timm_argument_names_are_all_there():
    dests = {a.dest for a in build_parser()._actions}
    for name in ('data_dir', 'dataset', 'train_split', 'val_split', 'num_classes', 'input_size', 'img_size', 'mean',
                 'std', 'interpolation', 'crop_pct', 'model', 'pretrained', 'initial_checkpoint', 'resume',
                 'model_kwargs', 'drop', 'drop_path', 'opt', 'lr', 'lr_base', 'weight_decay', 'clip_grad',
                 'clip_mode', 'sched', 'warmup_epochs', 'warmup_lr', 'epochs', 'grad_accum_steps', 'aa', 'reprob',
                 'mixup', 'cutmix', 'smoothing', 'model_ema', 'model_ema_decay', 'amp', 'amp_dtype', 'channels_last',
                 'torchcompile', 'workers', 'output', 'experiment', 'log_interval', 'checkpoint_hist', 'eval_metric',
                 'device', 'seed', 'batch_size', 'validation_batch_size', 'sched_on_updates', 'min_lr'):
        assert name in dests, name
    for name in ('gradreg', 'gn_ce_weight', 'gn_weight', 'gn_eps', 'gn_sigma', 'gn_warmup_epochs', 'gn_inputs',
                 'attack_eps', 'attack_steps', 'attack_step_size', 'attack_warmup_epochs', 'edge_temperature',
                 'edge_weight_growth', 'edge_weight_cap', 'swap_activations', 'bn_eval', 'adv_val_steps',
                 'adv_val_eps'):
        assert name in dests, name


def test_fractions_and_sigma():
    assert fraction('4/255') == pytest.approx(4 / 255)
    assert fraction(0.5) == 0.5
    assert fraction('8/255/3') == pytest.approx(8 / 255 / 3)
    args, _ = parse_args(['--gradreg', 'gradnorm', '--gn-eps', '8/255', '--gn-sigma', 'channel'])
    assert args.gn_eps == pytest.approx(8 / 255) and args.gn_sigma == 'channel'
    kwargs = task_kwargs('gradnorm', args)
    assert kwargs['eps'] == pytest.approx(8 / 255) and kwargs['sigma'] == 'channel'


def test_yaml_sets_defaults_and_flags_win(tmp_path):
    cfg = _config(tmp_path, {'lr': '3e-4', 'epochs': '7', 'gn_eps': '2/255', 'input_size': [3, 32, 32],
                             'mean': ['0.5', 0.4, 0.3], 'amp': True, 'model_kwargs': {'act_layer': 'gelu'},
                             'gradreg': 'gradnorm', 'batch-size': 16})
    args, text = parse_args(['-c', cfg, '--epochs', '9'])
    assert args.lr == 3e-4 and args.epochs == 9 and args.gn_eps == pytest.approx(2 / 255)
    assert args.input_size == [3, 32, 32] and args.mean == [0.5, 0.4, 0.3] and args.amp
    assert args.model_kwargs == {'act_layer': 'gelu'} and args.batch_size == 16
    assert yaml.safe_load(text)['epochs'] == 9


def test_unknown_yaml_key_names_the_closest_valid_one(tmp_path, capsys):
    err = _error(capsys, ['-c', _config(tmp_path, {'lr_bse': 0.1})])
    assert "unknown key 'lr_bse'" in err and "did you mean 'lr_base'" in err
    err = _error(capsys, ['-c', _config(tmp_path, {'gn_wieght': 1.0})])
    assert "did you mean 'gn_weight'" in err


@pytest.mark.parametrize('cfg,needle', [
    ({'lr': 'fast'}, "'lr'"),
    ({'input_size': 224}, 'expected a list'),
    ({'input_size': [3, 224]}, 'expected 3 values'),
    ({'gradreg': 'gradnrom'}, 'is not one of'),
    ({'amp': 'yes'}, 'expected true or false'),
    ({'gn_eps': '4/0'}, 'fraction'),
    ({'model_kwargs': 'act_layer=gelu'}, 'mapping'),
])
def test_bad_yaml_values_are_refused(tmp_path, capsys, cfg, needle):
    assert needle in _error(capsys, ['-c', _config(tmp_path, cfg)])


def test_missing_or_broken_config_file(tmp_path, capsys):
    assert 'does not exist' in _error(capsys, ['-c', str(tmp_path / 'nope.yaml')])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('- just\n- a list\n')
    assert 'must be a mapping' in _error(capsys, ['-c', str(bad)])


@pytest.mark.parametrize('argv,needle', [
    (['--gradreg', 'gradnorm', '--torchcompile'], 'double backward'),
    (['--gradreg', 'edge', '--torchcompile'], 'Train without --torchcompile'),
    (['--eval-metric', 'advtop1', '--adv-val-steps', '0'], '--adv-val-steps > 0'),
    (['--eval-metric', 'top3'], 'choose from top1, top5, loss, advtop1'),
    (['--bn-eval', '--sync-bn'], 'pick one'),
    (['--epochs', '3', '--stop-epoch', '5'], '--stop-epoch must be in 1..'),
    (['--gradreg', 'pgd', '--torchcompile-mode', 'max-autotune'], 'has no effect without --torchcompile'),
    (['--gradreg', 'pgd', '--torchcompile', '--torchcompile-mode', 'fastest'],
     "unknown torch.compile mode 'fastest'; valid: default"),
])
def test_incompatible_combinations_are_refused(capsys, argv, needle):
    assert needle in _error(capsys, argv)


@pytest.mark.parametrize('argv', [
    ['--gradreg', 'pgd', '--torchcompile', '--torchcompile-mode', 'max-autotune'],
    ['--gradreg', 'gradnorm', '--gn-impl', 'fd', '--torchcompile'],
    ['--gradreg', 'natural', '--torchcompile'],
])
def test_first_order_methods_compile(argv):
    args, _ = parse_args(argv)
    assert not task_info(args.gradreg).needs_double_backprop(task_kwargs(args.gradreg, args))


@pytest.mark.parametrize('recipe', RECIPES, ids=[os.path.relpath(r, RECIPE_DIR) for r in RECIPES])
def test_every_recipe_builds_its_task(recipe):
    args, _ = parse_args(['-c', recipe])
    task = create_task(args.gradreg, timm.create_model('test_resnet', num_classes=3), **task_kwargs(args.gradreg, args))
    assert task.task_name == args.gradreg  # create_task refuses options its constructor does not take




def _stock_keys(revision):
    """The option names (args.yaml keys) of timm's own train.py at ``revision`` (tests/fixtures/timm_train)."""
    import importlib.util
    path = STOCK_TRAIN_PY_FILES[revision]
    spec = importlib.util.spec_from_file_location(f'stock_train_{revision.replace(".", "_")}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted({a.dest for a in module.parser._actions} - {'help', 'config'})


@pytest.mark.parametrize('revision', sorted(STOCK_TRAIN_PY_FILES))
def test_every_stock_train_py_option_is_accepted(revision):
    dests = {a.dest for a in build_parser()._actions}
    assert [k for k in _stock_keys(revision) if k not in dests] == []


def test_a_key_of_a_newer_train_py_points_to_gradreg_launch(tmp_path, capsys):
    path = tmp_path / 'newer.yaml'
    path.write_text('zz_future_option: 1\n')
    message = _error(capsys, ['-c', str(path)])
    assert "unknown key 'zz_future_option'" in message and 'gradreg-launch' in message


def test_stock_args_yaml_with_a_gradreg_section_trains(tmp_path):
    """An args.yaml with every stock key at its default (as train.py writes it) loads; with a gradreg section
    and the run's own settings added, it trains."""
    from helpers import tiny_train_argv, write_image_folder
    from timm_gradreg.train import Trainer
    defaults = vars(build_parser().parse_args([]))
    stock = {k: defaults[k] for k in _stock_keys('main')}
    stock['device'] = 'cpu'
    path = tmp_path / 'args.yaml'
    path.write_text(yaml.safe_dump({**stock, 'gradreg': 'gradnorm', 'gn_weight': 0.5, 'gn_warmup_epochs': 0}))
    folder = write_image_folder(tmp_path / 'data')
    args, text = parse_args(['-c', str(path)] + tiny_train_argv(folder, tmp_path, 'stock', '--epochs', '1', '-b', '12'))
    assert args.gradreg == 'gradnorm' and args.gn_weight == 0.5 and args.aug_splits == 0
    results = Trainer(args, text).fit()
    assert results[0]['train']['penalty'] > 0


@pytest.mark.parametrize('flag,value', [('--aug-splits', '2'), ('--tta', '2'), ('--naflex-loader', None),
                                        ('--kd-model-name', 'resnet18'), ('--train-img-sizes', '64')])
def test_stock_options_timm_train_does_not_run_are_refused_by_name(capsys, flag, value):
    message = _error(capsys, [flag] + ([value] if value else []))
    assert f'{flag}' in message and ('gradreg-launch' in message or 'not part of' in message)
    assert 'unrecognized arguments' not in message


def test_help_shows_the_gradreg_options_first(capsys):
    from timm_gradreg.cli.train import main
    with pytest.raises(SystemExit):
        main(['--help'])
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('Gradient regularization (gradreg)'))
    timm_group = next(i for i, line in enumerate(lines) if line.startswith('Dataset parameters'))
    assert first < 30 < timm_group, (first, timm_group)


@pytest.mark.parametrize('method,recipe,experiment', [('gradnorm', 'demo/digits_gradnorm', 'digits_gradnorm'),
                                                      ('trades', 'demo/digits_natural', 'digits_trades')])
def test_the_demo_set_without_a_config_takes_the_demo_recipe(method, recipe, experiment, caplog):
    from timm_gradreg.train import parse_args
    with caplog.at_level('INFO'):
        args, _ = parse_args(['--gradreg', method, '--dataset', 'demo/digits', '--epochs', '3'])
    assert args.config == recipe and args.model == 'test_resnet' and args.input_size == [3, 32, 32]
    assert args.opt == 'adamw' and args.gradreg == method and args.epochs == 3  # flags still win
    assert args.experiment == experiment
    assert f'the settings of recipe {recipe} apply' in caplog.text


def test_renamed_flags_keep_their_old_names_on_the_command_line_and_in_configs(tmp_path):
    """--gradnorm-impl and --fd-step (and their config keys) are --gn-impl and --gn-fd-step."""
    new, _ = parse_args(['--gradreg', 'gradnorm', '--gn-impl', 'fd', '--gn-fd-step', '0.25'])
    old, _ = parse_args(['--gradreg', 'gradnorm', '--gradnorm-impl', 'fd', '--fd-step', '0.25'])
    path = tmp_path / 'old.yaml'
    path.write_text(yaml.safe_dump({'gradreg': 'gradnorm', 'gradnorm_impl': 'fd', 'fd_step': 0.25}))
    config, _ = parse_args(['-c', str(path)])
    for args in (new, old, config):
        assert task_kwargs('gradnorm', args) == {**task_kwargs('gradnorm', new), 'impl': 'fd', 'fd_step': 0.25}
        assert args.gn_impl == 'fd' and args.gn_fd_step == 0.25


def test_an_option_of_a_part_not_chosen_is_not_passed():
    """--gn-noise-std has a default for --gn-inputs noise; other inputs do not take it."""
    args, _ = parse_args(['--gradreg', 'gradnorm'])
    assert 'noise_std' not in task_kwargs('gradnorm', args) and 'fd_step' not in task_kwargs('gradnorm', args)
    args, _ = parse_args(['--gradreg', 'gradnorm', '--gn-inputs', 'noise', '--gn-noise-std', '0.05'])
    assert task_kwargs('gradnorm', args)['noise_std'] == 0.05
