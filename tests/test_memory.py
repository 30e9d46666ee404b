"""The memory prediction: saved-tensor bytes against hand-counted cases, and --dry-run's advice."""
import pytest
import torch
import torch.nn as nn
import yaml

from timm_gradreg.cli.train import main as train_main
from timm_gradreg.train import parse_args, resolve_config
from timm_gradreg.train.memory import GIB, TRANSIENT_FACTOR, USABLE_SHARE, predict_memory, saved_tensor_bytes
from timm_gradreg.utils.sharding import fully_shard


def test_saved_bytes_of_a_hand_counted_graph():
    # linear (no bias) saves its input [B, 10]; exp saves its output [B, 20]; the weight is excluded;
    # x.t().t() is a view of x: its storage is counted once
    layer = nn.Linear(10, 20, bias=False)
    x = torch.randn(6, 10, requires_grad=True)

    def step():
        y = layer(x.t().t()).exp().sum() + (x * 2).sum()  # x * 2 saves nothing of x (a constant factor)
        y.backward()

    assert saved_tensor_bytes(step, exclude=list(layer.parameters())) == 6 * (10 + 20) * 4


def test_double_backprop_saves_what_the_second_backward_needs():
    # tanh saves its output t [B, 8]; the input gradient g·(1 - t²) with create_graph saves t again (the
    # same storage) and (1 - t²) or its parts for the second backward: more than the forward alone
    x = torch.randn(4, 8, requires_grad=True)
    forward_only = saved_tensor_bytes(lambda: torch.tanh(x).sum())

    def double():
        y = torch.tanh(x).sum()
        g, = torch.autograd.grad(y, x, create_graph=True)
        g.abs().sum().backward()

    assert forward_only == 4 * 8 * 4
    assert saved_tensor_bytes(double) > forward_only


def _cfg(*argv):
    args, _ = parse_args(['-c', 'demo/digits_gradnorm', '--dry-run', *argv])
    return resolve_config(args)


def test_prediction_is_linear_in_the_batch_and_counts_the_states():
    cfg = _cfg()
    p = predict_memory(cfg)
    params = sum(t.numel() for t in __import__('timm').create_model(
        cfg.model, num_classes=cfg.num_classes, in_chans=cfg.input_size[0], **cfg.model_kwargs).parameters()) * 4
    assert p.parameters == params and p.gradients == params
    tensors = len(list(__import__('timm').create_model(cfg.model, **cfg.model_kwargs).parameters()))
    assert 2 * params <= p.optimizer_state <= 2 * params + 8 * tensors  # AdamW: exp_avg, exp_avg_sq, step
    assert p.activations_per_sample > 0
    assert p.saved(8) - p.saved(4) == 4 * p.activations_per_sample
    assert p.peak(8) - p.peak(4) == pytest.approx(TRANSIENT_FACTOR * 4 * p.activations_per_sample, abs=1)


@pytest.mark.skipif(fully_shard is None,
                    reason='FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6')
def test_fsdp_prediction_counts_one_process_shards_and_the_gathered_blocks():
    """--fsdp on 4 processes: FSDP2 gives each process ceil(rows / 4) rows of every parameter (dim 0); the states
    are those shards (within their padding), plus the parameters and gradients of the root's own tensors and of
    two blocks gathered at once; the finite difference's activations, not double backprop's."""
    import timm
    args, _ = parse_args(['--model', 'test_vit', '--model-kwargs', 'img_size=32', '--input-size', '3', '32', '32',
                          '--num-classes', '10', '--gradreg', 'gradnorm', '--fsdp', '--dry-run'])
    full, sharded = predict_memory(resolve_config(args, world_size=1)), predict_memory(resolve_config(args, world_size=4))
    model = timm.create_model('test_vit', img_size=32, num_classes=10)
    shard_rows = sum(-(-p.shape[0] // 4) * p[0].numel() if p.ndim else 1 for p in model.parameters()) * 4
    assert sharded.shards == 4 and abs(sharded.parameters - shard_rows) <= 0.05 * shard_rows
    assert sharded.gradients == sharded.parameters and sharded.optimizer_state <= full.optimizer_state / 4 + 64
    blocks = list(model.blocks)
    root = sum(p.numel() for p in model.parameters()) - sum(p.numel() for b in blocks for p in b.parameters())
    block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    assert sharded.gathered == 2 * (root + 2 * block) * 4
    assert full.gathered == 0 and full.parameters == sum(p.numel() for p in model.parameters()) * 4
    args, _ = parse_args(['--model', 'test_vit', '--model-kwargs', 'img_size=32', '--input-size', '3', '32', '32',
                          '--num-classes', '10', '--gradreg', 'gradnorm', '--dry-run'])
    assert predict_memory(resolve_config(args, world_size=4)).activations_per_sample > sharded.activations_per_sample


def test_double_backprop_needs_more_than_natural_training():
    natural, gradnorm = predict_memory(_cfg('--gradreg', 'natural')), predict_memory(_cfg())
    assert gradnorm.activations_per_sample > natural.activations_per_sample
    assert gradnorm.saved(64) > natural.saved(64) + 64 * 4 * 3 * 32 * 32  # at least the input gradient


def test_dry_run_prints_the_prediction_and_advice_that_fits(capsys):
    assert train_main(['-c', 'demo/digits_gradnorm', '--dry-run', '-b', '960', '--gpu-memory', '0.05']) == 0
    out = capsys.readouterr().out
    yaml.safe_load(out)  # still loadable
    notes = [line for line in out.splitlines() if line.startswith('# ')]
    assert any(n.startswith('# predicted peak per GPU: ') for n in notes), notes
    advice = next(n for n in notes if 'does not fit' in n)
    words = advice.split()
    batch, accum = int(words[words.index('--batch-size') + 1]), int(words[words.index('--grad-accum-steps') + 1])
    assert batch * accum == 960 and 'keeps the global batch 960' in advice  # 960 = 2^6·3·5: reachable
    most = int(advice.split('(at most ')[1].split(')')[0])
    prediction = predict_memory(_cfg('-b', str(batch)))
    assert batch <= most and prediction.peak(most) <= 0.05 * GIB * USABLE_SHARE < prediction.peak(most + 1)


@pytest.mark.parametrize('value', ['0', '-3'])
def test_gpu_memory_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(['-c', 'demo/digits_gradnorm', '--dry-run', '--gpu-memory', value])
    assert e.value.code == 2 and f'--gpu-memory is GiB per GPU, > 0; got {float(value)}' in capsys.readouterr().err


def test_fast_norm_predicts_what_the_native_norms_do():
    """--fast-norm (process-wide in timm) builds norm layers that query autocast for their tensor's device; the
    prediction's meta-device step runs them natively: the same bytes, no error."""
    from timm.layers import set_fast_norm
    argv = ['--model', 'test_vit', '--model-kwargs', 'img_size=32', '--input-size', '3', '32', '32', '--num-classes',
            '10', '--dry-run']
    native = predict_memory(resolve_config(parse_args(argv)[0]))
    try:
        fast = predict_memory(resolve_config(parse_args([*argv, '--fast-norm'])[0]))
    finally:
        set_fast_norm(False)
    assert fast.activations_per_sample == native.activations_per_sample > 0
