"""Per-step training cost of each method (the paper's Table 3), measured side by side.

    python -m timm_gradreg.bench --model resnet50 --act gelu --img-size 128 --batch-size 16
    python benchmarks/step_cost.py --model vit_small_patch16_224 --batch-size 8 --torchcompile

Full training steps (task forward with its regularizer or attack, backward, optimizer
step) of every method are interleaved round by round after a warm-up, so machine noise
hits all methods alike; the order rotates from round to round, so no method always runs after
the same one. On CPU the warm-up goes on (up to --max-warmup rounds) until a round
of steps no longer faults in fresh memory pages: the heap has then grown to each method's
steady-state footprint, as in a long training run, and first-touch page faults (slow on
virtual machines) are not counted as compute. The table gives the median seconds per step,
the ratio to PGD-3 adversarial training (the median of the round-by-round ratios, which cancel
the machine's slow drifts) with their interquartile range (how far the rounds agree), and the
peak memory of a step (CUDA max allocated; on CPU the peak RSS growth of a fresh eager process
running only that method). Models run with BatchNorm in
eval mode unless --train-bn, as in the paper's runs. On CPU, glibc's malloc is told to keep
freed memory (as CUDA's caching allocator does), so a step's time is its compute, not the page
faults of re-mapping activations that the methods' different footprints would cause.

``--passes`` times the first-order passes the methods are made of instead (training forward and
backward, attack forward and input-only backward, eager and compiled) and prints the cost of two
training passes relative to PGD-3's passes: the floor of the finite difference on that machine.
"""
import argparse
import copy
import ctypes
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import swap_activations
from .input_grad import at_least_fp32
from .models import ModelError, create_model
from .modes import frozen_parameters
from .tasks import CompileModeError, check_compile_mode, create_task

__all__ = ['METHODS', 'PASSES', 'BenchMethod', 'build_parser', 'run_benchmark', 'format_table', 'pass_costs',
           'format_passes', 'fd_accuracy', 'main']


@dataclass(frozen=True)
class BenchMethod:
    """A training method as benchmarked: its task options and the paper's pass count."""
    task: str
    passes: int
    options: Dict[str, Any] = field(default_factory=dict)
    compilable: bool = True


#: name -> method; passes count forward and backward passes as in the paper's Table 3 (natural 2, AT 8).
METHODS: Dict[str, BenchMethod] = {
    'natural': BenchMethod('natural', 2),
    'gradnorm': BenchMethod('gradnorm', 5, {'impl': 'double_backprop'}, compilable=False),
    'gradnorm-fd': BenchMethod('gradnorm', 4, {'impl': 'fd'}),
    'edge': BenchMethod('edge', 5, compilable=False),
    'pgd-3': BenchMethod('pgd', 8, {'steps': 3}),
    'fgsm': BenchMethod('fgsm', 4),
}
REFERENCE = 'pgd-3'
#: With --torchcompile these are timed eager as well: compiled FD is compared with eager FD and
#: compiled PGD-3, and eager methods (double backprop) with eager PGD-3.
EAGER_TOO = ('gradnorm-fd', REFERENCE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_gradreg.bench', description=__doc__.split('\n\n')[0] + ' Prints a Table-3-like table.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='resnet50', help='timm model (default: resnet50)')
    parser.add_argument('--act', default=None, help='swap ReLU-family activations to this one (e.g. gelu)')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--img-size', type=int, default=None, help='image size (default: the model\'s)')
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    parser.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'), help='autocast dtype')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--steps', type=int, default=10, help='timed rounds (default: 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first, at least (default: 2)')
    parser.add_argument('--max-warmup', type=int, default=12,
                        help='on CPU, warm up until a round faults in no fresh memory, for at most this many rounds '
                             '(default: 12)')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None,
                        help='torch.compile the methods that can be compiled (not double backprop) with this '
                             'backend (default inductor), and also time gradnorm-fd and pgd-3 eager; ratios are to '
                             'PGD-3 of the same kind (compiled or eager)')
    parser.add_argument('--torchcompile-mode', default=None,
                        help="torch.compile mode with --torchcompile, e.g. max-autotune (default: torch's default)")
    parser.add_argument('--no-fused-attn', action='store_true', help='create the model with fused attention off')
    parser.add_argument('--train-bn', action='store_true', help='BatchNorm in train mode (double backprop is slow)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels_last memory layout for model and batch, as timm train.py --channels-last')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak memory measurement')
    parser.add_argument('--no-fd-check', action='store_true', help='skip the FD vs double-backprop gradient check')
    parser.add_argument('--output', default='', help='write the results as JSON here')
    parser.add_argument('--profile', default=None, choices=list(METHODS), metavar='METHOD',
                        help='instead of the table, print torch.profiler\'s costliest operators of a step of this '
                             'method (eager, or compiled with --torchcompile) and exit')
    parser.add_argument('--profile-rows', type=int, default=25, help='operators listed by --profile (default: 25)')
    parser.add_argument('--passes', action='store_true',
                        help='instead of the table, time the first-order passes the methods are made of (eager, '
                             'and compiled with --torchcompile) and print the cost of two training passes (the '
                             "finite difference's floor) relative to PGD-3's passes")
    parser.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    return parser


