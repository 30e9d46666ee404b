"""TRADES, IGR, GradAlign, CURE and the cheaper GradNorm variants against their formulas.

Each reference is computed here from scratch in float64 on a pixel-space function of the model
(normalization written out), independently of the package's input-gradient helpers, and compared
with the task's loss value and its parameter gradient.
"""
import copy
import re

import pytest
import torch
import torch.nn.functional as F

from timm_gradreg import create_task

from conftest import TinyNet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _setup(seed=0, batch=4):
    torch.manual_seed(seed)
    model = TinyNet(num_classes=3, width=4).double()
    pixels = torch.rand(batch, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,))
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return model, pixels, y, (lambda p: (p - mean) / std)


def _pixel_grad(model, normalize, pixels, y):
    """Per-sample ∇ of CE w.r.t. pixels, differentiable."""
    p = pixels.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(normalize(p)), y, reduction='sum')
    (g,) = torch.autograd.grad(loss, p, create_graph=True)
    return g


class BNNet(torch.nn.Module):
    """A small smooth CNN with BatchNorm: the literature tasks in train mode and with BatchNorm frozen."""

    def __init__(self, classes=3, width=4):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.GELU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.BatchNorm2d(width), torch.nn.GELU())
        self.fc = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class PixelModel(torch.nn.Module):
    """``model`` behind the float64 normalization: a model of [0, 1] pixels whose mode is the model's."""

    def __init__(self, model, normalize):
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, pixels):
        return self.model(self.normalize(pixels))


def _bn_setup(train, seed=0, batch=6):
    torch.manual_seed(seed)
    model = BNNet().double()
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        model.train()(torch.randn(16, 3, 8, 8, dtype=torch.float64))
    model.train(train)
    pixels = torch.rand(batch, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,))
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return model, pixels, y, (lambda p: (p - mean) / std)


def _check_against(task, model, x, y, reference, seed=1):
    """The task's loss and parameter gradient against the reference's, each from the same model state and seed."""
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(seed)
    out = task(x, y)
    model.zero_grad()
    out['loss'].backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.load_state_dict(state)
    torch.manual_seed(seed)
    ref = reference()
    model.zero_grad()
    ref.backward()
    assert out['loss'].item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    return out


MODES = pytest.mark.parametrize('train', [True, False], ids=['batchnorm-train', 'batchnorm-frozen'])


# --- N-FGSM: pdejorge/N-FGSM, train.py (the training loop) -----------------------------------------------
def _nfgsm_reference(model, X, y, epsilon, alpha, unif, clip, std, lower_limit, upper_limit):
    """The authors' step in normalized units (their data_utils: ε and α divided by the std per channel), the model
    in its own mode throughout. Their noise loop draws U(−k·ε_c, k·ε_c) a channel at a time; drawn here in one call
    in the batch's order (as the task draws it), the same distribution."""
    eta = torch.zeros_like(X)
    if unif > 0:
        eps_pixels = epsilon[0][0][0].item() * std[0][0][0].item()  # ε in pixels, the same for every channel
        eta = torch.empty_like(X).uniform_(-unif * eps_pixels, unif * eps_pixels) / std
        eta = torch.max(torch.min(eta, upper_limit - X), lower_limit - X)
    eta.requires_grad = True
    output = model(X + eta)
    loss = F.cross_entropy(output, y)
    grad = torch.autograd.grad(loss, eta)[0]
    grad = grad.detach()
    delta = eta + alpha * torch.sign(grad)
    delta = torch.max(torch.min(delta, upper_limit - X), lower_limit - X)
    if clip is not None:
        delta = torch.max(torch.min(delta, clip), -clip)
    delta = delta.detach()
    output = model(X + delta)
    return F.cross_entropy(output, y)


@MODES
@pytest.mark.parametrize('clip', [None, 1.0], ids=['no-clip', 'clip-eps'])
def test_nfgsm_equals_the_authors_training_step(train, clip):
    model, pixels, y, normalize = _bn_setup(train)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(3, 1, 1)
    epsilon, alpha = (8 / 255) / std, (8 / 255) / std  # their defaults: --epsilon 8, --alpha 8, --unif 2
    lower_limit, upper_limit = (0 - mean) / std, (1 - mean) / std
    task = create_task('nfgsm', model, eps=8 / 255, clip=clip, mean=MEAN, std=STD, verbose=False)
    assert task.noise == 2.0 and task.step_size == pytest.approx(8 / 255)
    X = normalize(pixels)
    _check_against(task, model, X, y, lambda: _nfgsm_reference(
        model, X, y, epsilon, alpha, 2.0, None if clip is None else clip * epsilon, std, lower_limit, upper_limit))


