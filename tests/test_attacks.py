"""PGD / FGSM in pixel space: budget, box, strength, modes."""
import pytest
import torch
import torch.nn.functional as F

from timm_gradreg import PixelSpace, fgsm_attack, pgd_attack
from timm_gradreg.core.attacks import dlr_loss, get_attack_loss, margin_loss

from conftest import TinyNet

SPACE = PixelSpace((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyNet(num_classes=5)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(8, 3, 8, 8, generator=g)
    pixels[0] = 0.0  # on the box's faces
    pixels[1] = 1.0
    return SPACE.to_normalized(pixels), torch.randint(0, 5, (8,), generator=g)


def _ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction='none')


@pytest.mark.parametrize('attack', ['pgd', 'fgsm'])
def test_attack_stays_in_the_eps_ball_and_the_pixel_box_and_raises_the_loss(model, data, attack):
    x, y = data
    eps = 8 / 255
    if attack == 'pgd':
        adv = pgd_attack(model, x, y, eps=eps, step_size=2 / 255, steps=10, space=SPACE)
    else:
        adv = fgsm_attack(model, x, y, eps=eps, space=SPACE)
    clean_pix, adv_pix = SPACE.to_pixel(x), SPACE.to_pixel(adv)
    assert (adv_pix - clean_pix).abs().max() <= eps + 1e-6
    assert adv_pix.min() >= -1e-6 and adv_pix.max() <= 1 + 1e-6
    assert (adv_pix - clean_pix).abs().max() > 0.5 * eps  # it moved
    assert _ce(model, adv, y).mean() > _ce(model, x, y).mean()


def test_pgd_is_stronger_than_fgsm_and_best_loss_is_best(model, data):
    x, y = data
    torch.manual_seed(0)
    fgsm = fgsm_attack(model, x, y, eps=4 / 255, space=SPACE, random_start=False)
    pgd = pgd_attack(model, x, y, eps=4 / 255, step_size=1 / 255, steps=10, space=SPACE, random_start=False)
    assert _ce(model, pgd, y).sum() > _ce(model, fgsm, y).sum()
    torch.manual_seed(1)
    last = pgd_attack(model, x, y, eps=4 / 255, step_size=3 / 255, steps=5, space=SPACE)
    torch.manual_seed(1)
    best = pgd_attack(model, x, y, eps=4 / 255, step_size=3 / 255, steps=5, space=SPACE, select='sample')
    assert (_ce(model, best, y) >= _ce(model, last, y) - 1e-6).all()


def test_attack_restores_each_module_mode(model, data):
    x, y = data
    model.train()
    model.conv1.eval()  # a frozen part stays frozen
    seen = []
    model.conv2.register_forward_hook(lambda m, i, o: seen.append(m.training))
    pgd_attack(model, x, y, eps=4 / 255, step_size=1 / 255, steps=2, space=SPACE)
    assert seen == [False, False]  # attacked in eval mode
    assert model.training and model.conv2.training and not model.conv1.training


def test_attack_leaves_parameter_gradients_alone(model, data):
    x, y = data
    pgd_attack(model, x, y, eps=4 / 255, step_size=1 / 255, steps=3, space=SPACE)
    assert all(p.grad is None for p in model.parameters())


def test_attack_needs_no_parameter_graph_and_restores_each_flag(model, data):
    """Only input gradients: parameters are frozen during the attack (a compiled backward then skips the
    weight gradients), and each one's own requires_grad comes back, also after an error."""
    x, y = data
    model.conv1.weight.requires_grad_(False)  # frozen by the user: stays frozen
    seen = []
    model.conv2.register_forward_hook(lambda m, i, o: seen.append(any(p.requires_grad for p in model.parameters())))
    adv = pgd_attack(model, x, y, eps=4 / 255, step_size=1 / 255, steps=2, space=SPACE, random_start=False)
    assert seen == [False, False]
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ['conv1.weight']
    assert (adv - x).abs().amax() > 0  # the input gradient still drove the attack
    model.conv2.register_forward_hook(lambda m, i, o: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pgd_attack(model, x, y, eps=4 / 255, step_size=1 / 255, steps=1, space=SPACE)
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ['conv1.weight']


def test_pixel_model_without_space(model, data):
    """space=None: the model takes pixels (normalization inside), the evaluation convention."""
    from timm_gradreg import normalized_model
    x, y = data
    pix_model = normalized_model(model, SPACE.mean, SPACE.std)
    pixels = SPACE.to_pixel(x)
    torch.manual_seed(0)
    a = pgd_attack(pix_model, pixels, y, eps=4 / 255, step_size=1 / 255, steps=3)
    torch.manual_seed(0)
    b = pgd_attack(model, x, y, eps=4 / 255, step_size=1 / 255, steps=3, space=SPACE)
    torch.testing.assert_close(a, SPACE.to_pixel(b), atol=1e-5, rtol=0)


def test_soft_targets_zero_eps_and_bad_arguments(model, data):
    x, y = data
    soft = F.one_hot(y, 5).float() * 0.9 + 0.02
    adv = pgd_attack(model, x, soft, eps=4 / 255, step_size=1 / 255, steps=2, space=SPACE)
    assert adv.shape == x.shape
    same = pgd_attack(model, x, y, eps=0.0, step_size=1 / 255, steps=2, space=SPACE)
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match='>= 0'):
        pgd_attack(model, x, y, eps=-1.0, step_size=1 / 255, steps=2, space=SPACE)
    with pytest.raises(ValueError, match='dlr'):
        get_attack_loss('hinge')


def test_margin_and_dlr_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(margin_loss(logits, y), torch.tensor([1.0 - 3.0, 2.0 - 0.0]))
    # DLR: (max_{i≠y} z_i − z_y) / (z_π1 − z_π3)
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-2.0 / 3.0, 2.0 / 1.5]))
    torch.testing.assert_close(dlr_loss(logits * 5 + 3, y), dlr_loss(logits, y))


