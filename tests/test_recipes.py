"""The shipped recipes against the paper, value by value, each resolved as timm-train resolves it at the paper's
process count.

Every expected value below is typed from its source, named beside it: the paper's Appendix G (as quoted in the
project's SPEC §10), Appendix E, the table captions, and — where the paper is silent — the official repository's
configs and run scripts (adriarm/robustness_input_gradients). Nothing here is read from the recipe files.
"""
import glob
import os

import pytest
import yaml

from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.cli.train import main as train_main
from timm_gradreg.recipes import RECIPE_DIR

RECIPES = sorted(glob.glob(os.path.join(RECIPE_DIR, '*', '*.yaml')))
EPS4 = 4 / 255

# Appendix G.2.1, Swin-B PGD-3 AT (= Liu et al. 2023): optimizer, schedule, augmentation, EMA, evaluation mode
G21_COMMON = {
    'opt': 'adamw', 'opt_eps': 1e-8, 'momentum': 0.9, 'weight_decay': 0.05, 'clip_grad': None, 'sched': 'cosine',
    'warmup_epochs': 5, 'min_lr': 1e-5, 'lr_base_size': 512, 'lr_base_scale': 'linear',
    'input_size': [3, 224, 224], 'crop_pct': 0.875, 'interpolation': 'bicubic', 'train_interpolation': 'bicubic',
    'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'color_jitter': 0.4, 'aa': 'rand-m9-mstd0.5-inc1',
    'reprob': 0.25, 'remode': 'pixel', 'recount': 1, 'mixup': 0.8, 'cutmix': 1.0, 'mixup_prob': 1.0,
    'mixup_switch_prob': 0.5, 'mixup_mode': 'batch', 'smoothing': 0.1, 'drop': 0.0, 'drop_path': 0.0,
    'model_ema': True, 'model_ema_decay': 0.9998,
    # the official training-time robust validation (adversarial_training.py validate: PGD-10, 4/255, 1/255)
    'adv_val_steps': 10, 'adv_val_eps': EPS4, 'adv_val_step_size': 1 / 255, 'eval_metric': 'advtop1',
}
# G.2.1: "training done in evaluation mode" (SPEC §2: the official runs keep the model in eval mode)
EVAL_MODE = {'train_in_eval_mode': True}
# G.2.1 attack: ε 4/255, 3 steps of 8/255/3, uniform random start, the STEP warmed up over 5 epochs per epoch;
# the official adv_generator keeps the iterate of highest batch-mean loss (replace_best, attack_criterion mixup)
PGD3 = {'gradreg': 'pgd', 'attack_eps': EPS4, 'attack_steps': 3, 'attack_step_size': 8 / 255 / 3,
        'attack_warmup_epochs': 5, 'attack_warmup_per': 'epoch', 'attack_random_start': True,
        'attack_select': 'batch',
        'task_kwargs': {'eps': EPS4, 'step_size': 8 / 255 / 3, 'steps': 3, 'select': 'batch'}}
# G.2.1 schedule of Swin-B: 100 epochs, decay_epochs 30, lrb 1.25e-3, warmup_lr 1e-6, global batch 512
SWIN_AT = {'model': 'swin_base_patch4_window7_224', 'pretrained': True, 'epochs': 100, 'decay_epochs': 30,
           'lr_base': 1.25e-3, 'warmup_lr': 1e-6, 'global_batch_size': 512, 'lr': 1.25e-3}
# G.2.2 Swin-B GradNorm: as AT but λ_CE 0.8, λ_GN 1.2, lrb 0.625e-3, global batch 532, warmup_lr 1e-5,
# λ_GN warmed up linearly over 5 epochs; ε 4/255, σ 0.225 (SPEC §2)
SWIN_GN = {'model': 'swin_base_patch4_window7_224', 'pretrained': True, 'epochs': 100, 'decay_epochs': 30,
           'lr_base': 0.625e-3, 'warmup_lr': 1e-5, 'global_batch_size': 532, 'lr': 0.625e-3 * 532 / 512,
           'gradreg': 'gradnorm', 'gn_ce_weight': 0.8, 'gn_weight': 1.2, 'gn_eps': EPS4, 'gn_sigma': 0.225,
           'gn_warmup_epochs': 5}
# G.1.1 ResNet-50 AT: the Swin-B AT recipe shortened to 50 epochs (decay_epochs 15), global batch 256, lrb 1.25e-3,
# warmup_lr 1e-6, min_lr 1e-5, the same augmentation, EMA and attack
RESNET_AT = {'model': 'resnet50', 'epochs': 50, 'decay_epochs': 15, 'lr_base': 1.25e-3, 'warmup_lr': 1e-6,
             'global_batch_size': 256, 'lr': 1.25e-3 * 256 / 512}
