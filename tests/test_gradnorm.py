"""GradNorm penalty: finite-difference gradient checks, first-order meaning, task loss formula."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from timm_gradreg import PixelSpace, create_task
from timm_gradreg.core.penalties import gradnorm_penalty, per_sample_gradnorm, resolve_sigma
from timm_gradreg.core.input_grad import loss_and_input_gradient

from conftest import TinyNet

EPS = 4 / 255
STD = (0.229, 0.224, 0.225)


def _penalty_fn(model, x, y, sigma):
    """penalty(params..., x) as a pure function of float64 tensors, for gradcheck."""
    names = [n for n, _ in model.named_parameters()]

    def fn(*tensors):
        params, inp = dict(zip(names, tensors[:-1])), tensors[-1]
        inp = inp if inp.requires_grad else inp.requires_grad_(True)
        out = functional_call(model, params, (inp,))
        loss = F.cross_entropy(out, y, reduction='sum')
        (g,) = torch.autograd.grad(loss, inp, create_graph=True)
        return gradnorm_penalty(g, EPS, sigma)
    return fn


@pytest.mark.parametrize('sigma', [0.225, STD])
def test_penalty_gradients_match_float64_finite_differences(sigma):
    torch.manual_seed(0)
    model = TinyNet(num_classes=3, width=3).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2])
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    fn = _penalty_fn(model, x, y, sigma)
    inputs = (*params, x.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_penalty_formula_by_hand():
    g = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.0]], [[-1.0, 3.0]]],
                      [[[0.0, 0.0]], [[1.0, 1.0]], [[0.0, -4.0]]]])  # [2, 3, 1, 2]
    # scalar σ: ε/σ · mean(||g_b||_1) = ε/0.5 · mean(7.5, 6) = 2ε · 6.75
    assert gradnorm_penalty(g, 0.1, 0.5).item() == pytest.approx(0.1 / 0.5 * 6.75)
    # per channel: sample 0 = 3/0.1 + 0.5/0.2 + 4/0.4 = 42.5; sample 1 = 2/0.2 + 4/0.4 = 20
    per = per_sample_gradnorm(g, 0.1, (0.1, 0.2, 0.4))
    torch.testing.assert_close(per, torch.tensor([0.1 * 42.5, 0.1 * 20.0]))


def test_sigma_resolution():
    space = PixelSpace(std=STD)
    assert resolve_sigma('channel', space) == STD
    assert resolve_sigma(0.225, space) == 0.225
    assert resolve_sigma('0.5', space) == 0.5
    with pytest.raises(ValueError, match='channel'):
        resolve_sigma('per-channel', space)
    with pytest.raises(ValueError, match='> 0'):
        resolve_sigma(-1.0, space)


@pytest.mark.parametrize('std,sigma', [((0.225,) * 3, 0.225), (STD, 'channel'), ((0.5,) * 3, 0.5)])
def test_penalty_is_first_order_loss_increase_of_the_sign_attack(std, sigma):
    """(ε/σ)||g||_1 = L(x + ε·sign ∇_pixel L) − L(x) + O(ε²), per sample, in pixel space."""
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    space = PixelSpace((0.485, 0.456, 0.406), std)
    pixels = 0.1 + 0.8 * torch.rand(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    x = space.to_normalized(pixels)
    _, _, g = loss_and_input_gradient(model, x, y, nn.CrossEntropyLoss(), create_graph=False)
    for eps in (1e-3, 1e-4):
        predicted = per_sample_gradnorm(g, eps, resolve_sigma(sigma, space))
        with torch.no_grad():
            base = F.cross_entropy(model(x), y, reduction='none')
            moved = F.cross_entropy(model(space.to_normalized(pixels + eps * g.sign())), y, reduction='none')
        rel = ((moved - base) - predicted).abs() / predicted
        assert rel.max() < 50 * eps, (eps, rel)  # second-order error shrinks with ε


def test_scalar_sigma_is_only_approximate_with_per_channel_stds():
    torch.manual_seed(0)
    g = torch.randn(2, 3, 4, 4)
    exact = per_sample_gradnorm(g, EPS, STD)
    approx = per_sample_gradnorm(g, EPS, 0.225)
    assert not torch.allclose(exact, approx, rtol=1e-4)
    torch.testing.assert_close(exact, approx, rtol=0.03, atol=0)


def test_gradnorm_task_loss_equals_hand_computation(tiny_net, batch):
    x, y = batch
    task = create_task('gradnorm', tiny_net, nn.CrossEntropyLoss(), ce_weight=0.5, gn_weight=0.7, eps=EPS,
                       sigma='channel', warmup_epochs=4, verbose=False)
    task.set_epoch(1.0)  # warm-up factor 1/4
    out = task(x, y)
    # by hand: per-sample gradients one sample at a time, penalty with per-channel σ
    ce = F.cross_entropy(tiny_net(x), y)
    grads = []
    for i in range(4):
        xi = x[i:i + 1].clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(tiny_net(xi), y[i:i + 1]), xi)[0])
    g = torch.cat(grads)
    w = EPS / torch.tensor(STD).view(1, 3, 1, 1)
    penalty = (g.abs() * w).sum((1, 2, 3)).mean()
    expected = 0.5 * ce + 0.7 * 0.25 * penalty
    torch.testing.assert_close(out['loss'], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out['penalty'], penalty, rtol=1e-5, atol=1e-8)
    assert out['weight'].item() == pytest.approx(0.7 * 0.25)
    assert set(out) >= {'loss', 'output', 'ce', 'penalty', 'weight'}


def test_gradnorm_warmup_is_linear_per_iteration(tiny_net):
    task = create_task('gradnorm', tiny_net, gn_weight=1.2, warmup_epochs=5, verbose=False)
    weights = []
    for epoch in (0.0, 0.5, 2.5, 5.0, 9.0):
        task.set_epoch(epoch)
        weights.append(task.penalty_weight())
    assert weights == pytest.approx([0.0, 0.12, 0.6, 1.2, 1.2])


def test_gradnorm_penalty_backpropagates_to_parameters(tiny_net, batch):
    """The penalty-only loss's parameter gradient equals the float64 finite difference of the penalty."""
    x, y = batch
    model = tiny_net.double()
    x = x.double()
    task = create_task('gradnorm', model, ce_weight=0.0, gn_weight=1.0, warmup_epochs=0, verbose=False)
    task(x, y)['loss'].backward()
    weight, index, h = model.conv1.weight, (2, 1, 0, 1), 1e-6
    analytic = weight.grad[index].item()
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            weight[index] += sign * h
        values.append(task(x, y)['loss'].item())
        with torch.no_grad():
            weight[index] -= sign * h
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(analytic) > 1e-4 and analytic == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize('inputs', ['noise', 'pgd'])
def test_gradnorm_input_variants_change_where_the_penalty_is_taken(tiny_net, batch, inputs):
    x, y = batch
    clean = create_task('gradnorm', tiny_net, warmup_epochs=0, verbose=False)
    own = {'noise': dict(noise_std=0.05),
           'pgd': dict(attack_eps=0.05, attack_step_size=0.02, attack_warmup_epochs=0)}[inputs]  # each part its own
    variant = create_task('gradnorm', tiny_net, warmup_epochs=0, inputs=inputs, verbose=False, **own)
    torch.manual_seed(0)
    a, b = clean(x, y), variant(x, y)
    assert not torch.allclose(a['penalty'], b['penalty'])
    if inputs == 'pgd':
        assert b['ce'] > a['ce']  # perturbed inputs have higher loss


