"""TRADES, IGR, GradAlign, CURE and the cheaper GradNorm variants against their formulas.

Each reference is computed here from scratch in float64 on a pixel-space function of the model
(normalization written out), independently of the package's input-gradient helpers, and compared
with the task's loss value and its parameter gradient.
"""
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


def _check(task, model, x, y, reference, seed=1):
    torch.manual_seed(seed)
    out = task(x, y)
    model.zero_grad()
    out['loss'].backward()
    got = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(seed)
    ref = reference()
    model.zero_grad()
    ref.backward()
    assert out['loss'].item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    return out


def test_igr_is_ce_plus_lambda_squared_l2_of_the_pixel_gradient():
    model, pixels, y, normalize = _setup()
    task = create_task('igr', model, weight=3.0, mean=MEAN, std=STD, verbose=False)

    def reference():
        ce = F.cross_entropy(model(normalize(pixels)), y)
        g = _pixel_grad(model, normalize, pixels, y)
        return ce + 3.0 * (g ** 2).sum((1, 2, 3)).mean()
    _check(task, model, normalize(pixels), y, reference)


def test_cure_is_ce_plus_gamma_squared_gradient_difference_along_the_sign():
    model, pixels, y, normalize = _setup()
    task = create_task('cure', model, weight=4.0, h=0.3, mean=MEAN, std=STD, verbose=False)

    def reference():
        ce = F.cross_entropy(model(normalize(pixels)), y)
        g = _pixel_grad(model, normalize, pixels, y)
        z = g.detach().sign()
        z = z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        g_shift = _pixel_grad(model, normalize, (pixels + 0.3 * z).clamp(0, 1), y)
        return ce + 4.0 * ((g_shift - g) ** 2).sum((1, 2, 3)).mean()
    _check(task, model, normalize(pixels), y, reference)


@pytest.mark.parametrize('warmup_epochs,epoch,step_scale', [(0, 0.0, 1.0), (4, 2.7, 0.5), (4, 0.9, 0.0)],
                         ids=['paper', 'warm-up-half', 'warm-up-start'])
def test_gradalign_is_fgsm_ce_plus_lambda_one_minus_cosine(warmup_epochs, epoch, step_scale):
    model, pixels, y, normalize = _setup()
    eps = 8 / 255
    task = create_task('gradalign', model, weight=0.5, eps=eps, warmup_epochs=warmup_epochs, mean=MEAN, std=STD,
                       verbose=False)
    task.set_epoch(epoch)  # the FGSM step is 1.25·ε·min(floor(epoch), E)/E during a warm-up of E epochs

    def reference():
        # FGSM-RS: uniform start in the ε-ball, one signed step of 1.25·ε, projected; model in eval mode
        delta = torch.empty_like(pixels).uniform_(-eps, eps)
        start = (pixels + delta).clamp(0, 1).requires_grad_(True)
        loss = F.cross_entropy(model(normalize(start)), y, reduction='sum')
        (g,) = torch.autograd.grad(loss, start)
        step = 1.25 * eps * step_scale
        adv = torch.min(torch.max(start.detach() + step * g.sign(), pixels - eps), pixels + eps).clamp(0, 1)
        ce = F.cross_entropy(model(normalize(adv)), y)
        eta = torch.empty_like(pixels).uniform_(-eps, eps)
        g1 = _pixel_grad(model, normalize, pixels, y).flatten(1)
        g2 = _pixel_grad(model, normalize, (pixels + eta).clamp(0, 1), y).flatten(1)
        cos = (g1 * g2).sum(1) / (g1.norm(dim=1) * g2.norm(dim=1))
        return ce + 0.5 * (1 - cos).mean()
    _check(task, model, normalize(pixels), y, reference)


def test_trades_kl_and_loss():
    model, pixels, y, normalize = _setup()
    eps = 8 / 255
    task = create_task('trades', model, beta=6.0, eps=eps, steps=3, mean=MEAN, std=STD, verbose=False)
    # the boundary term by hand for two distributions: KL(p||q) = Σ p log(p/q)
    from timm_gradreg.tasks.trades import trades_kl
    p_logits, q_logits = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    p, q = p_logits.softmax(1), q_logits.softmax(1)
    assert trades_kl(q_logits, p_logits).item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-6)

    def reference():
        with torch.no_grad():
            clean = model(normalize(pixels))
        adv = (pixels + 0.001 * torch.randn_like(pixels)).clamp(0, 1)
        for _ in range(3):
            adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(normalize(adv)), 1), F.softmax(clean, 1), reduction='sum')
            (g,) = torch.autograd.grad(kl, adv)
            adv = torch.min(torch.max(adv.detach() + eps * 0.007 / 0.031 * g.sign(), pixels - eps), pixels + eps)
            adv = adv.clamp(0, 1)
        out = model(normalize(pixels))
        kl = F.kl_div(F.log_softmax(model(normalize(adv)), 1), F.softmax(out, 1), reduction='batchmean')
        return F.cross_entropy(out, y) + 6.0 * kl
    _check(task, model, normalize(pixels), y, reference)


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
        out = _check(task, model, normalize(pixels), y, reference)
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


def test_gradnorm_reduced_resolution_penalizes_the_downsampled_images():
    model, pixels, y, normalize = _setup()
    task = create_task('gradnorm', model, ce_weight=0.8, gn_weight=1.2, warmup_epochs=0, resolution=0.5, mean=MEAN,
                       std=STD, verbose=False)
    small = F.interpolate(pixels, scale_factor=0.5, mode='bilinear', align_corners=False, antialias=True)

    def reference():
        return 0.8 * F.cross_entropy(model(normalize(pixels)), y) + 1.2 * _gradnorm_penalty(model, normalize, small, y)
    _check(task, model, normalize(pixels), y, reference)


@pytest.mark.parametrize('options', [['--gradreg', 'trades', '--trades-steps', '2'], ['--gradreg', 'igr'],
                                     ['--gradreg', 'gradalign'], ['--gradreg', 'cure'],
                                     ['--gradreg', 'gradnorm', '--gn-penalty-fraction', '0.5', '--gn-every', '2',
                                      '--gn-resolution', '0.5']],
                         ids=['trades', 'igr', 'gradalign', 'cure', 'gradnorm-cheap'])
def test_each_trains_in_timm_train(options, tmp_path):
    from timm_gradreg.cli.train import main as train_main
    from helpers import tiny_train_argv, write_image_folder
    folder = write_image_folder(tmp_path / 'data', classes=3, train_per_class=4, val_per_class=2)
    assert train_main(tiny_train_argv(folder, tmp_path / 'out', 'run', '--epochs', '1', *options, classes=3)) == 0
    row = open(tmp_path / 'out' / 'run' / 'summary.csv').read().splitlines()
    assert len(row) == 2 and 'train_loss' in row[0] and 'eval_advtop1' in row[0]