# G.1.2 ResNet-50 GradNorm: "Same as above" — every value of G.1.1 — with λ_CE 0.5, λ_GN 0.5, λ_GN warmed up over
# 5 epochs (the G.2.2 changes, lrb halved, batch 532, warmup_lr 1e-5, do not apply)
RESNET_GN = {**RESNET_AT, 'gradreg': 'gradnorm', 'gn_ce_weight': 0.5, 'gn_weight': 0.5, 'gn_eps': EPS4,
             'gn_sigma': 0.225, 'gn_warmup_epochs': 5}
# Fine-tunes of the Table-2 models (configs_finetuning/*.yaml, run_train_pareto.sh on 7 processes): lrb 2.5e-5,
# 38 x 7 x 2 = 532, warmup_lr 1e-5, warm-up 5 epochs, decay 9; clip_grad null as the paper's recipes
FINETUNE = {'model': 'swin_base_patch4_window7_224', 'initial_checkpoint':
            'output/imagenet/swin_base_gradnorm/last.pth.tar', 'lr_base': 2.5e-5, 'warmup_lr': 1e-5,
            'warmup_epochs': 5, 'decay_epochs': 9, 'global_batch_size': 532, 'lr': 2.5e-5 * 532 / 512,
            'gradreg': 'gradnorm', 'gn_eps': EPS4, 'gn_sigma': 0.225}
# Edge regularization (SPEC §3 / Appendix E): weight 1 + 0.09 per epoch capped at 19, temperature 0.5, no CE weight
EDGE = {'gradreg': 'edge', 'edge_weight_start': 1.0, 'edge_weight_growth': 0.09, 'edge_weight_cap': 19.0,
        'edge_temperature': 0.5, 'edge_teacher': 'official', 'edge_cosine': 'batch_rms'}
# Table 9 (CIFAR-10, configs_cifar/*, run_train_cifar.sh on 2 processes): PreActResNet-18 + GELU, 128 per process
CIFAR = {'model': 'preact_resnet18_cifar', 'model_kwargs': {'act_layer': 'gelu'}, 'num_classes': 10,
         'input_size': [3, 32, 32], 'global_batch_size': 256, 'lr_base': 1.25e-3, 'lr': 1.25e-3 * 256 / 512,
         'warmup_lr': 1e-6, 'mixup': 0.8, 'cutmix': 1.0, 'smoothing': 0.1}
# Table 9 caption: natural training 50 epochs; AT and GradNorm 300 epochs, here from the natural run's end
_FROM_NATURAL = {'initial_checkpoint': 'output/cifar10/preact_resnet18_natural/last.pth.tar', 'epochs': 300}
# ResNet-50 + GELU edge (configs_logit/logitsobel_resnet_gelu_hard05*.yaml, run_train.sh on 7 processes): seed 42;
# the logit and saliency script (adversarial_training_logit.py) trains in model.train(), the loss-gradient one
# (adversarial_training_logit_loss.py) in model.eval()
RESNET_EDGE = {**EDGE, 'model': 'resnet50', 'initial_checkpoint': 'output/imagenet/resnet50_gelu_finetune/last.pth.tar',
               'epochs': 100, 'decay_epochs': 30, 'lr_base': 1.25e-3, 'warmup_lr': 1e-6, 'clip_grad': 1.0,
               'global_batch_size': 266, 'lr': 1.25e-3 * 266 / 512, 'seed': 42}

