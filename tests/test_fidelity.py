"""Fidelity to the official code: schedules at chosen training positions, the official variants against
hand computations, and the guards where the method does not apply."""
import math
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_gradreg import create_task
from timm_gradreg.core.edge_maps import EdgeEnergy
from timm_gradreg.train import schedule_position

from conftest import TinyNet

# (epoch, batch_idx, batches per epoch, gradient accumulation): positions across the warm-ups and after them
POSITIONS = [(0, 10, 100, 1), (1, 0, 100, 1), (2, 51, 100, 2), (4, 99, 100, 1), (7, 3, 100, 1)]


def _official_alpha(alpha, epoch, batch_idx, batches, accum, start_epoch=0.0):
    """adversarial_training.py: the GradNorm loss-weight ramp (alpha = [a0, a1, a2])."""
    return max(0., min(alpha[0] + ((epoch - start_epoch) + (batch_idx // accum) / (batches / accum)) * alpha[1],
                       alpha[2]))


def _official_edge_weight(alpha, epoch, batch_idx, batches, accum):
    """adversarial_training_logit.py: the edge loss weight."""
    return min(alpha[0] + (epoch + (batch_idx // accum) / (batches / accum)) * alpha[1], alpha[2])


def _official_attack_step(step, epoch):
    """adversarial_training.py: att_step = args.attack_step * min(epoch, 5) / 5, once per epoch."""
    return step * min(epoch, 5) / 5


@pytest.mark.parametrize('epoch,batch_idx,batches,accum', POSITIONS)
def test_schedules_match_the_official_formulas(epoch, batch_idx, batches, accum):
    position = schedule_position(epoch, batch_idx, batches, accum)
    gradnorm = create_task('gradnorm', TinyNet(), gn_weight=1.2, warmup_epochs=5, verbose=False)
    gradnorm.set_epoch(position)
    assert gradnorm.penalty_weight() == pytest.approx(1.2 * _official_alpha([0.0, 0.2, 1.0], epoch, batch_idx,
                                                                             batches, accum), abs=1e-12)
    edge = create_task('edge', TinyNet(), verbose=False)
    edge.set_epoch(position)
    assert edge.alignment_weight() == pytest.approx(_official_edge_weight([1.0, 0.09, 19.0], epoch, batch_idx,
                                                                          batches, accum), abs=1e-12)
    pgd = create_task('pgd', TinyNet(), verbose=False)
    pgd.set_epoch(position)
    assert pgd.step_size * pgd.step_scale() == pytest.approx(_official_attack_step(8 / 255 / 3, epoch), abs=1e-15)
    assert pgd.eps == pytest.approx(4 / 255)  # ε is not warmed up


# --- GradNorm variants -------------------------------------------------------------------------------

def _per_sample_grad(model, x, y):
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction='sum'), xr)
    return g


def test_thresholded_gradnorm_is_the_official_hinge(tiny_net, batch):
    """DBPThresholded: relu(B·(ε/σ)·||∇ₓ mean CE||₁ − t).mean(), with t between the samples' norms."""
    x, y = batch
    g = _per_sample_grad(tiny_net, x, y)
    norms = (4 / 255) / 0.225 * g.abs().sum((1, 2, 3))
    threshold = norms.sort().values[1].item()  # two samples below (or at) it, two above
    task = create_task('gradnorm', tiny_net, nn.CrossEntropyLoss(), ce_weight=0.0, gn_weight=1.0, warmup_epochs=0,
                       threshold=threshold, verbose=False)
    out = task(x, y)
    torch.testing.assert_close(out['penalty'], torch.relu(norms - threshold).mean())
    assert 0 < out['penalty'] < norms.mean()


def test_channel_weighted_gradnorm_is_the_official_dbpchannel(tiny_net, batch):
    """DBPChannel: (ε/σ)·Σ_c w_c·mean_b ||g_bc||₁ with w = (1, 2, 1)."""
    x, y = batch
    g = _per_sample_grad(tiny_net, x, y)
    expected = (4 / 255) / 0.225 * (torch.tensor([1.0, 2.0, 1.0]) * g.abs().sum((2, 3)).mean(0)).sum()
    task = create_task('gradnorm', tiny_net, ce_weight=0.0, gn_weight=1.0, warmup_epochs=0,
                       channel_weights=(1, 2, 1), verbose=False)
    torch.testing.assert_close(task(x, y)['penalty'], expected)


@pytest.mark.parametrize('options', [dict(threshold=0.004), dict(channel_weights=(1, 2, 1))])
def test_fd_follows_the_variants_penalty(options, batch):
    """The finite difference steps along the variant's own direction: its gradient matches double backprop."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = batch
    grads = []
    for impl, own in (('double_backprop', {}), ('fd', {'fd_step': 0.01})):
        task = create_task('gradnorm', model, ce_weight=0.0, gn_weight=1.0, warmup_epochs=0, impl=impl,
                           verbose=False, **own, **options)
        model.zero_grad()
        task(x, y)['loss'].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.999


def test_uniform_inputs_are_the_official_random_start(tiny_net, batch):
    """random_uniform_generator: pixels + U(−r, r), clipped to [0, 1], normalized again."""
    x, y = batch
    task = create_task('gradnorm', tiny_net, inputs='uniform', uniform_eps=8 / 255, warmup_epochs=0, verbose=False)
    torch.manual_seed(11)
    out = task(x, y)
    torch.manual_seed(11)
    pixels = task.space.to_pixel(x)
    noise = torch.empty_like(pixels).uniform_(-8 / 255, 8 / 255)
    perturbed = task.space.to_normalized((pixels + noise).clamp(0, 1))
    g = _per_sample_grad(tiny_net, perturbed, y)
    torch.testing.assert_close(out['penalty'], (4 / 255) / 0.225 * g.abs().sum((1, 2, 3)).mean())


def test_uniform_half_width_defaults_to_the_official_factor_of_eps(tiny_net):
    """adversarial_training.py: --random_start_eps_factor defaults to 0.5 (half-width ε·0.5 = 2/255 at 4/255)."""
    task = create_task('gradnorm', tiny_net, inputs='uniform', eps=4 / 255, verbose=False)
    assert task.penalty_inputs.radius(task) == pytest.approx(4 / 255 * 0.5, abs=1e-15)


# --- the official PGD (adv/adv_utils.py: adv_generator with replace_best) --------------------------------

def _official_pgd(model, x_norm, target, mean, std, eps, steps, step_size, noise, per_batch):
    """adv_generator(..., random_start=False, use_best=True) line by line, with the final iterate scored on
    normalized input (the official code scores it on pixels, a bug not copied). ``per_batch``: the criterion
    is the batch mean (attack_criterion 'mixup', SoftTargetCrossEntropy), so replace_best swaps the whole batch;
    else per sample ('regular', CrossEntropyLoss(reduction='none'))."""
    images = x_norm * std + mean
    orig = images.detach()

    def criterion(logits):
        per_sample = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
        return per_sample.mean() if per_batch else per_sample

    def replace_best(loss, bloss, x, bx):
        if bloss is None:
            return loss.clone().detach(), x.clone().detach()
        replace = bloss < loss
        bx[replace] = x[replace].clone().detach()
        bloss[replace] = loss[replace]
        return bloss, bx

    images = torch.clamp(images + noise, 0, 1)  # random_uniform: U(−ε, ε), clipped
    best_loss = best_x = None
    for _ in range(steps):
        images = images.clone().detach().requires_grad_(True)
        losses = criterion(model((images - mean) / std))
        torch.mean(losses).backward()
        grad = images.grad.detach()
        with torch.no_grad():
            best_loss, best_x = replace_best(losses, best_loss, images, best_x)
            images = images + torch.sign(grad) * step_size
            images = torch.clamp(torch.clamp(images - orig, -eps, eps) + orig, 0, 1)
    with torch.no_grad():
        losses = criterion(model((images - mean) / std))
    best_loss, best_x = replace_best(losses, best_loss, images, best_x)
    return (best_x - mean) / std


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize('select,per_batch', [('batch', True), ('sample', False)])
def test_best_iterate_selection_is_the_official_replace_best(select, per_batch):
    from timm_gradreg.core.attacks import pgd_attack
    from timm_gradreg.core.normalization import PixelSpace
    torch.manual_seed(3)
    model = TinyNet(num_classes=4).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(5)
    x = ((0.05 + 0.9 * torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)) - mean) / std
    target = F.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), -1)  # mixed (soft) labels
    eps, step = 0.1, 0.2  # steps that overshoot, so an earlier iterate can have the higher loss
    chosen = []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        ours = pgd_attack(model, x, target, eps=eps, step_size=step, steps=3, space=PixelSpace(MEAN, STD),
                          select=select, generator=gen)
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(seed))
        ref = _official_pgd(model, x, target, mean, std, eps, 3, step, noise, per_batch)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        last = pgd_attack(model, x, target, eps=eps, step_size=step, steps=3, space=PixelSpace(MEAN, STD),
                          generator=torch.Generator().manual_seed(seed))
        chosen.append(torch.equal(ours, last))
    assert not all(chosen)  # the selection picked an earlier iterate at least once: the test can fail


def test_pgd_inputs_of_gradnorm_warm_the_step_up_per_epoch_and_select_as_asked(tiny_net, batch):
    """Official GradNorm on PGD inputs: adv_generator with att_step = step·min(epoch, 5)/5 and replace_best."""
    from timm_gradreg.core.attacks import pgd_attack
    x, y = batch
    task = create_task('gradnorm', tiny_net, inputs='pgd', warmup_epochs=0, attack_select='batch', verbose=False)
    task.set_epoch(2.7)
    torch.manual_seed(9)
    out = task(x, y)
    torch.manual_seed(9)
    adv = pgd_attack(tiny_net, x, y, eps=4 / 255, step_size=8 / 255 / 3 * min(2, 5) / 5, steps=3, space=task.space,
                     select='batch')
    g = _per_sample_grad(tiny_net, adv, y)
    torch.testing.assert_close(out['penalty'], (4 / 255) / 0.225 * g.abs().sum((1, 2, 3)).mean())


# --- edge variants -----------------------------------------------------------------------------------

def _official_contour_energy(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """gradient_teachers.ContourEnergy(sigma, 3), written out with numpy and scipy (float64)."""
    from scipy.special import iv
    order = math.ceil(3 * sigma)
    n = np.arange(-order, order + 1)
    g = math.exp(-sigma) * iv(n, sigma)
    g = g / g.sum()
    k = np.linspace(-1, 1, 3)
    xx, yy = np.meshgrid(k, k)
    den = xx ** 2 + yy ** 2
    den[:, 1] = 1
    sobel = xx / den

    def corr(a, kernel):  # 'valid' 2-D cross-correlation per channel
        kh, kw = kernel.shape
        out = np.zeros((a.shape[0], a.shape[1] - kh + 1, a.shape[2] - kw + 1))
        for i in range(kh):
            for j in range(kw):
                out += kernel[i, j] * a[:, i:i + out.shape[1], j:j + out.shape[2]]
        return out

    def blur(a):
        p = (len(g) - 1) // 2
        a = np.pad(a, ((0, 0), (p, p), (p, p)), mode='reflect')
        return corr(corr(a, g[:, None]), g[None, :])

    a = blur(img)
    a = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode='reflect')
    dx, dy = corr(a, sobel), corr(a, sobel.T)
    energy = np.sqrt((dx ** 2 + dy ** 2).sum(0, keepdims=True))
    return blur(energy)


def test_official_teacher_is_contour_energy_term_for_term():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 12, 14, dtype=torch.float64)
    ours = EdgeEnergy('official', 1.0)(images)
    for b in range(2):
        expected = torch.from_numpy(_official_contour_energy(images[b].numpy()))
        torch.testing.assert_close(ours[b], expected, rtol=1e-10, atol=1e-12)


def test_official_teacher_sees_the_normalized_input(tiny_net, batch):
    x, _ = batch
    task = create_task('edge', tiny_net, teacher='official', verbose=False)
    torch.testing.assert_close(task.teacher_map(x), EdgeEnergy('official')(x))
    sobel = create_task('edge', tiny_net, teacher='sobel', verbose=False)
    torch.testing.assert_close(sobel.teacher_map(x), EdgeEnergy('sobel')(sobel.space.to_pixel(x).clamp(0, 1)))


def _rms_mse(grad, edges):
    grad_n = grad / grad.square().mean().sqrt()
    edges = edges.expand_as(grad)
    return (grad_n - edges / edges.square().mean().sqrt()).square().mean()


def test_saliency_and_loss_targets_by_hand(tiny_net, batch):
    """Fig. 14 F: the saliency map max_c |∇ₓ f_t| against the teacher's first channel; G: the loss gradient."""
    x, y = batch
    edges = EdgeEnergy('sobel')(create_task('edge', tiny_net, verbose=False).space.to_pixel(x).clamp(0, 1))
    for target in ('saliency', 'loss'):
        task = create_task('edge', tiny_net, nn.CrossEntropyLoss(), target=target, weight_growth=0.0,
                           verbose=False)
        torch.manual_seed(2)
        out = task(x, y)
        torch.manual_seed(2)
        logits = tiny_net(x)
        t = torch.distributions.Categorical(logits=logits / 0.5).sample()
        xr = x.clone().requires_grad_(True)
        if target == 'saliency':
            (g,) = torch.autograd.grad(tiny_net(xr).gather(1, t[:, None]).sum(), xr)
            g = g.abs().amax(1, keepdim=True)
        else:
            (g,) = torch.autograd.grad(F.cross_entropy(tiny_net(xr), y), xr)
        torch.testing.assert_close(out['penalty'], _rms_mse(g, edges), rtol=1e-5, atol=1e-7)


def test_relaxed_sampling_is_the_official_gumbel_softmax(tiny_net, batch):
    """'smooth': RelaxedOneHotCategorical(T, logits).rsample(); the class gradient is that of Σ f·sample,
    which is differentiated through the sample too."""
    x, y = batch
    task = create_task('edge', tiny_net, sampling='relaxed', temperature=0.5, weight_growth=0.0, verbose=False)
    torch.manual_seed(4)
    out = task(x, y)
    torch.manual_seed(4)
    xr = x.clone().requires_grad_(True)
    logits = tiny_net(xr)
    sample = torch.distributions.RelaxedOneHotCategorical(torch.tensor(0.5), logits=logits).rsample()
    (g,) = torch.autograd.grad((logits * sample).sum(), xr)
    edges = EdgeEnergy('sobel')(task.space.to_pixel(x).clamp(0, 1))
    torch.testing.assert_close(out['penalty'], _rms_mse(g, edges), rtol=1e-5, atol=1e-7)


# --- guards ------------------------------------------------------------------------------------------

def test_gradnorm_on_relu_warns_once_at_creation_naming_the_fix():
    relu = timm.create_model('test_resnet', num_classes=3)
    with pytest.warns(UserWarning, match=r'piecewise-linear activations \(ReLU x\d+\).*--swap-activations gelu'):
        create_task('gradnorm', relu, verbose=False)
    smooth = timm.create_model('test_resnet', num_classes=3, act_layer='gelu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        create_task('gradnorm', smooth, verbose=False)  # no warning: smooth activations, double backprop


def test_fd_across_kinks_warns_and_is_exact_on_smooth_networks():
    with pytest.warns(UserWarning, match=r'fd on ResNet with kinks .*MaxPool2d x1.*double_backprop'):
        create_task('gradnorm', timm.create_model('test_resnet', num_classes=3, act_layer='gelu'), impl='fd',
                    verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        create_task('gradnorm', TinyNet(), impl='fd', verbose=False)


def test_fd_loss_value_is_the_penalized_loss(batch):
    """The FD task returns λ_CE·CE + w·penalty, the value double backprop returns, not its own estimate."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = batch
    values = {}
    for impl, own in (('double_backprop', {}), ('fd', {'fd_step': 1.0})):
        task = create_task('gradnorm', model, ce_weight=0.5, gn_weight=2.0, warmup_epochs=0, impl=impl,
                           verbose=False, **own)
        out = task(x, y)
        values[impl] = out['loss'].detach()
        torch.testing.assert_close(out['loss'].detach(), 0.5 * out['ce'] + 2.0 * out['penalty'])
    torch.testing.assert_close(values['fd'], values['double_backprop'])


def test_train_in_eval_mode_freezes_batchnorm_and_dropout(tmp_path):
    from timm_gradreg.train import Trainer, parse_args
    from helpers import tiny_train_argv, write_image_folder
    folder = write_image_folder(tmp_path / 'data')
    args, text = parse_args(tiny_train_argv(folder, tmp_path, 'evalmode', '--epochs', '1', '--no-bn-eval',
                                            '--train-in-eval-mode', '--drop', '0.5'))
    trainer = Trainer(args, text).setup()
    module = trainer.task.get_trainable_module()
    bn = next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))
    mean = bn.running_mean.clone()
    seen = []
    hook = module.register_forward_pre_hook(lambda m, inputs: seen.append(m.training))
    trainer.train_one_epoch(0)
    hook.remove()
    assert seen and not any(seen)  # every training forward ran in eval mode: dropout off
    assert torch.equal(bn.running_mean, mean)  # BatchNorm statistics frozen
