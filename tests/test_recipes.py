"""The shipped recipes against the paper's Appendix G, value by value, each dry-run as timm-train resolves it."""
import glob
import os

import pytest
import yaml

from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.cli.train import main as train_main
from timm_gradreg.recipes import RECIPE_DIR

RECIPES = sorted(glob.glob(os.path.join(RECIPE_DIR, '*', '*.yaml')))
EPS4 = 4 / 255

# Appendix G.2.1 (Swin-B PGD-3 AT, Liu et al. 2023) as the resolved configuration must read it
APPENDIX_G = {
    'opt': 'adamw', 'opt_eps': 1e-8, 'momentum': 0.9, 'weight_decay': 0.05, 'clip_grad': None, 'sched': 'cosine',
    'warmup_epochs': 5, 'min_lr': 1e-5, 'lr_base_size': 512, 'lr_base_scale': 'linear',
    'input_size': [3, 224, 224], 'crop_pct': 0.875, 'interpolation': 'bicubic', 'train_interpolation': 'bicubic',
    'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'color_jitter': 0.4, 'aa': 'rand-m9-mstd0.5-inc1',
    'reprob': 0.25, 'remode': 'pixel', 'recount': 1, 'mixup': 0.8, 'cutmix': 1.0, 'mixup_prob': 1.0,
    'mixup_switch_prob': 0.5, 'mixup_mode': 'batch', 'smoothing': 0.1, 'drop': 0.0, 'drop_path': 0.0,
    'model_ema': True, 'model_ema_decay': 0.9998, 'train_in_eval_mode': True,
    'adv_val_steps': 10, 'adv_val_eps': EPS4, 'adv_val_step_size': 1 / 255, 'eval_metric': 'advtop1',
}
AT = {'gradreg': 'pgd', 'lr_base': 1.25e-3, 'warmup_lr': 1e-6, 'attack_eps': EPS4, 'attack_steps': 3,
      'attack_step_size': 8 / 255 / 3, 'attack_warmup_epochs': 5, 'attack_warmup_per': 'epoch',
      'attack_random_start': True, 'task_kwargs': {'eps': EPS4, 'step_size': 8 / 255 / 3, 'steps': 3}}
GRADNORM = {'gradreg': 'gradnorm', 'lr_base': 0.625e-3, 'warmup_lr': 1e-5, 'gn_eps': EPS4, 'gn_sigma': 0.225,
            'gn_warmup_epochs': 5}
SWIN = {'model': 'swin_base_patch4_window7_224', 'pretrained': True, 'epochs': 100, 'decay_epochs': 30}
RESNET = {'model': 'resnet50', 'epochs': 50, 'decay_epochs': 15, 'global_batch_size': 256}
FINETUNE = {'lr_base': 2.5e-5, 'warmup_lr': 1e-5, 'decay_epochs': 9, 'gn_warmup_epochs': 0,
            'initial_checkpoint': 'output/imagenet/swin_base_gradnorm/last.pth.tar'}

