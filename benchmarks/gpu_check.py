"""The GPU acceptance run: kernel numerics, step cost, memory against the prediction, every ImageNet recipe.

    python benchmarks/gpu_check.py                 # on a CUDA machine: prints and writes docs/gpu.md
    python benchmarks/gpu_check.py --smoke         # the same code at tiny sizes on the CPU (CI), nothing written

Four sections, each printed as it finishes:

1. Kernel numerics. Every op that ``double_backward_safe`` reroutes (``DOUBLE_BACKWARD_OPS``: the smooth
   activations, eval BatchNorm, convolutions of three shapes, LayerNorm, attention, softmax) computes
   y = f(x, θ), g = ∂(u·y)/∂x and the Hessian-vector products ∂(r·g)/∂(x, θ) on the device in float32
   inside the mode, against the native ops in float64 on the CPU; beside it, the native ops in float32 on
   the device (the error the device's float32 has anyway). A kernel passes within 4× that, or 1e-5.
2. Step cost (the paper's Table 3): natural, GradNorm (double backprop, finite differences, every 2nd step),
   edge and PGD-3 on resnet50-GELU and swin_base at 224 px, at the recipes' per-GPU batch, float32 and
   bfloat16 autocast, interleaved as ``benchmarks/step_cost.py`` times them; images/s, the ratio to PGD-3
   and peak memory. The paper's ratio for GradNorm is 0.628.
3. Memory: one real training step of the two GradNorm recipes at their per-GPU batch,
   ``torch.cuda.max_memory_allocated`` against ``timm-train --dry-run``'s predicted peak.
4. Recipes: each ImageNet recipe trains 2 steps on synthetic images at its real model, input size,
   augmentation and task (``benchmarks/recipe_smoke.py``), past its warm-ups: finite loss, weights changed.

``--smoke`` runs the same functions on the CPU: the kernels at their tiny shapes, the step cost on
test_resnet-GELU and test_vit at 32 px (batch 4, 1 round), the memory of a step of
``imagenet/resnet50_gelu_gradnorm`` at batch 2 and one recipe; it checks that the script works, not the
numbers.
"""
import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
sys.path.insert(0, ROOT)

from timm_gradreg.double_backward import DOUBLE_BACKWARD_OPS, double_backward_safe  # noqa: E402

#: GradNorm's step cost relative to PGD-3 adversarial training in the paper's Table 3
PAPER_GRADNORM_RATIO = 0.628
#: a kernel passes within this many times the device's native float32 error (or KERNEL_FLOOR)
KERNEL_FACTOR, KERNEL_FLOOR = 4.0, 1e-5
STEP_METHODS = ('natural', 'gradnorm', 'gradnorm-fd', 'gradnorm-every2', 'edge', 'pgd')
#: (model, --act, recipe whose per-GPU batch is used)
STEP_MODELS = (('resnet50', 'gelu', 'imagenet/resnet50_gelu_gradnorm'),
               ('swin_base_patch4_window7_224', None, 'imagenet/swin_base_gradnorm'))
SMOKE_MODELS = (('test_resnet', 'gelu', None), ('test_vit', None, None))
MEMORY_RECIPES = ('imagenet/resnet50_gelu_gradnorm', 'imagenet/swin_base_gradnorm')


@dataclass(frozen=True)
class KernelCase:
    """One rerouted op: ``make(device, dtype)`` -> (inputs, x first, each differentiated; function of them)."""
    name: str
    op: Callable
    make: Callable[[torch.device, torch.dtype], Tuple[List[torch.Tensor], Callable[..., torch.Tensor]]]


