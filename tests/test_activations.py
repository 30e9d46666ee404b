"""Activation swap on real timm models, and the swap-activations CLI."""
import os
import stat
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d

from timm_gradreg import swap_activations
from timm_gradreg.models.checkpoint import SWAP_KEY
from timm_gradreg.cli.swap_activations import main as swap_main
from timm_gradreg.models.loading import load_model_checkpoint


def _check_forward_backward(model, size):
    x = torch.randn(2, 3, size, size)
    model(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resnet50_swaps_49_relus_and_keeps_its_state_dict():
    torch.manual_seed(0)
    model = timm.create_model('resnet50', num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = swap_activations(model, 'gelu')
    assert len(report) == 49 and report.counts() == {'ReLU': 49}
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 0
    assert sum(type(m).__name__ == 'GELU' for m in model.modules()) == 49
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    # a checkpoint of the ReLU model loads into the swapped one
    fresh = timm.create_model('resnet50', num_classes=10)
    swap_activations(fresh, 'silu', check_functional=False)
    fresh.load_state_dict(before)
    _check_forward_backward(model, 64)


def test_norm_act_layers_are_covered():
    model = timm.create_model('regnetx_002', num_classes=10)
    report = swap_activations(model, 'silu')
    assert len(report) == 40
    inside = [n for n, _ in report if n.endswith('.bn.act')]
    assert inside and all(isinstance(model.get_submodule(n.rsplit('.', 1)[0]), BatchNormAct2d) for n in inside)
    assert all(isinstance(model.get_submodule(n), nn.SiLU) for n, _ in report)
    _check_forward_backward(model, 64)


@pytest.mark.parametrize('name,count', [('vit_tiny_patch16_224', 12), ('swin_tiny_patch4_window7_224', 12)])
def test_transformers_swap_their_gelus_to_silu(name, count):
    model = timm.create_model(name, num_classes=10)
    with pytest.raises(ValueError, match="no relu/relu6 activation modules.*GELU x12.*source"):
        swap_activations(model, 'silu')
    report = swap_activations(model, 'silu', source='gelu')
    assert len(report) == count
    assert all(isinstance(model.get_submodule(n), nn.SiLU) for n, _ in report)
    assert not any(isinstance(m, nn.GELU) for m in model.modules())
    _check_forward_backward(model, 224)


def test_targets_sources_and_errors():
    for act, cls in (('gelu_tanh', 'GELUTanh'), ('softplus', 'Softplus'), ('silu', 'SiLU'), ('mish', 'Mish')):
        model = timm.create_model('test_resnet', num_classes=3)
        swap_activations(model, act)
        assert all(type(model.get_submodule(n)).__name__ == cls for n in ('act1', 'layer1.0.act1'))
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1), nn.ReLU())
    assert len(swap_activations(seq, 'gelu', check_functional=False)) == 1  # LeakyReLU only on request
    assert len(swap_activations(seq, 'gelu', source=['leaky_relu'], check_functional=False)) == 1
    with pytest.raises(ValueError, match="Unknown activation 'swishy'"):
        swap_activations(seq, 'swishy')
    with pytest.raises(ValueError, match="Unknown source activation 'tanh'"):
        swap_activations(seq, 'gelu', source='tanh')


class FunctionalReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.pretrained_cfg = {'input_size': (3, 8, 8)}

    def forward(self, x):
        return F.relu(self.act(self.conv(x))).mean((2, 3))


def test_warns_about_functional_activations():
    with pytest.warns(UserWarning, match='relu x1 functionally'):
        report = swap_activations(FunctionalReLUNet(), 'gelu')
    assert report.functional_calls == {'relu': 1}
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert swap_activations(timm.create_model('test_resnet'), 'gelu').functional_calls == {}


def test_cli_swaps_saves_and_records(tmp_path, capsys):
    out = tmp_path / 'r50_gelu.pth.tar'
    assert swap_main(['resnet50', 'gelu', '--num-classes', '10', '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '49 activation modules replaced' in printed and 'ReLU      49     gelu' in printed
    assert 'finite=True' in printed
    ckpt = torch.load(out, weights_only=False)
    assert ckpt[SWAP_KEY]['act'] == 'gelu' and ckpt[SWAP_KEY]['count'] == 49
    # a fresh ReLU model loading it gets the swap re-applied first
    model = timm.create_model('resnet50', num_classes=10)
    report = load_model_checkpoint(model, str(out))
    assert report is not None and len(report) == 49
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    # swapping the swapped checkpoint's GELUs again, e.g. to SiLU, starts from its weights
    out2 = tmp_path / 'r50_silu.pth.tar'
    assert swap_main(['resnet50', 'silu', '--num-classes', '10', '--checkpoint', str(out), '--source', 'gelu',
                      '--output', str(out2)]) == 0


def test_cli_output_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert swap_main(['resnet18', 'gelu', '--num-classes', '4', '--output', str(tmp_path / 'r18.pth.tar')]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / 'r18.pth.tar').st_mode) == 0o644  # not the temp file's 0600


def test_cli_errors_are_actionable(tmp_path, capsys):
    assert swap_main(['resnet5O', 'gelu']) == 2
    assert "Unknown timm model 'resnet5O'" in capsys.readouterr().err
    assert swap_main(['resnet18', 'gelu', '--checkpoint', str(tmp_path / 'missing.pth')]) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_console_script_runs_offline_and_explains_pretrained(tmp_path):
    env = {'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin'}
    run = subprocess.run([sys.executable, '-m', 'timm_gradreg.cli.swap_activations', 'resnet18', 'gelu',
                          '--pretrained', '--output', str(tmp_path / 'x.pth.tar')],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2
    assert 'Could not fetch pretrained weights' in run.stderr and 'offline' in run.stderr