def _device(args) -> torch.device:
    return torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))


def _cache_freed_memory() -> bool:
    """Keep freed blocks in glibc's heap instead of returning them to the OS; False if not glibc.

    Every block comes from the heap (no mmap, which would unmap large tensors on free and fault
    them in again on the next step) and the heap is never trimmed.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


#: A warm-up round that faults in fewer fresh pages than this (4 KiB each) is steady state.
STEADY_PAGE_FAULTS = 256


def _minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _with_page_faults(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """``fn()``'s result and the fresh memory pages it faulted in."""
    before = _minor_page_faults()
    result = fn()
    return result, _minor_page_faults() - before


def _warm_up(args, device: torch.device, runners: list) -> Dict[str, Any]:
    """Untimed rounds: ``--warmup`` of them, then on CPU more until no step faults in fresh pages."""
    on_cpu = device.type == 'cpu'
    rounds, faults, steady = 0, None, None
    while rounds < (max(args.warmup, args.max_warmup) if on_cpu else args.warmup):
        faults = {label: _with_page_faults(runner.step)[1] for label, runner, _, _ in runners}
        rounds += 1
        steady = max(faults.values()) < STEADY_PAGE_FAULTS if on_cpu else None
        if rounds >= args.warmup and steady is not False:
            break
    return {'warmup_rounds': rounds, 'steady': steady, 'last_warmup_page_faults': faults}


def _make_model(args) -> nn.Module:
    if args.no_fused_attn:
        from timm.layers import set_fused_attn
        set_fused_attn(False)
    kwargs = {'num_classes': args.num_classes}
    if args.img_size:
        kwargs['img_size'] = args.img_size
    try:
        model = create_model(args.model, **kwargs)
    except TypeError:  # CNNs take any size and no img_size argument
        kwargs.pop('img_size', None)
        model = create_model(args.model, **kwargs)
    if args.act:
        swap_activations(model, args.act, check_functional=False)
    return model


def _input_size(args, model) -> int:
    return args.img_size or model.pretrained_cfg.get('input_size', (3, 224, 224))[-1]


def _amp_dtype(args) -> Optional[torch.dtype]:
    return {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]


def _memory_format(args) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def _model_copy(model: nn.Module, args, device: torch.device) -> nn.Module:
    """A copy of ``model`` on ``device`` in the run's memory format, BatchNorm in eval mode unless --train-bn."""
    return copy.deepcopy(model).to(device, memory_format=_memory_format(args)).train(args.train_bn)


def _batch(args, model: nn.Module, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed random batch every step of a run trains on: images and labels."""
    size = _input_size(args, model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device, memory_format=_memory_format(args))
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    return x, y


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished the work queued so far."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Runner:
    """One method's task, optimizer and batch: ``step()`` is one full training step."""

    def __init__(self, name: str, method: BenchMethod, model: nn.Module, args, device, compiled: bool):
        self.name, self.method = name, method
        self.model = _model_copy(model, args, device)
        options = dict(method.options)
        self.task = create_task(method.task, self.model, verbose=False, **options)
        self.task.set_epoch(100.0)  # schedules at full strength
        if compiled:
            self.task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.amp = _amp_dtype(args)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        if self.scaler is not None:
            self.task.attach_grad_scaler(self.scaler)
        self.x, self.y = _batch(args, model, device)
        self.device = device

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.task(self.x, self.y)['loss']
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self) -> float:
        start = _clock(self.device)
        self.step()
        return _clock(self.device) - start