# recipe -> (the paper run's process count, expected resolved values)
EXPECTED = {
    'imagenet/swin_base_advtrain.yaml': (8, {**G21_COMMON, **EVAL_MODE, **SWIN_AT, **PGD3}),
    'imagenet/swin_base_gradnorm.yaml': (7, {**G21_COMMON, **EVAL_MODE, **SWIN_GN}),
    # Appendix E: "requiring 128 epochs rather than 100"; the rest of the GradNorm optimization (config)
    'imagenet/swin_base_edge.yaml': (7, {**G21_COMMON, **EVAL_MODE, **SWIN_GN, **EDGE, 'epochs': 128}),
    # Appendix B / Fig. 12 (configs_train/advtrain1_swinb.yaml): the AT recipe, one step of 1.25·4/255
    'imagenet/swin_base_fgsm.yaml': (8, {**G21_COMMON, **EVAL_MODE, **SWIN_AT, 'gradreg': 'fgsm',
                                         'attack_eps': EPS4, 'attack_step_size': 1.25 * EPS4, 'attack_select': 'batch',
                                         'attack_warmup_epochs': 5}),
    # Fig. 5: (2 − λ)·CE + λ·GN, 30-epoch fine-tune, no warm-up (alpha [1, 0, 1]); the best λ 1.4
    'imagenet/swin_base_gradnorm_lambda.yaml': (7, {**G21_COMMON, **FINETUNE, 'epochs': 30, 'gn_ce_weight': 0.6,
                                                    'gn_weight': 1.4, 'gn_warmup_epochs': 0}),
    # Table 8 "None": the 30-epoch GradNorm fine-tune on clean images (gradnorm_swinb_control.yaml)
    'imagenet/swin_base_gradnorm_control.yaml': (7, {**G21_COMMON, **FINETUNE, 'epochs': 30, 'gn_ce_weight': 0.8,
                                                     'gn_weight': 1.2, 'gn_warmup_epochs': 0, 'gn_inputs': 'clean'}),
    # Section 5.2: the green channel weighted x2 (gradnorm_swinb_green.yaml, DBPChannel 1/2/1)
    'imagenet/swin_base_gradnorm_green.yaml': (7, {**G21_COMMON, **FINETUNE, 'epochs': 30, 'gn_ce_weight': 0.8,
                                                   'gn_weight': 1.2, 'gn_channel_weights': [1, 2, 1]}),
    # Table 8: Gaussian noise σ 4/255, 10-epoch fine-tune from GradNorm
    'imagenet/swin_base_gradnorm_noise.yaml': (7, {**G21_COMMON, **FINETUNE, 'epochs': 10, 'gn_inputs': 'noise',
                                                   'gn_noise_std': EPS4, 'gn_ce_weight': 0.8, 'gn_weight': 1.2}),
    # Table 8: GradNorm on PGD-3 inputs, 1 epoch from AT (advgradnorm_swinb_finetuning.yaml: 30-epoch schedule,
    # λ 1.333/0.667 with alpha [0, 0.2, 1], 64 x 2 per process, full attack step, replace_best per batch)
    'imagenet/swin_base_gradnorm_pgd_inputs.yaml': (8, {
        **G21_COMMON, 'initial_checkpoint': 'output/imagenet/swin_base_advtrain/last.pth.tar', 'epochs': 30,
        'stop_epoch': 1, 'lr_base': 2.5e-5, 'warmup_lr': 1e-5, 'warmup_epochs': 5, 'decay_epochs': 9,
        'global_batch_size': 1024, 'lr': 2.5e-5 * 1024 / 512, 'gradreg': 'gradnorm', 'gn_inputs': 'pgd',
        'gn_ce_weight': 1.333, 'gn_weight': 0.667, 'gn_warmup_epochs': 5, 'attack_steps': 3,
        'attack_step_size': 8 / 255 / 3, 'attack_warmup_epochs': 0, 'attack_select': 'batch'}),
    'cifar10/preact_resnet18_natural.yaml': (2, {**CIFAR, 'gradreg': 'natural', 'epochs': 50, 'model_ema': False}),
    # configs_cifar/gradnorm_prn18_gelu.yaml: λ 0.8/1.2, decay 25, clip_grad 1.0
    'cifar10/preact_resnet18_gradnorm.yaml': (2, {**CIFAR, **_FROM_NATURAL, 'gradreg': 'gradnorm', 'gn_ce_weight': 0.8,
                                                  'gn_weight': 1.2, 'decay_epochs': 25, 'clip_grad': 1.0}),
    # configs_cifar/advtrain_prn18_gelu.yaml: decay 15, clip_grad null, attack_criterion mixup; the attack the config
    # leaves at adversarial_training_cifar.py's defaults: --attack-eps 8/255, --attack-step 16/255/3, --attack-it 3
    'cifar10/preact_resnet18_advtrain.yaml': (2, {**CIFAR, **_FROM_NATURAL, 'gradreg': 'pgd', 'decay_epochs': 15,
                                                  'clip_grad': None, 'attack_select': 'batch', 'attack_eps': 8 / 255,
                                                  'attack_step_size': 16 / 255 / 3, 'attack_steps': 3}),
}
for _act in ('relu', 'gelu', 'silu'):
    _start = {'initial_checkpoint': f'output/imagenet/resnet50_{_act}_finetune/last.pth.tar'}
    EXPECTED[f'imagenet/resnet50_{_act}_gradnorm.yaml'] = (4, {**G21_COMMON, **EVAL_MODE, **RESNET_GN, **_start})
    EXPECTED[f'imagenet/resnet50_{_act}_advtrain.yaml'] = (4, {**G21_COMMON, **EVAL_MODE, **RESNET_AT, **PGD3,
                                                               **_start})
    # SPEC §10: timm's pretrained ResNet-50, activation swapped, fine-tuned 3 epochs with CE (official on 4 processes)
    EXPECTED[f'imagenet/resnet50_{_act}_finetune.yaml'] = (4, {
        'model': 'resnet50', 'pretrained': True, 'epochs': 3, 'gradreg': 'natural', 'train_in_eval_mode': True,
        'swap_activations': None if _act == 'relu' else _act})