def _rand(*shape, device, dtype, generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def _case(name: str, op: Callable, shapes: Sequence[Tuple[int, ...]], fn: Callable) -> KernelCase:
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        return [_rand(*s, device=device, dtype=dtype, generator=g) for s in shapes], fn
    return KernelCase(name, op, make)


def _batch_norm_eval(x, w, b):
    channels = x.shape[1]
    mean = torch.linspace(-0.5, 0.5, channels, dtype=x.dtype, device=x.device)
    var = torch.linspace(0.5, 2.0, channels, dtype=x.dtype, device=x.device)
    return F.batch_norm(x, mean, var, w, b, training=False)


KERNEL_CASES: List[KernelCase] = [
    *[_case(getattr(op, '__name__', str(op)), op, [(4, 8, 6, 6)], op) for op in DOUBLE_BACKWARD_OPS
      if op in (F.gelu, F.silu)],
    _case('batch_norm (eval)', F.batch_norm, [(4, 8, 6, 6), (8,), (8,)], _batch_norm_eval),
    _case('conv2d 3x3 stride 1', F.conv2d, [(4, 8, 10, 10), (16, 8, 3, 3)], lambda x, w: F.conv2d(x, w, padding=1)),
    _case('conv2d 3x3 stride 2', F.conv2d, [(4, 8, 10, 10), (16, 8, 3, 3)],
          lambda x, w: F.conv2d(x, w, stride=2, padding=1)),
    _case('conv2d patch embedding 4x4/4', F.conv2d, [(4, 3, 16, 16), (16, 3, 4, 4)],
          lambda x, w: F.conv2d(x, w, stride=4)),
    _case('layer_norm', F.layer_norm, [(4, 10, 16), (16,), (16,)], lambda x, w, b: F.layer_norm(x, (16,), w, b)),
    _case('scaled_dot_product_attention', F.scaled_dot_product_attention, [(2, 3, 10, 8), (2, 3, 10, 8),
                                                                           (2, 3, 10, 8)],
          F.scaled_dot_product_attention),
    _case('softmax', F.softmax, [(4, 10, 12)], lambda x: F.softmax(x, dim=-1)),
]


def second_order(case: KernelCase, device: torch.device, dtype: torch.dtype, rerouted: bool) -> List[torch.Tensor]:
    """y, g = ∂(u·y)/∂x and ∂(r·g)/∂(each input) on ``device`` in ``dtype`` (``rerouted``: inside
    ``double_backward_safe``), returned in float64 on the CPU."""
    inputs, fn = case.make(device, dtype)
    inputs = [t.requires_grad_(True) for t in inputs]
    # native attention: the math kernel (the fused ones have no double backward)
    context = double_backward_safe() if rerouted else sdpa_kernel(SDPBackend.MATH)
    with context:
        y = fn(*inputs)
    g_ = torch.Generator().manual_seed(1)
    u = _rand(*y.shape, device=device, dtype=dtype, generator=g_)
    (g,) = torch.autograd.grad((y * u).sum(), inputs[0], create_graph=True)
    r = _rand(*g.shape, device=device, dtype=dtype, generator=g_)
    hv = torch.autograd.grad((g * r).sum(), inputs, allow_unused=True)  # a linear op's x has none
    return [t.detach().double().cpu() for t in (y, g, *[h for h in hv if h is not None])]


def _relative(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    return max(((x - y).norm() / y.norm().clamp_min(1e-300)).item() for x, y in zip(a, b))


def check_kernels(device: torch.device) -> List[Dict]:
    """Each rerouted op on ``device`` in float32 against float64 native ops (section 1)."""
    rows = []
    for case in KERNEL_CASES:
        reference = second_order(case, torch.device('cpu'), torch.float64, rerouted=False)
        kernel = _relative(second_order(case, device, torch.float32, rerouted=True), reference)
        native = _relative(second_order(case, device, torch.float32, rerouted=False), reference)
        rows.append({'kernel': case.name, 'error': kernel, 'native_float32': native,
                     'passes': kernel <= max(KERNEL_FACTOR * native, KERNEL_FLOOR)})
    return rows


def step_costs(device: torch.device, smoke: bool) -> List[Dict]:
    """Section 2: ``step_cost.run_benchmark`` per model and precision."""
    from step_cost import build_parser
    from cost.table import run_benchmark
    from memory_scale import recipe_config
    results = []
    for model, act, recipe in (SMOKE_MODELS if smoke else STEP_MODELS):
        batch = 4 if smoke else recipe_config(recipe, 1).batch_size
        for amp in ('none', 'bf16'):
            argv = ['--model', model, '-b', str(batch), '--device', str(device), '--amp', amp,
                    '--methods', *STEP_METHODS, '--no-fd-check']
            argv += ['--act', act] if act else []
            argv += ['--img-size', '32', '--steps', '1', '--warmup', '1', '--max-warmup', '1', '--no-memory'] if smoke \
                else ['--img-size', '224', '--steps', '5', '--warmup', '2']
            if model == 'test_vit':
                argv += ['--num-classes', '10']
            started = time.perf_counter()
            result = run_benchmark(build_parser().parse_args(argv))
            result['wall_seconds'] = time.perf_counter() - started
            results.append(result)
    return results


def memory_against_prediction(smoke: bool) -> List[Dict]:
    """Section 3: a real step's peak (CUDA's max allocated; on the CPU the process's peak resident set) against
    the predicted peak of ``--dry-run``."""
    from memory_scale import measure_step, recipe_config
    from timm_gradreg.train.memory import predict_memory
    rows = []
    for name in MEMORY_RECIPES[:1] if smoke else MEMORY_RECIPES:
        batch = 2 if smoke else recipe_config(name, 1).batch_size
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        measured = measure_step(name, batch)
        predicted = predict_memory(recipe_config(name, 1, ('--batch-size', str(batch)))).peak(batch)
        rows.append({'recipe': name, 'batch': batch, 'measured_gib': measured / 2 ** 30,
                     'predicted_gib': predicted / 2 ** 30, 'ratio': measured / predicted})
    return rows


def recipe_steps(smoke: bool, device: str) -> List[Dict]:
    """Section 4: 2 steps of each ImageNet recipe on synthetic images (one recipe with ``--smoke``)."""
    from recipe_smoke import smoke as train_recipe
    from timm_gradreg.recipes import list_recipes
    names = [r.name for r in list_recipes() if r.name.startswith('imagenet/') and r.command == 'timm-train']
    rows = []
    for name in names[:1] if smoke else names:
        with tempfile.TemporaryDirectory() as work:
            rows.append(train_recipe(name, work, device=device))
    return rows


def format_report(device: str, kernels: List[Dict], costs: List[Dict], memory: List[Dict], recipes: List[Dict],
                  seconds: float) -> str:
    lines = ['# GPU acceptance run', '',
             f'Generated by `python benchmarks/gpu_check.py` on {device} (torch {torch.__version__}), '
             f'{seconds / 60:.1f} minutes.', '', '## Kernel numerics (float32 against float64)', '',
             '| op | rerouted kernel | native float32 | passes |', '|---|---|---|---|']
    lines += [f"| {r['kernel']} | {r['error']:.1e} | {r['native_float32']:.1e} | {'✓' if r['passes'] else '✗'} |"
              for r in kernels]
    lines += ['', f"## Step cost (ratio to PGD-3; the paper's GradNorm: {PAPER_GRADNORM_RATIO})", '',
              '| model | precision | batch | method | images/s | ratio to PGD-3 (IQR) | peak memory |',
              '|---|---|---|---|---|---|---|']
    for result in costs:
        for row in result['rows']:
            low, mid, high = row['ratio_quartiles'] or (math.nan,) * 3
            peak = f"{row['peak_mb'] / 1024:.1f} GiB" if row.get('peak_mb') is not None else '—'
            lines.append(f"| {result['model']}{'-' + result['act'] if result['act'] else ''} | "
                         f"{'float32' if result['amp'] == 'none' else result['amp']} | {result['batch_size']} | "
                         f"{row['method']} | {result['batch_size'] / row['seconds']:.1f} | {mid:.3f} "
                         f"({low:.3f}–{high:.3f}) | {peak} |")
    lines += ['', '## Peak memory of a step against `--dry-run`', '',
              '| recipe | batch | measured | predicted | measured / predicted |', '|---|---|---|---|---|']
    lines += [f"| {r['recipe']} | {r['batch']} | {r['measured_gib']:.2f} GiB | {r['predicted_gib']:.2f} GiB | "
              f"{r['ratio']:.2f} |" for r in memory]
    lines += ['', '## Every ImageNet recipe: 2 steps on synthetic images', '',
              '| recipe | exit | loss | weights changed | s/step |', '|---|---|---|---|---|']
    lines += [f"| {r['recipe']} | {r['exit']} | {r['loss']:.3f} | {'yes' if r['changed'] else 'no'} | "
              f"{r['seconds_per_step']:.1f} |" for r in recipes]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU: checks the script, not numbers')
    parser.add_argument('--output', default=os.path.join(ROOT, 'docs', 'gpu.md'),
                        help='the report (not written with --smoke unless given)')
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error('no CUDA device here: run it on a GPU machine, or --smoke to check the script on the CPU')
    device = torch.device('cpu' if args.smoke else 'cuda')
    name = 'CPU (smoke)' if args.smoke else torch.cuda.get_device_name()
    started = time.perf_counter()
    kernels = check_kernels(device)
    print('\n'.join(f"{r['kernel']:<32} {r['error']:.1e} (native float32 {r['native_float32']:.1e})"
                    f" {'ok' if r['passes'] else 'FAILS'}" for r in kernels), flush=True)
    costs = step_costs(device, args.smoke)
    print(f'step cost: {len(costs)} tables', flush=True)
    memory = memory_against_prediction(args.smoke)
    print('\n'.join(f"{r['recipe']}: measured {r['measured_gib']:.2f} GiB, predicted {r['predicted_gib']:.2f} GiB"
                    for r in memory), flush=True)
    recipes = recipe_steps(args.smoke, device.type)
    report = format_report(name, kernels, costs, memory, recipes, time.perf_counter() - started)
    print(report)
    if not args.smoke or '--output' in (argv if argv is not None else sys.argv[1:]):
        with open(args.output, 'w') as f:
            f.write(report)
    failed = [r['kernel'] for r in kernels if not r['passes']] + [r['recipe'] for r in recipes
                                                                   if r['exit'] != 0 or not r['changed']]
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