def _variants(args) -> List[tuple]:
    """(label, method name, compiled) for every timed variant."""
    out = []
    for name in args.methods:
        method = METHODS[name]
        compiled = bool(args.torchcompile) and method.compilable
        out.append((name + (' (compiled)' if compiled else ''), name, compiled))
        if compiled and name in EAGER_TOO:
            out.append((name + ' (eager)', name, False))
    return out


def _peak_memory_cuda(runner: _Runner) -> float:
    torch.cuda.synchronize(runner.device)
    torch.cuda.reset_peak_memory_stats(runner.device)
    base = torch.cuda.memory_allocated(runner.device)
    runner.step()
    torch.cuda.synchronize(runner.device)
    return (torch.cuda.max_memory_allocated(runner.device) - base) / 2 ** 20


def _peak_memory_cpu(args, name: str, compiled: bool) -> Optional[float]:
    argv = [sys.executable, '-m', 'timm_gradreg.bench', '--memory-child', name, '--model', args.model,
            '--num-classes', str(args.num_classes), '-b', str(args.batch_size), '--amp', args.amp, '--device', 'cpu']
    argv += ['--act', args.act] if args.act else []
    argv += ['--img-size', str(args.img_size)] if args.img_size else []
    argv += ['--no-fused-attn'] if args.no_fused_attn else []
    argv += ['--train-bn'] if args.train_bn else []
    argv += ['--channels-last'] if args.channels_last else []
    # large blocks straight from mmap, so freed tensors leave RSS at once and the peak is the live peak
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])['peak_mb']


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def _memory_child(args) -> None:
    """Fresh process: model, task, batch and optimizer state ready, then the peak RSS growth of two steps.

    The peak is VmHWM after resetting it (``/proc/self/clear_refs``): a process inherits its
    parent's peak across fork/exec, so getrusage cannot be used here.
    """
    runner = _Runner(args.memory_child, METHODS[args.memory_child], _make_model(args), args, torch.device('cpu'),
                     compiled=False)
    for p in runner.model.parameters():  # create the optimizer state up front, it is not the method's cost
        p.grad = torch.zeros_like(p)
    runner.optimizer.step()
    runner.optimizer.zero_grad(set_to_none=True)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS counter
    base = _status_kb('VmRSS')
    runner.step()
    runner.step()
    print(json.dumps({'peak_mb': (_status_kb('VmHWM') - base) / 1024.0}))


def _measure_memory(args, device: torch.device, runners: list, rows: List[Dict[str, Any]]) -> Optional[float]:
    """Fill each row's peak_mb and mem_rel_natural; returns natural training's peak (eager on CPU)."""
    for (label, runner, name, compiled), row in zip(runners, rows):
        if device.type == 'cuda':
            row['peak_mb'] = _peak_memory_cuda(runner)
        else:  # eager only: RSS cannot separate a step from compilation
            row['peak_mb'] = None if compiled else _peak_memory_cpu(args, name, compiled)
    natural = next((r['peak_mb'] for r in rows if r['method'].startswith('natural')), None)
    if natural is None and device.type == 'cpu' and 'natural' in args.methods:  # natural ran compiled
        natural = _peak_memory_cpu(args, 'natural', False)
    for row in rows:
        row['mem_rel_natural'] = row['peak_mb'] / natural if natural and row['peak_mb'] else None
    return natural


def fd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fd_step: float = 0.1) -> Dict[str, float]:
    """Cosine and relative error of the finite-difference GradNorm parameter gradient vs double backprop."""
    grads = []
    for impl in ('double_backprop', 'fd'):
        task = create_task('gradnorm', model, impl=impl, fd_step=fd_step, warmup_epochs=0, verbose=False)
        model.zero_grad(set_to_none=True)
        task(x, y)['loss'].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    ref, fd = (g.double() for g in grads)  # float64: an fp32 cosine of 10^7 entries can exceed 1
    return {'cosine': F.cosine_similarity(fd, ref, dim=0).item(), 'rel_error': ((fd - ref).norm() / ref.norm()).item(),
            'fd_step': fd_step}


