"""Finite-difference GradNorm: matches double backprop, compiles, runs fused attention, DDP (in test_tasks)."""
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_gradreg import create_task
from timm_gradreg.tasks import gradnorm_fd_agreement
from timm_gradreg.core.penalties import penalty_direction, per_sample_gradnorm

from conftest import TinyNet


def _param_grad(task, model, x, y):
    model.zero_grad(set_to_none=True)
    out = task(x, y)
    out['loss'].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]), out


def _compare(model, x, y, **options):
    ref, ref_out = _param_grad(create_task('gradnorm', model, warmup_epochs=0, verbose=False, **options), model, x, y)
    fd, fd_out = _param_grad(create_task('gradnorm', model, warmup_epochs=0, verbose=False, impl='fd', **options),
                             model, x, y)
    cosine = F.cosine_similarity(fd, ref, dim=0).item()
    rel = ((fd - ref).norm() / ref.norm()).item()
    return cosine, rel, ref_out, fd_out


def test_penalty_direction_gives_the_penalty_as_directional_derivative():
    g = torch.randn(2, 3, 4, 4)
    for sigma in (0.225, (0.229, 0.224, 0.225)):
        v = penalty_direction(g, 4 / 255, sigma)
        torch.testing.assert_close((g * v).flatten(1).sum(1), per_sample_gradnorm(g, 4 / 255, sigma))


@pytest.mark.parametrize('sigma', [0.225, 'channel'])
def test_fd_matches_double_backprop_on_a_smooth_model(batch, sigma):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = batch
    cosine, rel, ref, fd = _compare(model, x, y, ce_weight=0.0, gn_weight=1.0, sigma=sigma)  # penalty only
    assert cosine >= 0.999 and rel < 0.02, (cosine, rel)
    torch.testing.assert_close(fd['penalty'], ref['penalty'])  # the reported penalty is exact
    torch.testing.assert_close(fd['loss'], ref['loss'], rtol=0.02, atol=0)  # value: first order in h


def test_fd_matches_double_backprop_on_a_vit_with_fused_attention():
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=10).eval()
    assert model.blocks[0].attn.fused_attn
    x, y = torch.randn(4, 3, 160, 160), torch.tensor([1, 2, 3, 4])
    cosine, rel, _, _ = _compare(model, x, y, ce_weight=0.0, gn_weight=1.0)
    assert cosine >= 0.99 and rel < 0.12, (cosine, rel)  # measured 0.997, 0.073
    agreement = gradnorm_fd_agreement(model, x, y)  # the paper's weights
    assert agreement['cosine'] >= 0.99 and agreement['rel_error'] < 0.12, agreement  # measured 0.998, 0.066


def test_fd_on_a_resnet_with_max_pooling():
    """Max pooling makes ∇θL jump in x: FD needs a not-too-small h; the training gradient still agrees."""
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10, act_layer='gelu').eval()
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    cosine, rel, _, _ = _compare(model, x, y, ce_weight=0.5, gn_weight=0.5)
    assert cosine >= 0.999 and rel < 0.05, (cosine, rel)  # measured 0.9996, 0.028


def test_fd_compiles_where_double_backprop_cannot(batch):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = batch
    with pytest.raises(RuntimeError, match='double backward'):
        create_task('gradnorm', model, verbose=False).compile()
    eager, _ = _param_grad(create_task('gradnorm', model, warmup_epochs=0, impl='fd', verbose=False), model, x, y)
    task = create_task('gradnorm', model, warmup_epochs=0, impl='fd', verbose=False)
    task.compile(backend='aot_eager')
    compiled, _ = _param_grad(task, model, x, y)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-7)


def test_fd_under_fp16_autocast_keeps_the_penalty(batch):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = batch
    ref = create_task('gradnorm', model, warmup_epochs=0, impl='fd', verbose=False)(x, y)
    with torch.autocast('cpu', dtype=torch.float16):
        out = create_task('gradnorm', model, warmup_epochs=0, impl='fd', verbose=False)(x, y)
    assert abs(out['penalty'].item() / ref['penalty'].item() - 1) < 0.01
    out['loss'].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_fd_step_is_validated(tiny_net):
    with pytest.raises(ValueError, match='fd_step'):
        create_task('gradnorm', tiny_net, impl='fd', fd_step=0.0)
    with pytest.raises(ValueError, match="double_backprop, fd"):
        create_task('gradnorm', tiny_net, impl='taylor')