# --- ELLE: LIONS-EPFL/ELLE, core/utils/train.py (Trainer.loss with --reg ELLE) -----------------------------
def _elle_reference(model, x, y, eps, noise, lin_reg):
    """Their ``loss`` with --attack-iter 1, --attack-step ε, --clamp False (their scripts), on a model of [0, 1]
    pixels (their --normalize False). They draw the noise, the triplet's ends and α tensor by tensor (the noise
    even at --input_noise_rate 0, multiplied by 0); the same uniform numbers are taken here in one sample-major
    call, as the task takes them, and fed to their formulas."""
    bs, d = x.shape[0], x[0].numel()
    k = d if noise > 0 else 0
    u = torch.rand(bs, k + 2 * d + 1, dtype=x.dtype)
    rand_ab = torch.cat((u[:, k:k + d].reshape(x.shape), u[:, k + d:k + 2 * d].reshape(x.shape)), dim=0)
    x_adv = x.clone()
    if noise > 0:
        x_adv = x_adv + noise * eps * (2 * u[:, :k].reshape(x.shape) - 1)
    x_adv.requires_grad = True
    grad = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)[0]
    x_adv = (x_adv + eps * torch.sign(grad)).detach()
    loss = F.cross_entropy(model(x_adv), y)
    x_ab = x.repeat([2, 1, 1, 1])
    x_ab = x_ab + eps * (2 * rand_ab - 1)
    alpha = u[:, -1].reshape(bs, 1, 1, 1)
    x_c = (1 - alpha) * x_ab[:bs] + alpha * x_ab[bs:]
    alpha = alpha.squeeze()
    losses = torch.nn.CrossEntropyLoss(reduction='none')(model(torch.cat((x_ab, x_c), dim=0)), y.repeat([3]))
    lin_err = torch.nn.MSELoss()(losses[2 * bs:], (1 - alpha) * losses[:bs] + alpha * losses[bs:2 * bs])
    return loss + lin_reg * lin_err


@MODES
@pytest.mark.parametrize('noise', [0.0, 2.0], ids=['elle', 'nfgsm-elle'])
def test_elle_equals_the_authors_loss(train, noise):
    model, pixels, y, normalize = _bn_setup(train)
    task = create_task('elle', model, eps=8 / 255, weight=1000.0, noise=noise, mean=MEAN, std=STD, verbose=False)
    out = _check_against(task, model, normalize(pixels), y, lambda: _elle_reference(
        PixelModel(model, normalize), pixels, y, 8 / 255, noise, 1000.0))
    assert out['penalty'].item() > 0 and out['weight'].item() == 1000.0


def _elle_a_reference(penalties, lambda_aux, decay, sensitivity):
    """Their on/off schedule (train.py and Trainer.train, --lambda_schedule onoff): the λ each step trains with."""
    import numpy as np
    lin_reg, values, used = 0.0, [], []
    for lin_err in penalties:
        used.append(lin_reg)
        if len(values) > 2 and lin_err > np.mean(values) + sensitivity * np.std(values):
            lin_reg = lambda_aux
        else:
            lin_reg *= decay
        values.append(lin_err)
    return used


def test_elle_a_weight_follows_the_authors_schedule():
    from timm_gradreg.tasks import AdaptiveWeight
    penalties = [0.5, 0.52, 0.49, 0.51, 3.0, 0.6, 0.55, 0.5, 9.0, 0.4, 0.45] + [0.5 + 0.01 * i for i in range(20)]
    schedule, used = AdaptiveWeight(4000.0, 0.99, 2.0), []
    for p in penalties:
        used.append(schedule.value)
        schedule.update(p)
    expected = _elle_a_reference(penalties, 4000.0, 0.99, 2.0)
    assert used == pytest.approx(expected, rel=1e-12, abs=0)
    assert max(expected) == 4000.0 and expected[5] == 4000.0 and expected[4] == 0.0