def rotated(items: List[Any], shift: int) -> List[Any]:
    """``items`` starting at position ``shift`` (mod its length), wrapping around.

    Each round's steps run in a rotated order: a step runs measurably faster or slower by
    what ran just before it (up to 2% on CPU), so no method always follows the same one.
    """
    shift %= max(len(items), 1)
    return items[shift:] + items[:shift]


def _paired_quartiles(times: List[float], reference: List[float]) -> Tuple[float, float, float]:
    """Quartiles (q1, median, q3) of the round-by-round ratios ``times[i] / reference[i]``.

    Steps of one round run back to back, so a ratio within a round cancels the machine's slow
    drifts; the quartiles show how far the rounds agree.
    """
    ratios = sorted(t / r for t, r in zip(times, reference))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return q1, median, q3


def run_benchmark(args) -> Dict[str, Any]:
    device = _device(args)
    cached_malloc = device.type == 'cpu' and _cache_freed_memory()
    torch.manual_seed(0)
    model = _make_model(args)
    runners = [(label, _Runner(label, METHODS[name], model, args, device, compiled), name, compiled)
               for label, name, compiled in _variants(args)]
    warmup = _warm_up(args, device, runners)
    times: Dict[str, List[float]] = {label: [] for label, *_ in runners}
    faults: Dict[str, List[int]] = {label: [] for label, *_ in runners}
    for round_index in range(args.steps):
        for label, runner, _, _ in rotated(runners, round_index):
            seconds, step_faults = _with_page_faults(runner.timed_step)
            times[label].append(seconds)
            faults[label].append(step_faults)
    rows = []
    for label, runner, name, compiled in runners:
        rows.append({'method': label, 'passes': METHODS[name].passes,
                     'passes_rel_at': METHODS[name].passes / METHODS[REFERENCE].passes,
                     'seconds': statistics.median(times[label]), 'times': times[label],
                     'page_faults': faults[label], 'compiled': compiled})
    reference = {row['compiled']: row for row in rows if row['method'].startswith(REFERENCE)}
    for row in rows:
        ref = reference.get(row['compiled']) or reference.get(False) or reference.get(True)
        row['ratio_quartiles'] = _paired_quartiles(row['times'], ref['times']) if ref else None
        row['ratio'] = row['ratio_quartiles'][1] if ref else None
    natural_mb = None if args.no_memory else _measure_memory(args, device, runners, rows)
    by_label = {row['method']: row for row in rows}
    compile_speedups = {name: _paired_quartiles(by_label[f'{name} (compiled)']['times'],
                                                by_label[f'{name} (eager)']['times'])
                        for name in EAGER_TOO if f'{name} (compiled)' in by_label and f'{name} (eager)' in by_label}
    result = {'model': args.model, 'act': args.act, 'batch_size': args.batch_size,
              'img_size': _input_size(args, model), 'device': str(device), 'amp': args.amp,
              'torchcompile': args.torchcompile, 'torchcompile_mode': args.torchcompile_mode,
              'train_bn': args.train_bn, 'channels_last': args.channels_last,
              'rows': rows, 'compiled_over_eager': compile_speedups,
              'torch': torch.__version__, 'cpu_malloc_cached': cached_malloc, **warmup}
    if natural_mb is not None:
        result['natural_eager_peak_mb'] = natural_mb
    if not args.no_fd_check and 'gradnorm-fd' in args.methods:
        result['fd_accuracy'] = fd_accuracy(_model_copy(model, args, device), runners[0][1].x, runners[0][1].y)
    return result


def profile_step(args) -> str:
    """torch.profiler's table of the operators that cost the most in ``args.profile``'s steps."""
    from torch.profiler import ProfilerActivity, profile
    device = _device(args)
    if device.type == 'cpu':
        _cache_freed_memory()  # as in the timed runs: no page faults of re-mapped activations
    torch.manual_seed(0)
    method = METHODS[args.profile]
    runner = _Runner(args.profile, method, _make_model(args), args, device,
                     compiled=bool(args.torchcompile) and method.compilable)
    _warm_up(args, device, [(args.profile, runner, args.profile, None)])  # to steady state, as the timed runs
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    steps = max(args.steps, 1)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.timed_step()
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    head = f'{args.profile}: {steps} steps of {args.model}, batch {args.batch_size}, {device}, amp {args.amp}'
    return head + '\n' + prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows)