# recipe -> (world size of the paper's run, expected resolved values, paper result quoted in its header)
EXPECTED = {
    'imagenet/swin_base_advtrain.yaml': (8, {**APPENDIX_G, **SWIN, **AT, 'global_batch_size': 512,
                                             'lr': 1.25e-3}, ('77.20', '56.12')),
    'imagenet/swin_base_gradnorm.yaml': (7, {**APPENDIX_G, **SWIN, **GRADNORM, 'gn_ce_weight': 0.8, 'gn_weight': 1.2,
                                             'global_batch_size': 532, 'lr': 0.625e-3 * 532 / 512},
                                         ('77.78', '51.58')),
    'imagenet/swin_base_edge.yaml': (7, {**APPENDIX_G, **SWIN, 'gradreg': 'edge', 'lr_base': 0.625e-3,
                                         'warmup_lr': 1e-5, 'global_batch_size': 532, 'edge_weight_start': 1.0,
                                         'edge_weight_growth': 0.09, 'edge_weight_cap': 19.0, 'edge_temperature': 0.5,
                                         'edge_teacher': 'official', 'edge_cosine': 'batch_rms'},
                                     ('76.80', '35.02')),
    'imagenet/swin_base_gradnorm_lambda.yaml': (7, {**APPENDIX_G, **GRADNORM, **FINETUNE, 'epochs': 30,
                                                    'gn_ce_weight': 0.6, 'gn_weight': 1.4}, ('76.28', '52.48')),
    'imagenet/swin_base_gradnorm_noise.yaml': (7, {**APPENDIX_G, **GRADNORM, **FINETUNE, 'epochs': 10,
                                                   'gn_inputs': 'noise', 'gn_noise_std': EPS4, 'gn_ce_weight': 0.8,
                                                   'gn_weight': 1.2}, ('77.84', '52.04')),
    'imagenet/swin_base_gradnorm_pgd_inputs.yaml': (8, {**APPENDIX_G, **GRADNORM, **FINETUNE, 'epochs': 1,
                                                        'warmup_epochs': 0, 'gn_inputs': 'pgd', 'attack_steps': 3,
                                                        'initial_checkpoint':
                                                            'output/imagenet/swin_base_advtrain/last.pth.tar'},
                                                    ('76.62', '56.49')),
}
for _act, (_clean, _aa) in {'relu': ('16.94', '6.82'), 'gelu': ('60.34', '30.00'), 'silu': ('61.84', '30.58')}.items():
    _start = {'initial_checkpoint': f'output/imagenet/resnet50_{_act}_finetune/last.pth.tar'}
    EXPECTED[f'imagenet/resnet50_{_act}_gradnorm.yaml'] = (4, {**APPENDIX_G, **RESNET, **GRADNORM, **_start,
                                                               'gn_ce_weight': 0.5, 'gn_weight': 0.5,
                                                               'lr': 0.625e-3 / 2}, (_clean, _aa))
    EXPECTED[f'imagenet/resnet50_{_act}_advtrain.yaml'] = (4, {**APPENDIX_G, **RESNET, **AT, **_start,
                                                               'lr': 1.25e-3 / 2}, ())
    EXPECTED[f'imagenet/resnet50_{_act}_finetune.yaml'] = (4, {
        'model': 'resnet50', 'pretrained': True, 'epochs': 3, 'gradreg': 'natural', 'train_in_eval_mode': True,
        'swap_activations': None if _act == 'relu' else _act}, ())
CIFAR = {'model': 'preact_resnet18_cifar', 'model_kwargs': {'act_layer': 'gelu'}, 'num_classes': 10,
         'input_size': [3, 32, 32], 'global_batch_size': 128, 'lr_base': 1.25e-3, 'lr': 1.25e-3 / 4,
         'warmup_lr': 1e-6, 'mixup': 0.8, 'cutmix': 1.0, 'smoothing': 0.1}
_from_natural = {'initial_checkpoint': 'output/cifar10/preact_resnet18_natural_e50/last.pth.tar', 'epochs': 300}
EXPECTED.update({
    'cifar10/preact_resnet18_natural.yaml': (1, {**CIFAR, 'gradreg': 'natural', 'epochs': 100, 'decay_epochs': 15,
                                                 'model_ema': False}, ('89.38',)),
    'cifar10/preact_resnet18_gradnorm.yaml': (1, {**CIFAR, **_from_natural, 'gradreg': 'gradnorm', 'gn_ce_weight': 0.8,
                                                  'gn_weight': 1.2, 'decay_epochs': 25, 'clip_grad': 1.0},
                                              ('77.74', '46.66', '39.60')),
    'cifar10/preact_resnet18_advtrain.yaml': (1, {**CIFAR, **_from_natural, 'gradreg': 'pgd', 'decay_epochs': 15,
                                                  'clip_grad': None}, ('69.81', '48.85', '42.05')),
})
EVAL_RECIPES = {'imagenet/swin_base_natural.yaml': ({'model': ['swin_base_patch4_window7_224'], 'pretrained': True,
                                                     'num_samples': 5000, 'autoattack': True, 'aa_eps': EPS4},
                                                    ('84.19',))}


