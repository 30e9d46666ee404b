"""Training tasks: registry, formulas by hand, timm machinery (EMA, no_sync, checkpoints), DDP."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from timm.task import ClassificationTask

from timm_gradreg import create_task, list_tasks, task_parameters
from timm_gradreg.core.normalization import PixelSpace

from conftest import TinyNet


def test_registry_lists_every_method_and_explains_mistakes(tiny_net):
    assert list_tasks() == ['cure', 'edge', 'elle', 'fgsm', 'gradalign', 'gradnorm', 'igr', 'natural', 'nfgsm', 'pgd', 'trades']
    for name in list_tasks():
        task = create_task(name, TinyNet(), verbose=False)
        assert isinstance(task, ClassificationTask) and task.task_name == name
    with pytest.raises(ValueError, match="Valid: cure, edge, elle, fgsm, gradalign, gradnorm, igr, natural, nfgsm, pgd, trades. Did you mean 'gradnorm'"):
        create_task('gradnrom', tiny_net)
    with pytest.raises(TypeError, match="'gn_wieght' \\(did you mean 'gn_weight'"):
        create_task('gradnorm', tiny_net, gn_wieght=1.0)
    assert 'steps' in task_parameters('pgd') and 'steps' not in task_parameters('fgsm')
    with pytest.raises(ValueError, match='clean, noise, pgd, uniform'):
        create_task('gradnorm', tiny_net, inputs='adversarial')


def test_natural_task_is_plain_cross_entropy(tiny_net, batch):
    x, y = batch
    out = create_task('natural', tiny_net, nn.CrossEntropyLoss(), verbose=False)(x, y)
    torch.testing.assert_close(out['loss'], F.cross_entropy(tiny_net(x), y))
    torch.testing.assert_close(out['ce'], out['loss'].detach())


def _pgd_by_hand(model, x, y, space, eps, step, steps):
    pix = space.to_pixel(x).clamp(0, 1)
    delta = torch.empty_like(pix).uniform_(-eps, eps)
    delta = (pix + delta).clamp(0, 1) - pix
    model.eval()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(space.to_normalized(pix + delta)), y, reduction='sum')
        (g,) = torch.autograd.grad(loss, delta)
        delta = torch.min(torch.max(delta.detach() + step * g.sign(), -eps * torch.ones_like(g)),
                          eps * torch.ones_like(g))
        delta = (pix + delta).clamp(0, 1) - pix
    model.train()
    return space.to_normalized(pix + delta)


@pytest.mark.parametrize('name,steps,step_factor', [('pgd', 3, 2 / 3), ('fgsm', 1, 1.25)])
def test_adversarial_task_loss_equals_hand_computation(batch, name, steps, step_factor):
    x, y = batch
    torch.manual_seed(0)
    model = TinyNet().train()
    eps = 8 / 255
    options = dict(steps=steps, step_size=eps * step_factor) if name == 'pgd' else {}  # fgsm: 1.25·ε default
    task = create_task(name, model, nn.CrossEntropyLoss(), eps=eps, warmup_epochs=2, verbose=False, **options)
    task.set_epoch(1.6)  # second epoch of a 2-epoch warm-up stepped per epoch: full ε, half the step
    torch.manual_seed(7)
    out = task(x, y)
    torch.manual_seed(7)
    adv = _pgd_by_hand(model, x, y, task.space, eps, eps * step_factor / 2, steps)
    torch.testing.assert_close(out['loss'], F.cross_entropy(model(adv), y), rtol=1e-5, atol=1e-6)
    assert out['weight'].item() == pytest.approx(0.5)
    assert model.training  # mode restored after the attack


def test_adversarial_first_epoch_trains_on_the_random_start(tiny_net, batch):
    """Epoch 0 of the official warm-up has a zero step: the attack is the uniform start in the full ε-ball."""
    x, y = batch
    task = create_task('pgd', tiny_net, nn.CrossEntropyLoss(), verbose=False)
    task.set_epoch(0.9)
    torch.manual_seed(3)
    loss = task(x, y)['loss']
    torch.manual_seed(3)
    adv = _pgd_by_hand(tiny_net, x, y, task.space, 4 / 255, 0.0, 3)
    torch.testing.assert_close(loss, F.cross_entropy(tiny_net(adv), y))
    assert not torch.allclose(loss, F.cross_entropy(tiny_net(x), y))
    clean = create_task('pgd', tiny_net, nn.CrossEntropyLoss(), random_start=False, verbose=False)
    clean.set_epoch(0.9)
    torch.testing.assert_close(clean(x, y)['loss'], F.cross_entropy(tiny_net(x), y))
    per_iteration = create_task('pgd', tiny_net, warmup_per='iteration', verbose=False)
    per_iteration.set_epoch(0.9)
    assert per_iteration.step_scale() == pytest.approx(0.18)


def test_schedule_warning_when_set_epoch_is_forgotten(tiny_net, batch):
    x, y = batch
    task = create_task('gradnorm', tiny_net, verbose=False)
    with pytest.warns(UserWarning, match='set_epoch'):
        task(x, y)
    quiet = create_task('gradnorm', tiny_net, warmup_epochs=0, verbose=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        quiet(x, y)


def test_double_backprop_tasks_refuse_torch_compile(tiny_net):
    with pytest.raises(RuntimeError, match='gn-impl fd'):
        create_task('gradnorm', tiny_net, verbose=False).compile()
    with pytest.raises(RuntimeError, match='double backward'):
        create_task('edge', tiny_net, verbose=False).compile()


def test_unknown_compile_mode_is_named(tiny_net):
    from timm_gradreg.tasks import CompileModeError
    with pytest.raises(CompileModeError, match=r"'fastest'; valid: default, .*max-autotune"):
        create_task('pgd', tiny_net, verbose=False).compile(mode='fastest')


def test_task_needs_autograd(tiny_net, batch):
    x, y = batch
    task = create_task('gradnorm', tiny_net, warmup_epochs=0, verbose=False)
    with torch.no_grad(), pytest.raises(RuntimeError, match='no_grad'):
        task(x, y)


def test_ema_and_checkpoint_state_with_timm_machinery(tiny_net, batch, tmp_path):
    from timm.task import resume_task_checkpoint
    x, y = batch
    task = create_task('gradnorm', tiny_net, warmup_epochs=5, verbose=False)
    task.setup_ema(decay=0.5)
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    task.set_epoch(2.5)
    task(x, y)['loss'].backward()
    opt.step()
    task.update_ema()
    ema = task.get_trainable_module(ema=True).module
    assert not torch.equal(ema.fc.weight, tiny_net.fc.weight)
    state = {**task.get_checkpoint_state(), 'optimizer': opt.state_dict(), 'epoch': 2, 'version': 2}
    torch.save(state, tmp_path / 'ckpt.pth.tar')
    fresh = create_task('gradnorm', TinyNet(), warmup_epochs=5, verbose=False)
    assert resume_task_checkpoint(fresh, str(tmp_path / 'ckpt.pth.tar'), log_info=False) == 3
    assert fresh.epoch == 2.5 and fresh.penalty_weight() == pytest.approx(0.6)
    torch.testing.assert_close(fresh.trainable_module.fc.weight, tiny_net.fc.weight)


# --- DDP: two CPU processes must match one process on the same global batch ---------------

def _ddp_worker(rank, world, init_file, out_dir, name, kwargs):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyNet()
    task = create_task(name, model, nn.CrossEntropyLoss(), verbose=False, **kwargs)
    task.setup_ema(decay=0.5)
    task.prepare_distributed()
    task.set_epoch(10.0)
    x, y = _global_batch()
    shard = slice(rank * 4, rank * 4 + 4)
    # gradient accumulation: first micro-batch without sync, second with
    with task.no_sync():
        (task(x[shard][:2], y[shard][:2])['loss'] / 2).backward()
    torch.manual_seed(100 + rank)
    (task(x[shard][2:], y[shard][2:])['loss'] / 2).backward()
    task.update_ema()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, 'grads.pt'))
    dist.destroy_process_group()


def _global_batch():
    g = torch.Generator().manual_seed(42)
    space = PixelSpace()
    return space.to_normalized(torch.rand(8, 3, 8, 8, generator=g)), torch.randint(0, 5, (8,), generator=g)


@pytest.mark.parametrize('name,kwargs', [('gradnorm', dict(warmup_epochs=0, ce_weight=0.5, gn_weight=2.0)),
                                         ('gradnorm', dict(warmup_epochs=0, ce_weight=0.5, gn_weight=2.0, impl='fd')),
                                         ('pgd', dict(warmup_epochs=0, random_start=False))])
def test_ddp_two_processes_match_one_process(tmp_path, name, kwargs):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'init'), str(tmp_path), name, kwargs), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / 'grads.pt')
    torch.manual_seed(0)
    model = TinyNet()
    task = create_task(name, model, nn.CrossEntropyLoss(), verbose=False, **kwargs)
    x, y = _global_batch()
    for part in (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)):  # same micro-batches, mean over 4
        (task(x[part], y[part])['loss'] / 4).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