#: The first-order passes every method is made of: key -> label.
PASSES: Dict[str, str] = {
    'forward': 'training forward',
    'backward': 'full backward',
    'attack_forward': 'attack forward (frozen)',
    'input_backward': 'input-only backward',
}


class _PassTimer:
    """One model's first-order passes, timed one by one: a training step's forward and full backward,
    and an attack step's forward and input-only backward (parameters frozen, as in PGD)."""

    def __init__(self, model: nn.Module, args, device: torch.device, compiled: bool):
        self.model = _model_copy(model, args, device)
        self.module = torch.compile(self.model, backend=args.torchcompile, mode=args.torchcompile_mode) \
            if compiled else self.model
        self.amp = _amp_dtype(args)
        self.x, self.y = _batch(args, model, device)
        self.device = device

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return F.cross_entropy(at_least_fp32(self.module(x)), self.y)  # as the tasks' losses

    def round(self) -> Dict[str, float]:
        """Seconds of each pass of ``PASSES`` in one training step and one attack step."""
        t0 = _clock(self.device)
        loss = self._loss(self.x)
        t1 = _clock(self.device)
        loss.backward()
        t2 = _clock(self.device)
        self.model.zero_grad(set_to_none=True)
        with frozen_parameters(self.model):
            x = self.x.detach().clone().requires_grad_(True)
            t3 = _clock(self.device)
            loss = self._loss(x)
            t4 = _clock(self.device)
            torch.autograd.grad(loss, x)
            t5 = _clock(self.device)
        return {'forward': t1 - t0, 'backward': t2 - t1, 'attack_forward': t4 - t3, 'input_backward': t5 - t4}

    def step(self) -> None:
        """An untimed round (warm-up)."""
        self.round()


def pass_costs(args) -> Dict[str, Any]:
    """Median seconds of each first-order pass, eager and (with ``--torchcompile``) compiled, interleaved.

    The finite difference is two training passes, forward and full backward (pass 1 also takes
    the input gradient), and PGD-3 is three attack passes and one training pass. Their ratio,
    ``floor``, is what FD costs relative to PGD-3 before its optimizer step and its own
    elementwise work, so no FD step can be cheaper than that on this machine.
    """
    device = _device(args)
    if device.type == 'cpu':
        _cache_freed_memory()  # as in the timed runs: no page faults of re-mapped activations
    torch.manual_seed(0)
    model = _make_model(args)
    kinds = ['eager'] + (['compiled'] if args.torchcompile else [])
    timers = {kind: _PassTimer(model, args, device, kind == 'compiled') for kind in kinds}
    warmup = _warm_up(args, device, [(kind, timer, None, None) for kind, timer in timers.items()])
    times: Dict[str, Dict[str, List[float]]] = {kind: {key: [] for key in PASSES} for kind in kinds}
    for round_index in range(max(args.steps, 1)):
        for kind in rotated(kinds, round_index):
            for key, seconds in timers[kind].round().items():
                times[kind][key].append(seconds)
    medians = {kind: {key: statistics.median(values) for key, values in passes.items()}
               for kind, passes in times.items()}
    floor = {kind: 2 * (m['forward'] + m['backward'])
             / (3 * (m['attack_forward'] + m['input_backward']) + m['forward'] + m['backward'])
             for kind, m in medians.items()}
    result = {'model': args.model, 'act': args.act, 'batch_size': args.batch_size,
              'img_size': _input_size(args, model), 'device': str(device), 'amp': args.amp,
              'torchcompile': args.torchcompile, 'torchcompile_mode': args.torchcompile_mode,
              'train_bn': args.train_bn, 'channels_last': args.channels_last, 'torch': torch.__version__,
              'rounds': max(args.steps, 1), 'times': times, 'seconds': medians, 'floor': floor, **warmup}
    if 'compiled' in kinds:
        result['compiled_over_eager'] = {key: _paired_quartiles(times['compiled'][key], times['eager'][key])[1]
                                         for key in PASSES}
    return result


def _header(result: Dict[str, Any]) -> str:
    return (f"{result['model']}{' (' + result['act'] + ')' if result['act'] else ''}, batch {result['batch_size']}, "
            f"{result['img_size']}px, {result['device']}, amp {result['amp']}, BatchNorm "
            f"{'train' if result['train_bn'] else 'eval'} mode"
            f"{', channels_last' if result.get('channels_last') else ''}"
            f"{', compile mode ' + result['torchcompile_mode'] if result.get('torchcompile_mode') else ''}, "
            f"torch {result['torch']}")