def test_elle_a_trains_with_the_scheduled_weight_and_keeps_it_in_the_task_state():
    model, pixels, y, normalize = _bn_setup(True)
    task = create_task('elle', model, eps=8 / 255, weight=4000.0, adaptive=True, mean=MEAN, std=STD, verbose=False)
    weights, penalties = [], []
    for step in range(5):
        torch.manual_seed(step)
        out = task(normalize(pixels), y)
        weights.append(out['weight'].item())
        penalties.append(out['penalty'].item())
    assert weights == pytest.approx(_elle_a_reference(penalties, 4000.0, 0.99, 2.0), abs=0)
    restored = create_task('elle', copy.deepcopy(model), weight=4000.0, adaptive=True, mean=MEAN, std=STD,
                           verbose=False)
    restored.load_task_state(task.get_task_state())
    assert restored.schedule.state_dict() == task.schedule.state_dict() and restored.schedule.count == 5


# --- PGD-2: nmndeep/revisiting-at, autopgd_train_clean.py (apgd_train) and main.py (WrappedModel) -------------
def _apgd_train_reference(model, x, y, eps, n_iter):
    """Their apgd_train with norm 'Linf', loss 'ce', no random start (its only form): returns x_best."""
    ce = lambda logits, t: F.cross_entropy(logits, t, reduction='none')  # noqa: E731
    x_adv = x.clone().clamp(0., 1.)
    x_best = x_adv.clone().detach()
    loss_steps = torch.zeros([n_iter, x.shape[0]])
    n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    k, thr_decr = n_iter_2 + 0, .75
    step_size = 2. * eps * torch.ones([x.shape[0], 1, 1, 1], dtype=x.dtype)
    counter3 = 0
    x_adv.requires_grad_()
    loss_indiv = ce(model(x_adv), y)
    grad = torch.autograd.grad(loss_indiv.sum(), [x_adv])[0].detach()
    grad_best = grad.clone()
    x_adv = x_adv.detach()
    loss_best = loss_indiv.detach().clone()
    loss_best_last_check, reduced_last_check = loss_best.clone(), torch.ones_like(loss_best)
    x_adv_old = x_adv.clone()
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        x_adv_1 = x_adv + step_size * torch.sign(grad)
        x_adv_1 = torch.clamp(torch.min(torch.max(x_adv_1, x - eps), x + eps), 0.0, 1.0)
        x_adv_1 = torch.clamp(torch.min(torch.max(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps),
                                        x + eps), 0.0, 1.0)
        x_adv = x_adv_1 + 0.
        if i < n_iter - 1:
            x_adv.requires_grad_()
        loss_indiv = ce(model(x_adv), y)
        if i < n_iter - 1:
            grad = torch.autograd.grad(loss_indiv.sum(), [x_adv])[0].detach()
        x_adv = x_adv.detach()
        y1 = loss_indiv.detach().clone()
        loss_steps[i] = y1 + 0
        ind = (y1 > loss_best).nonzero().squeeze()
        x_best[ind] = x_adv[ind].clone()
        grad_best[ind] = grad[ind].clone()
        loss_best[ind] = y1[ind] + 0
        counter3 += 1
        if counter3 == k:
            t = torch.zeros(loss_steps.shape[1])
            for counter5 in range(k):
                t += (loss_steps[i - counter5] > loss_steps[i - counter5 - 1]).float()
            fl_oscillation = (t <= k * thr_decr * torch.ones_like(t)).float().to(x.dtype)
            fl_reduce_no_impr = (1. - reduced_last_check) * (loss_best_last_check >= loss_best).to(x.dtype)
            fl_oscillation = torch.max(fl_oscillation, fl_reduce_no_impr)
            reduced_last_check = fl_oscillation.clone()
            loss_best_last_check = loss_best.clone()
            if fl_oscillation.sum() > 0:
                ind_fl_osc = (fl_oscillation > 0).nonzero().squeeze()
                step_size[ind_fl_osc] /= 2.0
                x_adv[ind_fl_osc] = x_best[ind_fl_osc].clone()
                grad[ind_fl_osc] = grad_best[ind_fl_osc].clone()
            counter3 = 0
            k = max(k - size_decr, n_iter_min)
    return x_best


