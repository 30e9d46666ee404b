"""The paper's released checkpoints: files in the official training code's layout load into the right timm model.

The weights cannot be downloaded here, so each test writes a checkpoint the way the official code
(adriarm/robustness_input_gradients, ARES-based) does: ``build_model`` makes the plain timm model
(``create_model(args.model, pretrained=..., num_classes=...)``), ``replace_layers`` swaps every
``nn.ReLU`` for ``nn.GELU()`` when ``args.replace_relu_with_gelu``; for Swin, its own
``swin_transformer_timm_version`` registration keeps the original layout (PatchMerging at the end
of stages 0-2, a ``head`` Linear, persistent ``relative_position_index`` and ``attn_mask``
buffers); timm's ``CheckpointSaver`` saves ``epoch, arch, state_dict, optimizer, version, args,
state_dict_ema, metric`` with ``args`` the script's Namespace. The evaluation scripts load
``state_dict_ema``. The loaded model must give the source model's outputs.
"""
import argparse
import re

import pytest
import timm
import torch
import torch.nn as nn

import timm_gradreg
from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.models.loading import ModelError, load_eval_model


def _official_args(**overrides):
    """The official adversarial_training.py args (a subset of its keys, with its spellings)."""
    args = dict(model='resnet50', num_classes=1000, create_model_pretrained=True, lrb=1.25e-3, lr=None,
                batch_size=64, grad_accum=1, input_size=224, crop_pct=0.875, interpolation='bicubic',
                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], advtrain=False, gradnorm=True,
                loss_fn='DBP', ce_weight=0.8, gradnorm_weight=1.2, alpha=[0.0, 0.2, 1.0],
                replace_relu_with_gelu=False, model_ema=True, model_ema_decay=0.9998)
    args.update(overrides)
    return argparse.Namespace(**args)


def _saver_dict(state_dict, ema_state_dict, args):
    """timm's CheckpointSaver._save as the official code calls it (model_ema given, no task)."""
    return {'epoch': 99, 'arch': args.model, 'state_dict': state_dict, 'optimizer': {'state': {}, 'param_groups': []},
            'version': 2, 'args': args, 'state_dict_ema': ema_state_dict, 'metric': 51.0}


def _perturbed(state_dict, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in state_dict.items()}


def _original_swin_layout(state_dict):
    """timm's current Swin keys -> the original layout the official registration saves."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) - 1}.downsample', key)
        out[key.replace('head.fc.', 'head.')] = value
    for key in list(out):
        if key.endswith('attn.relative_position_bias_table'):
            out[key.replace('relative_position_bias_table', 'relative_position_index')] = torch.arange(49 * 49).view(49, 49)
    for stage, blocks in enumerate((2, 2, 18)):  # shifted blocks of the stages whose resolution exceeds the window
        for block in range(1, blocks, 2):
            windows = (56 // 2 ** stage // 7) ** 2
            out[f'layers.{stage}.blocks.{block}.attn_mask'] = torch.zeros(windows, 49, 49)
    return out


def test_gradnorm_resnet50_gelu_release_loads_with_gelu_and_its_ema_weights(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model('resnet50', num_classes=1000)
    timm_gradreg.swap_activations(source, 'gelu', source='relu', check_functional=False)
    ema = _perturbed(source.state_dict(), 1)
    path = tmp_path / 'gradnorm_resnet50_gelu.pth.tar'
    torch.save(_saver_dict(source.state_dict(), ema, _official_args(replace_relu_with_gelu=True)), path)

    model, data_config = load_eval_model(str(path))
    assert sum(type(m).__name__ == 'GELU' for m in model.modules()) > 0
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    source.load_state_dict(ema)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x))
    assert data_config['input_size'] == (3, 224, 224) and data_config['crop_pct'] == 0.875
    raw, _ = load_eval_model(str(path), use_ema=False)
    with torch.no_grad():  # use_ema False is still the layout default: the EMA weights, as the paper evaluates
        torch.testing.assert_close(raw(x), model(x))


@pytest.mark.parametrize('method', ['gradnorm', 'edge'])
def test_swin_b_releases_load_from_the_original_swin_layout(tmp_path, method):
    torch.manual_seed(0)
    source = timm.create_model('swin_base_patch4_window7_224', num_classes=1000)
    ema = _perturbed(source.state_dict(), 2)
    official = _original_swin_layout(ema)
    assert 'layers.0.downsample.reduction.weight' in official and 'head.weight' in official
    args = _official_args(model='swin_base_patch4_window7_224') if method == 'gradnorm' else \
        _official_args(model='swin_base_patch4_window7_224', gradnorm=False, contourtrain=True, sigma=1.0, temp=0.5)
    path = tmp_path / f'{method}_swinb.pth.tar'
    torch.save(_saver_dict(_original_swin_layout(source.state_dict()), official, args), path)

    model, _ = load_eval_model(str(path))
    source.load_state_dict(ema)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x), rtol=1e-4, atol=1e-5)


def test_official_cifar_preact_resnet18_loads_as_the_registered_timm_model(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model('preact_resnet18_cifar', act_layer='gelu')
    path = tmp_path / 'gradnorm_prn18_gelu.pth.tar'
    args = _official_args(model='prn18', num_classes=10, input_size=32, crop_pct=1.0, replace_relu_with_gelu=True)
    torch.save(_saver_dict(source.state_dict(), source.state_dict(), args), path)
    model, data_config = load_eval_model(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x))
    assert data_config['input_size'] == (3, 32, 32)


def test_unknown_layout_names_the_keys_expected_and_found(tmp_path, capsys):
    path = tmp_path / 'mystery.pth'
    torch.save({'weights': {'a': torch.zeros(1)}, 'step': 3}, path)
    with pytest.raises(ModelError, match=r"unrecognized checkpoint layout\. Expected one of: official: .*"
                                         r"timm: 'state_dict'.*Found: 'weights', 'step'"):
        load_eval_model(str(path))
    assert eval_main(['--checkpoint', str(path), '--model', 'resnet18', '--device', 'cpu', '--dataset', 'demo/digits',
                      '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'mystery.pth' in err and "Found: 'weights', 'step'" in err and 'Traceback' not in err