def _robust_like_resnet():
    """A timm ResNet whose input gradients are as tiny as a robust model's (~1e-10 per pixel)."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10, act_layer='gelu').eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e-4)
    return model


def test_gradnorm_under_autocast_matches_fp32():
    """fp16 (scaled input gradient) and bf16: penalty within 1% of fp32 on a timm model."""
    model = _robust_like_resnet()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 3, 5, 9])
    ref = create_task('gradnorm', model, warmup_epochs=0, verbose=False)(x, y)['penalty']
    for dtype in (torch.bfloat16, torch.float16):
        task = create_task('gradnorm', model, warmup_epochs=0, verbose=False)
        with torch.autocast('cpu', dtype=dtype):
            out = task(x, y)
        assert out['output'].dtype == dtype and out['penalty'].dtype == torch.float32
        assert abs(out['penalty'].item() / ref.item() - 1) < 0.01, (dtype, out['penalty'].item(), ref.item())


def test_fp16_input_gradient_underflows_without_the_scaled_loss():
    """Why the scaling exists: the same gradient taken naively in fp16 is all zeros."""
    model = _robust_like_resnet()
    x, y = torch.randn(4, 3, 64, 64).requires_grad_(True), torch.tensor([0, 3, 5, 9])
    with torch.autocast('cpu', dtype=torch.float16):
        out = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(out.float(), y, reduction='sum'), x)
    assert (g == 0).all()


def test_fp16_input_gradient_uses_the_attached_grad_scaler(tiny_net, batch):
    x, y = batch
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10)
    task = create_task('gradnorm', tiny_net, warmup_epochs=0, verbose=False)
    task.attach_grad_scaler(scaler)
    from timm_gradreg.core.input_grad import resolve_loss_scale
    with torch.autocast('cpu', dtype=torch.float16):
        assert resolve_loss_scale(x, task.grad_scaler) == 2.0 ** 10
        out = task(x, y)
    ref = create_task('gradnorm', tiny_net, warmup_epochs=0, verbose=False)(x, y)
    assert abs(out['penalty'].item() / ref['penalty'].item() - 1) < 0.01
    assert resolve_loss_scale(x, task.grad_scaler) is None  # no autocast: no scaling