def format_passes(result: Dict[str, Any]) -> str:
    kinds = list(result['seconds'])
    speedups = result.get('compiled_over_eager')
    lines = [_header(result) + f": first-order passes, median ms of {result['rounds']} rounds",
             f"{'pass':<26}" + ''.join(f'{kind:>10}' for kind in kinds) + (f"{'c/e':>8}" if speedups else '')]
    for key, label in PASSES.items():
        lines.append(f'{label:<26}' + ''.join(f"{result['seconds'][kind][key] * 1000:>10.1f}" for kind in kinds)
                     + (f'{speedups[key]:>8.3f}' if speedups else ''))
    if speedups:
        lines.append('c/e: median of the round-by-round ratios compiled / eager')
    lines.append("gradnorm-fd floor, two training passes / PGD-3's passes (3 attack, 1 training): "
                 + ', '.join(f'{kind} {value:.3f}' for kind, value in result['floor'].items()))
    return '\n'.join(lines + _warmup_lines(result))


def _warmup_lines(result: Dict[str, Any]) -> List[str]:
    if result.get('steady') is None:
        return []
    return [f"warm-up: {result['warmup_rounds']} rounds, " + (
        'steady state (no step faulted in fresh memory)' if result['steady'] else
        'memory still growing at the end (raise --max-warmup): first-touch page faults inflate the times')]


def format_table(result: Dict[str, Any]) -> str:
    lines = [_header(result),
             f"{'method':<26}{'passes':>7}{'rel. AT':>9}{'s/step':>10}{'rel.':>8}{'rounds':>14}{'peak MB':>10}"
             f"{'mem/nat':>9}"]
    for r in result['rows']:
        mem = f"{r['peak_mb']:>10.0f}" if r.get('peak_mb') is not None else f"{'—':>10}"
        mrel = f"{r['mem_rel_natural']:>9.2f}" if r.get('mem_rel_natural') else f"{'—':>9}"
        ratio = f"{r['ratio']:>8.3f}" if r['ratio'] is not None else f"{'—':>8}"
        quartiles = r.get('ratio_quartiles')
        rounds = f"{quartiles[0]:>8.3f}–{quartiles[2]:.3f}" if quartiles else f"{'—':>14}"
        lines.append(f"{r['method']:<26}{r['passes']:>7}{r['passes_rel_at']:>9.3f}{r['seconds']:>10.4f}{ratio}"
                     f"{rounds}{mem}{mrel}")
    lines.append('rel.: median of the round-by-round ratios to PGD-3 of the same kind; '
                 'rounds: their interquartile range')
    for name, (q1, median, q3) in result.get('compiled_over_eager', {}).items():
        lines.append(f"{name} compiled / eager, round by round: median {median:.3f}, interquartile {q1:.3f}–{q3:.3f}"
                     f" ({'faster' if q3 < 1 else 'slower' if q1 > 1 else 'no clear difference'} compiled)")
    natural_row = next((r for r in result['rows'] if r['method'].startswith('natural')), None)
    if result.get('natural_eager_peak_mb') and natural_row and natural_row.get('peak_mb') is None:
        lines.append(f"mem/nat: relative to eager natural training, {result['natural_eager_peak_mb']:.0f} MB; "
                     'compiled steps have no CPU peak (RSS mixes in compilation)')
    lines += _warmup_lines(result)
    if 'fd_accuracy' in result:
        fd = result['fd_accuracy']
        lines.append(f"gradnorm-fd vs double backprop parameter gradient: cosine {fd['cosine']:.5f}, relative error "
                     f"{fd['rel_error']:.2e} (h = {fd['fd_step']})")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(args)
        return 0
    if args.passes and args.profile:
        parser.error('--passes and --profile are two different reports: give one of them')
    try:
        check_compile_mode(args.torchcompile_mode, args.torchcompile)
        if args.profile:
            print(profile_step(args))
            return 0
        result = pass_costs(args) if args.passes else run_benchmark(args)
    except (ModelError, CompileModeError) as e:
        parser.error(str(e))
    print(format_passes(result) if args.passes else format_table(result))
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
