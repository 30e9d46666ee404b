"""Per-sample loss-input gradients: reduction/batch invariance, soft targets, fused attention, AMP."""
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from timm_gradreg.double_backward import double_backward_safe
from timm_gradreg.core.input_grad import input_gradient, loss_and_input_gradient, per_sample_loss_sum


def _reference_grads(model, x, y):
    """Each sample's gradient computed alone, in float64."""
    model = model.double()
    grads = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].double().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        grads.append(g)
    return torch.cat(grads)


def test_gradient_is_per_sample_whatever_the_reduction(tiny_net, batch):
    x, y = batch
    ref = _reference_grads(tiny_net, x, y)
    for criterion in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction='sum'),
                      nn.CrossEntropyLoss(reduction='none')):
        _, ce, g = loss_and_input_gradient(tiny_net, x.double(), y, criterion)
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ce, F.cross_entropy(tiny_net(x.double()), y))


def test_gradient_of_a_sample_ignores_its_batch_companions(tiny_net, batch):
    x, y = batch
    _, _, full = loss_and_input_gradient(tiny_net, x, y, nn.CrossEntropyLoss())
    _, _, alone = loss_and_input_gradient(tiny_net, x[2:3], y[2:3], nn.CrossEntropyLoss())
    other = torch.cat([x[2:3], torch.randn(5, 3, 8, 8)])
    _, _, mixed = loss_and_input_gradient(tiny_net, other, torch.tensor([2, 0, 1, 4, 3, 0]), nn.CrossEntropyLoss())
    torch.testing.assert_close(full[2:3], alone, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(mixed[:1], alone, rtol=1e-5, atol=1e-8)


def test_soft_targets_and_timm_criteria(tiny_net, batch):
    x, y = batch
    soft = F.one_hot(y, 5).double()
    ref = _reference_grads(tiny_net, x, y)
    _, _, g = loss_and_input_gradient(tiny_net, x.double(), soft, SoftTargetCrossEntropy())
    torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)
    # label smoothing changes the loss, but the gradient is still per sample: scale B, not 1
    crit = LabelSmoothingCrossEntropy(0.1)
    _, _, g_batch = loss_and_input_gradient(tiny_net, x.double(), y, crit)
    _, _, g_one = loss_and_input_gradient(tiny_net, x[:1].double(), y[:1], crit)
    torch.testing.assert_close(g_batch[:1], g_one, rtol=1e-9, atol=1e-12)


def test_per_sample_loss_sum_rejects_unknown_reduction(batch):
    class Weird(nn.Module):
        reduction = 'batchmean'

        def forward(self, out, target):
            return out.sum()
    try:
        per_sample_loss_sum(Weird(), torch.zeros(2, 3), torch.zeros(2))
    except ValueError as e:
        assert 'batchmean' in str(e)
    else:
        raise AssertionError('expected ValueError')


def test_double_backprop_through_vit_with_fused_attention():
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', num_classes=10).eval()
    assert model.blocks[0].attn.fused_attn, 'timm should use fused attention by default'
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([1, 2])
    # the library's path works with no user action and matches the unfused attention
    _, _, g = loss_and_input_gradient(model, x, y, nn.CrossEntropyLoss())
    g.abs().sum().backward()
    grad_fused = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    _, _, g2 = loss_and_input_gradient(model, x, y, nn.CrossEntropyLoss())
    g2.abs().sum().backward()
    torch.testing.assert_close(grad_fused, model.blocks[0].attn.qkv.weight.grad, rtol=1e-3,
                               atol=1e-4 * grad_fused.abs().max().item())
    assert grad_fused.abs().sum() > 0


def test_input_gradient_unscales_and_adapts_on_overflow():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * 3.0).sum()
    g = input_gradient(loss, x, loss_scale=1024.0)
    torch.testing.assert_close(g, torch.tensor([3.0, 3.0]))
    # scaled gradient overflows float16 -> adaptive scale recovers the exact value
    h = x.half()
    loss16 = (h * 1000.0).sum()
    g16 = input_gradient(loss16, x, loss_scale=2.0 ** 16)
    torch.testing.assert_close(g16, torch.tensor([1000.0, 1000.0]))


def test_double_backward_safe_is_a_context():
    """Fused attention under the context is twice differentiable, with the math kernel's second derivative."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    with double_backward_safe():
        out = F.scaled_dot_product_attention(q, q, q)
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    (second,) = torch.autograd.grad(g.square().sum(), q)
    with sdpa_kernel([SDPBackend.MATH]):
        ref_out = F.scaled_dot_product_attention(q, q, q)
        (ref_g,) = torch.autograd.grad(ref_out.sum(), q, create_graph=True)
        (ref_second,) = torch.autograd.grad(ref_g.square().sum(), q)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(second, ref_second, rtol=1e-4, atol=1e-5)
    assert second.abs().sum() > 1e-3  # not a trivially zero second derivative