def _pgd_l2_reference(model, images, labels, eps, alpha, steps):
    """L2 PGD as torchattacks' PGDL2.forward writes it (without its random start): unit-L2 gradient steps of
    ``alpha``, the perturbation rescaled onto the ε ball, the image clipped to [0, 1]."""
    adv = images.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        cost = torch.nn.functional.cross_entropy(model(adv), labels)
        grad = torch.autograd.grad(cost, adv)[0]
        grad_norms = grad.flatten(1).norm(p=2, dim=1) + 1e-10
        adv = adv.detach() + alpha * grad / grad_norms.view(-1, 1, 1, 1)
        delta = adv - images
        factor = torch.min(eps / delta.flatten(1).norm(p=2, dim=1), torch.ones(delta.shape[0], dtype=delta.dtype))
        adv = torch.clamp(images + delta * factor.view(-1, 1, 1, 1), 0, 1).detach()
    return adv


def test_l2_pgd_is_torchattacks_pgdl2_in_float64():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 5)).double()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    ours = pgd_attack(model, x, y, eps=0.5, step_size=0.2, steps=7, random_start=False, norm='L2')
    reference = _pgd_l2_reference(model, x, y, eps=0.5, alpha=0.2, steps=7)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-9)
    assert ((ours - x).flatten(1).norm(dim=1) <= 0.5 + 1e-9).all()


def test_l2_random_start_lies_in_the_ball_and_the_box():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.rand(32, 3, 8, 8)
    adv = pgd_attack(model, x, torch.zeros(32, dtype=torch.long), eps=1.5, step_size=0.1, steps=1, norm='L2')
    norms = (adv - x).flatten(1).norm(dim=1)
    assert (norms <= 1.5 + 1e-5).all() and norms.min() < 1.2 and adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(ValueError, match="Unknown threat model 'L1'"):
        pgd_attack(model, x, torch.zeros(32, dtype=torch.long), eps=1.0, step_size=0.1, steps=1, norm='L1')