def _pgd2_reference(model, x, y, eps, n_iter, train):
    """WrappedModel.forward: the attack in eval mode, then the model in training mode on x_best (here: in its own
    mode, so the BatchNorm-frozen case is covered too)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    z = _apgd_train_reference(model, x, y, eps, n_iter)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train(train)
    return F.cross_entropy(model(z), y)


@MODES
@pytest.mark.parametrize('steps', [2, 5], ids=['pgd2', 'apgd5'])
def test_pgd2_equals_the_authors_apgd_training_step(train, steps):
    model, pixels, y, normalize = _bn_setup(train)
    task = create_task('pgd', model, eps=4 / 255, steps=steps, algorithm='apgd', random_start=False,
                       warmup_epochs=0, mean=MEAN, std=STD, verbose=False)
    _check_against(task, model, normalize(pixels), y,
                   lambda: _pgd2_reference(PixelModel(model, normalize), pixels, y, 4 / 255, steps, train))
    assert model.training == train


def test_pgd2_trains_on_an_iterate_the_plain_pgd_step_would_not_reach():
    model, pixels, y, normalize = _bn_setup(False)
    task = create_task('pgd', model, eps=4 / 255, steps=2, algorithm='apgd', random_start=False,
                       warmup_epochs=0, mean=MEAN, std=STD, verbose=False)
    adv = task.space.to_pixel(task.perturb(normalize(pixels), y, 1.0))
    delta = adv - pixels
    assert delta.abs().max().item() <= 4 / 255 + 1e-12
    clean = F.cross_entropy(model(normalize(pixels)), y, reduction='none')
    attacked = F.cross_entropy(model(normalize(adv)), y, reduction='none')
    assert bool((attacked >= clean).all()) and attacked.sum() > clean.sum()


@pytest.mark.parametrize('kwargs', [{}, {'step_size': 1 / 255, 'random_start': False},
                                    {'random_start': False, 'select': 'sample'}],
                         ids=['random-start', 'step-size', 'select'])
def test_apgd_refuses_the_options_it_sets_itself(kwargs):
    model, _, _, _ = _bn_setup(True)
    with pytest.raises(ValueError, match='apgd attack starts at the clean image'):
        create_task('pgd', model, algorithm='apgd', steps=2, verbose=False, **kwargs)


# --- IGR: dtak/adversarial-robustness-public, neural_network.py ------------------------------------------
def _igr_reference(model, X, y, l2dbl):
    """loss_function(l2_double_backprop=l2dbl): cross_entropy (batch mean) + l2dbl·tf.nn.l2_loss(
    tf.gradients(cross_entropy, X)); tf.nn.l2_loss(t) = sum(t²)/2. X in [0, 1] pixels."""
    X = X.detach().requires_grad_(True)
    cross_entropy = F.cross_entropy(model(X), y)
    (cross_entropy_grads,) = torch.autograd.grad(cross_entropy, X, create_graph=True)
    return cross_entropy + l2dbl * (cross_entropy_grads ** 2).sum() / 2


@MODES
def test_igr_equals_the_authors_l2_double_backprop(train):
    model, pixels, y, normalize = _bn_setup(train)
    task = create_task('igr', model, weight=1000.0, mean=MEAN, std=STD, verbose=False)
    _check_against(task, model, normalize(pixels), y, lambda: _igr_reference(lambda p: model(normalize(p)), pixels,
                                                                              y, 1000.0))


# --- CURE: F-Salehi/CURE_robustness, CURE/CURE.py ----------------------------------------------------------
def _cure_reference(net, inputs, targets, h, lambda_, train, squared):
    """CURELearner._train + _find_z + regularizer on the (normalized) network input. Old torch summed the
    ones(B) given as grad_outputs of a scalar loss to its shape, a seed of B: B·∇(mean) = ∇(sum), the
    per-sample gradients. ``squared``: the paper's ‖·‖₂² in place of the code's ‖·‖₂."""
    criterion = torch.nn.CrossEntropyLoss()
    batch = float(inputs.size(0))
    outputs = net.train(train)(inputs)
    # _find_z
    inputs = inputs.detach().clone().requires_grad_()
    loss_z = criterion(net.eval()(inputs), targets)
    (grad,) = torch.autograd.grad(loss_z, inputs, grad_outputs=torch.tensor(batch, dtype=loss_z.dtype))
    z = torch.sign(grad).detach() + 0.
    z = 1. * h * (z + 1e-7) / (z.reshape(z.size(0), -1).norm(dim=1)[:, None, None, None] + 1e-7)
    # regularizer
    outputs_pos = net.eval()(inputs + z)
    outputs_orig = net.eval()(inputs)
    loss_pos = criterion(outputs_pos, targets)
    loss_orig = criterion(outputs_orig, targets)
    (grad_diff,) = torch.autograd.grad(loss_pos - loss_orig, inputs,
                                       grad_outputs=torch.tensor(batch, dtype=loss_pos.dtype), create_graph=True)
    reg = grad_diff.reshape(grad_diff.size(0), -1).norm(dim=1)
    reg = reg ** 2 if squared else reg
    regularizer = torch.sum(lambda_ * reg) / batch
    net.train(train)
    return criterion(outputs, targets) + regularizer


@MODES
@pytest.mark.parametrize('norm', ['squared', 'plain'])
def test_cure_equals_the_authors_code(train, norm):
    model, pixels, y, normalize = _bn_setup(train)
    task = create_task('cure', model, weight=4.0, h=1.5, norm=norm, mean=MEAN, std=STD, verbose=False)
    out = _check_against(task, model, normalize(pixels), y,
                         lambda: _cure_reference(model, normalize(pixels), y, 1.5, 4.0, train, norm == 'squared'))
    assert model.training == train  # the model's mode is restored after the eval-mode passes
    assert out['penalty'] > 0


# --- GradAlign: tml-epfl/understanding-fast-adv-training, train.py and utils.py ---------------------------
def _gradalign_reference(model, X, y, eps, lam, attack_init):
    """The training step of train.py with --attack fgsm, --fgsm_alpha 1.25, --grad_align_cos_lambda lam
    (double_bp), X in [0, 1] pixels; the model in whatever mode it is in."""
    def clamp(X, lower_limit, upper_limit):
        return torch.max(torch.min(X, torch.as_tensor(upper_limit, dtype=X.dtype)),
                         torch.as_tensor(lower_limit, dtype=X.dtype))

    def get_uniform_delta(shape, eps, requires_grad=True):
        delta = torch.zeros(shape, dtype=X.dtype)
        delta.uniform_(-eps, eps)
        delta.requires_grad = requires_grad
        return delta

    def get_input_grad(model, X, y, eps, delta_init='none', backprop=False):
        delta = torch.zeros_like(X, requires_grad=True) if delta_init == 'none' else get_uniform_delta(X.shape, eps)
        output = model(X + delta)
        loss = F.cross_entropy(output, y)
        grad = torch.autograd.grad(loss, delta, create_graph=True if backprop else False)[0]
        if not backprop:
            grad, delta = grad.detach(), delta.detach()
        return grad

    if attack_init == 'zero':
        delta = torch.zeros_like(X, requires_grad=True)
    else:
        delta = get_uniform_delta(X.shape, eps, requires_grad=True)
    X_adv = clamp(X + delta, 0, 1)
    output = model(X_adv)
    loss = F.cross_entropy(output, y)
    grad = torch.autograd.grad(loss, delta, create_graph=True)[0]
    grad = grad.detach()
    argmax_delta = eps * torch.sign(grad)
    delta.data = clamp(delta.data + 1.25 * argmax_delta, -eps, eps)
    delta.data = clamp(X + delta.data, 0, 1) - X
    delta = delta.detach()
    output = model(X + delta)
    loss = F.cross_entropy(output, y)
    reg = torch.zeros(1, dtype=X.dtype)[0]
    grad2 = get_input_grad(model, X, y, eps, delta_init='random_uniform', backprop=True)
    grads_nnz_idx = ((grad ** 2).sum([1, 2, 3]) ** 0.5 != 0) * ((grad2 ** 2).sum([1, 2, 3]) ** 0.5 != 0)
    grad1, grad2 = grad[grads_nnz_idx], grad2[grads_nnz_idx]
    grad1_norms, grad2_norms = (grad1 ** 2).sum([1, 2, 3]) ** 0.5, (grad2 ** 2).sum([1, 2, 3]) ** 0.5
    grad1_normalized = grad1 / grad1_norms[:, None, None, None]
    grad2_normalized = grad2 / grad2_norms[:, None, None, None]
    cos = torch.sum(grad1_normalized * grad2_normalized, (1, 2, 3))
    reg += lam * (1.0 - cos.mean())
    return loss + reg


@MODES
@pytest.mark.parametrize('attack_init', ['zero', 'random'])
def test_gradalign_equals_the_authors_training_step(train, attack_init):
    model, pixels, y, normalize = _bn_setup(train)
    eps = 8 / 255
    task = create_task('gradalign', model, eps=eps, random_start=attack_init == 'random', mean=MEAN, std=STD,
                       verbose=False)
    assert task.weight == pytest.approx(0.2, abs=1e-12)  # the authors' λ at ε 8/255 (sh/exps_diff_eps_cifar10.sh)
    _check_against(task, model, normalize(pixels), y,
                   lambda: _gradalign_reference(lambda p: model(normalize(p)), pixels, y, eps, 0.2, attack_init))


def test_gradalign_weight_is_the_authors_table():
    from timm_gradreg.tasks.gradalign import gradalign_weight
    # sh/exps_diff_eps_cifar10.sh: --grad_align_cos_lambda for --eps 1, 4, 8, 12, 16 (rounded to 3 digits there)
    for eps, lam in ((1, 0.027), (4, 0.063), (8, 0.200), (12, 0.632), (16, 2.000)):
        assert gradalign_weight(eps / 255) == pytest.approx(lam, abs=6e-4)


def test_gradalign_leaves_samples_with_a_zero_gradient_out_of_the_mean():
    model, pixels, y, normalize = _bn_setup(False)
    task = create_task('gradalign', model, mean=MEAN, std=STD, verbose=False)
    g = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    zero = g.clone()
    zero[1] = 0
    kept = [0, 2, 3]
    expected = 1 - F.cosine_similarity(g[kept].flatten(1), (2 * g[kept] + 0.1).flatten(1)).mean()
    assert task.alignment(zero, 2 * g + 0.1).item() == pytest.approx(expected.item(), rel=1e-12)


# --- TRADES: yaodongyu/TRADES, trades.py ----------------------------------------------------------------
def _trades_reference(model, x_natural, y, step_size, epsilon, perturb_steps, beta, train):
    """trades_loss(distance='l_inf') line by line; x in [0, 1] pixels. ``train``: the reference's
    model.train() before the loss (False: BatchNorm kept frozen, as a run with it in eval mode)."""
    criterion_kl = torch.nn.KLDivLoss(reduction='sum')  # size_average=False
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape, dtype=x_natural.dtype).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train(train)
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                    F.softmax(model(x_natural), dim=1))
    return loss_natural + beta * loss_robust


@MODES
def test_trades_equals_the_authors_loss(train):
    model, pixels, y, normalize = _bn_setup(train)
    eps = 8 / 255
    task = create_task('trades', model, beta=6.0, eps=eps, steps=3, mean=MEAN, std=STD, verbose=False)
    from timm_gradreg.tasks.trades import trades_kl  # the boundary term by hand: KL(p||q) = Σ p log(p/q)
    p_logits, q_logits = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    p, q = p_logits.softmax(1), q_logits.softmax(1)
    assert trades_kl(q_logits, p_logits).item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-6)
    pixel_model = PixelModel(model, normalize)  # the authors' models take [0, 1] pixels
    _check_against(task, model, normalize(pixels), y, lambda: _trades_reference(
        pixel_model, pixels, y, eps * 0.007 / 0.031, eps, 3, 6.0, train))


def _gradnorm_penalty(model, normalize, pixels, y, eps=4 / 255, sigma=0.225):
    """(ε/σ)·mean_b ||∇ₓCE_b||₁ with the gradient w.r.t. the normalized input, as Eq. 2 is written."""
    x = normalize(pixels).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction='sum'), x, create_graph=True)
    return eps / sigma * g.abs().sum((1, 2, 3)).mean()


@pytest.mark.parametrize('impl', ['double_backprop', 'fd'])
def test_gradnorm_penalty_fraction_takes_the_penalty_on_a_random_subset(impl):
    model, pixels, y, normalize = _setup(batch=8)
    task = create_task('gradnorm', model, ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, penalty_fraction=0.5,
                       impl=impl, mean=MEAN, std=STD, verbose=False)

    def reference():
        chosen = torch.randperm(8)[:4]  # the task's draw: same seed, same first random call
        return (0.8 * F.cross_entropy(model(normalize(pixels)), y)
                + 1.2 * _gradnorm_penalty(model, normalize, pixels[chosen], y[chosen]))
    if impl == 'double_backprop':
        out = _check_against(task, model, normalize(pixels), y, reference)
    else:  # finite differences: the same loss value, the gradient to first order in h
        torch.manual_seed(1)
        out = task(normalize(pixels), y)
        torch.manual_seed(1)
        assert out['loss'].item() == pytest.approx(reference().item(), rel=1e-10)
    assert out['output'].shape == (8, 3)


def test_gradnorm_every_k_steps_weighs_the_penalty_k_times():
    model, pixels, y, normalize = _setup()
    task = create_task('gradnorm', model, ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, every=3, mean=MEAN, std=STD,
                       verbose=False)
    ce = F.cross_entropy(model(normalize(pixels)), y).item()
    penalty = _gradnorm_penalty(model, normalize, pixels, y).item()
    losses = [task(normalize(pixels), y)['loss'].item() for _ in range(4)]
    assert losses[0] == pytest.approx(0.8 * ce + 3 * 1.2 * penalty, rel=1e-10)
    assert losses[1] == losses[2] == pytest.approx(0.8 * ce, rel=1e-12)
    assert losses[3] == pytest.approx(losses[0], rel=1e-12)
    assert task.get_task_state()['steps_done'] == 4
    assert task.step_cycle == 3  # a step's cost is the mean over this many steps


def test_gradnorm_reduced_resolution_penalizes_the_downsampled_images():
    model, pixels, y, normalize = _setup()
    task = create_task('gradnorm', model, ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, resolution=0.5, mean=MEAN,
                       std=STD, verbose=False)
    small = F.interpolate(pixels, scale_factor=0.5, mode='bilinear', align_corners=False, antialias=True)

    def reference():
        return 0.8 * F.cross_entropy(model(normalize(pixels)), y) + 1.2 * _gradnorm_penalty(model, normalize, small, y)
    _check_against(task, model, normalize(pixels), y, reference)


def test_gradnorm_reduced_resolution_on_a_fraction_penalizes_the_chosen_downsampled_images():
    model, pixels, y, normalize = _setup(batch=8)
    task = create_task('gradnorm', model, ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, resolution=0.5,
                       penalty_fraction=0.25, mean=MEAN, std=STD, verbose=False)

    def reference():
        chosen = torch.randperm(8)[:2]  # the task's draw: same seed, same first random call
        small = F.interpolate(pixels[chosen], scale_factor=0.5, mode='bilinear', align_corners=False, antialias=True)
        return (0.8 * F.cross_entropy(model(normalize(pixels)), y)
                + 1.2 * _gradnorm_penalty(model, normalize, small, y[chosen]))
    _check_against(task, model, normalize(pixels), y, reference)


PLACEMENT_OPTIONS = {'batch': {}, 'fraction': {'penalty_fraction': 0.5}, 'resolution': {'resolution': 0.5},
                     'every': {'every': 2}}


@pytest.mark.parametrize('impl', ['double_backprop', 'fd'])
@pytest.mark.parametrize('placement', list(PLACEMENT_OPTIONS))
def test_gradnorm_placements_work_with_each_gradient_and_log_the_same_keys(placement, impl):
    """Where the penalty is taken and how its gradient is computed are independent: the loss value of each
    placement is the same by double backprop and by finite differences (FD's extra terms enter with value
    0), and a step without the penalty (every k-th) returns the keys of one with it, penalty and weight 0."""
    from timm_gradreg.tasks import PLACEMENTS
    assert set(PLACEMENT_OPTIONS) - {'every'} == set(PLACEMENTS.names())  # a new placement gets a row here
    model, pixels, y, normalize = _setup(batch=8)
    options = dict(ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, mean=MEAN, std=STD, verbose=False)
    values = {}
    for name in ('double_backprop', impl):
        task = create_task('gradnorm', model, impl=name, **options, **PLACEMENT_OPTIONS[placement])
        torch.manual_seed(3)
        values[name] = [task(normalize(pixels), y) for _ in range(2)]
    first, second = values[impl]
    assert first['loss'].item() == pytest.approx(values['double_backprop'][0]['loss'].item(), rel=1e-10)
    assert set(first) == set(second) == {'loss', 'output', 'ce', 'penalty', 'weight'}
    assert first['penalty'].item() > 0 and first['weight'].item() == pytest.approx(1.2 * (2 if placement == 'every' else 1))
    if placement == 'every':
        assert second['penalty'].item() == 0 and second['weight'].item() == 0
        assert second['loss'].item() == pytest.approx(0.8 * F.cross_entropy(model(normalize(pixels)), y).item(),
                                                      rel=1e-12)


def test_gradnorm_every_k_keeps_its_phase_through_the_task_state():
    model, pixels, y, normalize = _setup()
    options = dict(ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, every=3, mean=MEAN, std=STD, verbose=False)
    task = create_task('gradnorm', model, **options)
    for _ in range(2):
        task(normalize(pixels), y)
    resumed = create_task('gradnorm', model, **options)
    resumed.load_task_state(task.get_task_state())
    assert resumed(normalize(pixels), y)['weight'].item() == 0  # step 3 of 3: natural, as the original's would be
    assert resumed(normalize(pixels), y)['weight'].item() == pytest.approx(3 * 1.2)
    resumed.eval()  # validation: the penalty at its own weight on every call, the phase untouched
    assert resumed(normalize(pixels), y)['weight'].item() == pytest.approx(1.2)
    assert resumed.get_task_state()['steps_done'] == 4


@pytest.mark.parametrize('options, message', [({'every': 0}, 'every must be an integer >= 1, got 0'),
                                              ({'penalty_fraction': 1.5}, 'penalty_fraction must be in (0, 1]'),
                                              ({'resolution': 0.0}, 'resolution must be in (0, 1], got 0.0'),
                                              ({'impl': 'exact'}, "Unknown GradNorm parameter-gradient rule 'exact'. "
                                                                  'Valid: double_backprop, fd.'),
                                              ({'inputs': 'pgd', 'fd_step': 0.2},
                                               "GradNorm option 'fd_step' applies to impl='fd', not "
                                               "impl='double_backprop'")])
def test_gradnorm_strategy_options_are_checked(options, message):
    model, *_ = _setup()
    with pytest.raises(ValueError, match=re.escape(message)):
        create_task('gradnorm', model, verbose=False, **options)


@pytest.mark.parametrize('options', [['--gradreg', 'trades', '--trades-steps', '2'], ['--gradreg', 'igr'],
                                     ['--gradreg', 'gradalign'], ['--gradreg', 'cure'], ['--gradreg', 'nfgsm'],
                                     ['--gradreg', 'elle', '--elle-adaptive'],
                                     ['--gradreg', 'pgd', '--attack-algorithm', 'apgd', '--attack-steps', '2',
                                      '--no-attack-random-start'],
                                     ['--gradreg', 'gradnorm', '--gn-penalty-fraction', '0.5', '--gn-every', '2',
                                      '--gn-resolution', '0.5']],
                         ids=['trades', 'igr', 'gradalign', 'cure', 'nfgsm', 'elle-a', 'pgd2', 'gradnorm-cheap'])
def test_each_trains_in_timm_train(options, tmp_path):
    from timm_gradreg.cli.train import main as train_main
    from helpers import tiny_train_argv, write_image_folder
    folder = write_image_folder(tmp_path / 'data', classes=3, train_per_class=4, val_per_class=2)
    assert train_main(tiny_train_argv(folder, tmp_path / 'out', 'run', '--epochs', '1', *options, classes=3)) == 0
    row = open(tmp_path / 'out' / 'run' / 'summary.csv').read().splitlines()
    assert len(row) == 2 and 'train_loss' in row[0] and 'eval_advtop1' in row[0]