for _suffix, _target, _eval in (('', 'logit', False), ('_saliency', 'saliency', False), ('_loss', 'loss', True)):
    EXPECTED[f'imagenet/resnet50_gelu_edge{_suffix}.yaml'] = (7, {**G21_COMMON, **RESNET_EDGE, 'edge_target': _target,
                                                                  'train_in_eval_mode': _eval})

# The result each recipe claims, typed from the paper: (where, numbers). Tables 2, 4, 5, 8, 9 and Fig. 5.
CLAIMS = {
    'imagenet/swin_base_natural.yaml': ('Table 2', '84.19'),
    'imagenet/swin_base_advtrain.yaml': ('Table 2', '77.20', '56.12'),
    'imagenet/swin_base_gradnorm.yaml': ('Table 2', '77.78', '51.58'),
    'imagenet/swin_base_edge.yaml': ('Table 5', '76.80', '35.02'),
    'imagenet/swin_base_gradnorm_lambda.yaml': ('Figure 5', '76.28', '52.48'),
    'imagenet/swin_base_gradnorm_control.yaml': ('Table 8', '77.76', '51.66'),
    'imagenet/swin_base_gradnorm_noise.yaml': ('Table 8', '77.84', '52.04'),
    'imagenet/swin_base_gradnorm_pgd_inputs.yaml': ('Table 8', '76.62', '56.49'),
    'imagenet/swin_base_gradnorm_green.yaml': ('Section 5.2', '77.38', '51.38'),
    'imagenet/swin_base_fgsm.yaml': ('Appendix B', 'Figure 12'),
    'imagenet/resnet50_relu_gradnorm.yaml': ('Table 4', '16.94', '6.82'),
    'imagenet/resnet50_gelu_gradnorm.yaml': ('Table 4', '60.34', '30.00'),
    'imagenet/resnet50_silu_gradnorm.yaml': ('Table 4', '61.84', '30.58'),
    'imagenet/resnet50_relu_advtrain.yaml': ('Table 4', '59.46', '31.60'),
    'imagenet/resnet50_gelu_advtrain.yaml': ('Table 4', '59.34', '32.64'),
    'imagenet/resnet50_silu_advtrain.yaml': ('Table 4', '60.58', '33.40'),
    'imagenet/resnet50_gelu_edge.yaml': ('Appendix E', 'Figure 14', '128 epochs rather than 100'),
    'imagenet/resnet50_gelu_edge_saliency.yaml': ('Appendix E', 'Figure 14'),
    'imagenet/resnet50_gelu_edge_loss.yaml': ('Appendix E', 'Figure 14'),
    'cifar10/preact_resnet18_natural.yaml': ('Table 9', '89.38'),
    'cifar10/preact_resnet18_gradnorm.yaml': ('Table 9', '77.74', '46.66', '39.60'),
    'cifar10/preact_resnet18_advtrain.yaml': ('Table 9', '69.81', '48.85', '42.05'),
}
# A claim that belongs to another experiment must not appear in the header
WRONG_CLAIMS = {'imagenet/swin_base_edge.yaml': ('Table 2',)}

# Table 2, Swin-B natural, evaluated as the official eval_white_box.py: the fixed 5,000-image list, crop 0.875,
# AutoAttack at each ε of Table 2 (1, 2 and 4/255)
EVAL_RECIPES = {'imagenet/swin_base_natural.yaml': {
    'model': ['swin_base_patch4_window7_224'], 'pretrained': True, 'subset': 'official', 'crop_pct': 0.875,
    'autoattack': True, 'aa_eps': [1 / 255, 2 / 255, 4 / 255]}}
# the project's own benchmarks, with measured results rather than the paper's
DEMO = {f'{folder}/{name}.yaml' for folder, names in (('demo', ('digits_natural', 'digits_gradnorm', 'digits_advtrain')),
                                                     ('fmnist', ('natural', 'gradnorm', 'advtrain')))
        for name in names}


def _name(path):
    return os.path.relpath(path, RECIPE_DIR).replace(os.sep, '/')


