"""Distributed data parallel takes the step a single process takes on the same global batch, in float64.

Gradient penalties under DDP are a known source of silently wrong gradients (an all-reduce inside
``create_graph``, or two backward passes per step). Each family of tasks (double backprop, finite
differences, attack-based, TRADES) takes one SGD step (lr 1, no momentum, no weight decay) on 8 images:
one process with batch 8, and 2 gloo processes under torchrun with batch 4 each. The parameter
gradient is read back from the step, g = θ₀ − θ₁, and the two must agree to 1e-9 relative, with
BatchNorm frozen, with gradient accumulation, and (on 2 GPUs) with SyncBatchNorm; each process's DDP
all-reduces every gradient exactly once per step (one backward reached it).

Random draws depend on how a batch is split, so the attack starts from the clean image and TRADES's
start noise is drawn from each image's own pixels (a plugin task, below); everything else is the
shipped code.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from timm_gradreg.utils.sharding import fully_shard

from helpers import stock_train_py, tiny_train_argv, write_image_folder

#: several processes under torchrun per case: minutes
pytestmark = pytest.mark.slow

#: TRADES with its start noise a function of each image (the same however the batch is split across processes).
PLUGIN = textwrap.dedent('''
    import torch
    from timm_gradreg.tasks import TRADESTask, register_task, task_options


    @register_task('trades_pixel_noise', options=task_options('trades'))
    class PixelNoiseTRADES(TRADESTask):
        def perturb(self, input):
            real_randn_like = torch.randn_like
            torch.randn_like = lambda x: torch.sin(1e4 * x)
            try:
                return super().perturb(input)
            finally:
                torch.randn_like = real_randn_like
''')

#: Counts DDP's gradient all-reduces: one per bucket per backward that reaches DDP (a penalty taken by a second
#: backward through DDP, or create_graph through its hooks, would show as more).
COUNTER = textwrap.dedent('''
    import os

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    _init = DistributedDataParallel.__init__


    def _counting_init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        log = os.path.join(os.environ['DDP_COUNT_DIR'], f"rank{os.environ.get('RANK', '0')}.txt")

        def hook(state, bucket):
            with open(log, 'a') as f:  # a file per process: their stdout lines may interleave
                f.write(f'{bucket.buffer().numel()}\\n')
            return allreduce_hook(None, bucket)
        self.register_comm_hook(None, hook)


    DistributedDataParallel.__init__ = _counting_init
''')

FAMILIES = {
    'double backprop': ['--gradreg', 'gradnorm', '--gn-warmup-epochs', '0', '--gn-weight', '2'],
    'finite differences': ['--gradreg', 'gradnorm', '--gn-impl', 'fd', '--gn-warmup-epochs', '0',
                           '--gn-weight', '2'],
    'attack-based': ['--gradreg', 'pgd', '--no-attack-random-start', '--attack-warmup-epochs', '0',
                     '--attack-eps', '8/255', '--attack-step-size', '4/255', '--attack-steps', '2'],
    'TRADES': ['--gradreg', 'trades_pixel_noise', '--trades-eps', '8/255', '--trades-steps', '2'],
}
BATCHNORM = {'frozen': ['--bn-eval'], 'accumulated': ['--bn-eval', '--grad-accum-steps', '2'],
             **({'sync': ['--sync-bn']} if torch.cuda.device_count() >= 2 else {})}  # torch's SyncBatchNorm: CUDA only


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp')
    data = write_image_folder(root / 'data', classes=4, train_per_class=2, val_per_class=1)
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=4, act_layer='gelu')
    start = root / 'start.pth.tar'
    torch.save({'state_dict': model.state_dict()}, start)
    (root / 'plugin').mkdir()
    (root / 'plugin' / 'pixel_noise_trades.py').write_text(PLUGIN)
    (root / 'plugin' / 'count_ddp_allreduce.py').write_text(COUNTER)
    env = dict(os.environ, OMP_NUM_THREADS='1', TIMM_GRADREG_PLUGINS='pixel_noise_trades,count_ddp_allreduce',
               PYTHONPATH=os.pathsep.join([str(root / 'plugin'), os.environ.get('PYTHONPATH', '')]))
    return data, start, env


def _trainable() -> int:
    """Values of the trainable parameters of the test model (what DDP all-reduces once per backward)."""
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=4, act_layer='gelu')
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: How a step is run: timm-train, or gradreg-launch driving timm's own train.py (tests/fixtures/timm_train).
PROGRAMS = {'timm-train': ['-m', 'timm_gradreg.cli.train'],
            'gradreg-launch': ['-m', 'timm_gradreg.cli.launch', stock_train_py()]}


def _timm_train(argv, processes, env, program='timm-train'):
    launcher = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(processes)] if processes > 1 \
        else []
    return subprocess.run([sys.executable, *launcher, *PROGRAMS[program], *argv], capture_output=True,
                          text=True, env=env, timeout=600)


def _step(data, start, env, output, processes, batchnorm, family, program='timm-train', extra=(), model='test_resnet'):
    """θ₀ − θ₁ of one SGD step with learning rate 1 on the 8 training images, per parameter."""
    accum = 2 if '--grad-accum-steps' in BATCHNORM[batchnorm] else 1
    argv = tiny_train_argv(data, output, 'run', '--epochs', '1', '--val-split', '', '--eval-metric', 'loss',
                           '--opt', 'momentum', '--momentum', '0', '--weight-decay', '0', '--lr', '1', '--sched', 'step',
                           '--model-dtype', 'float64', '--initial-checkpoint', str(start), '--seed', '0',
                           *FAMILIES[family], *[a for a in BATCHNORM[batchnorm] if a != '--bn-eval'], *extra)
    argv[argv.index('-b') + 1] = str(8 // processes // accum)
    if model != 'test_resnet':
        argv[argv.index('--model') + 1] = model
    if '--bn-eval' not in BATCHNORM[batchnorm]:
        argv.remove('--bn-eval')  # tiny_train_argv freezes BatchNorm by default
    counts = os.path.join(output, 'allreduce')
    os.makedirs(counts)
    run = _timm_train(argv, processes, dict(env, DDP_COUNT_DIR=counts), program)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(output, 'stderr.txt'), 'w') as f:
        f.write(run.stderr)
    assert ('distributed mode' in run.stderr.lower()) == (processes > 1)
    if processes > 1 and '--fsdp' not in extra:  # one backward reached DDP: each process all-reduced every gradient once
        for rank in range(processes):
            with open(os.path.join(counts, f'rank{rank}.txt')) as f:
                assert sum(int(line) for line in f) == _trainable(), rank
    after = torch.load(os.path.join(output, 'run', 'last.pth.tar'), weights_only=False)['state_dict']
    assert all(v.dtype == torch.float64 for v in after.values() if v.is_floating_point())
    before = torch.load(start, weights_only=False)['state_dict']
    return {k: before[k].double() - after[k] for k, v in before.items() if v.is_floating_point()
            and 'running' not in k}


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason='SyncBatchNorm runs on these GPUs')
@pytest.mark.parametrize('program', [
    'timm-train', 'gradreg-launch'])
def test_sync_batchnorm_on_cpu_processes_is_refused_in_one_line(setup, tmp_path, program):
    data, start, env = setup
    run = _timm_train(tiny_train_argv(data, tmp_path, 'run', '--epochs', '1', '--sync-bn', '--no-bn-eval',
                                      '--device', 'cpu'), 2, env,
                      program)
    errors = [line for line in run.stderr.splitlines() if f'{program}: error:' in line]
    assert run.returncode != 0 and errors, run.stderr[-3000:]
    assert all('--sync-bn needs CUDA devices' in line for line in errors), run.stderr[-3000:]


@pytest.mark.parametrize('program', [
    'timm-train', 'gradreg-launch'])
@pytest.mark.parametrize('batchnorm', list(BATCHNORM))
@pytest.mark.parametrize('family', list(FAMILIES))
def test_two_processes_take_the_step_of_one(setup, tmp_path, family, batchnorm, program):
    if batchnorm == 'sync' and family == 'double backprop':
        pytest.skip("refused: SyncBatchNorm's backward is not differentiable (tests/test_errors.py)")
    data, start, env = setup
    one = _step(data, start, env, tmp_path / 'one', 1, batchnorm, family, program)
    two = _step(data, start, env, tmp_path / 'two', 2, batchnorm, family, program)
    g1 = torch.cat([one[k].flatten() for k in one])
    g2 = torch.cat([two[k].flatten() for k in one])
    assert g1.norm() > 0
    assert ((g2 - g1).norm() / g1.norm()).item() <= 1e-9


needs_fsdp2 = pytest.mark.skipif(fully_shard is None, reason='FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6')


@needs_fsdp2
@pytest.mark.parametrize('family', ['finite differences', 'attack-based', 'TRADES'])
def test_a_sharded_model_takes_the_step_of_one_process(setup, tmp_path, family):
    """--fsdp: 2 gloo processes with the model, gradients and optimizer state sharded (FSDP2) take the step of one
    unsharded process on the same 8 images; the checkpoint holds the full, unsharded weights."""
    data, start, env = setup
    one = _step(data, start, env, tmp_path / 'one', 1, 'frozen', family)
    two = _step(data, start, env, tmp_path / 'two', 2, 'frozen', family, extra=['--fsdp'])
    g1 = torch.cat([one[k].flatten() for k in one])
    g2 = torch.cat([two[k].flatten() for k in one])
    assert g1.norm() > 0
    assert ((g2 - g1).norm() / g1.norm()).item() <= 1e-9


@needs_fsdp2
def test_a_vit_sharded_block_by_block_takes_the_step_of_one_process(setup, tmp_path):
    """test_vit: each transformer block its own FSDP unit (gathered for its forward and backward only)."""
    from timm_gradreg.train.fsdp import fsdp_units
    data, _, env = setup
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=4, act_layer='gelu', img_size=32)
    assert len(fsdp_units(model)) >= 2
    start = tmp_path / 'vit.pth.tar'
    torch.save({'state_dict': model.state_dict()}, start)
    extra = ['--model-kwargs', 'act_layer=gelu', 'img_size=32']
    one = _step(data, start, env, tmp_path / 'one', 1, 'frozen', 'finite differences', extra=extra, model='test_vit')
    two = _step(data, start, env, tmp_path / 'two', 2, 'frozen', 'finite differences', extra=[*extra, '--fsdp'],
                model='test_vit')
    g1 = torch.cat([one[k].flatten() for k in one])
    g2 = torch.cat([two[k].flatten() for k in one])
    assert g1.norm() > 0 and ((g2 - g1).norm() / g1.norm()).item() <= 1e-9


@needs_fsdp2
def test_gradnorm_under_fsdp_trains_by_finite_differences_and_says_so(setup, tmp_path):
    """Double backprop's second backward never reaches FSDP2's gradient hooks: GradNorm switches to its
    finite difference with one line, and takes the one-process finite-difference step."""
    data, start, env = setup
    one = _step(data, start, env, tmp_path / 'one', 1, 'frozen', 'finite differences')
    two = _step(data, start, env, tmp_path / 'two', 2, 'frozen', 'double backprop', extra=['--fsdp'])
    g1 = torch.cat([one[k].flatten() for k in one])
    g2 = torch.cat([two[k].flatten() for k in one])
    assert ((g2 - g1).norm() / g1.norm()).item() <= 1e-9
    said = [line for line in open(tmp_path / 'two' / 'stderr.txt').read().splitlines() if 'first-order form' in line]
    assert len(said) == 1 and "--gradreg gradnorm under --fsdp trains by its first-order form (impl='fd')" in said[0]


@needs_fsdp2
@pytest.mark.parametrize('argv,line', [
    (['--gradreg', 'edge'], '--fsdp cannot be used with --gradreg edge: it needs double backprop'),
    (['--model-ema'], '--model-ema cannot be used with --fsdp'),
    (['--clip-grad', '1', '--clip-mode', 'agc'], '--clip-mode agc cannot be used with --fsdp'),
])
def test_what_cannot_be_sharded_is_refused_by_name(setup, tmp_path, argv, line):
    data, start, env = setup
    run = _timm_train(tiny_train_argv(data, tmp_path, 'run', '--epochs', '1', '--fsdp', *argv), 2, env)
    errors = [l for l in run.stderr.splitlines() if 'timm-train: error:' in l]
    assert run.returncode != 0 and errors and all(line in l for l in errors), run.stderr[-3000:]


@needs_fsdp2
def test_fsdp_in_one_process_is_refused(setup, tmp_path):
    data, start, env = setup
    run = _timm_train(tiny_train_argv(data, tmp_path, 'run', '--epochs', '1', '--fsdp'), 1, env)
    assert run.returncode != 0 and 'timm-train: error: --fsdp shards the model over the torchrun processes' in \
        run.stderr, run.stderr[-3000:]


@needs_fsdp2
def test_a_sharded_run_resumes_where_it_stopped(setup, tmp_path):
    """--fsdp saves full checkpoints (gathered from the shards) and resumes into the shards: 1 epoch, then
    --resume for the 2nd, ends with the weights and optimizer state of 2 epochs in one go (Adam's moments
    included: a lost optimizer state would change the second epoch's steps)."""
    data, start, env = setup

    def run(output, *extra):
        argv = tiny_train_argv(data, output, 'run', '--val-split', '', '--eval-metric', 'loss', '--model-dtype',
                               'float64', '--initial-checkpoint', str(start), '--seed', '0', '--fsdp', '--sched',
                               'step', '--gradreg', 'pgd', '--no-attack-random-start', '--attack-warmup-epochs', '0',
                               *extra)
        argv[argv.index('-b') + 1] = '2'
        result = _timm_train(argv, 2, env)
        assert result.returncode == 0, result.stderr[-3000:]
        return torch.load(os.path.join(output, 'run', 'last.pth.tar'), weights_only=False)

    straight = run(tmp_path / 'straight', '--epochs', '2')
    run(tmp_path / 'parts', '--epochs', '2', '--stop-epoch', '1')
    resumed = run(tmp_path / 'parts', '--epochs', '2', '--resume', str(tmp_path / 'parts' / 'run' / 'last.pth.tar'))
    assert resumed['epoch'] == straight['epoch'] == 1
    for key, value in straight['state_dict'].items():
        assert not isinstance(value, torch.distributed.tensor.DTensor)  # a full checkpoint, loadable anywhere
        torch.testing.assert_close(resumed['state_dict'][key], value, rtol=1e-12, atol=1e-12)
    moments = [s['exp_avg'] for s in straight['optimizer']['state'].values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)
