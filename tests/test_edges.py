"""Edge energy, gradient teachers and the cosine alignment loss."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from timm_gradreg import create_task
from timm_gradreg.core.edge_maps import (_TEACHERS, EdgeEnergy, cosine_alignment_loss, create_gradient_teacher, gaussian_blur,
                                list_gradient_teachers, register_gradient_teacher)

from conftest import TinyNet


def _step_image(h=32, w=32, col=16):
    img = torch.zeros(1, 3, h, w)
    img[..., col:] = 1.0
    return img


@pytest.mark.parametrize('filters', ['sobel', 'gaussian'])
def test_edge_energy_zero_on_flat_regions_and_peaks_on_the_step(filters):
    e = EdgeEnergy(filters, sigma=1.0)(_step_image())[0, 0]
    assert e.shape == (32, 32)
    profile = e[16]  # one row across the vertical step between columns 15 and 16
    assert profile.argmax().item() in (15, 16)
    assert profile[:8].abs().max() < 1e-6 and profile[-8:].abs().max() < 1e-6  # flat, borders included
    assert torch.allclose(e[:, 15], e[0, 15].expand(32))  # constant along the edge (replicate borders)
    assert e.min() >= 0


def test_edge_energy_of_a_box_outlines_it():
    img = torch.zeros(1, 3, 40, 40)
    img[..., 12:28, 12:28] = 0.8
    e = EdgeEnergy('sobel')(img)[0, 0]
    assert e[20, 20] < 1e-6 and e[2, 2] < 1e-6  # inside and outside the box
    assert e[20, 11:13].max() > 0.1 * e.max() and e[11:13, 20].max() > 0.1 * e.max()  # on its sides


def test_sobel_edge_slope_is_per_pixel():
    """Without blur the 'sobel' map of a linear ramp equals its slope (per-pixel derivative units)."""
    ramp = torch.linspace(0, 1, 11).view(1, 1, 1, 11).expand(1, 1, 11, 11) * 0.5
    energy = EdgeEnergy('sobel', sigma=1e-3)
    e = energy(ramp)[0, 0]
    torch.testing.assert_close(e[5, 2:9], torch.full((7,), 0.05), rtol=1e-4, atol=1e-6)


def test_gaussian_blur_preserves_constants():
    x = torch.full((1, 2, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(x, 1.5), x)


def test_cosine_loss_zero_when_aligned_and_scale_invariant():
    torch.manual_seed(0)
    target = torch.rand(3, 1, 8, 8)
    grad = target.expand(3, 3, 8, 8).clone()
    for mode in ('batch_rms', 'per_image'):
        assert cosine_alignment_loss(grad, target, mode).item() == pytest.approx(0.0, abs=1e-6)
        assert cosine_alignment_loss(-grad, target, mode).item() == pytest.approx(4.0, abs=1e-5)
        g = torch.randn(3, 3, 8, 8)
        base = cosine_alignment_loss(g, target, mode)
        torch.testing.assert_close(cosine_alignment_loss(7.5 * g, 0.01 * target, mode), base)


def test_cosine_modes_by_hand():
    g = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(2, 1, 1, 2)
    t = torch.tensor([1.0, 1.0, 1.0, 1.0]).view(2, 1, 1, 2)
    # per image: cos = 1/sqrt(2) and 1 -> mean(2 - 2cos) = (2 - sqrt 2) / 2
    assert cosine_alignment_loss(g, t, 'per_image').item() == pytest.approx((2 - 2 ** 0.5) / 2)
    # whole batch: cos = 3 / (sqrt 3 · 2) -> 2 − sqrt 3; equals MSE of RMS-normalized tensors
    assert cosine_alignment_loss(g, t, 'batch_rms').item() == pytest.approx(2 - 3 ** 0.5)
    gn, tn = g / g.square().mean().sqrt(), t / t.square().mean().sqrt()
    assert F.mse_loss(gn, tn).item() == pytest.approx(2 - 3 ** 0.5)


def test_cosine_loss_rejects_mismatched_maps():
    with pytest.raises(ValueError, match='broadcast'):
        cosine_alignment_loss(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match='per_image'):
        cosine_alignment_loss(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), 'cosine')


@pytest.mark.parametrize('mode', ['batch_rms', 'per_image'])
def test_edge_loss_gradients_match_float64_finite_differences(mode):
    torch.manual_seed(0)
    model = TinyNet(num_classes=3, width=3).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    edges = EdgeEnergy('sobel')(x).detach()
    t = torch.tensor([1, 2])
    names = [n for n, _ in model.named_parameters()]

    def fn(*tensors):
        params, inp = dict(zip(names, tensors[:-1])), tensors[-1]
        out = functional_call(model, params, (inp,))
        (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), inp, create_graph=True)
        return cosine_alignment_loss(g, edges, mode)

    inputs = (*[p.detach().clone().requires_grad_(True) for p in model.parameters()], x.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_teacher_registry_and_callables():
    assert {'sobel', 'gaussian'} <= set(list_gradient_teachers())
    fn = lambda images: images.mean(1, keepdim=True)  # noqa: E731
    assert create_gradient_teacher(fn) is fn
    register_gradient_teacher('brightness', lambda **kw: fn)
    try:
        assert create_gradient_teacher('brightness') is fn
        assert 'brightness' in list_gradient_teachers()
    finally:
        _TEACHERS.unregister('brightness')
    assert 'brightness' not in list_gradient_teachers()
    with pytest.raises(ValueError, match="Unknown gradient teacher .canny.. Valid: gaussian, official, sobel"):
        create_gradient_teacher('canny')


def test_edge_task_loss_equals_hand_computation(tiny_net, batch):
    x, y = batch
    task = create_task('edge', tiny_net, nn.CrossEntropyLoss(), temperature=0.5, verbose=False)
    task.set_epoch(3.7)  # weight 1 + 0.09·3.7 = 1.333 (updated every iteration, as the official code)
    torch.manual_seed(5)
    out = task(x, y)
    # by hand, with the same sampled classes
    torch.manual_seed(5)
    logits = tiny_net(x)
    t = torch.distributions.Categorical(logits=logits / 0.5).sample()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tiny_net(xr).gather(1, t[:, None]).sum(), xr)
    edges = EdgeEnergy('sobel')(task.space.to_pixel(x).clamp(0, 1))
    gn = g / g.square().mean().sqrt()
    en = edges.expand_as(g) / edges.square().mean().sqrt()
    expected = F.cross_entropy(logits, y) + 1.333 * (gn - en).square().mean()
    torch.testing.assert_close(out['loss'], expected, rtol=1e-5, atol=1e-6)
    assert out['weight'].item() == pytest.approx(1.333)


def test_edge_weight_schedule_caps():
    task = create_task('edge', TinyNet(), verbose=False)
    for epoch, w in ((0, 1.0), (10.99, 1.9891), (199.0, 18.91), (500.0, 19.0)):
        task.set_epoch(epoch)
        assert task.alignment_weight() == pytest.approx(w)


def test_edge_task_with_custom_teacher_trains_towards_it(tiny_net, batch):
    """A pluggable teacher is used as the target: alignment to it improves with a few steps."""
    x, y = batch
    torch.manual_seed(0)
    teacher = lambda images: images[:, :1]  # noqa: E731  (align with the red channel)
    task = create_task('edge', tiny_net, teacher=teacher, weight_start=5.0, weight_growth=0.0, verbose=False)
    opt = torch.optim.Adam(tiny_net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        out = task(x, y)
        first = out['penalty'].item() if first is None else first
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
    assert out['penalty'].item() < 0.7 * first