def _name(path):
    return os.path.relpath(path, RECIPE_DIR)


def _dry_run(main, argv, capsys):
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _assert_values(resolved, expected):
    for key, value in expected.items():
        if isinstance(value, float):
            assert resolved[key] == pytest.approx(value, rel=1e-9), key
        elif isinstance(value, dict):
            for k, v in value.items():
                assert resolved[key][k] == pytest.approx(v) if isinstance(v, float) else resolved[key][k] == v, \
                    (key, k)
        else:
            assert resolved[key] == value, key


def test_every_recipe_is_pinned():
    assert {_name(r) for r in RECIPES} - {r for r in (*EXPECTED, *EVAL_RECIPES)} == \
        {'demo/digits_natural.yaml', 'demo/digits_gradnorm.yaml', 'demo/digits_advtrain.yaml'}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_recipe_matches_the_paper(name, capsys):
    world, expected, results = EXPECTED[name]
    path = os.path.join(RECIPE_DIR, name)
    resolved = _dry_run(train_main, ['-c', path, '--dry-run', '--world-size', str(world)], capsys)
    _assert_values(resolved, expected)
    header = ''.join(line for line in open(path) if line.startswith('#'))
    for number in results:
        assert number in header, f'{name}: the paper result {number} is not in the header'
    assert 'torchrun' in header or 'timm-train' in header  # how to run it


@pytest.mark.parametrize('name', sorted(EVAL_RECIPES))
def test_evaluation_recipe(name, capsys):
    expected, results = EVAL_RECIPES[name]
    path = os.path.join(RECIPE_DIR, name)
    _assert_values(_dry_run(eval_main, ['-c', path, '--dry-run'], capsys), expected)
    header = ''.join(line for line in open(path) if line.startswith('#'))
    assert all(number in header for number in results) and 'gradreg-eval -c' in header


def test_a_recipe_on_fewer_gpus_gets_the_linearly_scaled_lr(capsys):
    path = os.path.join(RECIPE_DIR, 'imagenet', 'swin_base_advtrain.yaml')
    resolved = _dry_run(train_main, ['-c', path, '--dry-run', '--world-size', '4', '--grad-accum-steps', '2'], capsys)
    assert resolved['global_batch_size'] == 512 and resolved['lr'] == pytest.approx(1.25e-3)
    resolved = _dry_run(train_main, ['-c', path, '--dry-run', '--world-size', '4'], capsys)
    assert resolved['global_batch_size'] == 256 and resolved['lr'] == pytest.approx(1.25e-3 / 2)


def test_packaged_recipe_by_name_from_any_folder_and_a_local_file_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train_main(['-c', 'demo/digits_gradnorm', '--dry-run']) == 0
    assert 'gn_weight: 2.0' in capsys.readouterr().out
    (tmp_path / 'demo').mkdir()
    (tmp_path / 'demo' / 'digits_gradnorm').write_text('gradreg: gradnorm\ngn_weight: 0.25\n')
    assert train_main(['-c', 'demo/digits_gradnorm', '--dry-run']) == 0
    assert 'gn_weight: 0.25' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train_main(['-c', 'demo/digits_gradnorn', '--dry-run'])
    err = capsys.readouterr().err
    assert ("'demo/digits_gradnorn' does not exist as a file or a packaged recipe; did you mean 'demo/digits_gradnorm'"
            in err)


def test_list_recipes_shows_each_with_its_paper_result(capsys):
    with pytest.raises(SystemExit) as exit:
        train_main(['--list-recipes'])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for path in RECIPES:
        assert os.path.relpath(path, RECIPE_DIR)[:-len('.yaml')] in out
    assert 'paper: clean 77.78, AutoAttack 51.58 at 4/255' in out  # Table 2, Swin-B GradNorm
    assert 'gradreg-eval -c imagenet/swin_base_natural' in out
