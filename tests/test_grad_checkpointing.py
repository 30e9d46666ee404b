"""timm's activation checkpointing (``--grad-checkpointing``) with every registered task: the parameter gradient
of a step equals the one without checkpointing, in float64, double backprop included."""
import pytest
import timm
import torch

from timm_gradreg import create_task, list_tasks
from timm_gradreg.double_backward import ReentrantCheckpointError
from timm_gradreg.models.modes import freeze_batchnorm

#: tasks with their first-order variants, as each is run
VARIANTS = [(name, {}) for name in list_tasks()] + [('gradnorm', {'impl': 'fd'})]
MODELS = {'test_resnet': dict(act_layer='gelu'), 'test_vit': dict(img_size=32, patch_size=8)}


def _gradients(model_name, task_name, options, checkpointing: bool):
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=4, **MODELS[model_name]).double()
    model.set_grad_checkpointing(checkpointing)
    model.train()
    freeze_batchnorm(model)
    task = create_task(task_name, model, verbose=False, dtype=torch.float64, **options)
    task.set_epoch(100.0)  # past every warm-up
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    out = task(x, y)
    out['loss'].backward()
    return out['loss'].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('model_name', list(MODELS))
@pytest.mark.parametrize('task_name,options', VARIANTS, ids=[n + ('-fd' if o else '') for n, o in VARIANTS])
def test_checkpointing_leaves_the_gradient_unchanged(model_name, task_name, options):
    loss, grads = _gradients(model_name, task_name, options, checkpointing=False)
    loss_ckpt, grads_ckpt = _gradients(model_name, task_name, options, checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-12, atol=0)
    assert grads_ckpt.keys() == grads.keys() and grads
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_ckpt = torch.cat([grads_ckpt[k].flatten() for k in grads])
    assert flat.abs().sum() > 0
    assert ((flat_ckpt - flat).norm() / flat.norm()).item() <= 1e-10


def test_reentrant_checkpointing_is_refused_by_name():
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    before = use_reentrant_ckpt()
    set_reentrant_ckpt(True)
    try:
        with pytest.raises(ReentrantCheckpointError, match='non-reentrant'):
            _gradients('test_resnet', 'gradnorm', {}, checkpointing=True)
    finally:
        set_reentrant_ckpt(before)