def _header(name):
    return ''.join(line for line in open(os.path.join(RECIPE_DIR, name), encoding='utf-8') if line.startswith('#'))


def _dry_run(main, argv, capsys):
    """A recipe's dry run, the memory prediction on (a training recipe's dry run ends with it)."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith('# ')]
    memory = [line for line in comments if line.startswith(('# predicted peak per GPU: ', '# fits in ',
                                                            '# does not fit in '))]
    if main is train_main:
        assert memory and memory[0].startswith('# predicted peak per GPU: '), comments[-3:]
    return yaml.safe_load(out), [line for line in comments if line not in memory]


def _assert_values(resolved, expected, name):
    for key, value in expected.items():
        got = resolved[key]
        if isinstance(value, dict):
            for k, v in value.items():
                assert got[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (name, key, k)
        elif isinstance(value, list):
            assert got == [pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for v in value], (name, key)
        elif isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-9), (name, key, got)
        else:
            assert got == value, (name, key, got)


def test_every_recipe_is_pinned_and_claims_its_result():
    names = {_name(r) for r in RECIPES}
    assert names - set(EXPECTED) - set(EVAL_RECIPES) == DEMO
    steps = {f'imagenet/resnet50_{act}_finetune.yaml' for act in ('relu', 'gelu', 'silu')}  # no result of their own
    assert set(CLAIMS) == names - DEMO - steps


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_recipe_matches_the_paper_at_its_process_count(name, capsys):
    world, expected = EXPECTED[name]
    resolved, notes = _dry_run(train_main, ['-c', os.path.join(RECIPE_DIR, name), '--dry-run', '--world-size',
                                            str(world)], capsys)
    _assert_values(resolved, expected, name)
    assert resolved['world_size'] == world
    assert not notes, notes  # at the paper's process count the global batch is the paper's


@pytest.mark.parametrize('name', sorted(CLAIMS))
def test_header_claims_the_papers_result(name):
    header = _header(name)
    for token in CLAIMS[name]:
        assert token in header, f'{name}: {token!r} is not in the header'
    for token in WRONG_CLAIMS.get(name, ()):
        assert token not in header, f'{name}: the header claims {token!r}'
    assert 'torchrun' in header or 'timm-train' in header or 'gradreg-eval' in header  # how to run it
    assert 'official alpha [0, 0, 1]' not in open(os.path.join(RECIPE_DIR, name)).read()  # would switch GN off


@pytest.mark.parametrize('name', sorted(EVAL_RECIPES))
def test_evaluation_recipe(name, capsys):
    resolved, _ = _dry_run(eval_main, ['-c', os.path.join(RECIPE_DIR, name), '--dry-run'], capsys)
    _assert_values(resolved, EVAL_RECIPES[name], name)
    assert 'gradreg-eval -c' in _header(name)


@pytest.mark.parametrize('world,advice', [
    (8, 'differs from the reproduced run\'s 532: 532 is not reachable on 8 processes'),  # G.2.2: 38 x 7 x 2
    (4, 'differs from the reproduced run\'s 532: --batch-size 19 --grad-accum-steps 7 restores it'),  # 532 = 4·19·7
])
def test_dry_run_says_when_the_global_batch_is_not_the_papers(world, advice, capsys):
    _, notes = _dry_run(train_main, ['-c', 'imagenet/swin_base_gradnorm', '--dry-run', '--world-size', str(world)],
                        capsys)
    assert len(notes) == 1 and advice in notes[0], notes


def test_a_recipe_on_fewer_gpus_gets_the_linearly_scaled_lr(capsys):
    path = os.path.join(RECIPE_DIR, 'imagenet', 'swin_base_advtrain.yaml')
    resolved, notes = _dry_run(train_main, ['-c', path, '--dry-run', '--world-size', '4', '--grad-accum-steps', '2'],
                               capsys)
    assert resolved['global_batch_size'] == 512 and resolved['lr'] == pytest.approx(1.25e-3) and not notes
    resolved, notes = _dry_run(train_main, ['-c', path, '--dry-run', '--world-size', '4'], capsys)
    assert resolved['global_batch_size'] == 256 and resolved['lr'] == pytest.approx(1.25e-3 / 2)
    assert '--batch-size 64 --grad-accum-steps 2 restores it' in notes[0]


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
        assert _name(path)[:-len('.yaml')] in out
    assert 'paper: clean 77.78, AutoAttack 51.58 at 4/255' in out  # Table 2, Swin-B GradNorm
    assert 'paper: clean 76.80, AutoAttack 35.02 at 4/255' in out  # Table 5, Swin-B edge
    assert 'gradreg-eval -c imagenet/swin_base_natural' in out
